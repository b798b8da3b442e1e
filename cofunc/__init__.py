"""cofunc: functional Continual Inference Networks on torch.func.

A `Layer` is a frozen dataclass: its fields are the layer's options, its static temporal
metadata (``delay``, ``receptive_field``, ``stride``, ``padding``) is computed once, and its
methods are pure functions over explicit params and state pytrees: ``init_params``,
``init_state``, ``step(params, state, x) -> (y, state)``, ``steps`` (a chunk of steps at once),
``forward`` (the regular clip computation) and ``valid(state)``. A new leaf layer implements
``step_unmasked`` (the step without output masking), ``forward``, ``init_state`` and, for speed,
``steps_at_clock``; combinators (`seq`, `parallel`, `residual`, ...) compose layers and thread their
states. `cofunc.nn` wraps layers as drop-in replacements for co's modules; `cofunc.models` holds
the model zoo. docs/design.md describes the architecture.

Example:
    >>> import torch, cofunc
    >>> layer = cofunc.seq(cofunc.conv1d(2, 4, 3), cofunc.lift(torch.relu))
    >>> params = layer.init_params()
    >>> state = layer.init_state(params, (1, 2))
    >>> y, state = layer.step(params, state, torch.randn(1, 2))
    >>> layer.delay, bool(layer.valid(state))
    (2, False)
"""

from ._attention import AttentionState, RetroactiveMHA, SingleOutputMHA, retroactive_attention, single_output_attention
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
    residual_alignment,
)
from ._conv import Conv, ConvState, conv1d, conv2d, conv3d
from ._delay import Delay, DelayState, delay, skip
from ._errors import (
    CheckpointError,
    CofuncError,
    ConfigurationError,
    DTypeDeviceError,
    InputShapeError,
    ParamsError,
    VideoError,
    StateError,
    StreamIdError,
    StreamsOutOfStepError,
    UnsupportedModuleError,
)
from ._export import (
    StepModule,
    compile_step,
    export_onnx,
    export_step,
    flatten_state,
    onnx_names,
    state_names,
    state_spec,
    step_fn,
    unflatten_state,
)
from ._layer import Layer, Stateless
from ._params import flatten_params, module_params, unflatten_params
from ._values import tree_map
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
from ._positional import PositionState, RecyclingPositionalEncoding, cyclic_positional_encoding, recycling_positional_encoding
from ._profile import Profile, count_macs, profile
from ._runner import StreamOutput, StreamRunner, StreamSnapshot
from ._slots import StreamSlots, StreamState
from ._remap import Remap, remap
from ._rnn import LSTMState, Recurrent, RNNState, gru, lstm, rnn
from ._seq import Seq, seq
from ._serialize import load_state, save_state
from ._streams import clone_state, detach_state, put_streams, reset_streams, stack_streams, step_streams, take_streams, unstack_streams
from ._framewise import Linear, Reshape, add, constant, identity, linear, multiply, one, reshape, zero
from ._transformer import (
    ChannelLayerNorm,
    EncoderLayerConfig,
    EncoderLayerState,
    RetroactiveEncoderLayer,
    SingleOutputEncoderLayer,
    WindowEncoderLayer,
    channel_layer_norm,
    retroactive_encoder_layer,
    single_output_encoder_layer,
    transformer_encoder,
    window_encoder_layer,
)
from ._window import WindowLayer, WindowState

from ._version import __version__  # noqa: E402,F401  (re-exported)

__all__ = [
    "Stateless",
    "AdaptivePool",
    "AttentionState",
    "Broadcast",
    "BroadcastReduce",
    "ChannelLayerNorm",
    "CheckpointError",
    "CofuncError",
    "Conditional",
    "ConditionalState",
    "ConfigurationError",
    "Conv",
    "ConvState",
    "DTypeDeviceError",
    "Delay",
    "DelayState",
    "EncoderLayerConfig",
    "EncoderLayerState",
    "InputShapeError",
    "LSTMState",
    "Layer",
    "Lift",
    "Linear",
    "Parallel",
    "ParamsError",
    "VideoError",
    "ParallelDispatch",
    "Pool",
    "PositionState",
    "Profile",
    "RNNState",
    "Recurrent",
    "RecyclingPositionalEncoding",
    "Reduce",
    "Reshape",
    "RetroactiveEncoderLayer",
    "RetroactiveMHA",
    "Seq",
    "SingleOutputEncoderLayer",
    "SingleOutputMHA",
    "StateError",
    "StepModule",
    "StreamIdError",
    "StreamOutput",
    "StreamRunner",
    "StreamSlots",
    "StreamSnapshot",
    "StreamState",
    "StreamsOutOfStepError",
    "UnsupportedModuleError",
    "WindowEncoderLayer",
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
    "channel_layer_norm",
    "clone_state",
    "compile_step",
    "conditional",
    "constant",
    "conv1d",
    "conv2d",
    "conv3d",
    "count_macs",
    "cyclic_positional_encoding",
    "delay",
    "detach_state",
    "export_onnx",
    "export_step",
    "flatten_params",
    "flatten_state",
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
    "onnx_names",
    "state_names",
    "parallel",
    "parallel_dispatch",
    "profile",
    "put_streams",
    "recycling_positional_encoding",
    "reduce",
    "reset_streams",
    "reshape",
    "residual",
    "residual_alignment",
    "Remap",
    "remap",
    "retroactive_attention",
    "retroactive_encoder_layer",
    "rnn",
    "save_state",
    "seq",
    "single_output_attention",
    "single_output_encoder_layer",
    "skip",
    "stack_streams",
    "state_spec",
    "step_fn",
    "step_streams",
    "take_streams",
    "transformer_encoder",
    "tree_map",
    "unflatten_params",
    "unflatten_state",
    "unstack_streams",
    "window_encoder_layer",
    "zero",
]
