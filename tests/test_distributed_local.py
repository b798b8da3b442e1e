"""The parts of cofunc.distributed that run without a cluster: the checkpoint store (atomic,
a shard dying mid-write leaves the previous checkpoint), a shard's calls in process, and the
wire format of the ingress (bit-exact round trips, clear errors)."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

import cofunc
from cofunc.distributed import DirectoryStore, Shard
from cofunc.distributed._wire import WireError, decode_frames, decode_output, encode_frames, encode_output


def net():
    layer = cofunc.seq(cofunc.conv1d(2, 3, 3, padding=1), cofunc.lift(torch.relu), cofunc.conv1d(3, 2, 3, stride=2))
    return layer, cofunc.tree_map(lambda t: t.double(), layer.init_params())


def test_store_keeps_the_previous_checkpoint_when_a_write_dies(tmp_path):
    layer, params = net()
    store = pickle.loads(pickle.dumps(DirectoryStore(tmp_path)))
    print(store)
    runner = cofunc.StreamRunner(layer, params, frame_shape=(2,))
    runner.open("a")
    store.save("s", runner)
    runner.open("b")

    class Died(Exception):
        pass

    def die():
        raise Died

    with pytest.raises(Died):
        store.save("s", runner, _before_rename=die)
    restored = cofunc.StreamRunner(layer, params, frame_shape=(2,))
    assert store.load("s", restored) and restored.ids == ["a"]
    assert not store.load("other", restored) and restored.ids == ["a"]
    store.remove("s")
    assert not os.path.exists(store.file("s"))
    with pytest.raises(cofunc.ConfigurationError, match="directory path"):
        DirectoryStore(3)


def test_a_shard_in_process_steps_checkpoints_and_adopts(tmp_path):
    layer, params = net()
    store = DirectoryStore(tmp_path)
    shard = Shard("s0", (layer, params, {"frame_shape": (2,)}), store, checkpoint_every=2)
    print(shard)
    frames = torch.randn(6, 2, 2, dtype=torch.float64)
    acks = []
    outputs = []
    for t in range(6):
        out, ack = shard.step([0, 1] if t == 0 else [], [], [0, 1], frames[t])
        outputs += out
        acks.append(ack)
    # checkpoints come before the step of every third call: they hold frames already answered
    assert [a and a["frames"] for a in acks] == [None, None, {0: 2, 1: 2}, None, {0: 4, 1: 4}, None]
    # another shard adopts stream 1 from s0's checkpoint (frame 4), fresh stream 7 too
    other = Shard("s1", (layer, params, {"frame_shape": (2,)}), store, checkpoint_every=2)
    ack = other.adopt("s0", [1, 7])
    assert ack["frames"] == {1: 4, 7: 0}
    out, _ = other.step([], [], [1], frames[4:5, 1])
    again = [o for o in outputs if o[0] == 1 and o[1] == 4]
    assert [(o[1], o[2]) for o in out] == [(o[1], o[2]) for o in again]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(out, again))
    # the restarted shard restores its own checkpoint, keeping only the streams it is given
    restarted = Shard("s0", (layer, params, {"frame_shape": (2,)}), store, checkpoint_every=2)
    assert restarted.adopt("s0", [0])["frames"] == {0: 4} and restarted.runner.ids == [0]
    assert set(restarted.metrics()) >= {"fps", "tick_ms_p99", "checkpoints"}


def test_wire_round_trips_frames_and_outputs_exactly():
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    assert torch.equal(decode_frames(encode_frames(x), "application/x-npy"), x)
    o = cofunc.StreamOutput("cam", 5, 2, torch.randn(3, 2))
    back = decode_output(encode_output(o))
    assert (back.stream, back.frame, back.index) == ("cam", 5, 2) and torch.equal(back.value, o.value)
    with pytest.raises(WireError, match="not a .npy array"):
        decode_frames(b"garbage", "application/x-npy")
    with pytest.raises(WireError, match="unsupported content type 'text/csv'"):
        decode_frames(b"1,2", "text/csv")
    with pytest.raises(WireError, match="must be numbers"):
        buffer = io.BytesIO()
        np.save(buffer, np.array(["a"]))
        decode_frames(buffer.getvalue(), "application/x-npy")
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WireError, match="not a .npy array"):  # pickled objects are refused, not loaded
        decode_frames(obj.getvalue(), "application/x-npy")
