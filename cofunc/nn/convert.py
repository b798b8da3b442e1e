"""``continual(module)``: convert torch.nn modules to cofunc's continual modules.

This module holds the converter registry; `cofunc.nn._converters` registers the built-in
converters (torch.nn's layers and containers) when `cofunc.nn` is imported.
"""

from __future__ import annotations

import contextvars
import importlib
import types
from typing import Callable, Dict, Optional, Type

from torch import nn

from .._errors import UnsupportedModuleError
from ._lifted import lift_nn_module
from .closure import Lambda
from .module import ContinualModule

Converter = Callable[[nn.Module], ContinualModule]

_CONVERTERS: Dict[Type[nn.Module], Converter] = {}
_WINDOW: contextvars.ContextVar = contextvars.ContextVar("cofunc_temporal_window", default=None)
# Converters for other libraries' modules, by top-level package: imported the first time one of
# that package's modules is converted, so that importing cofunc.nn imports none of them.
_LAZY_CONVERTERS: Dict[str, str] = {"torchvision": "cofunc.nn._torchvision"}


def _is_function(obj) -> bool:
    return isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)) or (
        callable(obj) and not isinstance(obj, nn.Module) and not isinstance(obj, type)
    )


def register(torch_class: Type[nn.Module], converter: Converter) -> None:
    """Teach `continual` a torch.nn module type.

    ``converter(module)`` returns a `ContinualModule` equivalent to ``module`` (for a
    temporally-local module, ``cofunc.nn.lift_nn_module`` is enough).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> class Square(torch.nn.Module):
        ...     def forward(self, x):
        ...         return x * x
        >>> cn.register(Square, cn.lift_nn_module)
        >>> cn.continual(Square()).forward_step(torch.full((1, 2), 3.0))
        tensor([[9., 9.]])
    """
    if not (isinstance(torch_class, type) and issubclass(torch_class, nn.Module)):
        raise UnsupportedModuleError(f"register: expected a torch.nn.Module subclass, got {torch_class!r}")
    _CONVERTERS[torch_class] = converter


def continual(module: nn.Module, *, temporal_window: Optional[int] = None) -> ContinualModule:
    """The continual equivalent of a torch.nn module, with a copy of its weights.

    Continual modules are returned unchanged; ``nn.Sequential`` is converted recursively.
    torchvision's video classifiers (``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d`` and their
    blocks) convert too, keeping torchvision's parameter names: clips ``(B, 3, T, H, W)`` give
    scores ``(B, K, T')``, one per ``temporal_window`` frames at the final pool (default: the
    frames a 16-frame clip leaves there), steps ``(B, 3, H, W)`` give ``(B, K)``.
    Unknown types raise `UnsupportedModuleError` (register them with `register`).
    ``temporal_window`` is the number of frames adaptive pools average over in time, and the
    number of tokens attention and transformer modules attend over (a stream has no clip length
    to adapt to); it is required when the module holds one of these.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> net = cn.continual(torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.ReLU()))
        >>> type(net).__name__, net.delay
        ('Sequential', 2)
    """
    if isinstance(module, ContinualModule):
        return module
    if not callable(module) or not isinstance(module, nn.Module) and not _is_function(module):
        raise UnsupportedModuleError(f"continual: expected a torch.nn.Module or a function, got {type(module).__name__}")
    if _is_function(module):
        return Lambda(module)
    token = _WINDOW.set(temporal_window if temporal_window is not None else _WINDOW.get())
    try:
        converter = _converter_for(type(module))
        if converter is not None:
            return converter(module)
    finally:
        _WINDOW.reset(token)
    raise UnsupportedModuleError(
        f"continual: no converter for {type(module).__module__}.{type(module).__qualname__}. If it is "
        f"temporally local (treats each frame on its own), register it with "
        f"`cofunc.nn.register({type(module).__name__}, cofunc.nn.lift_nn_module)`; otherwise write a "
        f"converter that returns a cofunc.nn module"
    )


def _converter_for(cls: type) -> Optional[Converter]:
    """The converter registered for ``cls`` or its nearest base class (importing the converters
    for ``cls``'s package first, if cofunc has some)."""
    package = cls.__module__.split(".")[0]
    lazy = _LAZY_CONVERTERS.get(package)
    if lazy is not None:
        importlib.import_module(lazy)
        del _LAZY_CONVERTERS[package]
    for base in cls.__mro__:
        converter = _CONVERTERS.get(base)
        if converter is not None:
            if base is not cls and cls.forward is not base.forward:
                # A subclass with its own forward computes something else than its base: the
                # base's converter would silently build the base's computation.
                raise UnsupportedModuleError(
                    f"continual: {cls.__module__}.{cls.__qualname__} subclasses {base.__module__}.{base.__qualname__} "
                    f"but overrides forward, so the converter of {base.__name__} would not compute what it does; "
                    f"register a converter for {cls.__name__} with `cofunc.nn.register`"
                )
            return converter
    return None


def temporal_window() -> Optional[int]:
    """The ``temporal_window`` of the enclosing `continual` call (for converters), or None."""
    return _WINDOW.get()


def forward_stepping(module: nn.Module, dim: int = 2):
    """co's ``forward_stepping``: a continual module whose ``forward_step`` runs ``module`` on
    one frame (the time axis ``dim`` added to the input and removed from the output), for a
    module that treats every frame on its own.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> relu = cn.forward_stepping(torch.nn.ReLU())
        >>> relu.forward_step(torch.tensor([[-1.0, 2.0]]))
        tensor([[0., 2.]])
    """
    if isinstance(module, ContinualModule):
        return module
    if dim != 2:
        raise UnsupportedModuleError(f"forward_stepping: cofunc's time axis is 2 (co's default), got dim={dim}")
    return lift_nn_module(module)
