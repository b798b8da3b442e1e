"""Stateless adapters: ``Lambda`` and its factories, ``Reshape``, ``Skip`` and ``Linear``."""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .. import _shape
from .._delay import Delay as DelayLayer
from .._errors import ConfigurationError
from .._layer import Layer, flatten_params
from .._lift import Lift
from ._module import ContinualModule


class LayerModule(ContinualModule):
    """An adapter for a core layer without a torch.nn counterpart; ``forward`` is the layer's."""

    def __init__(self, layer: Layer):
        super().__init__()
        self.__dict__["_co_layer"] = layer


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
    return lambda params, x: fn(x)


class Lambda(LayerModule):
    """co's ``Lambda``: wrap a function (or module) as a stateless continual module.

    ``takes_time=False`` (default): ``fn`` sees single frames ``(B, C, *S)``, and clips are
    processed frame by frame. ``takes_time=True``: ``fn`` sees clips ``(B, C, T, *S)``, and a
    step is given a time axis of length 1. ``forward_only_fn``, ``forward_step_only_fn`` and
    ``forward_steps_only_fn`` replace ``fn`` in one call mode. An ``nn.Module`` ``fn`` is
    registered as the submodule ``fn``.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> double = cn.Lambda(lambda x: 2 * x)
        >>> double.forward_step(torch.ones(1, 2))
        tensor([[2., 2.]])
    """

    def __init__(self, fn: Optional[Callable] = None, forward_only_fn: Optional[Callable] = None,
                 forward_step_only_fn: Optional[Callable] = None, forward_steps_only_fn: Optional[Callable] = None,
                 takes_time: bool = False):
        if fn is None and not (forward_only_fn and forward_step_only_fn and forward_steps_only_fn):
            raise ConfigurationError("Lambda: give `fn`, or all three of the *_only_fn functions")
        name = getattr(fn, "__name__", type(fn).__name__) if fn is not None else "lambda"

        def make(f):
            return Lift(_functor_apply(f), name, pointwise=False, frame_loop=not takes_time)

        super().__init__(make(fn if fn is not None else forward_step_only_fn))
        if isinstance(fn, nn.Module):
            self.fn = fn
        else:
            self._fn = fn
        self.takes_time = takes_time
        self._mode_layers = {
            "forward": make(forward_only_fn) if forward_only_fn else None,
            "forward_step": make(forward_step_only_fn) if forward_step_only_fn else None,
            "forward_steps": make(forward_steps_only_fn) if forward_steps_only_fn else None,
        }

    def _layer_for(self, rank, mode="forward"):
        layer = self._mode_layers[mode] or self.layer
        return layer if layer.step_rank is not None else layer.with_rank(rank)

    def forward(self, input):
        return self._layer_for(_rank_of_clip(input)).forward(self.params, input)


def Identity(*args, **kwargs) -> LayerModule:
    """The identity (arguments are ignored, as torch.nn.Identity ignores them)."""
    return LayerModule(_shape.identity())


def Add(constant: Union[float, Tensor]) -> LayerModule:
    """``x + constant``.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> cn.Add(1.0).forward_step(torch.zeros(1, 1))
        tensor([[1.]])
    """
    return LayerModule(_shape.add(constant))


def Multiply(factor: Union[float, Tensor]) -> LayerModule:
    """``x * factor``."""
    return LayerModule(_shape.multiply(factor))


def Constant(constant: float) -> LayerModule:
    """``constant * ones_like(x)``."""
    return LayerModule(_shape.constant(constant))


def Zero() -> LayerModule:
    """``zeros_like(x)``."""
    return LayerModule(_shape.zero())


def One() -> LayerModule:
    """``ones_like(x)``."""
    return LayerModule(_shape.one())


class Reshape(LayerModule):
    """Reshape each frame to ``shape``; the batch and time axes are not part of ``shape``.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> cn.Reshape(2, 3)(torch.zeros(4, 6, 5)).shape
        torch.Size([4, 2, 5, 3])
    """

    def __init__(self, *shape: int, contiguous: bool = False):
        super().__init__(_shape.reshape(*shape, contiguous=contiguous))


class Skip(LayerModule):
    """Drop the first ``steps`` frames of the stream (``forward`` returns ``x[:, :, steps:]``)."""

    def __init__(self, steps: int):
        super().__init__(DelayLayer(0, None, window=steps + 1, end=0))


class Linear(ContinualModule, nn.Linear):
    """``torch.nn.Linear`` over the channel axis of clips ``(B, C, T, *S)`` and steps ``(B, C, *S)``.

    ``channel_dim`` (default 1, right for clips and steps) selects another axis, with co's
    meaning (the same axis of clips and steps).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> lin = cn.Linear(4, 2)
        >>> lin(torch.zeros(1, 4, 7)).shape, lin.forward_step(torch.zeros(1, 4)).shape
        (torch.Size([1, 2, 7]), torch.Size([1, 2]))
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 channel_dim: int = 1):
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self.channel_dim = channel_dim

    def _build_layer(self):
        dim = None if self.channel_dim == 1 else self.channel_dim
        return _shape.Linear(self.in_features, self.out_features, self.bias is not None, dim)


    def forward(self, input):
        return self.layer.forward(self.params, input)

    @classmethod
    def build_from(cls, module: nn.Linear, channel_dim: int = 1) -> "Linear":
        new = cls(module.in_features, module.out_features, module.bias is not None, module.weight.device,
                  module.weight.dtype, channel_dim)
        new.load_state_dict(module.state_dict())
        return new
