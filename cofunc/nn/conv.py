"""``Conv1d``, ``Conv2d``, ``Conv3d``: torch.nn convolutions that also step through time."""

from __future__ import annotations

from typing import Optional

from torch import nn

from .._conv import Conv
from .module import ContinualModule


class _ConvNd(ContinualModule):
    _dims: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        temporal_fill: Optional[str] = None,
    ):
        # Validate the temporal configuration first, so errors name the continual layer.
        layer = Conv(self._dims, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, temporal_fill)
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype,
        )
        self.__dict__["_co_layer"] = layer
        self.temporal_fill = layer.temporal_fill

    def _build_layer(self):
        return Conv(
            self._dims, self.in_channels, self.out_channels, self.kernel_size, self.stride,
            self.padding, self.dilation, self.groups, self.bias is not None, self.padding_mode, self.temporal_fill,
        )

    @classmethod
    def build_from(cls, module: nn.Module, temporal_fill: Optional[str] = None, **overrides) -> "_ConvNd":
        """A continual copy of a ``torch.nn.ConvNd`` (same options, a copy of its weights)."""
        kwargs = dict(
            in_channels=module.in_channels, out_channels=module.out_channels, kernel_size=module.kernel_size,
            stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
            bias=module.bias is not None, padding_mode=module.padding_mode, device=module.weight.device,
            dtype=module.weight.dtype, temporal_fill=temporal_fill,
        )
        kwargs.update(overrides)
        new = cls(**kwargs)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new


class Conv1d(_ConvNd, nn.Conv1d):
    """``torch.nn.Conv1d`` over ``(B, C, T)`` clips that also steps over ``(B, C)`` frames.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> conv = cn.Conv1d(2, 4, kernel_size=3, padding=1)
        >>> x = torch.randn(1, 2, 8)
        >>> ys = conv.forward_steps(x, pad_end=True)
        >>> torch.allclose(ys, conv(x), atol=1e-6)
        True
    """

    _dims = 1


class Conv2d(_ConvNd, nn.Conv2d):
    """``torch.nn.Conv2d`` over ``(B, C, T, S)`` clips that also steps over ``(B, C, S)`` frames.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> conv = cn.Conv2d(3, 8, kernel_size=(9, 1), padding=(4, 0))
        >>> conv.forward_step(torch.randn(2, 3, 25)) is None  # the first 4 steps warm up
        True
    """

    _dims = 2


class Conv3d(_ConvNd, nn.Conv3d):
    """``torch.nn.Conv3d`` over ``(B, C, T, H, W)`` clips that also steps over ``(B, C, H, W)`` frames.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> conv = cn.Conv3d(3, 8, kernel_size=3, padding=1)
        >>> conv.delay, conv.receptive_field
        (1, 3)
    """

    _dims = 3
