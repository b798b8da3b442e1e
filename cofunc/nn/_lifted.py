"""Temporally-local torch.nn modules (activations, norms, dropouts) as continual modules.

`continual(module)` returns a copy of the module whose class is a subclass of the module's own
class and of `ContinualModule`: ``isinstance`` checks, parameter names, ``forward`` and the
``state_dict`` are the torch module's, and the step modes run `cofunc.lift_module`.
"""

from __future__ import annotations

import copy
from typing import Dict, Type

from torch import nn

from .._lift import lift_module
from .module import ContinualModule



class LiftedModule(ContinualModule):
    """Base of the classes `continual` makes for temporally-local torch.nn modules."""

    def _build_layer(self):
        return lift_module(self, follow_training=True)

    def _layer_key(self):
        # The lifted layer calls this module's own forward, so a deep copy must build its own.
        return id(self)

    def __reduce_ex__(self, protocol):
        # The class is made at run time, so pickle cannot find it by name: rebuild it from the
        # torch class it derives from (pickle, deepcopy and torch.save all go through here).
        return (_new_lifted, (type(self)._torch_class,), self.__getstate__())


def _new_lifted(torch_class: type) -> "LiftedModule":
    cls = lifted_class(torch_class)
    return cls.__new__(cls)




_CLASSES: Dict[type, Type[LiftedModule]] = {}


def lifted_class(cls: type) -> Type[LiftedModule]:
    """The continual subclass of a torch.nn module class (made once per class)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (cls, LiftedModule),
                             {"__module__": __name__, "__doc__": cls.__doc__, "_torch_class": cls})
    return _CLASSES[cls]


def lift_nn_module(module: nn.Module) -> LiftedModule:
    """A continual copy of a temporally-local module, with the same options and tensors' values.

    Norms that use clip statistics (group norm, instance norm without running statistics) are
    converted too: their clip ``forward`` is torch's, and stepping them raises
    `ConfigurationError`.
    """
    new = copy.deepcopy(module)
    new.__class__ = lifted_class(type(module))
    return new
