"""cofunc: functional Continual Inference Networks on torch.func.

Every layer is a `Layer` record of pure functions ``(params, state, x) -> (y, state)`` over
explicit state pytrees. `cofunc.nn` wraps them as drop-in replacements for co's modules.
"""

from ._conv import Conv, ConvState, conv1d, conv2d, conv3d
from ._delay import Delay, DelayState, delay
from ._errors import (
    CofuncError,
    ConfigurationError,
    DTypeDeviceError,
    InputShapeError,
    StateError,
    StreamsOutOfStepError,
    UnsupportedModuleError,
)
from ._layer import Layer, flatten_params, module_params, unflatten_params
from ._lift import Lift, lift, lift_module
from ._seq import Seq, seq

__version__ = "0.1.0"

__all__ = [
    "CofuncError",
    "ConfigurationError",
    "Conv",
    "ConvState",
    "DTypeDeviceError",
    "Delay",
    "DelayState",
    "InputShapeError",
    "Layer",
    "Lift",
    "Seq",
    "StateError",
    "StreamsOutOfStepError",
    "UnsupportedModuleError",
    "conv1d",
    "conv2d",
    "conv3d",
    "delay",
    "flatten_params",
    "lift",
    "lift_module",
    "module_params",
    "seq",
    "unflatten_params",
]
