"""nn.Module adapters: drop-in replacements for co's modules (change one import).

``import cofunc.nn as co`` gives co 1.2.4's names, and its submodules the paths co users
import from (``cofunc.nn.container``, ``cofunc.nn.conv``, ``cofunc.nn.utils``, ...).

Example:
    >>> import torch, cofunc.nn as co
    >>> net = co.Sequential(co.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU())
    >>> net
    Sequential(
      (0): Conv1d(2, 4, kernel_size=(3,), stride=(1,), padding=(1,))
      (1): ReLU()
    )
"""

from . import onnx, utils
from .__about__ import __copyright__, __license__, __version__  # noqa: F401  (co's names)
from ._call_mode import call_mode
from ._lifted import LiftedModule, lift_nn_module
from .closure import Add, Constant, Identity, Lambda, LayerModule, Multiply, One, Zero
from .container import (
    Broadcast,
    BroadcastReduce,
    Conditional,
    Parallel,
    ParallelDispatch,
    Reduce,
    Residual,
    Sequential,
)
from .conv import Conv1d, Conv2d, Conv3d
from .convert import continual, forward_stepping, register
from .delay import Delay
from .fold import fold_batch_norms
from .linear import Linear
from .module import CoModule, ContinualModule, PaddingMode
from .multihead_attention import RetroactiveMultiheadAttention, SingleOutputMultiheadAttention
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
from .positional_encoding import RecyclingPositionalEncoding
from .ptflops import _register_ptflops
from .rnn import GRU, LSTM, RNN
from .shape import Reshape
from .skip import Skip
from .transformer import (
    RetroactiveTransformerEncoderLayer,
    SingleOutputTransformerEncoderLayer,
    TransformerEncoder,
    TransformerEncoderLayerFactory,
)
from .utils import flat_state_dict, load_state_dict, state_dict
from . import _converters  # noqa: E402,F401  (registers the built-in converters of `continual`)

_register_ptflops()

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
    "CoModule",
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
    "PaddingMode",
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
    "__version__",
    "call_mode",
    "continual",
    "flat_state_dict",
    "fold_batch_norms",
    "forward_stepping",
    "lift_nn_module",
    "load_state_dict",
    "onnx",
    "register",
    "state_dict",
    "utils",
]
