"""The shared machinery of layers that look at a sliding window of frames (convs, pools).

State is a shift register of the last ``receptive_field - 1`` input frames and a per-stream step
counter. A step appends its frame and applies the layer's window operation once; ``steps``
concatenates the register and the chunk and applies the operation once, strided, starting at
the first position that emits. The fresh register holds the start padding (zeros, -inf, or the
first frame repeated); ``pad_end`` appends the end padding.
"""

from __future__ import annotations

import dataclasses
from typing import List, NamedTuple, Optional

import torch
from torch import Tensor

from ._clock import STEP_HINTS, all_streams_emitting, emits_after, first_emitting_step
from ._layer import Layer, check_dtype_device
from ._values import empty_clip, expand_mask, push_frames, values_are_concrete

FILLS = ("zeros", "replicate", "neg_inf")


class WindowState(NamedTuple):
    """buffer: ``(*B, C, receptive_field - 1, *S)``, the last input frames, oldest first;
    count: ``(*B,)`` int64, the steps each stream has taken."""

    buffer: Tensor
    count: Tensor


@dataclasses.dataclass(frozen=True, eq=False)
class WindowLayer(Layer):
    """Base of sliding-window layers. Subclasses define the temporal metadata and
    ``window_op(params, window, time_stride)``, the operation on a clip that already holds its
    temporal context (no temporal padding)."""

    # --- what subclasses provide ------------------------------------------------------------
    @property
    def fill(self) -> str:
        """How the start (and end) padding frames are made: one of `FILLS`."""
        return "zeros"

    @property
    def expected_channels(self) -> Optional[int]:
        return None

    def reference_tensor(self, params) -> Optional[Tensor]:
        """A param whose dtype and device inputs must match (None: any)."""
        return None

    def window_op(self, params, window: Tensor, time_stride: int) -> Tensor:
        raise NotImplementedError

    def frame_op(self, params, x: Tensor) -> Tensor:
        """The step of a layer without state (one-frame window, temporal stride 1) on the frame
        ``x: (*B, C, *S)``; subclasses may skip the time axis of length 1."""
        axis = -self.step_rank
        return self.window_op(params, x.unsqueeze(axis), 1).squeeze(axis)

    @property
    def window_memory_format(self) -> Optional[torch.memory_format]:
        """The memory format the step builds its window in (None: contiguous). The buffered
        frames are views of the window, so they keep it from step to step."""
        return None

    def rescale(self, ys: Tensor, steps, end: Optional[int]) -> Tensor:
        """Correct outputs whose windows hold padding, for ops that cannot (average divisors).

        ``steps`` are the 0-based step indices of the outputs: a per-stream tensor for one step,
        or a list of ints for a chunk; ``end`` is the stream length when flushing, else None.
        """
        return ys

    # --- state --------------------------------------------------------------------------------
    @property
    def stateful(self) -> bool:
        return self.receptive_field > 1 or self.stride > 1

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        if not self.stateful:
            return ()
        batch = self.batch_shape(input_shape)
        reference = self.reference_tensor(params) if params else None
        if reference is not None:
            device = reference.device if device is None else device
            dtype = reference.dtype if dtype is None else dtype
        step_shape = tuple(input_shape[len(batch):])
        shape = batch + step_shape[:1] + (self.receptive_field - 1,) + step_shape[1:]
        value = float("-inf") if self.fill == "neg_inf" else 0.0
        buffer = torch.full(shape, value, device=device, dtype=dtype)
        return WindowState(buffer, torch.zeros(batch, dtype=torch.int64, device=device))

    def clock(self, state):
        return state.count if self.stateful else None

    def _check(self, params, state, x, clip: bool):
        what = "clip" if clip else "step input"
        if clip:
            self.check_clip_input(x, self.expected_channels)
        else:
            self.check_step_input(x, self.expected_channels)
        check_dtype_device(self, x, self.reference_tensor(params), what)
        if self.stateful:
            self.check_state_type(state, WindowState)
            self.check_state_batch(state.count, x, what)
            self.check_state_buffer(state.buffer, state.count, self.receptive_field - 1, x, what, self.expected_channels)

    # --- computation --------------------------------------------------------------------------
    def step_unmasked(self, params, state, x):
        """One frame ``x: (*B, C, *S)`` to one output frame ``(*B, C', *S')``."""
        if not STEP_HINTS.inputs_fit:
            self._check(params, state, x, clip=False)
        if not self.stateful:
            return self.frame_op(params, x), state
        axis = -self.step_rank
        frame = x.unsqueeze(axis)
        buffer, count = state
        if self.fill == "replicate" and buffer.shape[axis] > 0 and not (all_streams_emitting() and self.delay > 0):
            # When every stream emits, a layer with a delay has had its first frame; one
            # without (all its padding at the start) may be getting it now, behind a delay.
            first = expand_mask(count == 0, buffer)
            buffer = torch.where(first, frame.expand_as(buffer), buffer)
        window, next_buffer = push_frames(buffer, frame, axis, self.window_memory_format)
        next_state = WindowState(next_buffer, count + 1)
        if self.stride > 1 and values_are_concrete(count):
            # Strided steps without output in any stream cost no window operation.
            if not bool(emits_after(count + 1, self.delay, self.stride).any()):
                return window.new_zeros(self.step_output_shape(x.shape)), next_state
        y = self.window_op(params, window, 1).squeeze(axis)
        return self.rescale(y, count, None), next_state

    def _emit(self, params, window: Tensor, clock: int, n_new: int, step_shape, end: Optional[int]) -> Tensor:
        """The outputs of steps ``clock .. clock + n_new - 1``, whose frames end ``window``."""
        axis = -self.step_rank
        first = first_emitting_step(clock, self.delay, self.stride)
        if first > clock + n_new - 1:
            return empty_clip(window, self.step_output_shape(step_shape), axis)
        offset = first - clock
        # Trim to whole windows, so that ops with ceil_mode never add a partial one in time.
        n_out = (window.shape[axis] - offset - self.receptive_field) // self.stride + 1
        length = (n_out - 1) * self.stride + self.receptive_field
        ys = self.window_op(params, window.narrow(axis, offset, length), self.stride)
        steps: List[int] = list(range(first, clock + n_new, self.stride))
        return self.rescale(ys, steps, end)

    def _end_fill(self, window: Tensor, n: int) -> Tensor:
        axis = -self.step_rank
        last = window.narrow(axis, window.shape[axis] - 1, 1)
        shape = list(last.shape)
        shape[axis] = n
        if self.fill == "replicate":
            return last.expand(shape)
        value = float("-inf") if self.fill == "neg_inf" else 0.0
        return last.new_full(shape, value)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        self._check(params, state, xs, clip=True)
        axis = -self.step_rank
        n_new = xs.shape[axis]
        step_shape = list(xs.shape)
        del step_shape[axis]
        if not self.stateful:  # one-frame window, stride 1, no padding: nothing to buffer or flush
            if n_new == 0:
                return empty_clip(xs, self.step_output_shape(step_shape), axis), state
            return self.window_op(params, xs, 1), state
        buffer, count = state
        if self.fill == "replicate" and clock == 0 and n_new > 0:
            buffer = xs.narrow(axis, 0, 1).expand_as(buffer)
        window, next_buffer = push_frames(buffer, xs, axis)
        ys = self._emit(params, window, clock, n_new, step_shape, None)
        if pad_end and self.padding_end:
            end = clock + n_new
            padded = torch.cat([next_buffer, self._end_fill(window, self.padding_end)], dim=axis)
            flushed = self._emit(params, padded, end, self.padding_end, step_shape, end)
            ys = torch.cat([ys, flushed], dim=axis)
        return ys, WindowState(next_buffer, count + n_new)


def tap_counts(steps, end: Optional[int], kernel: int, dilation: int, pad_start: int,
               pad_end: int, count_pad: bool):
    """Per output, how many temporal taps of its window count towards an average's divisor.

    Taps on real frames always count; taps on padding count if ``count_pad``; taps past the end
    padding (``ceil_mode`` overhang) never count. Returns a tensor shaped like ``steps``.
    """
    offsets = torch.arange(kernel - 1, -1, -1) * dilation  # tap j sits offsets[j] frames back
    if isinstance(steps, Tensor):
        positions = steps.unsqueeze(-1) - offsets.to(steps.device)
    else:
        positions = torch.tensor(steps, dtype=torch.int64).unsqueeze(-1) - offsets
    if end is None:
        counted = positions >= 0
    else:
        counted = (positions >= 0) & (positions < end)
    if count_pad:
        counted = counted | ((positions >= -pad_start) & (positions < 0))
        if end is not None:
            counted = counted | ((positions >= end) & (positions < end + pad_end))
    return counted.sum(-1)
