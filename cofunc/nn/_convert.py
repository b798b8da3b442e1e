"""``continual(module)``: convert torch.nn modules to cofunc's continual modules."""

from __future__ import annotations

from typing import Callable, Dict, Type

from torch import nn

from .._errors import UnsupportedModuleError
from ._conv import Conv1d, Conv2d, Conv3d
from ._lifted import lift_nn_module
from ._module import ContinualModule

Converter = Callable[[nn.Module], ContinualModule]

_CONVERTERS: Dict[Type[nn.Module], Converter] = {}


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
        raise TypeError(f"register: expected a torch.nn.Module subclass, got {torch_class!r}")
    _CONVERTERS[torch_class] = converter


def continual(module: nn.Module) -> ContinualModule:
    """The continual equivalent of a torch.nn module, with a copy of its weights.

    Continual modules are returned unchanged; ``nn.Sequential`` is converted recursively.
    Unknown types raise `UnsupportedModuleError` (register them with `register`).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> net = cn.continual(torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.ReLU()))
        >>> type(net).__name__, net.delay
        ('Sequential', 2)
    """
    if isinstance(module, ContinualModule):
        return module
    for cls in type(module).__mro__:
        converter = _CONVERTERS.get(cls)
        if converter is not None:
            return converter(module)
    raise UnsupportedModuleError(
        f"continual: no converter for {type(module).__module__}.{type(module).__qualname__}. If it is "
        f"temporally local (treats each frame on its own), register it with "
        f"`cofunc.nn.register({type(module).__name__}, cofunc.nn.lift_nn_module)`; otherwise write a "
        f"converter that returns a cofunc.nn module"
    )


def _sequential(module: nn.Sequential):
    from ._sequential import Sequential
    from collections import OrderedDict

    new = Sequential(OrderedDict((name, continual(child)) for name, child in module._modules.items()))
    return new.train(module.training)


_LIFTED = (
    nn.Threshold, nn.ReLU, nn.RReLU, nn.Hardtanh, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.Hardshrink, nn.LeakyReLU,
    nn.LogSigmoid, nn.Softplus, nn.Softshrink, nn.PReLU, nn.Softsign, nn.Tanhshrink, nn.Identity,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
for _cls in _LIFTED:
    register(_cls, lift_nn_module)
for _torch_conv, _co_conv in ((nn.Conv1d, Conv1d), (nn.Conv2d, Conv2d), (nn.Conv3d, Conv3d)):
    register(_torch_conv, _co_conv.build_from)
register(nn.Sequential, _sequential)
