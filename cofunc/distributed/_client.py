"""`RayStreamRunner`: the stream runner's interface over shards in a Ray cluster.

The client (in the driver) owns the frames: ``push`` appends to the stream's log, ``tick``
sends each stream's next frame to the stream's shard (one call per shard, all shards at
once) and returns the valid outputs. A stream keeps its shard for its whole life unless moved
(``migrate``, ``drain``, ``rebalance``); new streams go to the shard with the fewest.

Recovery: a stream's log holds every frame from its shard's last checkpoint on, sent or not.
When a shard dies, its streams are restored (on the same shard once Ray restarts it, or on the
live shards if it does not come back) from that checkpoint, and the log is sent again from the
restored frame count. Outputs carry their index in the stream, so the ones a replay produces
again are recognised and dropped: every stream's delivered outputs are those of a fault-free
run, none missing, none twice.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import time
from typing import Any, Deque, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .._runner import check_frame
from .._errors import ConfigurationError, InputShapeError, StateError, StreamIdError
from .._metrics import RunnerMetrics
from .._runner import StreamOutput
from ._shard import Shard
from ._store import DirectoryStore

logger = logging.getLogger("cofunc.distributed")
StreamId = Union[str, int]


def _ray():
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigurationError("cofunc.distributed needs Ray: pip install 'cofunc-torch[ray]'") from e
    return ray


@dataclasses.dataclass
class _Stream:
    key: int  # the id on the shard: unique per session, so a reopened id never meets old state
    shard: str
    log: Deque[Tensor] = dataclasses.field(default_factory=collections.deque)
    log_start: int = 0  # frame index of log[0] (the frames its shard's checkpoint holds)
    next_send: int = 0  # frame index of the next frame to send
    delivered: int = 0  # outputs delivered so far (the next output's index)
    stepped: int = 0  # frames stepped before, at most (next_send rewinds when a shard is restored)

    @property
    def pushed(self) -> int:
        return self.log_start + len(self.log)


@dataclasses.dataclass
class _Shard:
    name: str
    actor: Any
    keys: set = dataclasses.field(default_factory=set)
    opens: List[int] = dataclasses.field(default_factory=list)
    closes: List[int] = dataclasses.field(default_factory=list)
    draining: bool = False
    checkpoint_time: Optional[float] = None
    recoveries: int = 0


class RayStreamRunner:
    """Many streams by id over ``shards`` Ray actors, each a `StreamRunner` of the same model.

    Args:
        model, params: as for `StreamRunner` (sent to each shard once, via the object store).
        shards: the number of shard actors to start.
        store: a `DirectoryStore` (or a directory path) for the shards' checkpoints.
        checkpoint_every: a shard checkpoints every this many ticks (its streams' logs hold at
            most this many sent frames each).
        max_restarts: how often Ray restarts a dead shard; after that its streams move to the
            live shards.
        recover_on: where a dead shard's streams are restored: ``"restarted"`` (wait for Ray to
            restart it, up to ``restart_timeout`` seconds; the streams keep their shard) or
            ``"live"`` (at once, on the other shards by least load; the restarted shard comes
            back empty and takes new streams).
        threads: torch threads per shard (default: Ray's, one per requested CPU).
        actor_options: passed to ``ray.remote(...).options`` (``num_cpus``, ``num_gpus``,
            ``resources``, a scheduling strategy to place shards on nodes).
        **runner_kwargs: `StreamRunner` arguments (``frame_shape``, ``dtype``, ``device``,
            ``min_capacity``, ``compile``, ...).

    Needs ``ray.init()`` first (a local cluster, or ``ray.init(address="auto")`` on a node of
    a running cluster).

    Example:
        >>> import ray, torch, tempfile, cofunc
        >>> from cofunc.distributed import RayStreamRunner
        >>> ray.init(num_cpus=2, include_dashboard=False)  # doctest: +SKIP
        >>> layer = cofunc.conv1d(2, 4, 3)
        >>> runner = RayStreamRunner(layer, layer.init_params(), frame_shape=(2,), shards=2,
        ...                          store=tempfile.mkdtemp())  # doctest: +SKIP
        >>> runner.open("cam0")  # doctest: +SKIP
        >>> for t in range(3):
        ...     runner.push("cam0", torch.randn(2))  # doctest: +SKIP
        >>> [(o.stream, o.frame, o.index) for o in runner.run()]  # doctest: +SKIP
        [('cam0', 2, 0)]
    """

    def __init__(self, model, params=None, *, shards: int = 2, store: Union[DirectoryStore, str],
                 checkpoint_every: int = 16, max_restarts: int = 3, recover_on: str = "restarted", threads: Optional[int] = None,
                 actor_options: Optional[dict] = None, restart_timeout: float = 60.0, **runner_kwargs):
        ray = _ray()
        if not ray.is_initialized():
            raise ConfigurationError("RayStreamRunner: call ray.init() first")
        if int(shards) < 1:
            raise ConfigurationError(f"RayStreamRunner: needs at least one shard, got shards={shards}")
        if int(checkpoint_every) < 1:
            raise ConfigurationError(f"RayStreamRunner: checkpoint_every must be >= 1, got {checkpoint_every}")
        if recover_on not in ("restarted", "live"):
            raise ConfigurationError(f"RayStreamRunner: recover_on is 'restarted' or 'live', got {recover_on!r}")
        self.store = store if isinstance(store, DirectoryStore) else DirectoryStore(store)
        self.checkpoint_every = int(checkpoint_every)
        self.max_restarts = int(max_restarts)
        self.recover_on = recover_on
        self.restart_timeout = float(restart_timeout)
        self._threads = threads
        self._actor_options = dict(actor_options or {})
        self._spec = ray.put((model, params, runner_kwargs))  # one copy in the object store, read by every shard
        self._names = (f"shard-{i}" for i in itertools.count())
        self._shards: Dict[str, _Shard] = {}
        self._streams: Dict[StreamId, _Stream] = {}
        self._by_key: Dict[int, StreamId] = {}
        self._keys = itertools.count()
        self.recoveries = 0
        self.recovery_seconds: List[float] = []  # wall time of each recovery
        self.migrations = 0
        self._metrics = RunnerMetrics()
        for _ in range(int(shards)):
            self.add_shard()
        info = ray.get(next(iter(self._shards.values())).actor.describe.remote())
        self.frame_shape = tuple(info["frame_shape"])
        self.dtype = info["dtype"]
        self.label = info["layer"]

    def __repr__(self) -> str:
        label = self.label if len(self.label) <= 60 else self.label[:57] + "..."
        return (f"RayStreamRunner({label}, frame_shape={self.frame_shape}, {self.dtype}, shards={len(self._shards)}, "
                f"streams={len(self)}, pending={self.pending()}, recoveries={self.recoveries})")

    # --- shards -----------------------------------------------------------------------------------
    @property
    def shards(self) -> List[str]:
        """The shards' names."""
        return list(self._shards)

    def shard_of(self, stream_id: StreamId) -> str:
        """The shard a stream lives on."""
        return self._stream(stream_id).shard

    def streams_on(self, shard: str) -> List[StreamId]:
        return [self._by_key[k] for k in sorted(self._shard(shard).keys)]

    def actor(self, shard: str):
        """The shard's Ray actor handle (for operations and fault injection)."""
        return self._shard(shard).actor

    def _shard(self, name: str) -> _Shard:
        try:
            return self._shards[name]
        except KeyError:
            raise ConfigurationError(f"RayStreamRunner: no shard {name!r} (shards: {self.shards})") from None

    def _start(self, name: str):
        ray = _ray()
        options = {"max_restarts": self.max_restarts, "max_task_retries": 0, **self._actor_options}
        return ray.remote(Shard).options(**options).remote(name, self._spec, self.store, self.checkpoint_every,
                                                           self._threads)

    def add_shard(self) -> str:
        """Start one more shard (empty; new streams go to it first); returns its name."""
        name = next(self._names)
        self._shards[name] = _Shard(name, self._start(name))
        return name

    def remove_shard(self, name: str) -> None:
        """Drain ``name`` (its streams move to the others) and stop it."""
        if len(self._shards) < 2:
            raise ConfigurationError("RayStreamRunner: cannot remove the last shard")
        self.drain(name)
        shard = self._shards.pop(name)
        self._flush(shard)
        _ray().kill(shard.actor)
        self.store.remove(name)

    def _live(self) -> List[_Shard]:
        return [s for s in self._shards.values() if not s.draining]

    def _least_loaded(self, exclude: Iterable[str] = ()) -> _Shard:
        exclude = set(exclude)
        candidates = [s for s in self._live() if s.name not in exclude]
        if not candidates:
            raise ConfigurationError("RayStreamRunner: no shard takes new streams (all draining)")
        return min(candidates, key=lambda s: len(s.keys))

    # --- streams ----------------------------------------------------------------------------------
    @property
    def ids(self) -> List[StreamId]:
        return list(self._streams)

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream_id) -> bool:
        return stream_id in self._streams

    def _stream(self, stream_id) -> _Stream:
        try:
            return self._streams[stream_id]
        except (KeyError, TypeError):
            raise StreamIdError(f"RayStreamRunner: no open stream {stream_id!r} (open it first)") from None

    def open(self, stream_id: StreamId) -> None:
        """Open a stream on the least loaded shard (it stays there unless moved)."""
        if isinstance(stream_id, bool) or not isinstance(stream_id, (str, int)):
            raise StreamIdError(f"RayStreamRunner: stream ids are str or int, got {type(stream_id).__name__}")
        if stream_id in self._streams:
            raise StreamIdError(f"RayStreamRunner: stream {stream_id!r} is already open")
        shard = self._least_loaded()
        key = next(self._keys)
        shard.keys.add(key)
        shard.opens.append(key)  # sent with the shard's next call
        self._streams[stream_id] = _Stream(key, shard.name)
        self._by_key[key] = stream_id

    def close(self, stream_id: StreamId) -> int:
        """Close a stream; returns how many pushed frames it had not stepped yet."""
        stream = self._stream(stream_id)
        shard = self._shards[stream.shard]
        shard.keys.discard(stream.key)
        if stream.key in shard.opens:
            shard.opens.remove(stream.key)
        else:
            shard.closes.append(stream.key)
        del self._streams[stream_id], self._by_key[stream.key]
        return stream.pushed - max(stream.next_send, stream.stepped)

    def frames_seen(self, stream_id: StreamId) -> int:
        """Frames of the stream stepped so far (acknowledged by its shard)."""
        s = self._stream(stream_id)
        return max(s.next_send, s.stepped)

    def pending(self, stream_id: Optional[StreamId] = None) -> int:
        """Frames pushed and not stepped yet, for ``stream_id`` (default: all streams)."""
        if stream_id is None:
            return sum(s.pushed - s.next_send for s in self._streams.values())
        s = self._stream(stream_id)
        return s.pushed - s.next_send  # frames to replay count: they are stepped (again) before newer ones

    def log_size(self, stream_id: StreamId) -> int:
        """Frames kept for replay: stepped since the shard's last checkpoint, plus pending."""
        return len(self._stream(stream_id).log)

    def _check_frame(self, stream_id, frame) -> Tensor:
        return check_frame("RayStreamRunner", stream_id, frame, self.frame_shape, self.dtype).cpu()

    def push(self, stream_id: StreamId, frame: Tensor) -> None:
        """Queue one frame ``(C, *S)`` (sent to the stream's shard at the next `tick`)."""
        stream = self._stream(stream_id)
        stream.log.append(self._check_frame(stream_id, frame))

    def push_many(self, stream_ids: Sequence[StreamId], frames: Union[Tensor, Sequence[Tensor]]) -> None:
        """One frame for each of ``stream_ids``; all are checked before any is queued."""
        if len(stream_ids) != len(frames):
            raise InputShapeError(f"RayStreamRunner: {len(stream_ids)} stream ids but {len(frames)} frames")
        streams = [self._stream(i) for i in stream_ids]
        checked = [self._check_frame(i, f) for i, f in zip(stream_ids, frames)]
        for stream, frame in zip(streams, checked):
            stream.log.append(frame)

    # --- stepping ---------------------------------------------------------------------------------
    def tick(self) -> List[StreamOutput]:
        """Send every stream's next frame to its shard, all shards in parallel; returns the valid
        outputs (shard by shard, in slot order). Shards that die are recovered before it returns;
        their streams' frames of this tick are stepped at later ticks."""
        ray = _ray()
        start = time.perf_counter()
        calls, sent = {}, {}
        for shard in self._shards.values():
            streams = [self._streams[self._by_key[k]] for k in sorted(shard.keys)]
            streams = [s for s in streams if s.next_send < s.pushed]
            if not streams and not shard.opens and not shard.closes:
                continue
            frames = torch.stack([s.log[s.next_send - s.log_start] for s in streams]) if streams else None
            calls[shard.name] = shard.actor.step.remote(shard.opens, shard.closes, [s.key for s in streams], frames)
            sent[shard.name] = streams
            shard.opens, shard.closes = [], []
        outputs, failed = [], []
        for name, ref in calls.items():
            try:
                raw, ack = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                logger.warning("shard %s failed during a tick (%s): recovering", name, type(e).__name__)
                failed.append(name)
                continue
            for s in sent[name]:
                s.next_send += 1
                s.stepped = max(s.stepped, s.next_send)
            outputs.extend(self._deliver(raw))
            self._acknowledge(self._shards[name], ack)
        for name in failed:
            self._recover(name)
        if sent:
            self._metrics.record(time.perf_counter() - start, sum(len(v) for v in sent.values()))
        return outputs

    def run(self, max_ticks: Optional[int] = None) -> List[StreamOutput]:
        """Tick until every pushed frame is stepped (or ``max_ticks`` ticks)."""
        outputs: List[StreamOutput] = []
        ticks = 0
        while self.pending() and (max_ticks is None or ticks < max_ticks):
            outputs.extend(self.tick())
            ticks += 1
        return outputs

    def _deliver(self, raw) -> List[StreamOutput]:
        out = []
        for key, frame, index, value in raw:
            stream_id = self._by_key.get(key)
            if stream_id is None:  # closed while the call was under way
                continue
            stream = self._streams[stream_id]
            if index < stream.delivered:  # produced again by a replay: delivered before
                continue
            if index > stream.delivered:
                raise StateError(f"RayStreamRunner: stream {stream_id!r} skipped outputs {stream.delivered}.."
                                 f"{index - 1} (a replay started after frames it needed)")
            stream.delivered += 1
            out.append(StreamOutput(stream_id, frame, index, value))
        return out

    def _acknowledge(self, shard: _Shard, ack) -> None:
        """Drop the logged frames that ``shard``'s new checkpoint holds."""
        if ack is None:
            return
        shard.checkpoint_time = ack["time"]
        for key, frames in ack["frames"].items():
            stream_id = self._by_key.get(key)
            if stream_id is None or key not in shard.keys:
                continue
            stream = self._streams[stream_id]
            for _ in range(min(frames, stream.next_send) - stream.log_start):
                stream.log.popleft()
            stream.log_start = max(stream.log_start, min(frames, stream.next_send))

    # --- recovery ---------------------------------------------------------------------------------
    def _alive(self, shard: _Shard) -> bool:
        """Wait for Ray to restart a dead shard; False if it will not come back."""
        ray = _ray()
        deadline = time.monotonic() + self.restart_timeout
        while time.monotonic() < deadline:
            try:
                ray.get(shard.actor.ping.remote(), timeout=self.restart_timeout)
                return True
            except ray.exceptions.ActorDiedError:
                return False
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                time.sleep(0.05)
        return False

    def _recover(self, name: str) -> None:
        """Restore the streams of dead shard ``name`` from its checkpoint and rewind their logs."""
        ray = _ray()
        start = time.perf_counter()
        shard = self._shards[name]
        shard.opens, shard.closes = [], []
        keys = sorted(shard.keys)
        others = [s for s in self._live() if s.name != name]
        if self.recover_on == "live" and others:
            # Ray restarts the actor in the background; it comes back empty and takes new streams.
            shard.keys = set()
            targets = self._spread(keys, others)
        elif self._alive(shard):
            targets = {name: keys}
        else:
            logger.warning("shard %s did not come back: its %d streams move to the live shards", name, len(keys))
            del self._shards[name]
            if not self._shards:
                raise StateError(f"RayStreamRunner: the last shard, {name}, is gone")
            targets = self._spread(keys, self._live() or list(self._shards.values()))
        for target, tkeys in targets.items():
            t = self._shards[target]
            try:
                ack = ray.get(t.actor.adopt.remote(name, tkeys))
            except ray.exceptions.RayActorError:
                # The target died too: its own streams and these are recovered together.
                t.keys.update(tkeys)
                for key in tkeys:
                    self._streams[self._by_key[key]].shard = target
                self._recover(target)
                continue
            if target != name:
                t.keys.update(tkeys)
            self._rewind(t, tkeys, ack)
        self._shards.get(name, shard).recoveries += 1
        self.recoveries += 1
        self.recovery_seconds.append(time.perf_counter() - start)

    @staticmethod
    def _spread(keys, shards: List[_Shard]) -> Dict[str, List[int]]:
        targets: Dict[str, List[int]] = collections.defaultdict(list)
        load = {s.name: len(s.keys) for s in shards}
        for key in keys:
            target = min(load, key=load.get)
            load[target] += 1
            targets[target].append(key)
        return targets

    def _rewind(self, shard: _Shard, keys, ack) -> None:
        for key in keys:
            stream = self._streams[self._by_key[key]]
            restored = ack["frames"][key]
            if not stream.log_start <= restored <= stream.next_send:
                raise StateError(f"RayStreamRunner: stream {self._by_key[key]!r} was restored at frame {restored} but "
                                 f"its log holds frames {stream.log_start}..{stream.pushed - 1} (sent up to "
                                 f"{stream.next_send - 1}): it cannot continue without a gap")
            stream.shard = shard.name
            stream.next_send = restored
        logger.info("restored %d streams on %s", len(keys), shard.name)
        self._acknowledge(shard, ack)

    # --- moving streams ---------------------------------------------------------------------------
    def _flush(self, shard: _Shard) -> None:
        """Send the shard its queued opens and closes now (before moving streams in or out)."""
        if shard.opens or shard.closes:
            ray = _ray()
            opens, closes = shard.opens, shard.closes
            shard.opens, shard.closes = [], []
            try:
                _, ack = ray.get(shard.actor.step.remote(opens, closes, [], None))
                self._acknowledge(shard, ack)
            except ray.exceptions.RayActorError:
                self._recover(shard.name)

    def migrate(self, stream_ids: Sequence[StreamId], to: str) -> None:
        """Move streams to shard ``to``: their states are taken out of their shards and put into
        ``to``; their outputs continue unchanged."""
        ray = _ray()
        target = self._shard(to)
        streams = [self._stream(i) for i in stream_ids]
        by_source = collections.defaultdict(list)
        for s in streams:
            if s.shard != to:
                by_source[s.shard].append(s)
        for source_name, moving in by_source.items():
            for attempt in range(3):
                source = self._shards[moving[0].shard]
                if source.name == to:
                    break
                self._flush(source)
                self._flush(target)
                keys = [s.key for s in moving]
                try:
                    snapshots = ray.get(source.actor.take.remote(keys))
                except ray.exceptions.RayActorError:
                    self._recover(source.name)
                    continue
                try:
                    ack = ray.get(target.actor.put.remote(snapshots))
                except ray.exceptions.RayActorError:
                    self._recover(to)
                    continue
                source.keys.difference_update(keys)
                source.closes.extend(keys)
                target.keys.update(keys)
                for s in moving:
                    s.shard = to
                self._acknowledge(target, ack)
                self.migrations += len(moving)
                break
            else:
                raise StateError(f"RayStreamRunner: moving streams from {source_name} to {to} failed three times")

    def drain(self, name: str) -> None:
        """Move every stream off shard ``name`` (least loaded shards first) and give it no new
        ones; `remove_shard` then stops it."""
        shard = self._shard(name)
        if not [s for s in self._live() if s.name != name]:
            raise ConfigurationError(f"RayStreamRunner: cannot drain {name}: no other shard takes new streams "
                                     f"(all draining)")
        shard.draining = True
        for key in sorted(shard.keys):
            self.migrate([self._by_key[key]], self._least_loaded(exclude=[name]).name)

    def rebalance(self) -> int:
        """Move streams from the most to the least loaded shards until their stream counts differ
        by at most one; returns how many moved."""
        moved = 0
        while True:
            live = self._live()
            most = max(live, key=lambda s: len(s.keys))
            least = min(live, key=lambda s: len(s.keys))
            if len(most.keys) - len(least.keys) <= 1:
                return moved
            n = (len(most.keys) - len(least.keys)) // 2
            self.migrate([self._by_key[k] for k in sorted(most.keys)[:n]], least.name)
            moved += n

    # --- operations -------------------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        """Shards, streams, per shard the frames per second and tick latency percentiles (inside
        the shard), checkpoint age and recoveries; the client's tick latency (with Ray's
        round trips) and totals."""
        ray = _ray()
        now = time.time()
        refs = {name: s.actor.metrics.remote() for name, s in self._shards.items()}
        shards = {}
        for name, ref in refs.items():
            s = self._shards[name]
            try:
                m = ray.get(ref, timeout=self.restart_timeout)
                alive = True
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                m, alive = {}, False
            shards[name] = {
                "alive": alive,
                "draining": s.draining,
                "streams": len(s.keys),
                "fps": m.get("fps", 0.0),
                "tick_ms_p50": m.get("tick_ms_p50", 0.0),
                "tick_ms_p99": m.get("tick_ms_p99", 0.0),
                "frames": m.get("frames", 0),
                "checkpoint_age_s": None if s.checkpoint_time is None else now - s.checkpoint_time,
                "recoveries": s.recoveries,
            }
        client = self._metrics.snapshot()
        return {
            "shards": len(self._shards),
            "streams": len(self._streams),
            "pending_frames": self.pending(),
            "recoveries": self.recoveries,
            "migrations": self.migrations,
            "fps": client["fps"],
            "tick_ms_p50": client["tick_ms_p50"],
            "tick_ms_p99": client["tick_ms_p99"],
            "per_shard": shards,
        }

    def reset_metrics(self) -> None:
        self._metrics.reset()

    def checkpoint(self) -> None:
        """Checkpoint every shard now (after sending queued opens and closes)."""
        ray = _ray()
        for shard in list(self._shards.values()):
            self._flush(shard)
        refs = {name: s.actor.checkpoint.remote() for name, s in self._shards.items()}
        for name, ref in refs.items():
            try:
                self._acknowledge(self._shards[name], ray.get(ref))
            except ray.exceptions.RayActorError:
                self._recover(name)

    def shutdown(self) -> None:
        """Stop every shard (their checkpoints stay in the store)."""
        ray = _ray()
        for shard in self._shards.values():
            ray.kill(shard.actor)
        self._shards.clear()
