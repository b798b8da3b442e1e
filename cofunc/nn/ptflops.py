"""Register cofunc's modules with ptflops (``get_model_complexity_info``), as co does.

ptflops counts a module only if its exact class is in its table. cofunc's convolutions,
pools and linear layers get torch's counters (in step modes they see one frame, so a step
counts the per-frame cost), converted torch modules (activations, norms) get the counter of
the torch class they derive from, and the attention modules count with their ``flops()``.
Nothing happens when ptflops is not installed.

Example:
    >>> import torch, cofunc.nn as co
    >>> from ptflops import get_model_complexity_info  # doctest: +SKIP
    >>> macs, params = get_model_complexity_info(co.Conv1d(3, 3, 3), (3, 4), as_strings=False,
    ...                                          print_per_layer_stat=False)  # doctest: +SKIP
"""

from __future__ import annotations

import logging

from ._converters import LIFTED_CLASSES
from ._lifted import lifted_class
from .conv import Conv1d, Conv2d, Conv3d
from .linear import Linear
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

__all__: list = []

logger = logging.getLogger(__name__)


def _attention_hook(module, input, output):
    module.__flops__ += int(module.flops())


def _register_ptflops() -> bool:
    """Add cofunc's classes to ptflops' tables; True if ptflops was found."""
    try:
        import ptflops
    except ModuleNotFoundError:
        return False
    try:
        table = (ptflops.pytorch_ops if hasattr(ptflops, "pytorch_ops") else ptflops.flops_counter).MODULES_MAPPING
        for cls in (Conv1d, Conv2d, Conv3d):
            table[cls] = table[_torch_base(cls)]
        for cls in (AvgPool1d, AvgPool2d, AvgPool3d, MaxPool1d, MaxPool2d, MaxPool3d,
                    AdaptiveAvgPool2d, AdaptiveAvgPool3d, AdaptiveMaxPool2d, AdaptiveMaxPool3d):
            table[cls] = table[_pool_base(cls)]
        table[Linear] = table[_torch_base(Linear)]
        table[SingleOutputMultiheadAttention] = _attention_hook
        table[RetroactiveMultiheadAttention] = _attention_hook
        # Converted torch modules are instances of subclasses made by `continual`.
        for torch_class in LIFTED_CLASSES:
            if torch_class in table:
                table.setdefault(lifted_class(torch_class), table[torch_class])
        return True
    except Exception as error:  # a ptflops release with other internals: counting still works for torch's classes
        logger.warning("cofunc: could not register modules with ptflops: %s", error)
        return False


def _torch_base(cls: type) -> type:
    return next(base for base in cls.__mro__ if base.__module__.startswith("torch.nn"))


def _pool_base(cls: type) -> type:
    import torch.nn as nn

    return getattr(nn, cls.__name__)
