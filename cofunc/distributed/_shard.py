"""A shard: one `StreamRunner` inside a Ray actor, for a subset of the streams.

The shard holds the model once and steps its streams in one batched tick per call. It never
queues frames: the client sends at most one frame per stream and call, so everything a shard
holds between calls is in its checkpoint, and the frames after it are in the client's replay
log. Every ``checkpoint_every`` ticks (and after streams are put into it) the shard saves its
runner to the store and returns the saved frame counts, which lets the client drop the frames
the checkpoint covers. A checkpoint never covers a frame whose output the client has not
received (it is taken before a call's step, not after).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .._runner import StreamRunner, StreamSnapshot
from ._store import DirectoryStore

Ack = Dict[str, Any]  # {"frames": {key: frames consumed when saved}, "time": unix time}
RawOutput = Tuple[Any, int, int, torch.Tensor]  # (key, frame, index, value)


class Shard:
    """The body of a shard actor (``ray.remote(Shard)``; usable in process, for tests and
    debugging). ``spec`` is ``(model, params, runner_kwargs)`` for `StreamRunner`."""

    def __init__(self, name: str, spec, store: DirectoryStore, checkpoint_every: int, threads: Optional[int] = None):
        if threads is not None:
            torch.set_num_threads(threads)
        model, params, kwargs = spec
        self.name = name
        self.runner = StreamRunner(model, params, **kwargs)
        self.store = store
        self.checkpoint_every = checkpoint_every
        self.ticks_since_checkpoint = 0
        self.checkpoints = 0
        self._fault: Optional[str] = None
        self.started = time.time()

    def __repr__(self) -> str:
        return f"Shard({self.name!r}, streams={len(self.runner)}, pid={os.getpid()})"

    def describe(self) -> Dict[str, Any]:
        r = self.runner
        return {"frame_shape": r.frame_shape, "dtype": r.dtype, "layer": r.layer.label, "pid": os.getpid(),
                "node": _node_ip()}

    def ping(self) -> int:
        return os.getpid()

    # --- the per-tick call ------------------------------------------------------------------------
    def step(self, opens: Sequence, closes: Sequence, keys: Sequence, frames: Optional[torch.Tensor]
             ) -> Tuple[List[RawOutput], Optional[Ack]]:
        """Open and close streams, checkpoint if ``checkpoint_every`` ticks have passed, then step
        ``keys`` with ``frames: (len(keys), C, *S)``.

        Returns the valid outputs and the checkpoint's frame counts (or None). The checkpoint
        comes before the step: it then holds only frames whose outputs the client has received,
        so a shard that dies after saving never takes outputs with it.
        """
        for key in closes:
            if key in self.runner:
                self.runner.close(key)
        for key in opens:
            self.runner.open(key)
        ack = None
        if self._fault or (self.checkpoint_every and self.ticks_since_checkpoint >= self.checkpoint_every):
            ack = self.checkpoint()
        outputs: List[RawOutput] = []
        if keys:
            self.runner.push_many(list(keys), frames)
            outputs = [(o.stream, o.frame, o.index, o.value) for o in self.runner.tick()]
            self.ticks_since_checkpoint += 1
        return outputs, ack

    def checkpoint(self) -> Ack:
        frames = {key: self.runner.frames_seen(key) for key in self.runner.ids}
        fault, self._fault = self._fault, None
        before = (lambda: os._exit(1)) if fault == "checkpoint" else None
        self.store.save(self.name, self.runner, _before_rename=before)
        if fault == "after-checkpoint":
            os._exit(1)
        self.ticks_since_checkpoint = 0
        self.checkpoints += 1
        return {"frames": frames, "time": time.time()}

    # --- moving streams ---------------------------------------------------------------------------
    def take(self, keys: Sequence) -> Dict[Any, StreamSnapshot]:
        """Snapshots of ``keys`` (they stay open until the client closes them here)."""
        return {key: self.runner.take(key) for key in keys}

    def put(self, snapshots: Dict[Any, StreamSnapshot]) -> Ack:
        """Open streams from snapshots, then checkpoint (so the client's log restarts there)."""
        for key, snapshot in snapshots.items():
            if key in self.runner:
                self.runner.close(key)
            self.runner.put(key, snapshot)
        return self.checkpoint()

    def adopt(self, source: str, keys: Sequence) -> Ack:
        """Restore ``keys`` from shard ``source``'s last checkpoint (fresh if it does not hold
        them), close any stream here that ``keys`` does not list when ``source`` is this shard,
        and checkpoint. The ack's frame counts tell the client where to replay from."""
        keys = list(keys)
        if source == self.name:
            if not self.store.load(source, self.runner):
                for key in self.runner.ids:
                    self.runner.close(key)
            wanted = set(keys)
            for key in self.runner.ids:
                if key not in wanted:
                    self.runner.close(key)
            for key in keys:
                if key not in self.runner:
                    self.runner.open(key)
        else:
            saved = StreamRunner(self.runner.layer, self.runner.params, frame_shape=self.runner.frame_shape,
                                 dtype=self.runner.dtype, device=self.runner.device)
            self.store.load(source, saved)
            for key in keys:
                if key in self.runner:
                    self.runner.close(key)
                if key in saved:
                    self.runner.put(key, saved.take(key))
                else:
                    self.runner.open(key)
        self.ticks_since_checkpoint = 0
        return self.checkpoint()

    # --- operations -------------------------------------------------------------------------------
    def metrics(self) -> Dict[str, Any]:
        m = self.runner.metrics()
        m.update(checkpoints=self.checkpoints, pid=os.getpid(), uptime_s=time.time() - self.started)
        return m

    def inject_fault(self, where: str) -> None:
        """Test hook: checkpoint at the next `step` and die (``os._exit``) in it: ``"checkpoint"``
        between writing the file and renaming it, ``"after-checkpoint"`` once it is in place."""
        self._fault = where


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # in process, without Ray
        return "local"
