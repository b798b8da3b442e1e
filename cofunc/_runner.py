"""`StreamRunner`: many live streams by id through one continual network, in process.

Streams are opened, fed and closed by id at any time. Frames wait in per-stream queues; each
`tick` gives one frame to every stream that has one, in one batched step, while the others are
paused exactly. Outputs come back per stream with the index of the frame that produced them,
and only once valid (nothing while a stream warms up or on the steps a stride skips). The
whole runner (every stream's state, frame counters, ids and queued frames) saves to a file that
loads without executing code, and a restored runner continues every stream bit-exactly.

The batched state and its slots live in `StreamSlots` (the part a distributed runner reuses);
this class adds the queues, checks, metrics and checkpoints.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Deque, Dict, List, Optional, Sequence, Union

import optree
import torch
from torch import Tensor, nn

from ._checkpoint import params_digest, read_checkpoint, write_checkpoint
from ._errors import ConfigurationError, DTypeDeviceError, InputShapeError, StateError, StreamIdError
from ._layer import Layer
from ._values import TREE_NAMESPACE, tree_map
from ._metrics import RunnerMetrics
from ._slots import StreamSlots, StreamState

StreamId = Union[str, int]
_FORMAT = "cofunc-runner-1"


@dataclasses.dataclass(frozen=True)
class StreamOutput:
    """One valid output of a stream.

    ``frame``: the 0-based index of the stream's frame whose step produced it; ``index``: the
    0-based index of the output in the stream (the clip forward's output frame ``index``);
    ``value``: the output, ``(C', *S')``.
    """

    stream: StreamId
    frame: int
    index: int
    value: Tensor

    def __repr__(self) -> str:
        return (f"StreamOutput(stream={self.stream!r}, frame={self.frame}, index={self.index}, "
                f"value={tuple(self.value.shape)} {self.value.dtype})")


@dataclasses.dataclass(frozen=True)
class StreamSnapshot:
    """Everything about one stream, taken out of a runner (`StreamRunner.take`): its state, how
    many frames it has consumed and outputs it has emitted, and its queued frames."""

    state: StreamState
    frames: int
    outputs: int
    pending: Sequence[Tensor] = ()

    def __repr__(self) -> str:
        return (f"StreamSnapshot(frames={self.frames}, outputs={self.outputs}, pending={len(self.pending)}, "
                f"state={self.state!r})")


@dataclasses.dataclass
class _Stream:
    frames: int = 0
    outputs: int = 0
    pending: Deque[Tensor] = dataclasses.field(default_factory=collections.deque)


def _layer_and_params(model, params):
    if isinstance(model, Layer):
        if params is None:
            raise ConfigurationError("StreamRunner: a Layer needs its params (`StreamRunner(layer, params)`)")
        return model, params
    if isinstance(model, nn.Module) and hasattr(model, "layer") and hasattr(model, "params"):
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) and m.training:
                raise ConfigurationError(
                    f"StreamRunner: {type(m).__name__} in {type(model).__name__} is in training mode and normalises "
                    f"with clip statistics a step cannot see; call .eval() first")
        return model.layer, (model.params if params is None else params)
    raise ConfigurationError(f"StreamRunner: expected a cofunc Layer or a cofunc.nn module, got {type(model).__name__}")


def _reference(params) -> Optional[Tensor]:
    return next((t for t in optree.tree_leaves(params) if isinstance(t, Tensor) and t.is_floating_point()), None)


class StreamRunner:
    """Many streams by id through one continual network, batched per tick.

    Args:
        model: a `cofunc.nn` module (its ``.layer`` and ``.params``; call ``.eval()`` first),
            for example a zoo model, or a `cofunc.Layer` with ``params``.
        params: the layer's params (default: the module's).
        frame_shape: one frame ``(C, *S)``; default: ``model.preprocessing.frame_shape`` (zoo
            video models).
        device, dtype: where and in what the network runs (default: the params'). Frames must
            have this dtype; they are moved to ``device`` when stepped.
        min_capacity: the smallest number of slots (the batch doubles and halves from there).
        compile: compile the batched step (``torch.compile``, one graph per capacity, which is
            a power of two: the compilations stay few as streams come and go).
        log_interval: log `metrics` to the ``cofunc.runner`` logger every this many seconds.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.conv1d(2, 4, 3)
        >>> runner = cofunc.StreamRunner(layer, layer.init_params(), frame_shape=(2,))
        >>> runner.open("cam0"); runner.open("cam1")
        >>> for t in range(3):
        ...     runner.push("cam0", torch.randn(2))
        >>> runner.push("cam1", torch.randn(2))
        >>> [(o.stream, o.frame, o.index) for o in runner.run()]  # cam1 is still warming up
        [('cam0', 2, 0)]
    """

    def __init__(self, model, params=None, *, frame_shape: Optional[Sequence[int]] = None, device=None, dtype=None,
                 min_capacity: int = 4, compile: bool = False, compile_kwargs: Optional[dict] = None,
                 log_interval: Optional[float] = None, metrics_window: int = 1024):
        layer, params = _layer_and_params(model, params)
        if frame_shape is None:
            frame_shape = getattr(getattr(model, "preprocessing", None), "frame_shape", None)
        if frame_shape is None:
            raise ConfigurationError("StreamRunner: give `frame_shape=(C, *S)`, the shape of one frame")
        frame_shape = tuple(int(s) for s in frame_shape)
        if layer.step_rank is None:
            layer = layer.with_rank(len(frame_shape))
        elif layer.step_rank != len(frame_shape):
            raise ConfigurationError(f"StreamRunner: {layer.label} takes frames of {layer.step_rank} dims (C, *S), "
                                     f"got frame_shape {frame_shape}")
        ref = _reference(params)
        dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
        device = torch.device(device) if device is not None else (ref.device if ref is not None else torch.device("cpu"))
        params = tree_map(lambda t: t.detach().to(device=device, dtype=dtype if t.is_floating_point() else None), params)
        self.layer = layer
        self.params = params
        self.frame_shape = frame_shape
        self.device = device
        self.dtype = dtype
        self.slots = StreamSlots(layer, params, frame_shape, device=device, dtype=dtype, min_capacity=min_capacity,
                                 compile=compile, compile_kwargs=compile_kwargs)
        self._streams: Dict[StreamId, _Stream] = {}
        self._metrics = RunnerMetrics(metrics_window, log_interval)

    def __repr__(self) -> str:
        label = self.layer.label if len(self.layer.label) <= 60 else self.layer.label[:57] + "..."
        return (f"StreamRunner({label}, frame_shape={self.frame_shape}, {self.dtype}, {self.device}, "
                f"streams={len(self)}, capacity={self.slots.capacity}, pending={self.pending()}, "
                f"compiled={self.slots.compiled})")

    # --- streams --------------------------------------------------------------------------------
    @property
    def ids(self) -> List[StreamId]:
        """The open streams, in the order they were opened."""
        return list(self._streams)

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream_id) -> bool:
        return stream_id in self._streams

    def open(self, stream_id: StreamId) -> None:
        """Open a stream with a fresh state. Ids are ``str`` or ``int`` (checkpoints store them)."""
        if isinstance(stream_id, bool) or not isinstance(stream_id, (str, int)):
            raise StreamIdError(f"StreamRunner: stream ids are str or int, got {type(stream_id).__name__}")
        if stream_id in self._streams:
            raise StreamIdError(f"StreamRunner: stream {stream_id!r} is already open")
        self.slots.open(stream_id)
        self._streams[stream_id] = _Stream()

    def close(self, stream_id: StreamId) -> int:
        """Close a stream and free its slot; returns how many queued frames were dropped."""
        stream = self._stream(stream_id)
        self.slots.close(stream_id)
        del self._streams[stream_id]
        return len(stream.pending)

    def _stream(self, stream_id) -> _Stream:
        try:
            return self._streams[stream_id]
        except (KeyError, TypeError):
            raise StreamIdError(f"StreamRunner: no open stream {stream_id!r} (open it first)") from None

    def frames_seen(self, stream_id: StreamId) -> int:
        """How many frames the stream has consumed."""
        return self._stream(stream_id).frames

    def pending(self, stream_id: Optional[StreamId] = None) -> int:
        """Frames queued for ``stream_id`` (default: for all streams)."""
        if stream_id is None:
            return sum(len(s.pending) for s in self._streams.values())
        return len(self._stream(stream_id).pending)

    # --- frames in ------------------------------------------------------------------------------
    def _check_frame(self, stream_id, frame) -> Tensor:
        return check_frame("StreamRunner", stream_id, frame, self.frame_shape, self.dtype)

    def push(self, stream_id: StreamId, frame: Tensor) -> None:
        """Queue one frame ``(C, *S)`` for an open stream (stepped at the next `tick`)."""
        stream = self._stream(stream_id)
        stream.pending.append(self._check_frame(stream_id, frame))

    def push_many(self, stream_ids: Sequence[StreamId], frames: Union[Tensor, Sequence[Tensor]]) -> None:
        """Queue one frame for each of ``stream_ids``: ``frames`` is ``(N, C, *S)`` or N frames.

        Everything is checked before anything is queued: a bad id or frame queues nothing.
        """
        if len(stream_ids) != len(frames):
            raise InputShapeError(f"StreamRunner: {len(stream_ids)} stream ids but {len(frames)} frames")
        streams = [self._stream(i) for i in stream_ids]
        checked = [self._check_frame(i, f) for i, f in zip(stream_ids, frames)]
        for stream, frame in zip(streams, checked):
            stream.pending.append(frame)

    # --- stepping -------------------------------------------------------------------------------
    def tick(self) -> List[StreamOutput]:
        """Step every stream that has a queued frame (one frame each) in one batched step.

        Returns the valid outputs, in slot order.
        """
        ready = [(self.slots.slot_of[i], i, s) for i, s in self._streams.items() if s.pending]
        if not ready:
            return []
        start = time.perf_counter()
        ready.sort(key=lambda r: r[0])
        frames = torch.stack([s.pending.popleft() for _, _, s in ready])
        y, valid = self.slots.tick([slot for slot, _, _ in ready], frames)
        outputs = []
        for (_, stream_id, stream), value, ok in zip(ready, y.unbind(0), valid.tolist()):
            stream.frames += 1
            if ok:
                outputs.append(StreamOutput(stream_id, stream.frames - 1, stream.outputs, value))
                stream.outputs += 1
        self._metrics.record(time.perf_counter() - start, len(ready), self._gauges)
        return outputs

    def run(self, max_ticks: Optional[int] = None) -> List[StreamOutput]:
        """Tick until no frame is queued (or ``max_ticks`` ticks); all valid outputs, in order."""
        outputs: List[StreamOutput] = []
        ticks = 0
        while self.pending() and (max_ticks is None or ticks < max_ticks):
            outputs.extend(self.tick())
            ticks += 1
        return outputs

    # --- metrics --------------------------------------------------------------------------------
    def _gauges(self) -> Dict[str, Any]:
        return {
            "streams_open": len(self._streams),
            "capacity": self.slots.capacity,
            "pending_frames": self.pending(),
            "state_bytes": self.slots.state_bytes(),
            "compiled_capacities": len(self.slots.capacities_used) if self.slots.compiled else 0,
        }

    def metrics(self) -> Dict[str, Any]:
        """``frames``, ``ticks``, ``fps``, ``tick_ms_p50``, ``tick_ms_p99`` (over the last
        ``metrics_window`` ticks), ``streams_open``, ``capacity``, ``pending_frames``,
        ``state_bytes`` and ``compiled_capacities`` (graphs compiled, when compiled)."""
        return self._metrics.snapshot(self._gauges())

    def reset_metrics(self) -> None:
        self._metrics.reset()

    # --- moving streams -------------------------------------------------------------------------
    def take(self, stream_id: StreamId, *, close: bool = False) -> StreamSnapshot:
        """A snapshot of one stream (state, counters, queued frames); ``close=True`` also closes
        it, so it can move to another runner with `put`."""
        stream = self._stream(stream_id)
        snapshot = StreamSnapshot(self.slots.take(stream_id), stream.frames, stream.outputs, tuple(stream.pending))
        if close:
            self.close(stream_id)
        return snapshot

    def put(self, stream_id: StreamId, snapshot: StreamSnapshot) -> None:
        """Open ``stream_id`` from a `StreamSnapshot` (of a runner of the same network)."""
        if stream_id in self._streams:
            raise StreamIdError(f"StreamRunner: stream {stream_id!r} is already open")
        pending = [self._check_frame(stream_id, f) for f in snapshot.pending]
        self.open(stream_id)
        try:
            self.slots.put(stream_id, snapshot.state)
        except StateError:
            self.close(stream_id)
            raise
        self._streams[stream_id] = _Stream(snapshot.frames, snapshot.outputs, collections.deque(pending))

    # --- checkpoints ----------------------------------------------------------------------------
    def save(self, path, *, format: Optional[str] = None) -> None:
        """Save the whole runner to ``path`` (a path or binary file): safetensors with a JSON
        header, or for ``.pt`` / ``.pth`` paths (or ``format="torch"``) a ``torch.save`` file that
        loads with ``weights_only=True``. Neither executes code on load."""
        leaves, spec = optree.tree_flatten(self.slots.state, namespace=TREE_NAMESPACE)
        tensors = {f"state.{i}": leaf for i, leaf in enumerate(leaves)}
        pending = [f for s in self._streams.values() for f in s.pending]
        if pending:
            tensors["pending"] = torch.stack(pending)
        header = {
            "format": _FORMAT,
            "layer": self.layer.label,
            "structure": str(spec),
            "frame_shape": list(self.frame_shape),
            "dtype": str(self.dtype),
            "capacity": self.slots.capacity,
            "params_sha256": params_digest(self.params),
            "streams": [{"id": i, "slot": self.slots.slot_of[i], "frames": s.frames, "outputs": s.outputs,
                         "pending": len(s.pending)} for i, s in self._streams.items()],
        }
        write_checkpoint(path, header, tensors, format)

    def restore(self, path, *, check_params: bool = True) -> None:
        """Replace every stream with those saved in ``path`` by `save`.

        The file is checked against this runner's network before anything changes: the layer,
        frame shape, dtype, the state's structure, shapes and dtypes, and (``check_params``) the
        params' digest (other weights would not continue the streams). Raises `StateError`.
        """
        header, tensors = read_checkpoint(path)
        label = self.layer.label
        if header.get("format") != _FORMAT:
            raise StateError(f"StreamRunner({label}): expected a runner checkpoint ({_FORMAT!r}), got {header.get('format')!r}")
        if header["layer"] != label:
            raise StateError(f"StreamRunner({label}): the checkpoint belongs to another network, {header['layer']}")
        if tuple(header["frame_shape"]) != self.frame_shape or header["dtype"] != str(self.dtype):
            raise StateError(f"StreamRunner({label}): the checkpoint has frames {tuple(header['frame_shape'])} of "
                             f"{header['dtype']}, this runner {self.frame_shape} of {self.dtype}")
        if check_params and header["params_sha256"] != params_digest(self.params):
            raise StateError(f"StreamRunner({label}): the checkpoint was saved with other weights (params digest "
                             f"differs); load the same weights, or pass check_params=False")
        capacity = int(header["capacity"])
        template = self.slots.init_state(capacity)
        want, spec = optree.tree_flatten(template, namespace=TREE_NAMESPACE)
        if str(spec) != header["structure"]:
            raise StateError(f"StreamRunner({label}): the saved state is structured as {header['structure']}, expected {spec}")
        leaves = []
        for i, w in enumerate(want):
            got = tensors.get(f"state.{i}")
            if got is None or got.shape != w.shape or got.dtype != w.dtype:
                what = "missing" if got is None else f"{tuple(got.shape)} {got.dtype}"
                raise StateError(f"StreamRunner({label}): state leaf {i} should be {tuple(w.shape)} {w.dtype}, got {what}")
            leaves.append(got.to(self.device))
        streams = header["streams"]
        slots = [s["slot"] for s in streams]
        ids = [s["id"] for s in streams]
        n_pending = sum(s["pending"] for s in streams)
        frames = tensors.get("pending")
        if (len(set(slots)) != len(slots) or any(not 0 <= s < capacity for s in slots) or len(set(ids)) != len(ids)
                or n_pending != (0 if frames is None else frames.shape[0])):
            raise StateError(f"StreamRunner({label}): the checkpoint's stream table is inconsistent")
        if frames is not None and (tuple(frames.shape[1:]) != self.frame_shape or frames.dtype != self.dtype):
            raise StateError(f"StreamRunner({label}): the checkpoint's queued frames are {tuple(frames.shape[1:])} "
                             f"{frames.dtype}, expected {self.frame_shape} {self.dtype}")
        # Checked: now replace everything.
        self.slots.load(optree.tree_unflatten(spec, leaves), capacity, dict(zip(ids, slots)))
        self._streams = {}
        offset = 0
        for s in streams:
            queued = collections.deque(frames[offset: offset + s["pending"]].unbind(0)) if s["pending"] else collections.deque()
            offset += s["pending"]
            self._streams[s["id"]] = _Stream(s["frames"], s["outputs"], queued)


def check_frame(owner: str, stream_id, frame, frame_shape, dtype) -> Tensor:
    """``frame`` detached, after checking it is a tensor of shape ``frame_shape`` = ``(C, *S)``
    and dtype ``dtype`` (the runners' one check of what a stream is fed)."""
    if not isinstance(frame, Tensor):
        raise InputShapeError(f"{owner}: stream {stream_id!r} got a {type(frame).__name__}, expected a tensor "
                              f"frame of shape {frame_shape}")
    if tuple(frame.shape) != frame_shape:
        raise InputShapeError(f"{owner}: stream {stream_id!r} takes frames of shape (C, *S) = "
                              f"{frame_shape}, got shape {tuple(frame.shape)}")
    if frame.dtype != dtype:
        raise DTypeDeviceError(f"{owner}: stream {stream_id!r} takes frames of dtype {dtype}, got {frame.dtype}")
    return frame.detach()
