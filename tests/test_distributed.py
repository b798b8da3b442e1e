"""RayStreamRunner on a local Ray cluster: equal outputs to the embedded runner over many
streams, shards killed at random ticks and in the middle of a checkpoint, migration, draining.

Marked ``ray``: `make test` runs these inside a private network namespace (`unshare -n`), so the
cluster is reachable on loopback only. Outside one, the cluster fixture skips with a message.
"""

from __future__ import annotations

import collections
import random

import pytest
import torch

import cofunc

ray = pytest.importorskip("ray")
from cofunc.distributed import DirectoryStore, RayStreamRunner  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def small_cnn():
    """A small 3D CNN in float64 (bitwise equal outputs whatever the batch): padded, strided."""
    layer = cofunc.seq(
        cofunc.conv3d(2, 4, 3, padding=(1, 1, 1)),
        cofunc.lift(torch.relu),
        cofunc.conv3d(4, 3, (3, 3, 3), stride=(2, 1, 1), padding=(1, 0, 0)),
    )
    params = cofunc.tree_map(lambda t: t.double(), layer.init_params())
    return layer, params


FRAME = (2, 4, 4)


class Sessions:
    """Drives a runner and records every stream session: its frames and its delivered outputs."""

    def __init__(self, runner, seed=0):
        self.runner = runner
        self.g = torch.Generator().manual_seed(seed)
        self.live = {}
        self.done = []

    def open(self, sid):
        self.runner.open(sid)
        self.live[sid] = {"id": sid, "frames": [], "outputs": []}

    def push(self, sid):
        frame = torch.randn(FRAME, generator=self.g, dtype=torch.float64)
        self.runner.push(sid, frame)
        self.live[sid]["frames"].append(frame)

    def close(self, sid):
        dropped = self.runner.close(sid)
        session = self.live.pop(sid)
        session["consumed"] = len(session["frames"]) - dropped
        self.done.append(session)

    def collect(self, outputs):
        for o in outputs:
            self.live[o.stream]["outputs"].append(o)

    def finish(self):
        self.collect(self.runner.run())
        for sid in list(self.live):
            self.close(sid)
        return self.done


def assert_equal_to_embedded(sessions, layer, params):
    """Every session's delivered outputs are the embedded runner's on the frames it consumed:
    the same frame indices and output indices, bitwise equal values, nothing missing or twice."""
    embedded = cofunc.StreamRunner(layer, params, frame_shape=FRAME)
    for n, s in enumerate(sessions):
        embedded.open(n)
        for f in s["frames"][: s["consumed"]]:
            embedded.push(n, f)
    expected = collections.defaultdict(list)
    for o in embedded.run():
        expected[o.stream].append(o)
    assert sum(len(v) for v in expected.values()) > 0
    for n, s in enumerate(sessions):
        got, want = s["outputs"], expected[n]
        assert [o.index for o in got] == list(range(len(want))), f"stream {s['id']}: indices {[o.index for o in got]}"
        assert [o.frame for o in got] == [o.frame for o in want]
        for a, b in zip(got, want):
            assert a.stream == s["id"]
            assert torch.equal(a.value, b.value), f"stream {s['id']} output {a.index} differs"


def random_schedule(sessions, rng, ticks, ids, hook=lambda t: None, p_open=0.15, p_close=0.03):
    """Streams open at random ticks, push 1-2 frames at random, some close and reopen."""
    for t in range(ticks):
        for sid in ids:
            if sid not in sessions.live:
                if rng.random() < p_open:
                    sessions.open(sid)
            elif rng.random() < p_close:
                sessions.close(sid)
            else:
                for _ in range(rng.choice([0, 1, 1, 2])):
                    sessions.push(sid)
        hook(t)
        sessions.collect(sessions.runner.tick())


def test_many_streams_on_three_shards_equal_the_embedded_runner(cluster, tmp_path):
    layer, params = small_cnn()
    runner = RayStreamRunner(layer, params, frame_shape=FRAME, shards=3, store=tmp_path, checkpoint_every=4)
    try:
        sessions = Sessions(runner)
        ids = [f"cam{i}" for i in range(20)] + list(range(20))
        random_schedule(sessions, random.Random(1), 30, ids)
        status = runner.status()
        counts = [s["streams"] for s in status["per_shard"].values()]
        assert status["shards"] == 3 and sum(counts) == len(runner) and max(counts) - min(counts) <= len(runner) // 2
        done = sessions.finish()
        assert_equal_to_embedded(done, layer, params)
        assert len(done) > 40 and status["recoveries"] == 0
    finally:
        runner.shutdown()


def test_shards_killed_at_random_ticks_and_mid_checkpoint_lose_and_repeat_nothing(cluster, tmp_path):
    layer, params = small_cnn()
    runner = RayStreamRunner(layer, params, frame_shape=FRAME, shards=2, store=tmp_path, checkpoint_every=3,
                             max_restarts=10)
    rng = random.Random(7)
    kills = dict.fromkeys(rng.sample(range(3, 40), 2), "kill")
    kills[20] = "checkpoint"  # dies between writing the checkpoint and putting it in place
    kills[31] = "after-checkpoint"  # dies with the new checkpoint in place, before acknowledging it
    seen = []

    def fault(t):
        if t in kills:
            shard = rng.choice(runner.shards)
            seen.append((t, kills[t], shard, runner.status()["recoveries"]))
            if kills[t] == "kill":
                ray.kill(runner.actor(shard), no_restart=False)
            else:
                ray.get(runner.actor(shard).inject_fault.remote(kills[t]))

    try:
        sessions = Sessions(runner, seed=3)
        random_schedule(sessions, rng, 45, list(range(12)), hook=fault, p_close=0.01)
        done = sessions.finish()
        status = runner.status()
        assert status["recoveries"] >= len(kills), (status, seen)
        assert all(s["alive"] for s in status["per_shard"].values())
        assert_equal_to_embedded(done, layer, params)
        # every log is bounded by the checkpoint interval (plus the frames not sent yet)
    finally:
        runner.shutdown()


@pytest.mark.parametrize("recover_on, max_restarts", [("live", 3), ("restarted", 0)])
def test_streams_of_a_dead_shard_are_restored_on_the_live_one(cluster, tmp_path, recover_on, max_restarts):
    """recover_on="live" moves them at once; a shard Ray will not restart hands them over too."""
    layer, params = small_cnn()
    runner = RayStreamRunner(layer, params, frame_shape=FRAME, shards=2, store=tmp_path, checkpoint_every=2,
                             max_restarts=max_restarts, recover_on=recover_on)
    try:
        sessions = Sessions(runner, seed=5)
        for i in range(6):
            sessions.open(i)
        for t in range(9):
            for i in range(6):
                sessions.push(i)
            if t == 5:
                victim = runner.shard_of(0)
                ray.kill(runner.actor(victim), no_restart=max_restarts == 0)
            sessions.collect(runner.tick())
            for i in range(6):
                assert runner.log_size(i) - runner.pending(i) <= 2  # sent frames kept: one checkpoint's worth
        survivor = "shard-1" if victim == "shard-0" else "shard-0"
        assert runner.shards == ([survivor] if max_restarts == 0 else ["shard-0", "shard-1"])
        assert len(runner.streams_on(survivor)) == 6 and runner.status()["recoveries"] == 1
        if recover_on == "live":  # the restarted shard is empty and takes the next streams
            sessions.open("late")
            assert runner.shard_of("late") == victim
            for _ in range(4):
                sessions.push("late")
        assert_equal_to_embedded(sessions.finish(), layer, params)
    finally:
        runner.shutdown()


def check_errors(runner):
    """Bad calls raise cofunc's errors with clear messages and change nothing."""
    runner.open("a")
    with pytest.raises(cofunc.StreamIdError, match="already open"):
        runner.open("a")
    with pytest.raises(cofunc.StreamIdError, match="no open stream 'b'"):
        runner.push("b", torch.zeros(FRAME, dtype=torch.float64))
    with pytest.raises(cofunc.InputShapeError, match=r"\(2, 4, 4\), got shape \(2, 4\)"):
        runner.push("a", torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(cofunc.DTypeDeviceError, match="float64, got torch.float32"):
        runner.push_many(["a"], torch.zeros((1,) + FRAME))
    with pytest.raises(cofunc.StreamIdError, match="str or int"):
        runner.open(1.5)
    with pytest.raises(cofunc.ConfigurationError, match="no shard 'shard-9'"):
        runner.migrate(["a"], "shard-9")
    with pytest.raises(cofunc.ConfigurationError, match="recover_on is 'restarted' or 'live'"):
        RayStreamRunner(*small_cnn(), frame_shape=FRAME, store="/tmp/x", recover_on="elsewhere")
    assert runner.pending() == 0 and runner.close("a") == 0
    print(runner)
    assert "shards=2" in repr(runner) and "streams=0" in repr(runner)


def test_migration_under_load_draining_and_new_shards(cluster, tmp_path):
    layer, params = small_cnn()
    runner = RayStreamRunner(layer, params, frame_shape=FRAME, shards=2, store=DirectoryStore(tmp_path),
                             checkpoint_every=5)
    rng = random.Random(11)
    try:
        check_errors(runner)
        sessions = Sessions(runner, seed=9)

        def operate(t):
            if t == 6:  # move a few streams under load, some with frames queued
                ids = sorted(runner.ids, key=str)[:4]
                runner.migrate(ids, "shard-1")
                assert all(runner.shard_of(i) == "shard-1" for i in ids)
            if t == 12:
                assert runner.add_shard() == "shard-2"
                moved = runner.rebalance()
                counts = [len(runner.streams_on(s)) for s in runner.shards]
                assert moved > 0 and max(counts) - min(counts) <= 1
            if t == 18:
                runner.drain("shard-0")
                assert runner.streams_on("shard-0") == []
            if t == 19:
                for i in range(30, 34):  # new streams avoid the draining shard
                    sessions.open(i)
                    assert runner.shard_of(i) != "shard-0"
            if t == 22:
                runner.remove_shard("shard-0")
                assert runner.shards == ["shard-1", "shard-2"]
            if t == 26:
                runner.drain("shard-2")
                with pytest.raises(cofunc.ConfigurationError, match="all draining"):
                    runner.drain("shard-1")
                runner.remove_shard("shard-2")
                with pytest.raises(cofunc.ConfigurationError, match="last shard"):
                    runner.remove_shard("shard-1")

        random_schedule(sessions, rng, 30, list(range(16)), hook=operate, p_open=0.3)
        status = runner.status()
        assert status["migrations"] > 0 and status["shards"] == 1
        assert_equal_to_embedded(sessions.finish(), layer, params)
    finally:
        runner.shutdown()
