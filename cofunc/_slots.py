"""The core of a stream runner: streams by id in the slots of one batched state, stepped together.

`StreamSlots` knows nothing of queues, files, clocks or metrics (that is `StreamRunner`); it
keeps one state of ``capacity`` streams, a map from stream ids to slots, and steps the slots
that receive a frame in one batched step while every other slot is paused exactly
(`cofunc.step_streams`). A stream's state can be taken out of its slot and put into another
runner's (`take` / `put`), which is what moving streams between processes needs.

The capacity is a power of two (at least ``min_capacity``): it doubles when a stream arrives at
a full state and halves, compacting the streams into the lowest slots, when at most a quarter of
it is in use. A compiled step therefore sees one batch shape per capacity, so the number of
compilations is bounded by ``log2(max capacity / min capacity) + 1``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import optree
import torch
from torch import Tensor

from ._errors import StateError, StreamIdError
from ._export import _own_code
from ._layer import Layer
from ._params import Params
from ._values import TREE_NAMESPACE, tree_map
from ._streams import put_streams, step_streams, take_streams

StreamId = Hashable


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def tick_fn(layer: Layer, compile: bool = False, **compile_kwargs) -> Callable:
    """``(params, state, x, active) -> (y, valid, state)``: `cofunc.step_streams`, optionally
    compiled (``fullgraph=True``, static shapes: one graph per capacity)."""

    def tick(params, state, x, active):
        return step_streams(layer, params, state, x, active)

    tick = _own_code(tick)  # its own dynamo cache, so runners of different layers never share one
    if not compile:
        return tick
    compile_kwargs.setdefault("fullgraph", True)
    compile_kwargs.setdefault("dynamic", False)
    return torch.compile(tick, **compile_kwargs)


@dataclasses.dataclass(frozen=True)
class StreamState:
    """One stream's state taken out of a runner: the state tree with a stream dim of 1."""

    state: Any

    def __repr__(self) -> str:
        leaves = optree.tree_leaves(self.state, namespace=TREE_NAMESPACE)
        return f"StreamState({len(leaves)} leaves, {sum(t.nbytes for t in leaves)} bytes)"


class StreamSlots:
    """Streams by id in the slots of one batched state of ``capacity`` streams.

    Args:
        layer, params: the network (params detached, on the device and dtype of the frames).
        frame_shape: one frame ``(C, *S)``.
        min_capacity: the smallest capacity (a power of two is used).
        compile: compile the batched step (``torch.compile``, see `tick_fn`).

    ``tick(slots, frames)`` steps the given slots with ``frames: (len(slots), C, *S)`` and
    returns ``(y, valid)`` for those slots, ``y: (len(slots), *out)``.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.conv1d(2, 3, 2)
        >>> slots = cofunc.StreamSlots(layer, layer.init_params(), (2,))
        >>> a, b = slots.open("a"), slots.open("b")
        >>> y, valid = slots.tick([a], torch.randn(1, 2))  # "b" is paused
        >>> y, valid = slots.tick([a, b], torch.randn(2, 2))
        >>> valid.tolist(), slots.capacity
        ([True, False], 4)
    """

    def __init__(self, layer: Layer, params: Params, frame_shape: Sequence[int], *, device=None, dtype=None,
                 min_capacity: int = 4, compile: bool = False, compile_kwargs: Optional[dict] = None):
        self.layer = layer
        self.params = params
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.min_capacity = _next_power_of_two(max(1, int(min_capacity)))
        self.compiled = compile
        self._compile_kwargs = dict(compile_kwargs or {})
        self._tick = tick_fn(layer, compile, **self._compile_kwargs)
        self.capacities_used = set()  # batch sizes stepped (compiled: one graph each)
        self.slot_of: Dict[StreamId, int] = {}
        self._free: List[int] = []
        self.capacity = 0
        self.state = None
        self._fresh_one = self.init_state(1)
        self._stateful = bool(optree.tree_leaves(self._fresh_one, namespace=TREE_NAMESPACE))
        self._resize(self.min_capacity)

    def __repr__(self) -> str:
        return (f"StreamSlots({len(self.slot_of)} streams in {self.capacity} slots, frame_shape={self.frame_shape}, "
                f"{self.dtype}, {self.device}, compiled={self.compiled})")

    def __getstate__(self):
        # The step function is rebuilt on unpickling (a compiled one cannot be pickled).
        state = dict(self.__dict__)
        del state["_tick"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._tick = tick_fn(self.layer, self.compiled, **self._compile_kwargs)

    # --- state bookkeeping ------------------------------------------------------------------
    def init_state(self, n: int):
        """A fresh state of ``n`` streams."""
        with torch.no_grad():
            return self.layer.init_state(self.params, (n,) + self.frame_shape, device=self.device, dtype=self.dtype)

    def _resize(self, capacity: int) -> None:
        """Move every open stream into a fresh state of ``capacity`` slots, lowest slots first."""
        ids = sorted(self.slot_of, key=self.slot_of.get)
        new = self.init_state(capacity)
        if ids and self._stateful:
            old_slots = torch.tensor([self.slot_of[i] for i in ids], device=self.device)
            new = put_streams(new, torch.arange(len(ids), device=self.device), take_streams(self.state, old_slots))
        self.state = new
        self.capacity = capacity
        self.slot_of = {i: s for s, i in enumerate(ids)}
        self._free = list(range(capacity - 1, len(ids) - 1, -1))  # pop() hands out the lowest slot

    def load(self, state, capacity: int, slot_of: Dict[StreamId, int]) -> None:
        """Replace the batched state and the slot map (a restored checkpoint; checked by the caller)."""
        self.state = state
        self.capacity = int(capacity)
        self.slot_of = dict(slot_of)
        used = set(self.slot_of.values())
        self._free = [s for s in range(self.capacity - 1, -1, -1) if s not in used]

    @property
    def ids(self) -> List[StreamId]:
        """The open streams, in slot order."""
        return sorted(self.slot_of, key=self.slot_of.get)

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, stream_id) -> bool:
        return stream_id in self.slot_of

    def state_bytes(self) -> int:
        """Bytes held by the batched state (all slots)."""
        return sum(t.nbytes for t in optree.tree_leaves(self.state, namespace=TREE_NAMESPACE))

    # --- streams ------------------------------------------------------------------------------
    def open(self, stream_id: StreamId, stream_state: Optional[StreamState] = None) -> int:
        """Give ``stream_id`` a slot with a fresh state (or ``stream_state``); returns the slot."""
        if stream_id in self.slot_of:
            raise StreamIdError(f"StreamSlots: stream {stream_id!r} is already open")
        one = self._fresh_one if stream_state is None else self._check_stream_state(stream_state)
        if not self._free:
            self._resize(_next_power_of_two(max(self.capacity * 2, len(self.slot_of) + 1)))
        slot = self._free.pop()
        if self._stateful:
            self.state = put_streams(self.state, torch.tensor([slot], device=self.device), one)
        self.slot_of[stream_id] = slot
        return slot

    def close(self, stream_id: StreamId) -> None:
        """Free ``stream_id``'s slot (halving the capacity when at most a quarter is in use)."""
        slot = self._slot(stream_id)
        del self.slot_of[stream_id]
        self._free.append(slot)
        self._free.sort(reverse=True)
        if self.capacity > self.min_capacity and len(self.slot_of) <= self.capacity // 4:
            self._resize(max(self.min_capacity, self.capacity // 2))

    def take(self, stream_id: StreamId) -> StreamState:
        """A copy of ``stream_id``'s state (stream dim 1); the stream stays open."""
        slot = self._slot(stream_id)
        if not self._stateful:
            return StreamState(self._fresh_one)
        return StreamState(take_streams(self.state, torch.tensor([slot], device=self.device)))

    def put(self, stream_id: StreamId, stream_state: StreamState) -> None:
        """Overwrite open ``stream_id``'s state with ``stream_state`` (from `take`)."""
        slot = self._slot(stream_id)
        one = self._check_stream_state(stream_state)
        if self._stateful:
            self.state = put_streams(self.state, torch.tensor([slot], device=self.device), one)

    def _slot(self, stream_id) -> int:
        try:
            return self.slot_of[stream_id]
        except (KeyError, TypeError):
            raise StreamIdError(f"StreamSlots: no open stream {stream_id!r}") from None

    def _check_stream_state(self, stream_state) -> Any:
        state = stream_state.state if isinstance(stream_state, StreamState) else stream_state
        want, spec = optree.tree_flatten(self._fresh_one, namespace=TREE_NAMESPACE)
        got, got_spec = optree.tree_flatten(state, namespace=TREE_NAMESPACE)
        if got_spec != spec:
            raise StateError(f"{self.layer.label}: a stream state structured as {got_spec}, expected {spec}")
        for i, (w, g) in enumerate(zip(want, got)):
            if w.shape != g.shape or w.dtype != g.dtype:
                raise StateError(f"{self.layer.label}: stream state leaf {i} should have shape {tuple(w.shape)} and "
                                 f"dtype {w.dtype}, got {tuple(g.shape)} and {g.dtype}")
        return tree_map(lambda t: t.to(self.device), state)

    # --- stepping -------------------------------------------------------------------------------
    def tick(self, slots: Sequence[int], frames: Tensor) -> Tuple[Tensor, Tensor]:
        """Step ``slots`` with ``frames: (len(slots), C, *S)``, pausing every other slot.

        Returns ``(y, valid)`` for the given slots, in their order. The step runs on a batch of
        the next power of two of ``len(slots)`` streams: all slots when that is the capacity
        (paused ones masked), otherwise the stepped slots taken out of the state (filled up with
        paused ones, masked) and put back, so idle slots cost nothing and a compiled step sees
        at most ``log2(capacity) + 1`` batch shapes.
        """
        n = len(slots)
        frames = frames.to(self.device)
        bucket = _next_power_of_two(n)
        with torch.no_grad():
            if n == self.capacity and all(s == i for i, s in enumerate(slots)):
                return self._step_all(frames, torch.ones(n, dtype=torch.bool, device=self.device), n)
            index = torch.as_tensor(slots, dtype=torch.long, device=self.device)
            if bucket >= self.capacity:
                x = frames.new_zeros((self.capacity,) + self.frame_shape).index_copy_(0, index, frames)
                active = torch.zeros(self.capacity, dtype=torch.bool, device=self.device).index_fill_(0, index, True)
                y, valid = self._step_all(x, active, self.capacity)
                return y.index_select(0, index), valid.index_select(0, index)
            # A sub-batch: the stepped slots, then paused ones up to the bucket size.
            chosen = set(slots)
            fill = [s for s in range(self.capacity) if s not in chosen][: bucket - n]
            index = torch.as_tensor(list(slots) + fill, dtype=torch.long, device=self.device)
            x = torch.cat([frames, frames.new_zeros((bucket - n,) + self.frame_shape)]) if fill else frames
            active = torch.arange(bucket, device=self.device) < n
            self.capacities_used.add(bucket)
            sub = take_streams(self.state, index) if self._stateful else self.state
            y, valid, sub = self._tick(self.params, sub, x, active)
            if self._stateful:
                self.state = put_streams(self.state, index, sub)
            valid = torch.broadcast_to(valid, (bucket,))
            return y[:n], valid[:n]

    def _step_all(self, x: Tensor, active: Tensor, n: int) -> Tuple[Tensor, Tensor]:
        self.capacities_used.add(self.capacity)
        y, valid, self.state = self._tick(self.params, self.state, x, active)
        return y, torch.broadcast_to(valid, (n,))
