"""``Reshape``: reshape the non-temporal axes of each frame."""

from __future__ import annotations

from .. import _framewise
from .closure import LayerModule


class Reshape(LayerModule):
    """Reshape each frame to ``shape``; the batch and time axes are not part of ``shape``.

    co's ``shape`` includes the batch size; cofunc's does not, so one module serves any batch
    (see docs/co-compatibility.md). Both spellings of co are accepted: ``Reshape(2, 3)`` and
    ``Reshape((2, 3))``.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> r = cn.Reshape(2, 3)
        >>> r, r.shape
        (Reshape((2, 3)), (2, 3))
        >>> r(torch.zeros(4, 6, 5)).shape  # (B, C, T) -> (B, 2, T, 3)
        torch.Size([4, 2, 5, 3])
    """

    def __init__(self, *shape: int, contiguous: bool = False):
        super().__init__(_framewise.reshape(*shape, contiguous=contiguous))
        self.contiguous = contiguous

    @property
    def shape(self) -> tuple:
        return self.layer.shape

    def extra_repr(self) -> str:
        return f"{self.shape}" + (", contiguous=True" if self.contiguous else "")
