"""nn.Module adapters: drop-in replacements for co's modules (change one import)."""

from ._call_mode import call_mode
from ._conv import Conv1d, Conv2d, Conv3d
from ._convert import continual, register
from ._delay import Delay
from ._lifted import LiftedModule, lift_nn_module
from ._module import ContinualModule
from ._sequential import Sequential

__all__ = [
    "ContinualModule",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "Delay",
    "LiftedModule",
    "Sequential",
    "call_mode",
    "continual",
    "lift_nn_module",
    "register",
]
