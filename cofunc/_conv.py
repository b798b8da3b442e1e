"""Continual convolutions over time: ``conv1d``, ``conv2d``, ``conv3d``.

The state is a shift register of the last ``receptive_field - 1`` input frames. A step appends
the new frame and convolves the window once, so it costs exactly one output frame's
multiply-adds (co convolves each frame with the whole kernel and keeps ``k_t`` partial sums,
``k_t`` times the work). ``steps`` convolves the buffered frames and the whole chunk in one call.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import ConfigurationError
from ._layer import check_dtype_device, with_one_batch_dim
from ._params import Params
from ._window import WindowLayer, WindowState

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_NN_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_PADDING_MODES = ("zeros", "replicate", "reflect", "circular")
_TEMPORAL_FILLS = ("zeros", "replicate")

IntOrTuple = Union[int, Sequence[int]]


# The state of a continual convolution: the last ``receptive_field - 1`` input frames
# ``(*B, C_in, rf - 1, *S)``, oldest first, and the steps each stream has taken.
ConvState = WindowState


def _ntuple(value: IntOrTuple, n: int, name: str, label: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ConfigurationError(f"{label}: `{name}` needs {n} values (time first), got {value}")
    return value


def _pad_pairs(padding, kernel, dilation, label) -> Tuple[Tuple[int, int], ...]:
    """Per dim (start, end) padding, with torch's rules for ``"same"`` and ``"valid"``."""
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            pairs = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pairs.append((total // 2, total - total // 2))
            return tuple(pairs)
        raise ConfigurationError(f"{label}: `padding` must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    return tuple((p, p) for p in _ntuple(padding, n, "padding", label))


@dataclasses.dataclass(frozen=True, eq=False)
class Conv(WindowLayer):
    """A continual N-d convolution (N = 1, 2, 3; the first kernel axis is time).

    Same arguments and defaults as ``torch.nn.ConvNd`` plus ``temporal_fill`` (how the fresh
    state pads the start of the stream; default: as ``padding_mode``). Construct with
    `conv1d`, `conv2d` or `conv3d`.
    """

    dims: int
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, ...]
    conv_stride: Tuple[int, ...] = None
    padding_spec: Union[str, Tuple[int, ...]] = 0
    dilation: Tuple[int, ...] = None
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    temporal_fill: Optional[str] = None

    def __post_init__(self):
        label = self.label
        n = self.dims
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("kernel_size", _ntuple(self.kernel_size, n, "kernel_size", label))
        set_("conv_stride", _ntuple(1 if self.conv_stride is None else self.conv_stride, n, "stride", label))
        set_("dilation", _ntuple(1 if self.dilation is None else self.dilation, n, "dilation", label))
        if not isinstance(self.padding_spec, str):
            set_("padding_spec", _ntuple(self.padding_spec, n, "padding", label))
        pads = _pad_pairs(self.padding_spec, self.kernel_size, self.dilation, label)
        set_("_pads", pads)
        for name, values in (("kernel_size", self.kernel_size), ("stride", self.conv_stride), ("dilation", self.dilation)):
            if min(values) < 1:
                raise ConfigurationError(f"{label}: `{name}` must be positive, got {values}")
        if min(min(p) for p in pads) < 0:
            raise ConfigurationError(f"{label}: `padding` must be non-negative, got {self.padding_spec}")
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ConfigurationError(
                f"{label}: in_channels ({self.in_channels}) and out_channels ({self.out_channels}) "
                f"must both be divisible by groups ({self.groups})"
            )
        if self.padding_spec == "same" and max(self.conv_stride) > 1:
            raise ConfigurationError(f"{label}: padding='same' is not supported for strided convolutions (as in torch.nn)")
        if self.padding_mode not in _PADDING_MODES:
            raise ConfigurationError(f"{label}: `padding_mode` must be one of {_PADDING_MODES}, got {self.padding_mode!r}")
        fill = self.temporal_fill
        if fill is None:
            fill = "replicate" if self.padding_mode == "replicate" else "zeros"
            set_("temporal_fill", fill)
        if fill not in _TEMPORAL_FILLS:
            raise ConfigurationError(f"{label}: `temporal_fill` must be one of {_TEMPORAL_FILLS}, got {fill!r}")
        rf = self.receptive_field
        start, end = pads[0]
        if max(start, end) > rf - 1:
            raise ConfigurationError(
                f"{label}: temporal padding {pads[0]} exceeds receptive_field - 1 = {rf - 1}; an output "
                f"made only of padding cannot be produced by a stream"
            )
        if self.padding_mode in ("reflect", "circular") and (start or end):
            raise ConfigurationError(
                f"{label}: padding_mode={self.padding_mode!r} pads time with future frames, which a "
                f"stream does not have; use temporal padding 0 (spatial padding may keep this mode)"
            )
        self._set_step_plan()

    # --- metadata -----------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"conv{self.dims}d({self.in_channels}->{self.out_channels}, kernel_size={self.kernel_size})"

    @property
    def receptive_field(self) -> int:
        return self.dilation[0] * (self.kernel_size[0] - 1) + 1

    @property
    def padding(self) -> int:
        return self._pads[0][0]

    @property
    def padding_end(self) -> int:
        return self._pads[0][1]

    @property
    def stride(self) -> int:
        return self.conv_stride[0]

    @property
    def step_rank(self) -> int:
        return self.dims

    # --- params -------------------------------------------------------------------------------
    def torch_module(self, *, device=None, dtype=None) -> nn.Module:
        """The equivalent ``torch.nn.ConvNd`` (freshly initialised)."""
        return _NN_CONV[self.dims](
            self.in_channels, self.out_channels, self.kernel_size, stride=self.conv_stride,
            padding=self.padding_spec, dilation=self.dilation, groups=self.groups, bias=self.bias,
            padding_mode=self.padding_mode, device=device, dtype=dtype,
        )

    def init_params(self, *, device=None, dtype=None) -> Params:
        module = self.torch_module(device=device, dtype=dtype)
        return {name: p.detach() for name, p in module.named_parameters()}

    # --- window machinery (see _window.py) ------------------------------------------------------
    @property
    def fill(self) -> str:
        return self.temporal_fill

    @property
    def expected_channels(self) -> int:
        return self.in_channels

    def reference_tensor(self, params):
        return params.get("weight")

    def step_output_shape(self, input_shape):
        rank = self.dims
        batch = tuple(input_shape[: len(input_shape) - rank])
        spatial = []
        for size, k, s, d, (lo, hi) in zip(
            input_shape[len(batch) + 1:], self.kernel_size[1:], self.conv_stride[1:], self.dilation[1:], self._pads[1:]
        ):
            spatial.append((size + lo + hi - d * (k - 1) - 1) // s + 1)
        return batch + (self.out_channels,) + tuple(spatial)

    # --- computation --------------------------------------------------------------------------
    def forward(self, params, xs):
        """The clip convolution, computed exactly as ``torch.nn.ConvNd.forward``."""
        self.check_clip_input(xs, self.in_channels)
        check_dtype_device(self, xs, params["weight"], "clip")
        weight, bias = params["weight"], params.get("bias")
        conv = _CONV_FN[self.dims]

        def run(x):
            if self.padding_mode != "zeros":
                pads = tuple(p for pair in reversed(self._pads) for p in pair)
                return conv(F.pad(x, pads, mode=self.padding_mode), weight, bias, self.conv_stride, 0, self.dilation, self.groups)
            return conv(x, weight, bias, self.conv_stride, self.padding_spec, self.dilation, self.groups)

        return with_one_batch_dim(run, xs, self.dims + 1)

    def window_op(self, params, window: Tensor, time_stride: int) -> Tensor:
        """Convolve a clip that already holds its temporal context (no temporal padding)."""
        weight, bias = params["weight"], params.get("bias")
        conv = _CONV_FN[self.dims]
        spatial = self._pads[1:]
        stride = (time_stride,) + self.conv_stride[1:]

        def run(x):
            if x.shape[2] == self.receptive_field and not self._depthwise_in_space:
                return self._one_frame(x, weight, bias).unsqueeze(2)
            if self._pads_in_conv:
                return conv(x, weight, bias, stride, self._conv_padding, self.dilation, self.groups)
            if any(lo or hi for lo, hi in spatial):
                pads = tuple(p for pair in reversed(spatial) for p in pair) + (0, 0)
                mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
                x = F.pad(x, pads, mode=mode)
            return conv(x, weight, bias, stride, 0, self.dilation, self.groups)

        return with_one_batch_dim(run, window, self.dims + 1)

    def frame_op(self, params, x: Tensor) -> Tensor:
        # A pointwise step is a matrix product over the frame itself: no time axis to add and
        # remove (the most frequent step of X3D-like networks).
        if self._pointwise and x.dim() == self.dims + 1:
            return self._matmul(x, params["weight"], params.get("bias"))
        return super().frame_op(params, x)

    @property
    def window_memory_format(self):
        """Channels-last for depthwise 3-d convolutions with a spatial kernel (X3D's 3x3x3):
        oneDNN runs them 2-4x faster on a channels-last window than on a contiguous one, with
        the same result bit for bit (measured for issue 15: ``[1, 54, 3, 80, 80]`` 4.7 -> 1.2
        ms, ``[1, 216, 3, 10, 10]`` 0.26 -> 0.14 ms, one thread)."""
        return self._window_format

    def __setstate__(self, state):
        # Pickles made before the plan existed load too.
        self.__dict__.update(state)
        self._set_step_plan()

    def _set_step_plan(self) -> None:
        """What every step asks of the configuration, worked out once (read on the hot path)."""
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        # A depthwise convolution with a spatial kernel (X3D's 3x3x3 convs): folding its time
        # taps into the channels would make a grouped convolution with ``kt`` channels per
        # group, which torch runs several times slower than the depthwise N-d convolution.
        depthwise = (self.dims > 1 and self.groups > 1 and self.in_channels == self.groups
                     and math.prod(self.kernel_size[1:]) > 1)
        set_("_depthwise_in_space", depthwise)
        # One tap in space and no spatial padding; without groups and with one tap in time too
        # (a 1x1(x1) convolution), a matrix product per frame.
        one_by_one = math.prod(self.kernel_size[1:]) == 1 and all(lo == 0 and hi == 0 for lo, hi in self._pads[1:])
        pointwise_in_space = self.groups == 1 and one_by_one
        set_("_pointwise", pointwise_in_space and self.receptive_field == 1)
        # Kernel (kt, 1, 1) (Slow's res4 and res5, (2+1)-d nets): once the taps are folded into
        # the channels, a matrix product like the pointwise step's.
        set_("_pointwise_in_space", pointwise_in_space)
        set_("_window_format", torch.channels_last_3d if self.dims == 3 and depthwise else None)
        # A depthwise convolution in time only (X3D's stem, kernel (kt, 1, 1)): each output is a
        # weighted sum of its channel's frames, one batched product over the window as it lies.
        # Folding its taps into the channels makes a grouped convolution, which torch's slow 2-d
        # kernel runs group by group (24 calls for X3D-S's stem: 0.48 vs 0.14 ms, one thread).
        set_("_depthwise_in_time", self.groups == self.in_channels == self.out_channels > 1 and one_by_one)
        spatial = self._pads[1:]
        # The window's convolution pads space itself when it can (zeros, symmetric).
        set_("_pads_in_conv", self.padding_mode == "zeros" and all(lo == hi for lo, hi in spatial))
        set_("_conv_padding", (0,) + tuple(lo for lo, _ in spatial))
        strided = any(st > 1 for st in self.conv_stride[1:])
        set_("_spatial_subsample", (slice(None), slice(None)) + tuple(slice(None, None, st) for st in self.conv_stride[1:])
             if strided else None)

    def _matmul(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """A pointwise convolution of frames ``x: (N, C, *S)`` as one matrix product over
        ``(C, prod(S))`` (``C``: the input channels, times the kernel's time taps when a window
        has them folded in), reading ``x`` in the layout it comes in and writing the output in the
        same layout (channels-last in, channels-last out: X3D's depthwise windows; contiguous
        in, contiguous out: ResNets, whose other convolutions and residual sums run on
        contiguous frames, and a sum of two layouts costs ten times a sum of one).

        The same multiply-adds as the convolution; torch would route a 1x1 convolution at batch
        1 to its slow 2-d kernel (``_slow_conv2d_forward``, copying channels-last inputs first).
        """
        if self._spatial_subsample is not None:
            x = x[self._spatial_subsample]
        n, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
        w = weight.reshape(self.out_channels, c)
        if n == 1 and x.is_contiguous():
            # (C_out, C_in) x (C_in, S): BLAS reads both as they are, the output is contiguous.
            rows = x.reshape(c, -1)
            y = torch.mm(w, rows) if bias is None else torch.addmm(bias.unsqueeze(1), w, rows)
            return y.view((1, self.out_channels) + spatial)
        last = x.movedim(1, -1)  # (N, *S, C)
        if last.is_contiguous():
            # torch.nn.functional.linear: the same addmm over (N * prod(S), C) rows, in one call.
            return F.linear(last, w, bias).movedim(-1, 1)
        y = torch.matmul(w, x.reshape(n, c, -1))
        if bias is not None:
            y = y + bias.unsqueeze(-1)
        return y.view((n, self.out_channels) + spatial)

    def _weighted_frames(self, taps: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """The one output frame of a depthwise convolution in time: ``taps: (N, C, kt, *S)``, the
        window's frames under the kernel's taps, to ``(N, C, *S')``, as ``(1, kt) x (kt, S)``
        products batched over streams and channels (the weights broadcast over the streams)."""
        if self._spatial_subsample is not None:
            taps = taps[(slice(None),) + self._spatial_subsample]
        n, c, kt = taps.shape[:3]
        spatial = tuple(taps.shape[3:])
        w = weight.reshape(c, 1, kt)
        if n == 1 and bias is not None:
            y = torch.baddbmm(bias.view(c, 1, 1), w, taps.reshape(c, kt, -1))
        else:
            y = torch.matmul(w, taps.reshape(n, c, kt, -1))
            if bias is not None:
                y = y + bias.view(c, 1, 1)
        return y.view((n, c) + spatial)

    def _one_frame(self, window: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """The one output frame of a window of exactly ``receptive_field`` frames ``(N, C, rf, *S)``.

        The kernel's time taps are folded into the channels, so this is a convolution in space
        only: the same multiply-adds, but torch runs an (N-1)-d convolution at batch 1 on its
        fast path, where a 3-d one over a few frames falls back to a slow kernel.
        """
        if self._pointwise:
            return self._matmul(window.select(2, 0), weight, bias)
        taps = window[:, :, :: self.dilation[0]] if self.dilation[0] > 1 else window
        if self._depthwise_in_time:
            return self._weighted_frames(taps, weight, bias)
        n, c, kt = taps.shape[:3]
        x = taps.reshape((n, c * kt) + tuple(taps.shape[3:]))
        if self._pointwise_in_space:
            return self._matmul(x, weight, bias)
        w = weight.reshape((weight.shape[0], weight.shape[1] * kt) + tuple(weight.shape[3:]))
        if self.dims == 1:
            return F.conv1d(x.unsqueeze(-1), w.unsqueeze(-1), bias, groups=self.groups).squeeze(-1)
        spatial = self._pads[1:]
        conv = _CONV_FN[self.dims - 1]
        stride, dilation = self.conv_stride[1:], self.dilation[1:]
        if self.padding_mode == "zeros" and all(lo == hi for lo, hi in spatial):
            return conv(x, w, bias, stride, tuple(lo for lo, _ in spatial), dilation, self.groups)
        if any(lo or hi for lo, hi in spatial):
            pads = tuple(p for pair in reversed(spatial) for p in pair)
            x = F.pad(x, pads, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)
        return conv(x, w, bias, stride, 0, dilation, self.groups)


def _make(dims: int) -> Callable[..., Conv]:
    def make(
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: Union[str, IntOrTuple] = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        temporal_fill: Optional[str] = None,
    ) -> Conv:
        return Conv(dims, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, temporal_fill)

    return make


conv1d = _make(1)
conv1d.__name__ = conv1d.__qualname__ = "conv1d"  # the name pickle and docs tools look up
conv1d.__doc__ = """A continual ``Conv1d``: clips ``(*B, C, T)``, steps ``(*B, C)``.

Example:
    >>> import torch, cofunc
    >>> layer = cofunc.conv1d(2, 4, kernel_size=3, padding=1)
    >>> params = layer.init_params()
    >>> state = layer.init_state(params, (5, 2))
    >>> y, state = layer.step(params, state, torch.randn(5, 2))
    >>> y.shape, layer.delay
    (torch.Size([5, 4]), 1)
"""
conv2d = _make(2)
conv2d.__name__ = conv2d.__qualname__ = "conv2d"  # the name pickle and docs tools look up
conv2d.__doc__ = """A continual ``Conv2d`` over ``(time, space)``: clips ``(*B, C, T, S)``, steps ``(*B, C, S)``.

Example:
    >>> import torch, cofunc
    >>> layer = cofunc.conv2d(2, 4, kernel_size=(3, 1))
    >>> params = layer.init_params()
    >>> layer.forward(params, torch.randn(1, 2, 10, 25)).shape
    torch.Size([1, 4, 8, 25])
"""
conv3d = _make(3)
conv3d.__name__ = conv3d.__qualname__ = "conv3d"  # the name pickle and docs tools look up
conv3d.__doc__ = """A continual ``Conv3d`` over ``(time, height, width)``: clips ``(*B, C, T, H, W)``, steps ``(*B, C, H, W)``.

Example:
    >>> import torch, cofunc
    >>> layer = cofunc.conv3d(3, 8, kernel_size=3, padding=1)
    >>> params = layer.init_params()
    >>> state = layer.init_state(params, (1, 3, 16, 16))
    >>> y, state = layer.step(params, state, torch.randn(1, 3, 16, 16))
    >>> y.shape, bool(layer.valid(state))
    (torch.Size([1, 8, 16, 16]), False)
"""
