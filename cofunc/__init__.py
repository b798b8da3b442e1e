"""cofunc: functional Continual Inference Networks on torch.func.

Every layer is a `Layer` record of pure functions ``(params, state, x) -> (y, state)`` over
explicit state pytrees. `cofunc.nn` wraps them as drop-in replacements for co's modules.
"""

from ._combinators import (
    Broadcast,
    BroadcastReduce,
    Conditional,
    ConditionalState,
    Parallel,
    ParallelDispatch,
    Reduce,
    broadcast,
    broadcast_reduce,
    conditional,
    parallel,
    parallel_dispatch,
    reduce,
    residual,
)
from ._conv import Conv, ConvState, conv1d, conv2d, conv3d
from ._delay import Delay, DelayState, delay, skip
from ._errors import (
    CofuncError,
    ConfigurationError,
    DTypeDeviceError,
    InputShapeError,
    StateError,
    StreamsOutOfStepError,
    UnsupportedModuleError,
)
from ._layer import Layer, flatten_params, module_params, tree_map, unflatten_params
from ._lift import Lift, lift, lift_module
from ._pool import (
    AdaptivePool,
    Pool,
    adaptive_avg_pool2d,
    adaptive_avg_pool3d,
    adaptive_max_pool2d,
    adaptive_max_pool3d,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    max_pool1d,
    max_pool2d,
    max_pool3d,
)
from ._rnn import LSTMState, Recurrent, RNNState, gru, lstm, rnn
from ._seq import Seq, seq
from ._serialize import load_state, save_state
from ._streams import clone_state, put_streams, reset_streams, stack_streams, step_streams, take_streams, unstack_streams
from ._shape import Linear, Reshape, add, constant, identity, linear, multiply, one, reshape, zero
from ._window import WindowLayer, WindowState

__version__ = "0.1.0"

__all__ = [
    "AdaptivePool",
    "Broadcast",
    "BroadcastReduce",
    "CofuncError",
    "Conditional",
    "ConditionalState",
    "ConfigurationError",
    "Conv",
    "ConvState",
    "DTypeDeviceError",
    "Delay",
    "DelayState",
    "InputShapeError",
    "LSTMState",
    "Layer",
    "Lift",
    "Linear",
    "Parallel",
    "ParallelDispatch",
    "Pool",
    "RNNState",
    "Recurrent",
    "Reduce",
    "Reshape",
    "Seq",
    "StateError",
    "StreamsOutOfStepError",
    "UnsupportedModuleError",
    "WindowLayer",
    "WindowState",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "add",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "broadcast",
    "broadcast_reduce",
    "clone_state",
    "conditional",
    "constant",
    "conv1d",
    "conv2d",
    "conv3d",
    "delay",
    "flatten_params",
    "gru",
    "identity",
    "lift",
    "lift_module",
    "linear",
    "load_state",
    "lstm",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "module_params",
    "multiply",
    "one",
    "parallel",
    "parallel_dispatch",
    "put_streams",
    "reduce",
    "reset_streams",
    "reshape",
    "residual",
    "rnn",
    "save_state",
    "seq",
    "skip",
    "stack_streams",
    "step_streams",
    "take_streams",
    "tree_map",
    "unflatten_params",
    "unstack_streams",
    "zero",
]
