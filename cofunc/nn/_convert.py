"""``continual(module)``: convert torch.nn modules to cofunc's continual modules."""

from __future__ import annotations

import contextvars
import types
from typing import Callable, Dict, Optional, Type

from torch import nn

from .._errors import UnsupportedModuleError
from ._closures import Linear
from ._conv import Conv1d, Conv2d, Conv3d
from ._rnn import GRU, LSTM, RNN
from ._transformer import convert_multihead_attention, convert_transformer_encoder, convert_transformer_encoder_layer
from ._pool import (
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool2d,
    AdaptiveMaxPool3d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)
from ._lifted import lift_nn_module
from ._module import ContinualModule

Converter = Callable[[nn.Module], ContinualModule]

_CONVERTERS: Dict[Type[nn.Module], Converter] = {}
_WINDOW: contextvars.ContextVar = contextvars.ContextVar("cofunc_temporal_window", default=None)


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
        from ._closures import Lambda

        return Lambda(module)
    token = _WINDOW.set(temporal_window if temporal_window is not None else _WINDOW.get())
    try:
        for cls in type(module).__mro__:
            converter = _CONVERTERS.get(cls)
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


def _sequential(module: nn.Sequential):
    from ._sequential import Sequential
    from collections import OrderedDict

    new = Sequential(OrderedDict((name, continual(child)) for name, child in module._modules.items()))
    return new.train(module.training)


_LIFTED = (
    nn.Threshold, nn.ReLU, nn.RReLU, nn.Hardtanh, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.Hardshrink, nn.LeakyReLU,
    nn.LogSigmoid, nn.Softplus, nn.Softshrink, nn.PReLU, nn.Softsign, nn.Tanhshrink, nn.Identity,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
for _cls in _LIFTED:
    register(_cls, lift_nn_module)
for _torch_conv, _co_conv in ((nn.Conv1d, Conv1d), (nn.Conv2d, Conv2d), (nn.Conv3d, Conv3d)):
    register(_torch_conv, _co_conv.build_from)
register(nn.Sequential, _sequential)


def _adaptive(co_class):
    def convert(module):
        window = _WINDOW.get()
        if window is None:
            raise UnsupportedModuleError(
                f"continual: nn.{type(module).__name__} pools over the whole clip, whose length a stream "
                f"does not have; pass continual(..., temporal_window=N) to pool over the last N frames"
            )
        size = module.output_size
        size = (size,) * co_class._dims if isinstance(size, int) or size is None else tuple(size)
        if size[0] not in (1, None):
            raise UnsupportedModuleError(
                f"continual: nn.{type(module).__name__} with temporal output size {size[0]} cannot be "
                f"streamed; the temporal output size must be 1"
            )
        return co_class(size, window)
    return convert


for _torch_pool, _co_pool in (
    (nn.AvgPool1d, AvgPool1d), (nn.AvgPool2d, AvgPool2d), (nn.AvgPool3d, AvgPool3d),
    (nn.MaxPool1d, MaxPool1d), (nn.MaxPool2d, MaxPool2d), (nn.MaxPool3d, MaxPool3d),
):
    register(_torch_pool, _co_pool.build_from)
for _torch_pool, _co_pool in (
    (nn.AdaptiveAvgPool2d, AdaptiveAvgPool2d), (nn.AdaptiveAvgPool3d, AdaptiveAvgPool3d),
    (nn.AdaptiveMaxPool2d, AdaptiveMaxPool2d), (nn.AdaptiveMaxPool3d, AdaptiveMaxPool3d),
):
    register(_torch_pool, _adaptive(_co_pool))
register(nn.Linear, Linear.build_from)
register(nn.RNN, RNN.build_from)
register(nn.GRU, GRU.build_from)
register(nn.LSTM, LSTM.build_from)


def _windowed(convert_with_window):
    """Converters for modules that span a window of tokens: the window is ``temporal_window``."""
    def convert(module):
        window = _WINDOW.get()
        if window is None:
            raise UnsupportedModuleError(
                f"continual: nn.{type(module).__name__} attends over a whole clip, whose length a stream does not "
                f"have; pass continual(..., temporal_window=N) to attend over the last N tokens"
            )
        return convert_with_window(module, window)
    return convert


register(nn.MultiheadAttention, _windowed(convert_multihead_attention))
register(nn.TransformerEncoderLayer, _windowed(convert_transformer_encoder_layer))
register(nn.TransformerEncoder, _windowed(convert_transformer_encoder))
