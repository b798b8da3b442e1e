"""The built-in converters of `continual`: torch.nn's layers, pools, recurrent and attention
modules and ``nn.Sequential``. Imported once by `cofunc.nn`; kept apart from the registry so
that containers can call `continual` without an import cycle."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .._errors import UnsupportedModuleError
from ._lifted import lift_nn_module
from .container import Sequential
from .conv import Conv1d, Conv2d, Conv3d
from .convert import continual, register, temporal_window
from .linear import Linear
from .pooling import (
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
from .rnn import GRU, LSTM, RNN
from .transformer import convert_multihead_attention, convert_transformer_encoder, convert_transformer_encoder_layer


def _sequential(module: nn.Sequential):
    new = Sequential(OrderedDict((name, continual(child)) for name, child in module._modules.items()))
    return new.train(module.training)


LIFTED_CLASSES = (
    nn.Threshold, nn.ReLU, nn.RReLU, nn.Hardtanh, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.Hardshrink, nn.LeakyReLU,
    nn.LogSigmoid, nn.Softplus, nn.Softshrink, nn.PReLU, nn.Softsign, nn.Tanhshrink, nn.Identity,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
for _cls in LIFTED_CLASSES:
    register(_cls, lift_nn_module)
for _torch_conv, _co_conv in ((nn.Conv1d, Conv1d), (nn.Conv2d, Conv2d), (nn.Conv3d, Conv3d)):
    register(_torch_conv, _co_conv.build_from)
register(nn.Sequential, _sequential)


def _adaptive(co_class):
    def convert(module):
        window = temporal_window()
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
        window = temporal_window()
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
