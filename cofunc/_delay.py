"""Frame-selecting layers: ``delay(n)``, ``skip(n)`` and the residual shrinks.

All of them output, at step ``t``, the input frame ``t - lag``, and emit from step
``window - 1`` on. ``delay(n)`` (lag ``n``, window ``n + 1``) has an identity ``forward`` and
flushes its ``n`` buffered frames with ``pad_end``; ``skip(n)`` (lag 0) drops the first ``n``
frames; the residual shrinks pick the centre, oldest or newest frame of a module's window.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ._errors import ConfigurationError
from ._clock import STEP_HINTS, first_emitting_step
from ._layer import Layer
from ._values import push_frames


class DelayState(NamedTuple):
    """buffer: ``(*B, C, lag, *S)``, the last ``lag`` frames, oldest first; count: ``(*B,)`` int64."""

    buffer: Tensor
    count: Tensor


@dataclasses.dataclass(frozen=True, eq=False)
class Delay(Layer):
    """Outputs at step ``t`` the input of step ``t - n``, from step ``window - 1`` on.

    ``window`` defaults to ``n + 1`` and ``end`` (frames flushed by ``pad_end``) to ``n``: a
    plain delay whose clip ``forward`` is the identity. In general ``forward`` keeps clip frames
    ``window - 1 - n`` to ``T + end - 1 - n``.

    ``step_rank`` is the non-batch rank of a step input (``1 + len(S)``); inside a `seq` it is taken
    from the neighbouring layers.
    """

    n: int
    step_rank: Optional[int] = None
    window: Optional[int] = None
    end: Optional[int] = None

    def __post_init__(self):
        if not isinstance(self.n, int) or self.n < 0:
            raise ConfigurationError(f"delay: `n` must be a non-negative int, got {self.n!r}")
        if self.window is None:
            object.__setattr__(self, "window", self.n + 1)
        if self.end is None:
            object.__setattr__(self, "end", self.n)
        if self.window < self.n + 1 or not 0 <= self.end <= self.n:
            raise ConfigurationError(
                f"{self.label}: needs window >= n + 1 and 0 <= end <= n (outputs must be real frames), "
                f"got window={self.window}, end={self.end}"
            )
        if self.step_rank is not None and self.step_rank < 1:
            raise ConfigurationError(f"{self.label}: `step_rank` must be at least 1 (the channel axis), got {self.step_rank}")

    @property
    def label(self) -> str:
        if self.window == self.n + 1 and self.end == self.n:
            return f"delay({self.n})"
        if self.n == 0 and self.end == 0:
            return f"skip({self.window - 1})"
        return f"delay({self.n}, window={self.window}, end={self.end})"

    @property
    def receptive_field(self) -> int:
        return self.window

    @property
    def padding_end(self) -> int:
        return self.end

    @property
    def stateful(self) -> bool:
        return self.window > 1

    @property
    def keeps_rank(self) -> bool:
        return True

    def with_rank(self, rank: int) -> "Delay":
        return self if self.step_rank == rank else dataclasses.replace(self, step_rank=rank)

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        if not self.stateful:
            return ()
        batch = self.batch_shape(input_shape)
        step_shape = tuple(input_shape[len(batch):])
        buffer = torch.zeros(batch + step_shape[:1] + (self.n,) + step_shape[1:], device=device, dtype=dtype)
        return DelayState(buffer, torch.zeros(batch, dtype=torch.int64, device=device))

    def clock(self, state):
        return state.count if self.stateful else None

    def _check(self, state, x, what):
        self.check_state_type(state, DelayState)
        if self.step_rank is None:
            self.batch_shape(x.shape)  # raises: the rank is needed to find the stream dims
        self.check_state_batch(state.count, x, what)
        self.check_state_buffer(state.buffer, state.count, self.n, x, what)

    def step_unmasked(self, params, state, x):
        """``x: (*B, C, *S)`` in, the frame of ``n`` steps ago out (zeros while warming up)."""
        if not STEP_HINTS.inputs_fit:
            self.check_step_input(x)
            if self.stateful:
                self._check(state, x, "step input")
        if not self.stateful:
            return x, state
        buffer, count = state
        if self.n == 0:
            return x, DelayState(buffer, count + 1)
        axis = -self.step_rank
        window, next_buffer = push_frames(buffer, x.unsqueeze(axis), axis)
        return window.select(axis, 0), DelayState(next_buffer, count + 1)

    def _emit(self, frames: Tensor, clock: int, n_new: int) -> Tensor:
        """Outputs of steps ``clock .. clock + n_new - 1``; ``frames`` starts at frame ``clock - n``."""
        axis = self.time_axis()
        first = first_emitting_step(clock, self.delay, 1)
        if first > clock + n_new - 1:
            return frames.narrow(axis, 0, 0)
        return frames.narrow(axis, first - clock, clock + n_new - first)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        self.check_clip_input(xs)
        if not self.stateful:
            return xs, state
        self._check(state, xs, "clip")
        axis = self.time_axis()
        buffer, count = state
        n_new = xs.shape[axis]
        frames, next_buffer = push_frames(buffer, xs, axis)
        ys = self._emit(frames, clock, n_new)
        if pad_end and self.end:
            fill_shape = list(next_buffer.shape)
            fill_shape[axis] = self.end
            flushed = self._emit(torch.cat([next_buffer, next_buffer.new_zeros(fill_shape)], dim=axis), clock + n_new, self.end)
            ys = torch.cat([ys, flushed], dim=axis)
        return ys, DelayState(next_buffer, count + n_new)

    def forward(self, params, xs):
        self.check_clip_input(xs)
        axis = self.time_axis()
        start = self.window - 1 - self.n
        length = xs.shape[axis] + self.end - (self.window - 1)
        if start == 0 and length == xs.shape[axis]:
            return xs
        # A clip shorter than the window has no output frame (as ``x[:, :, n:]`` in torch).
        return xs.narrow(axis, min(start, xs.shape[axis]), max(length, 0))


def delay(n: int, step_rank: Optional[int] = None) -> Delay:
    """A layer that outputs each step's input ``n`` steps later; ``forward`` is the identity.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.delay(2, step_rank=1)
        >>> state = layer.init_state({}, (1, 3))
        >>> for t in range(3):
        ...     y, state = layer.step({}, state, torch.full((1, 3), float(t)))
        >>> y, bool(layer.valid(state))
        (tensor([[0., 0., 0.]]), True)
    """
    return Delay(n, step_rank)


def skip(n: int, step_rank: Optional[int] = None) -> Delay:
    """Drop the first ``n`` frames: ``forward`` returns ``x[:, :, n:]``, steps emit from step ``n``.

    Example:
        >>> import cofunc
        >>> cofunc.skip(2).delay
        2
    """
    return Delay(0, step_rank, window=n + 1, end=0)
