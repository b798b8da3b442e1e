"""``Delay``: co's delay module."""

from __future__ import annotations

from typing import Optional, Union

from .._delay import Delay as DelayLayer
from .._errors import ConfigurationError
from .module import ContinualModule


class Delay(ContinualModule):
    """Outputs each step's input ``delay`` steps later; the clip ``forward`` is the identity.

    ``auto_shrink`` (co's option) makes ``forward`` and the steps drop the frames a module of
    receptive field ``2 * delay + 1`` without padding would drop: ``True`` / ``"centered"``
    keeps clip frames ``delay .. T - 1 - delay``, ``"lagging"`` frames ``0 .. T - 1 - delay``;
    the steps emit the same frames. ``temporal_fill`` is accepted for co compatibility; no
    emitted output ever contains the fill, so it changes nothing. ``step_rank`` (non-batch rank of a
    step) is inferred from the input.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> d = cn.Delay(2)
        >>> d, [d.forward_step(torch.full((1, 1), float(t))) for t in range(3)][-1]
        (Delay(2), tensor([[0.]]))
        >>> cn.Delay(1, auto_shrink=True)(torch.arange(5.0).reshape(1, 1, 5))
        tensor([[[1., 2., 3.]]])
    """

    def __init__(self, delay: int, temporal_fill: str = "zeros", auto_shrink: Union[bool, str] = False,
                 step_rank: Optional[int] = None):
        super().__init__()
        if temporal_fill not in ("zeros", "replicate"):
            raise ConfigurationError(f"Delay({delay}): temporal_fill must be 'zeros' or 'replicate', got {temporal_fill!r}")
        if auto_shrink not in (False, True, "centered", "lagging"):
            raise ConfigurationError(f"Delay({delay}): auto_shrink must be False, True, 'centered' or 'lagging', got {auto_shrink!r}")
        if auto_shrink in (True, "centered"):
            layer = DelayLayer(delay, step_rank, window=2 * delay + 1, end=0)
        elif auto_shrink == "lagging":
            layer = DelayLayer(delay, step_rank, window=delay + 1, end=0)
        else:
            layer = DelayLayer(delay, step_rank)
        self.__dict__["_co_source"] = layer
        self.temporal_fill = temporal_fill
        self.auto_shrink = auto_shrink

    @classmethod
    def _from_layer(cls, layer: DelayLayer) -> "Delay":
        """The module of a frame-selecting core layer (a residual's aligned branch)."""
        module = cls(layer.n, step_rank=layer.step_rank)
        module.__dict__["_co_source"] = layer
        module.__dict__.pop("_co_layer", None)
        if layer.end != layer.n:
            module.auto_shrink = "lagging" if layer.window == layer.n + 1 else True
        return module

    def forward(self, input):
        return self.layer.forward({}, input) if self.auto_shrink else input

    def extra_repr(self) -> str:
        return f"{self.layer.n}" + (", auto_shrink=True" if self.auto_shrink else "")
