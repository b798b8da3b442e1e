"""Stateless adapters: ``Lambda`` and co's closures built on it (``Add``, ``Multiply``, ...)."""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .._errors import ConfigurationError
from .._layer import Layer
from .._params import flatten_params
from .._lift import Lift
from .module import ContinualModule
from .utils import function_repr


class LayerModule(ContinualModule):
    """An adapter for a core layer without a torch.nn counterpart; ``forward`` is the layer's.

    Example:
        >>> import torch, cofunc, cofunc.nn as cn
        >>> m = cn.LayerModule(cofunc.delay(2))
        >>> m.delay
        2
    """

    def __init__(self, layer: Layer):
        super().__init__()
        self.__dict__["_co_source"] = layer

    def forward(self, input):
        return self._layer_for(_rank_of_clip(input)).forward(self.params, input)

    def extra_repr(self):
        return self.layer.label


def _rank_of_clip(value) -> int:
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value.dim() - 2


def _functor_apply(fn):
    """``apply(params, x)`` for a plain function, or a module called with the given params."""
    if isinstance(fn, nn.Module):
        def apply(params, x):
            sub = params.get("fn")
            if not sub:
                return fn.forward(x)
            return torch.func.functional_call(fn, flatten_params(sub), (x,), strict=True)
        return apply
    return _Call(fn)


class _Call:
    """``apply(params, x) = fn(x)``, picklable whenever ``fn`` is (a lambda would not be)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, params, x):
        return self.fn(x)


class Lambda(LayerModule):
    """co's ``Lambda``: wrap a function (or module) as a stateless continual module.

    ``takes_time=False`` (default): ``fn`` sees single frames ``(B, C, *S)``, and clips are
    processed frame by frame. ``takes_time=True``: ``fn`` sees clips ``(B, C, T, *S)``, and a
    step is given a time axis of length 1. ``forward_only_fn``, ``forward_step_only_fn`` and
    ``forward_steps_only_fn`` replace ``fn`` in one call mode. An ``nn.Module`` ``fn`` is
    registered as the submodule ``fn``. ``repr`` shows the function as co does (a lambda's
    source text).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> double = cn.Lambda(lambda x: 2 * x)
        >>> double
        Lambda(lambda x: 2 * x)
        >>> double.forward_step(torch.ones(1, 2))
        tensor([[2., 2.]])
    """

    def __init__(self, fn: Optional[Callable] = None, forward_only_fn: Optional[Callable] = None,
                 forward_step_only_fn: Optional[Callable] = None, forward_steps_only_fn: Optional[Callable] = None,
                 takes_time: bool = False):
        if not (callable(fn) or all(callable(f) for f in (forward_only_fn, forward_step_only_fn, forward_steps_only_fn))):
            raise ConfigurationError(
                "Lambda: expected a callable `fn`, or all three of forward_only_fn, forward_step_only_fn and "
                f"forward_steps_only_fn, got fn={fn!r}"
            )
        ContinualModule.__init__(self)
        self.fn = fn  # an nn.Module is registered as the submodule `fn`, as in co
        self.forward_only_fn = forward_only_fn
        self.forward_step_only_fn = forward_step_only_fn
        self.forward_steps_only_fn = forward_steps_only_fn
        self.takes_time = takes_time

    # Set by co's closures below: elementwise functions work on frames and clips alike
    # (``_pointwise``), and functions that keep the rank let containers align them.
    _pointwise = False
    _keeps_rank = False

    def _lift(self, f) -> Lift:
        name = getattr(f, "__name__", type(f).__name__)
        if isinstance(f, partial):
            name = getattr(f.func, "__name__", name)
        return Lift(_functor_apply(f), name, pointwise=self._pointwise, frame_loop=not self.takes_time,
                    keeps_rank=self._keeps_rank)

    def _build_layer(self):
        return self._lift(self.fn if self.fn is not None else self.forward_step_only_fn)

    @property
    def _mode_layers(self):
        cached = self.__dict__.get("_co_cached")
        if cached is None:
            only = {"forward": self.forward_only_fn, "forward_step": self.forward_step_only_fn,
                    "forward_steps": self.forward_steps_only_fn}
            cached = {mode: self._lift(f) if f is not None else None for mode, f in only.items()}
            self.__dict__["_co_cached"] = cached
        return cached

    @staticmethod
    def build_from(fn: Callable, forward_only_fn=None, forward_step_only_fn=None, forward_steps_only_fn=None,
                   takes_time: bool = False) -> "Lambda":
        """co's constructor spelling: ``Lambda.build_from(fn, ..., takes_time=...)``."""
        return Lambda(fn, forward_only_fn, forward_step_only_fn, forward_steps_only_fn, takes_time)

    def _layer_for(self, rank, mode="forward"):
        layer = self._mode_layers[mode] or self.layer
        return layer if layer.step_rank is not None else layer.with_rank(rank)

    def forward(self, input):
        return self._layer_for(_rank_of_clip(input)).forward(self.params, input)

    def __repr__(self) -> str:
        parts = [function_repr(f) for f in (self.fn, self.forward_only_fn, self.forward_step_only_fn,
                                            self.forward_steps_only_fn) if callable(f)]
        if self.takes_time:
            parts.append("takes_time=True")
        return f"{type(self).__name__}({', '.join(parts)})"


# co's closures are Lambdas of named module-level functions (so they pickle and print as co's).
def _closure(fn, pointwise: bool) -> Lambda:
    module = Lambda(fn, takes_time=True)
    module._pointwise = pointwise
    module._keeps_rank = True
    return module



def _unity(x: Tensor) -> Tensor:
    return x


def _add(x: Tensor, constant: Union[float, int, Tensor]) -> Tensor:
    return x + constant


def _multiply(x: Tensor, factor: Union[float, int, Tensor]) -> Tensor:
    return x * factor


def _constant(x: Tensor, constant: float) -> Tensor:
    return constant * torch.ones_like(x)


def Identity(*args, **kwargs) -> Lambda:
    """The identity (arguments are ignored, as torch.nn.Identity ignores them).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> cn.Identity(54, unused=True)(torch.ones(1, 2, 3)).shape
        torch.Size([1, 2, 3])
    """
    return _closure(_unity, True)


def Add(constant: Union[float, Tensor]) -> Lambda:
    """``x + constant``. A tensor constant broadcasts against clips ``(B, C, T, *S)``; a step
    ``(B, C, *S)`` is given a time axis of length 1 first, so steps and clips agree (as in co).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> cn.Add(1.0).forward_step(torch.zeros(1, 1))
        tensor([[1.]])
        >>> cn.Add(torch.tensor([[[[2.0, 3.0]]]])).forward_step(torch.ones(1, 1, 2))
        tensor([[[3., 4.]]])
    """
    return _closure(partial(_add, constant=constant), not isinstance(constant, Tensor))


def Multiply(factor: Union[float, Tensor]) -> Lambda:
    """``x * factor`` (a tensor factor broadcasts as in `Add`).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> cn.Multiply(3).forward_step(torch.ones(1, 2))
        tensor([[3., 3.]])
    """
    return _closure(partial(_multiply, factor=factor), not isinstance(factor, Tensor))


def Constant(constant: float) -> Lambda:
    """``constant * ones_like(x)``.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> cn.Constant(4.0)(torch.zeros(1, 1, 2))
        tensor([[[4., 4.]]])
    """
    return _closure(partial(_constant, constant=constant), True)


def Zero() -> Lambda:
    """``zeros_like(x)``."""
    return _closure(torch.zeros_like, True)


def One() -> Lambda:
    """``ones_like(x)``."""
    return _closure(torch.ones_like, True)
