"""Continual pooling: average and max pooling in 1d, 2d, 3d, and co's adaptive pools.

Every torch.nn option is honoured in time as in space: max pooling pads with -inf, temporal
dilation works, ``count_include_pad=False`` and ``ceil_mode`` change step outputs exactly as
they change torch's clip outputs (co ignores both when stepping).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._errors import ConfigurationError, InputShapeError
from ._layer import with_one_batch_dim
from ._values import expand_mask
from ._window import WindowLayer, tap_counts

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_ADAPTIVE = {("avg", 2): F.adaptive_avg_pool2d, ("avg", 3): F.adaptive_avg_pool3d,
             ("max", 2): F.adaptive_max_pool2d, ("max", 3): F.adaptive_max_pool3d}


def _ntuple(value, n: int, name: str, label: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ConfigurationError(f"{label}: `{name}` needs {n} values (time first), got {value}")
    return value


@dataclasses.dataclass(frozen=True, eq=False)
class Pool(WindowLayer):
    """Continual ``AvgPoolNd`` (``kind="avg"``) or ``MaxPoolNd`` (``kind="max"``).

    Construct with `avg_pool1d` ... `max_pool3d`; arguments and defaults are torch.nn's.
    """

    kind: str
    dims: int
    kernel_size: Tuple[int, ...]
    pool_stride: Optional[Tuple[int, ...]] = None
    pool_padding: Tuple[int, ...] = 0
    dilation: Tuple[int, ...] = 1
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: Optional[int] = None

    def __post_init__(self):
        label, n = self.label, self.dims
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.kind not in ("avg", "max"):
            raise ConfigurationError(f"pool: `kind` must be 'avg' or 'max', got {self.kind!r}")
        set_("kernel_size", _ntuple(self.kernel_size, n, "kernel_size", label))
        stride = self.kernel_size if self.pool_stride is None or self.pool_stride == () else self.pool_stride
        set_("pool_stride", _ntuple(stride, n, "stride", label))
        set_("pool_padding", _ntuple(self.pool_padding, n, "padding", label))
        set_("dilation", _ntuple(self.dilation, n, "dilation", label))
        if min(self.kernel_size + self.pool_stride + self.dilation) < 1 or min(self.pool_padding) < 0:
            raise ConfigurationError(f"{label}: kernel_size, stride and dilation must be positive and padding non-negative")
        if self.kind == "avg":
            if max(self.dilation) > 1:
                raise ConfigurationError(f"{label}: average pooling has no dilation in torch.nn; got dilation={self.dilation}")
            if self.divisor_override is not None and (n == 1 or self.divisor_override == 0):
                raise ConfigurationError(f"{label}: divisor_override must be a non-zero int and exists for 2d and 3d pooling only")
        for k, p in zip(self.kernel_size, self.pool_padding):
            if p > k // 2:
                raise ConfigurationError(
                    f"{label}: padding {self.pool_padding} must be at most half the kernel "
                    f"{self.kernel_size}, as torch.nn requires"
                )

    @property
    def label(self) -> str:
        return f"{self.kind}_pool{self.dims}d(kernel_size={self.kernel_size})"

    @property
    def receptive_field(self) -> int:
        return self.dilation[0] * (self.kernel_size[0] - 1) + 1

    @property
    def padding(self) -> int:
        return self.pool_padding[0]

    @property
    def padding_end(self) -> int:
        p, s, rf = self.pool_padding[0], self.pool_stride[0], self.receptive_field
        # ceil_mode adds a last window that overhangs the end padding, if it starts before it.
        return min(p + s - 1, rf - 1) if self.ceil_mode else p

    @property
    def stride(self) -> int:
        return self.pool_stride[0]

    @property
    def step_rank(self) -> int:
        return self.dims

    @property
    def keeps_rank(self) -> bool:
        return True

    @property
    def fill(self) -> str:
        return "neg_inf" if self.kind == "max" else "zeros"

    def step_output_shape(self, input_shape):
        batch = tuple(input_shape[: len(input_shape) - self.dims])
        spatial = []
        for size, k, s, p, d in zip(input_shape[len(batch) + 1:], self.kernel_size[1:], self.pool_stride[1:],
                                    self.pool_padding[1:], self.dilation[1:]):
            span = size + 2 * p - d * (k - 1) - 1
            out = (-(-span // s) if self.ceil_mode else span // s) + 1
            if self.ceil_mode and (out - 1) * s >= size + p:
                out -= 1
            spatial.append(out)
        if min(spatial, default=1) < 1:
            # Checked here so that a stream of too small frames fails when it starts (init_state
            # asks every layer for its output shape), not at the step that first reaches the pool.
            raise InputShapeError(
                f"{self.label}: a step of shape {tuple(input_shape)} is smaller than the pooling window "
                f"{self.kernel_size[1:]} (padding {self.pool_padding[1:]}) in its spatial axes"
            )
        return batch + (input_shape[len(batch)],) + tuple(spatial)

    def _pool(self, x: Tensor, stride, padding) -> Tensor:
        if self.kind == "max":
            return _MAX[self.dims](x, self.kernel_size, stride, padding, self.dilation, self.ceil_mode)
        if self.dims == 1:
            return F.avg_pool1d(x, self.kernel_size, stride, padding, self.ceil_mode, self.count_include_pad)
        return _AVG[self.dims](x, self.kernel_size, stride, padding, self.ceil_mode, self.count_include_pad, self.divisor_override)

    def forward(self, params, xs):
        """The clip pooling, computed exactly as torch.nn's."""
        self.check_clip_input(xs)
        return with_one_batch_dim(lambda x: self._pool(x, self.pool_stride, self.pool_padding), xs, self.dims + 1)

    def window_op(self, params, window, time_stride):
        stride = (time_stride,) + self.pool_stride[1:]
        padding = (0,) + self.pool_padding[1:]
        return with_one_batch_dim(lambda x: self._pool(x, stride, padding), window, self.dims + 1)

    def rescale(self, ys, steps, end):
        if self.kind != "avg" or self.divisor_override is not None:
            return ys
        if not (self.padding and not self.count_include_pad) and not (end is not None and self.ceil_mode):
            return ys
        k = self.kernel_size[0]
        counts = tap_counts(steps, end, k, 1, self.padding, self.pool_padding[0], self.count_include_pad)
        scale = (k / counts.clamp(min=1)).to(ys.dtype).to(ys.device)
        if isinstance(steps, Tensor):
            return ys * expand_mask(scale, ys)
        return ys * scale.reshape((-1,) + (1,) * (self.dims - 1))


@dataclasses.dataclass(frozen=True, eq=False)
class AdaptivePool(WindowLayer):
    """co's adaptive pools: a sliding temporal window of ``kernel_size`` frames, adaptive in space.

    ``forward`` pools every window of the clip (stride ``stride``), so it equals
    ``torch.nn.AdaptiveXPoolNd((1, *output_size[1:]))`` when the clip length equals the window;
    a clip shorter than the window is pooled whole, as torch's adaptive pool does.
    """

    kind: str
    dims: int
    output_size: Tuple[Optional[int], ...]
    kernel_size: int
    pool_stride: int = 1
    pool_padding: int = 0
    dilation: int = 1

    def __post_init__(self):
        label = self.label
        if (self.kind, self.dims) not in _ADAPTIVE:
            raise ConfigurationError(f"adaptive pool: kind 'avg'/'max' in 2d or 3d, got {self.kind!r}, {self.dims}d")
        size = self.output_size
        size = (size,) * self.dims if isinstance(size, int) or size is None else tuple(size)
        if len(size) != self.dims:
            raise ConfigurationError(f"{label}: `output_size` needs {self.dims} values, got {self.output_size}")
        if size[0] not in (1, None):
            raise ConfigurationError(
                f"{label}: the temporal output size must be 1 (one output per window of kernel_size "
                f"frames), got output_size={self.output_size}"
            )
        object.__setattr__(self, "output_size", (1,) + size[1:])
        for name in ("kernel_size", "pool_stride", "pool_padding", "dilation"):
            value = getattr(self, name)
            if isinstance(value, Sequence):
                value = int(value[0])
                object.__setattr__(self, name, value)
        if self.kernel_size < 1 or self.pool_stride < 1 or self.dilation < 1 or self.pool_padding < 0:
            raise ConfigurationError(f"{label}: kernel_size, stride, dilation must be positive, padding non-negative")
        if self.pool_padding > self.receptive_field - 1:
            raise ConfigurationError(f"{label}: temporal padding {self.pool_padding} exceeds receptive_field - 1")

    @property
    def label(self) -> str:
        return f"adaptive_{self.kind}_pool{self.dims}d(kernel_size={self.kernel_size})"

    @property
    def receptive_field(self) -> int:
        return self.dilation * (self.kernel_size - 1) + 1

    @property
    def padding(self) -> int:
        return self.pool_padding

    @property
    def stride(self) -> int:
        return self.pool_stride

    @property
    def step_rank(self) -> int:
        return self.dims

    @property
    def keeps_rank(self) -> bool:
        return True

    @property
    def fill(self) -> str:
        return "neg_inf" if self.kind == "max" else "zeros"

    def step_output_shape(self, input_shape):
        batch = tuple(input_shape[: len(input_shape) - self.dims])
        spatial = tuple(s if o is None else o for s, o in zip(input_shape[len(batch) + 1:], self.output_size[1:]))
        return batch + (input_shape[len(batch)],) + spatial

    def window_op(self, params, window, time_stride, whole: bool = False):
        def run(x):  # x: (N, C, L, *S) -> (N, C, n, *S'): every window pooled on its own
            windows = x.unfold(2, x.shape[2] if whole else self.receptive_field, time_stride)  # (N, C, n, *S, rf)
            if self.dilation > 1:
                windows = windows[..., :: self.dilation]
            n_windows = windows.shape[2]
            windows = windows.movedim(-1, 3).movedim(2, 1)  # (N, n, C, k, *S)
            flat = windows.reshape((-1,) + tuple(windows.shape[2:]))
            sizes = tuple(None if o is None else o for o in self.output_size)
            pooled = _ADAPTIVE[(self.kind, self.dims)](flat, sizes)  # (N * n, C, 1, *S')
            pooled = pooled.reshape((x.shape[0], n_windows) + tuple(pooled.shape[1:])).squeeze(3)
            return pooled.movedim(1, 2)

        return with_one_batch_dim(run, window, self.dims + 1)

    def forward(self, params, xs):
        self.check_clip_input(xs)
        p = self.pool_padding
        if p:
            time_axis = xs.dim() - self.dims
            shape = list(xs.shape)
            shape[time_axis] = p
            pad = xs.new_full(shape, float("-inf") if self.kind == "max" else 0.0)
            xs = torch.cat([pad, xs, pad], dim=time_axis)
        time_axis = xs.dim() - self.dims
        if 0 < xs.shape[time_axis] < self.receptive_field:
            # A clip shorter than the window: pool all of it, as torch's adaptive pool (and co's
            # forward) does; a stream emits its first output only once a whole window has come.
            return self.window_op(params, xs, self.pool_stride, whole=True)
        return self.window_op(params, xs, self.pool_stride)


def _pool_maker(kind: str, dims: int):
    if kind == "max":
        def make(kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False) -> Pool:
            if return_indices:
                raise ConfigurationError(f"max_pool{dims}d: return_indices is not supported by continual pooling")
            return Pool("max", dims, kernel_size, stride, padding, dilation, ceil_mode)
    elif dims == 1:
        def make(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True) -> Pool:
            return Pool("avg", dims, kernel_size, stride, padding, 1, ceil_mode, count_include_pad)
    else:
        def make(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None) -> Pool:
            return Pool("avg", dims, kernel_size, stride, padding, 1, ceil_mode, count_include_pad, divisor_override)
    make.__name__ = make.__qualname__ = f"{kind}_pool{dims}d"  # the name pickle and docs tools look up
    make.__doc__ = f"""A continual ``{'Max' if kind == 'max' else 'Avg'}Pool{dims}d`` with torch.nn's arguments (time first).

    Example:
        >>> import torch, cofunc
        >>> pool = cofunc.{make.__name__}(kernel_size=2)
        >>> pool.delay, pool.stride
        (1, 2)
    """
    return make


avg_pool1d, avg_pool2d, avg_pool3d = (_pool_maker("avg", d) for d in (1, 2, 3))
max_pool1d, max_pool2d, max_pool3d = (_pool_maker("max", d) for d in (1, 2, 3))


def _adaptive_maker(kind: str, dims: int):
    def make(output_size, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> AdaptivePool:
        return AdaptivePool(kind, dims, output_size, kernel_size, stride, padding, dilation)

    make.__name__ = make.__qualname__ = f"adaptive_{kind}_pool{dims}d"
    make.__doc__ = f"""A continual ``Adaptive{'Max' if kind == 'max' else 'Avg'}Pool{dims}d`` over windows of ``kernel_size`` frames.

    ``output_size[0]`` must be 1 (or None); the spatial sizes are adaptive as in torch.nn.

    Example:
        >>> import torch, cofunc
        >>> pool = cofunc.{make.__name__}((1,{' 1,' if dims == 3 else ''} 1), kernel_size=4)
        >>> pool.delay
        3
    """
    return make


adaptive_avg_pool2d, adaptive_avg_pool3d = (_adaptive_maker("avg", d) for d in (2, 3))
adaptive_max_pool2d, adaptive_max_pool3d = (_adaptive_maker("max", d) for d in (2, 3))
