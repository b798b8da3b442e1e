"""``delay(n)``: emit each frame ``n`` steps after it arrived."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ._errors import ConfigurationError
from ._layer import Layer, first_emitting_step


class DelayState(NamedTuple):
    """buffer: ``(*B, C, n, *S)``, the last ``n`` frames, oldest first; count: ``(*B,)`` int64."""

    buffer: Tensor
    count: Tensor


@dataclasses.dataclass(frozen=True, eq=False)
class Delay(Layer):
    """Delays a stream by ``n`` steps; the clip ``forward`` is the identity.

    ``rank`` is the non-batch rank of a step input (``1 + len(S)``); inside a `seq` it is taken
    from the neighbouring layers. ``steps(..., pad_end=True)`` flushes the ``n`` buffered frames,
    so from a fresh state it returns its input unchanged, like ``forward``.
    """

    n: int
    rank: Optional[int] = None

    def __post_init__(self):
        if not isinstance(self.n, int) or self.n < 0:
            raise ConfigurationError(f"delay: `n` must be a non-negative int, got {self.n!r}")
        if self.rank is not None and self.rank < 1:
            raise ConfigurationError(f"delay({self.n}): `rank` must be at least 1 (the channel axis), got {self.rank}")

    @property
    def label(self) -> str:
        return f"delay({self.n})"

    @property
    def receptive_field(self) -> int:
        return self.n + 1

    @property
    def padding_end(self) -> int:
        return self.n

    @property
    def step_rank(self):
        return self.rank

    @property
    def stateful(self) -> bool:
        return self.n > 0

    @property
    def keeps_rank(self) -> bool:
        return True

    def with_rank(self, rank: int) -> "Delay":
        return self if self.rank == rank else dataclasses.replace(self, rank=rank)

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
        if self.stateful:
            self.check_state_type(state, DelayState)
            if self.rank is None:
                self.batch_shape(x.shape)  # raises: the rank is needed to find the stream dims
            self.check_state_batch(state.count, x, what)

    def step(self, params, state, x):
        """``x: (*B, C, *S)`` in, the frame of ``n`` steps ago out (zeros while warming up)."""
        self.check_step_input(x)
        if not self.stateful:
            return x, state
        self._check(state, x, "step input")
        axis = -self.rank
        buffer, count = state
        window = torch.cat([buffer, x.unsqueeze(axis)], dim=axis)
        y = window.select(axis, 0)
        return y, DelayState(window.narrow(axis, 1, self.n), count + 1)

    def _emit(self, window: Tensor, clock: int, n_new: int) -> Tensor:
        axis = self.time_axis()
        first = first_emitting_step(clock, self.delay, 1)
        if first > clock + n_new - 1:
            return window.narrow(axis, 0, 0)
        return window.narrow(axis, first - clock, clock + n_new - first)

    def _steps(self, params, state, xs, clock, pad_end):
        self.check_clip_input(xs)
        if not self.stateful:
            return xs, state
        self._check(state, xs, "clip")
        axis = self.time_axis()
        buffer, count = state
        n_new = xs.shape[axis]
        window = torch.cat([buffer, xs], dim=axis)
        next_buffer = window.narrow(axis, window.shape[axis] - self.n, self.n)
        ys = self._emit(window, clock, n_new)
        if pad_end:
            flushed = self._emit(torch.cat([next_buffer, torch.zeros_like(next_buffer)], dim=axis), clock + n_new, self.n)
            ys = torch.cat([ys, flushed], dim=axis)
        return ys, DelayState(next_buffer, count + n_new)

    def forward(self, params, xs):
        self.check_clip_input(xs)
        return xs


def delay(n: int, rank: Optional[int] = None) -> Delay:
    """A layer that outputs each step's input ``n`` steps later; ``forward`` is the identity.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.delay(2, rank=1)
        >>> state = layer.init_state({}, (1, 3))
        >>> for t in range(3):
        ...     y, state = layer.step({}, state, torch.full((1, 3), float(t)))
        >>> y, bool(layer.valid(state))
        (tensor([[0., 0., 0.]]), True)
    """
    return Delay(n, rank)

