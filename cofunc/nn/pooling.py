"""Pooling adapters: ``AvgPool1d/2d/3d``, ``MaxPool1d/2d/3d`` and co's adaptive pools."""

from __future__ import annotations

from typing import Optional

from torch import nn

from .._errors import ConfigurationError
from .._pool import AdaptivePool, Pool
from .module import ContinualModule


class _PoolAdapter(ContinualModule):
    """Pools subclass their torch.nn class: same options, same ``forward``."""

    _kind: str
    _dims: int

    def _build_layer(self):
        if self._kind == "max":
            if getattr(self, "return_indices", False):
                raise ConfigurationError(f"{type(self).__name__}: return_indices is not supported when stepping")
            return Pool("max", self._dims, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        return Pool("avg", self._dims, self.kernel_size, self.stride, self.padding, 1, self.ceil_mode,
                    self.count_include_pad, getattr(self, "divisor_override", None))

    def _check_config(self, temporal_fill):
        if temporal_fill not in (None, "zeros", "neg_inf"):
            raise ConfigurationError(f"{type(self).__name__}: temporal_fill must be 'zeros' or 'neg_inf' (as torch pads), got {temporal_fill!r}")
        self.__dict__["_co_layer"] = self._build_layer()

    @property
    def receptive_field(self):
        return self.layer.receptive_field

    @classmethod
    def build_from(cls, module: nn.Module, **overrides):
        """A continual copy of a torch.nn pool with the same options."""
        kwargs = {k: getattr(module, k) for k in cls._option_names if hasattr(module, k)}
        kwargs.update(overrides)
        return cls(**kwargs)


def _max_init(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False, temporal_fill=None):
    self._torch_class.__init__(self, kernel_size, stride, padding, dilation, return_indices, ceil_mode)
    self._check_config(temporal_fill)


def _avg1_init(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, temporal_fill=None):
    self._torch_class.__init__(self, kernel_size, stride, padding, ceil_mode, count_include_pad)
    self._check_config(temporal_fill)


def _avg_init(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None, temporal_fill=None):
    self._torch_class.__init__(self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    self._check_config(temporal_fill)


def _pool_class(kind: str, dims: int, torch_class: type):
    init = _max_init if kind == "max" else (_avg1_init if dims == 1 else _avg_init)
    options = ["kernel_size", "stride", "padding", "ceil_mode"]
    options += ["dilation", "return_indices"] if kind == "max" else ["count_include_pad"] + (["divisor_override"] if dims > 1 else [])
    doc = f"""``torch.nn.{torch_class.__name__}`` that also steps through time (time is the first pooled axis).

    Max pooling pads time with -inf as torch does; ``count_include_pad``, ``ceil_mode`` and
    temporal dilation are exact in every call mode. ``temporal_fill`` is accepted for co
    compatibility and must agree with torch's padding.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> pool = cn.{torch_class.__name__}(2)
        >>> pool.delay, pool.stride[0] if isinstance(pool.stride, tuple) else pool.stride
        (1, 2)
    """
    cls = type(torch_class.__name__, (_PoolAdapter, torch_class), {
        "__init__": init, "_torch_class": torch_class, "_kind": kind, "_dims": dims, "_option_names": options, "__doc__": doc, "__module__": __name__,
    })
    return cls


AvgPool1d = _pool_class("avg", 1, nn.AvgPool1d)
AvgPool2d = _pool_class("avg", 2, nn.AvgPool2d)
AvgPool3d = _pool_class("avg", 3, nn.AvgPool3d)
MaxPool1d = _pool_class("max", 1, nn.MaxPool1d)
MaxPool2d = _pool_class("max", 2, nn.MaxPool2d)
MaxPool3d = _pool_class("max", 3, nn.MaxPool3d)


class _AdaptivePoolAdapter(ContinualModule):
    """co's adaptive pools: ``(output_size, kernel_size, stride=1, padding=0, dilation=1)``.

    ``kernel_size`` is the temporal window: ``forward`` pools every window of that many frames,
    which equals torch.nn's adaptive pool when the clip is exactly one window long.
    """

    _kind: str
    _dims: int

    def __init__(self, output_size, kernel_size: Optional[int] = None, stride: int = 1, padding: int = 0,
                 dilation: int = 1, temporal_fill: Optional[str] = None):
        super().__init__()
        if kernel_size is None:
            raise ConfigurationError(
                f"{type(self).__name__}: `kernel_size`, the temporal window, is required (a stream has no "
                f"clip length to adapt to); continual(nn.{type(self).__name__}) takes it as temporal_window="
            )
        self.output_size = output_size
        self.__dict__["_co_source"] = AdaptivePool(self._kind, self._dims, output_size, kernel_size, stride, padding, dilation)

    @property
    def kernel_size(self):
        return self.layer.kernel_size


    def forward(self, input):
        return self.layer.forward({}, input)

    def extra_repr(self):
        return f"output_size={self.output_size}, kernel_size={self.kernel_size}"

    @classmethod
    def build_from(cls, module: nn.Module, kernel_size: Optional[int] = None, stride: int = 1, padding: int = 0,
                   dilation: int = 1, temporal_fill: Optional[str] = None, temporal_window: Optional[int] = None):
        """A continual copy of a torch.nn adaptive pool pooling windows of ``kernel_size``
        frames (co's name; ``temporal_window`` is accepted as `continual` calls it)."""
        if kernel_size is not None and temporal_window is not None and kernel_size != temporal_window:
            raise ConfigurationError(f"{cls.__name__}.build_from: kernel_size={kernel_size} and temporal_window={temporal_window} disagree")
        return cls(module.output_size, kernel_size if kernel_size is not None else temporal_window, stride, padding,
                   dilation, temporal_fill)


def _adaptive_class(kind: str, dims: int):
    name = f"Adaptive{'Avg' if kind == 'avg' else 'Max'}Pool{dims}d"
    return type(name, (_AdaptivePoolAdapter,), {"_kind": kind, "_dims": dims, "__module__": __name__,
                                                "__doc__": _AdaptivePoolAdapter.__doc__})


AdaptiveAvgPool2d = _adaptive_class("avg", 2)
AdaptiveAvgPool3d = _adaptive_class("avg", 3)
AdaptiveMaxPool2d = _adaptive_class("max", 2)
AdaptiveMaxPool3d = _adaptive_class("max", 3)
