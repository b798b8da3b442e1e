"""nn.Module adapters: drop-in replacements for co's modules (change one import)."""

from ._attention import RetroactiveMultiheadAttention, SingleOutputMultiheadAttention
from ._call_mode import call_mode
from ._closures import Add, Constant, Identity, Lambda, LayerModule, Linear, Multiply, One, Reshape, Skip, Zero
from ._containers import Broadcast, BroadcastReduce, Conditional, Parallel, ParallelDispatch, Reduce, Residual
from ._conv import Conv1d, Conv2d, Conv3d
from ._convert import continual, register
from ._delay import Delay
from ._lifted import LiftedModule, lift_nn_module
from ._module import ContinualModule
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
from ._rnn import GRU, LSTM, RNN
from ._sequential import Sequential
from ._transformer import (
    RecyclingPositionalEncoding,
    RetroactiveTransformerEncoderLayer,
    SingleOutputTransformerEncoderLayer,
    TransformerEncoder,
    TransformerEncoderLayerFactory,
)

__all__ = [
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "Add",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "Broadcast",
    "BroadcastReduce",
    "Conditional",
    "Constant",
    "ContinualModule",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "Delay",
    "GRU",
    "Identity",
    "LSTM",
    "Lambda",
    "LayerModule",
    "LiftedModule",
    "Linear",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "Multiply",
    "One",
    "Parallel",
    "ParallelDispatch",
    "RNN",
    "RecyclingPositionalEncoding",
    "Reduce",
    "Reshape",
    "Residual",
    "RetroactiveMultiheadAttention",
    "RetroactiveTransformerEncoderLayer",
    "Sequential",
    "SingleOutputMultiheadAttention",
    "SingleOutputTransformerEncoderLayer",
    "Skip",
    "TransformerEncoder",
    "TransformerEncoderLayerFactory",
    "Zero",
    "call_mode",
    "continual",
    "lift_nn_module",
    "register",
]
