"""``Delay``: co's delay module."""

from __future__ import annotations

from typing import Optional

from .._delay import Delay as DelayLayer
from .._errors import ConfigurationError
from .module import ContinualModule


class Delay(ContinualModule):
    """Outputs each step's input ``delay`` steps later; the clip ``forward`` is the identity.

    ``temporal_fill`` is accepted for co compatibility; no emitted output ever contains the
    fill, so it changes nothing. ``rank`` (non-batch rank of a step) is inferred from the input.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> d = cn.Delay(2)
        >>> [d.forward_step(torch.full((1, 1), float(t))) for t in range(3)][-1]
        tensor([[0.]])
    """

    def __init__(self, delay: int, temporal_fill: str = "zeros", auto_shrink=False, rank: Optional[int] = None):
        super().__init__()
        if auto_shrink:
            raise ConfigurationError(f"Delay({delay}): auto_shrink is not supported yet; shrink the clip with a Lambda")
        if temporal_fill not in ("zeros", "replicate"):
            raise ConfigurationError(f"Delay({delay}): temporal_fill must be 'zeros' or 'replicate', got {temporal_fill!r}")
        self.__dict__["_co_layer"] = DelayLayer(delay, rank)
        self.temporal_fill = temporal_fill


    def forward(self, input):
        return input

    def extra_repr(self) -> str:
        return f"delay={self.layer.n}"
