"""``Skip``: drop the first frames of a stream."""

from __future__ import annotations

from .._delay import Delay as DelayLayer
from .closure import LayerModule


class Skip(LayerModule):
    """Drop the first ``steps`` frames of the stream (``forward`` returns ``x[:, :, steps:]``).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> skip = cn.Skip(2)
        >>> skip, skip(torch.arange(5.0).reshape(1, 1, 5))
        (Skip(2), tensor([[[2., 3., 4.]]]))
    """

    def __init__(self, steps: int):
        super().__init__(DelayLayer(0, None, window=steps + 1, end=0))
        self.steps = steps

    def extra_repr(self) -> str:
        return f"{self.steps}"
