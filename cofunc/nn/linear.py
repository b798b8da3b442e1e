"""``Linear``: ``torch.nn.Linear`` over one axis of clips and steps (co's ``channel_dim``)."""

from __future__ import annotations

from torch import nn

from .. import _framewise
from .module import ContinualModule


class Linear(ContinualModule, nn.Linear):
    """``torch.nn.Linear`` over the axis ``channel_dim`` of clips and steps.

    co's default ``channel_dim=-1`` applies to the last axis: clips ``(B, T, C)`` and steps
    ``(B, C)``. ``channel_dim=1`` is the channel axis of clips ``(B, C, T, *S)`` and steps
    ``(B, C, *S)`` (the layout of cofunc's convolutions).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> lin = cn.Linear(4, 2)
        >>> lin
        Linear(in_features=4, out_features=2, bias=True, channel_dim=-1)
        >>> lin(torch.zeros(1, 7, 4)).shape, lin.forward_step(torch.zeros(1, 4)).shape
        (torch.Size([1, 7, 2]), torch.Size([1, 2]))
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 channel_dim: int = -1):
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self.channel_dim = channel_dim

    def _build_layer(self):
        dim = None if self.channel_dim == 1 else self.channel_dim
        return _framewise.Linear(self.in_features, self.out_features, self.bias is not None, dim)

    def forward(self, input):
        return self.layer.forward(self.params, input)

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, channel_dim={self.channel_dim}"

    @classmethod
    def build_from(cls, module: nn.Linear, channel_dim: int = -1) -> "Linear":
        """A continual copy of a ``torch.nn.Linear`` (same options, a copy of its weights)."""
        new = cls(module.in_features, module.out_features, module.bias is not None, module.weight.device,
                  module.weight.dtype, channel_dim)
        new.load_state_dict(module.state_dict())
        return new
