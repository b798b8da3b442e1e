"""StreamRunner: streams by id, batched ticks, exact pauses, checkpoints, errors, metrics."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cofunc
from cofunc.demo import randomize_norms
from cofunc.models import x3d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_net():
    """float64, padded and strided: warm-up, a stride grid and end padding all matter."""
    layer = cofunc.seq(
        cofunc.conv1d(2, 3, 3, padding=1),
        cofunc.lift(torch.relu),
        cofunc.conv1d(3, 2, 3, stride=2, padding=1),
    )
    params = cofunc.tree_map(lambda t: t.double(), layer.init_params())
    return layer, params


def tiny_x3d():
    net = x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0, se="frame")
    return randomize_norms(net)


def state_leaves(runner):
    return [t.clone() for t in cofunc.flatten_state(runner.slots.state)]


# --- the property: any schedule, every stream as if alone -------------------------------------------

IDS = st.sampled_from([0, 1, 2, "cam", "x"])
ACTIONS = st.one_of(
    st.tuples(st.just("open"), IDS),
    st.tuples(st.just("close"), IDS),
    st.tuples(st.just("push"), IDS, st.integers(1, 3)),
    st.tuples(st.just("push_bad"), IDS),
    st.tuples(st.just("tick")),
    st.tuples(st.just("tick")),
    st.tuples(st.just("save_restore"), st.sampled_from(["safetensors", "torch"])),
)


@settings(max_examples=40)
@given(schedule=st.lists(ACTIONS, min_size=1, max_size=40), seed=st.integers(0, 2**16),
       min_capacity=st.sampled_from([1, 2, 4]))
def test_any_schedule_equals_each_stream_alone_and_the_clip(schedule, seed, min_capacity):
    layer, params = small_net()
    g = torch.Generator().manual_seed(seed)
    runner = cofunc.StreamRunner(layer, params, frame_shape=(2,), min_capacity=min_capacity)
    sessions = []  # every stream session: frames pushed, frames consumed, outputs
    live = {}

    def collect(outputs):
        for o in outputs:
            live[o.stream]["outputs"].append(o)

    for action in schedule:
        kind = action[0]
        if kind == "open":
            if action[1] in live:
                before = state_leaves(runner)
                with pytest.raises(cofunc.StreamIdError):
                    runner.open(action[1])
                assert all(torch.equal(a, b) for a, b in zip(before, state_leaves(runner)))
            else:
                runner.open(action[1])
                live[action[1]] = {"pushed": [], "outputs": []}
                sessions.append(live[action[1]])
        elif kind == "close":
            if action[1] in live:
                dropped = runner.close(action[1])
                session = live.pop(action[1])
                session["consumed"] = len(session["pushed"]) - dropped
            else:
                with pytest.raises(cofunc.StreamIdError):
                    runner.close(action[1])
        elif kind == "push":
            frames = torch.randn(action[2], 2, generator=g, dtype=torch.float64)
            if action[1] in live:
                if action[2] == 1:
                    runner.push(action[1], frames[0])
                else:
                    runner.push_many([action[1]] * action[2], frames)
                live[action[1]]["pushed"].extend(frames)
            else:
                with pytest.raises(cofunc.StreamIdError):
                    runner.push(action[1], frames[0])
        elif kind == "push_bad":  # wrong shape, wrong dtype, or a batch with one bad frame: nothing queued
            pending = runner.pending()
            with pytest.raises(cofunc.CofuncError):
                if action[1] in live:
                    runner.push(action[1], torch.randn(3, dtype=torch.float64))
                runner.push_many([action[1], "nobody"], torch.zeros(2, 2, dtype=torch.float64))
            with pytest.raises(cofunc.DTypeDeviceError if action[1] in live else cofunc.StreamIdError):
                runner.push(action[1], torch.zeros(2, dtype=torch.float32))
            assert runner.pending() == pending
        elif kind == "tick":
            collect(runner.tick())
        else:
            buffer = io.BytesIO()
            runner.save(buffer, format=action[1])
            buffer.seek(0)
            runner = cofunc.StreamRunner(layer, params, frame_shape=(2,), min_capacity=min_capacity)
            runner.restore(buffer)
            assert sorted(map(str, runner.ids)) == sorted(map(str, live))
    collect(runner.run())
    for stream_id, session in live.items():
        session["consumed"] = len(session["pushed"])
        assert runner.frames_seen(stream_id) == session["consumed"]

    for session in sessions:
        n = session["consumed"]
        outputs = session["outputs"]
        assert [o.index for o in outputs] == list(range(len(outputs)))
        assert [o.frame for o in outputs] == [layer.delay + k * layer.stride for k in range(len(outputs))]
        # The stream alone: its frames stepped one by one from a fresh state.
        state = layer.init_state(params, (1, 2), dtype=torch.float64)
        alone = []
        for frame in session["pushed"][:n]:
            y, state = layer.step(params, state, frame[None])
            if bool(layer.valid(state)):
                alone.append(y[0])
        assert len(alone) == len(outputs)
        for o, y in zip(outputs, alone):
            torch.testing.assert_close(o.value, y)
        if n:  # the clip forward's first outputs (the rest need end padding)
            clip = torch.stack(session["pushed"][:n], -1)[None]
            expected = layer.forward(params, clip)[0]
            for o in outputs:
                torch.testing.assert_close(o.value, expected[:, o.index])


# --- checkpoints ----------------------------------------------------------------------------------


def _busy_runner(net, streams=3, frames=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    runner = cofunc.StreamRunner(net)
    for i in range(streams):
        runner.open(f"cam{i}")
    shape = runner.frame_shape
    for t in range(frames):
        for i in range(streams):
            if t >= i:  # staggered starts
                runner.push(f"cam{i}", torch.randn(shape, generator=g))
        runner.tick()
    runner.push("cam0", torch.randn(shape, generator=g))  # a frame still queued at save time
    return runner


CHILD = textwrap.dedent("""
    import sys, torch, cofunc
    from cofunc.models import x3d
    torch.set_num_threads(int(sys.argv[4]))
    net = x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0, se="frame").eval()
    net.load_state_dict(torch.load(sys.argv[1], weights_only=True))
    runner = cofunc.StreamRunner(net)
    runner.restore(sys.argv[2])
    later = torch.load(sys.argv[3], weights_only=True)
    outputs = []
    for t in range(later.shape[0]):
        runner.push_many(["cam0", "cam1", "cam2"], later[t])
        outputs += [(o.stream, o.frame, o.index, o.value) for o in runner.tick()]
    outputs += [(o.stream, o.frame, o.index, o.value) for o in runner.run()]
    torch.save({"ids": [o[0] for o in outputs], "frames": [o[1] for o in outputs],
                "indices": [o[2] for o in outputs], "values": [o[3] for o in outputs]}, sys.argv[5])
""")


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_restored_in_a_new_process_continues_bit_exactly(tmp_path, suffix):
    net = tiny_x3d()
    runner = _busy_runner(net, frames=8)
    ckpt = tmp_path / f"runner{suffix}"
    runner.save(ckpt)
    later = torch.randn(14, 3, *runner.frame_shape)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    torch.save(later, tmp_path / "later.pt")
    expected = []
    for t in range(later.shape[0]):
        runner.push_many(["cam0", "cam1", "cam2"], later[t])
        expected += runner.tick()
    expected += runner.run()
    assert len(expected) > 6  # the continuation emits (the streams are past their warm-up)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "weights.pt"), str(ckpt), str(tmp_path / "later.pt"),
                    str(torch.get_num_threads()), str(tmp_path / "out.pt")], check=True, env=env, cwd=tmp_path)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert got["ids"] == [o.stream for o in expected]
    assert got["frames"] == [o.frame for o in expected]
    assert got["indices"] == [o.index for o in expected]
    for value, o in zip(got["values"], expected):
        assert torch.equal(value, o.value)  # bit for bit


def test_checkpoint_is_checked_against_the_network(tmp_path):
    layer, params = small_net()
    runner = cofunc.StreamRunner(layer, params, frame_shape=(2,))
    runner.open("a")
    runner.push("a", torch.zeros(2, dtype=torch.float64))
    runner.save(tmp_path / "r.safetensors")
    # The file is plain safetensors with a JSON header (no pickle).
    from safetensors import safe_open

    with safe_open(tmp_path / "r.safetensors", "pt") as f:
        header = json.loads(f.metadata()["cofunc"])
    assert header["streams"] == [{"id": "a", "slot": 0, "frames": 0, "outputs": 0, "pending": 1}]

    other_weights = cofunc.tree_map(lambda t: t + 1, params)
    fresh = cofunc.StreamRunner(layer, other_weights, frame_shape=(2,))
    fresh.open("keep")
    with pytest.raises(cofunc.StateError, match="other weights"):
        fresh.restore(tmp_path / "r.safetensors")
    assert fresh.ids == ["keep"]  # a failed restore changes nothing
    fresh.restore(tmp_path / "r.safetensors", check_params=False)
    assert fresh.ids == ["a"] and fresh.pending("a") == 1

    other_layer = cofunc.seq(cofunc.conv1d(2, 3, 3, padding=1), cofunc.lift(torch.relu), cofunc.conv1d(3, 2, 2))
    other = cofunc.StreamRunner(other_layer, cofunc.tree_map(lambda t: t.double(), other_layer.init_params()),
                                frame_shape=(2,))
    with pytest.raises(cofunc.StateError, match="another network"):
        other.restore(tmp_path / "r.safetensors")
    as_float = cofunc.StreamRunner(layer, cofunc.tree_map(lambda t: t.float(), params), frame_shape=(2,))
    with pytest.raises(cofunc.StateError, match="float64"):
        as_float.restore(tmp_path / "r.safetensors")
    (tmp_path / "junk.bin").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(cofunc.StateError):
        runner.restore(tmp_path / "junk.bin")
    torch.save({"not": "a runner"}, tmp_path / "junk.pt")
    with pytest.raises(cofunc.StateError):
        runner.restore(tmp_path / "junk.pt")


# --- runner behaviour -------------------------------------------------------------------------------


def test_outputs_come_back_per_stream_with_frame_indices():
    layer, params = small_net()
    runner = cofunc.StreamRunner(layer, params, frame_shape=(2,))
    runner.open("a")
    runner.open(7)
    for _ in range(5):
        runner.push("a", torch.randn(2, dtype=torch.float64))
    runner.push(7, torch.randn(2, dtype=torch.float64))
    outputs = runner.run()
    # delay 2, stride 2: frames 2 and 4 of "a" emit; stream 7 has one frame, still warming up.
    assert [(o.stream, o.frame, o.index) for o in outputs] == [("a", 2, 0), ("a", 4, 1)]
    assert outputs[0].value.shape == (2,)
    assert runner.frames_seen("a") == 5 and runner.frames_seen(7) == 1
    assert "StreamOutput(stream='a', frame=2, index=0" in repr(outputs[0])
    assert "streams=2" in repr(runner)


def test_paused_streams_keep_their_state_exactly():
    layer, params = small_net()
    runner = cofunc.StreamRunner(layer, params, frame_shape=(2,))
    for i in range(3):
        runner.open(i)
    for i in range(3):
        runner.push(i, torch.randn(2, dtype=torch.float64))
    runner.tick()
    before = runner.take(1).state.state
    for _ in range(4):  # stream 1 gets nothing
        runner.push_many([0, 2], torch.randn(2, 2, dtype=torch.float64))
        runner.tick()
    after = runner.take(1).state.state
    assert all(torch.equal(a, b) for a, b in zip(cofunc.flatten_state(before), cofunc.flatten_state(after)))


def test_capacity_grows_and_shrinks_in_powers_of_two():
    layer, params = small_net()
    runner = cofunc.StreamRunner(layer, params, frame_shape=(2,), min_capacity=2)
    for i in range(9):
        runner.open(i)
    assert runner.slots.capacity == 16
    for i in range(9):
        runner.push(i, torch.randn(2, dtype=torch.float64))
    runner.tick()
    for i in range(1, 8):
        runner.close(i)
    assert runner.slots.capacity == 4 and sorted(runner.ids) == [0, 8]
    assert set(runner.slots.slot_of.values()) <= set(range(4))
    assert runner.frames_seen(8) == 1


def test_take_and_put_move_a_stream_between_runners():
    layer, params = small_net()
    a = cofunc.StreamRunner(layer, params, frame_shape=(2,))
    b = cofunc.StreamRunner(layer, params, frame_shape=(2,))
    frames = torch.randn(9, 2, dtype=torch.float64)
    a.open("s")
    for f in frames[:4]:
        a.push("s", f)
    first = a.run()
    a.push("s", frames[4])  # queued: moves with the stream
    snapshot = a.take("s", close=True)
    assert "s" not in a and snapshot.frames == 4 and len(snapshot.pending) == 1
    b.put("s", snapshot)
    for f in frames[5:]:
        b.push("s", f)
    rest = b.run()
    expected = layer.forward(params, frames.T[None])[0]
    assert [o.index for o in first + rest] == list(range(len(first + rest)))
    for o in first + rest:
        torch.testing.assert_close(o.value, expected[:, o.index])
    with pytest.raises(cofunc.StreamIdError):
        b.put("s", snapshot)
    other = cofunc.conv1d(2, 2, 5)
    c = cofunc.StreamRunner(other, other.init_params(), frame_shape=(2,), dtype=torch.float64)
    with pytest.raises(cofunc.StateError):
        c.put("s", snapshot)
    assert "s" not in c


def test_errors_are_clear_and_leave_other_streams_alone():
    layer, params = small_net()
    runner = cofunc.StreamRunner(layer, params, frame_shape=(2,))
    runner.open("a")
    with pytest.raises(cofunc.StreamIdError, match="'a' is already open"):
        runner.open("a")
    with pytest.raises(cofunc.StreamIdError, match="no open stream 'b'"):
        runner.push("b", torch.zeros(2, dtype=torch.float64))
    with pytest.raises(cofunc.InputShapeError, match=r"shape \(C, \*S\) = \(2,\), got shape \(2, 1\)"):
        runner.push("a", torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(cofunc.DTypeDeviceError, match="float64, got torch.float32"):
        runner.push("a", torch.zeros(2))
    with pytest.raises(cofunc.StreamIdError, match="str or int"):
        runner.open(("a", 1))
    with pytest.raises(cofunc.ConfigurationError, match="frame_shape"):
        cofunc.StreamRunner(layer, params)
    net = x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0)
    with pytest.raises(cofunc.ConfigurationError, match="training mode"):
        cofunc.StreamRunner(net)  # not .eval()
    assert runner.pending() == 0 and runner.ids == ["a"]


def test_metrics_dict_and_periodic_log(caplog):
    layer, params = small_net()
    runner = cofunc.StreamRunner(layer, params, frame_shape=(2,), log_interval=0.0)
    for i in range(3):
        runner.open(i)
    with caplog.at_level(logging.INFO, logger="cofunc.runner"):
        for _ in range(5):
            runner.push_many([0, 1, 2], torch.randn(3, 2, dtype=torch.float64))
            runner.tick()
    m = runner.metrics()
    assert m["frames"] == 15 and m["ticks"] == 5 and m["streams_open"] == 3
    assert m["fps"] > 0 and 0 < m["tick_ms_p50"] <= m["tick_ms_p99"]
    assert m["state_bytes"] == sum(t.nbytes for t in cofunc.flatten_state(runner.slots.state))
    assert len([r for r in caplog.records if r.name == "cofunc.runner"]) == 5
    assert "streams_open=3" in caplog.records[-1].getMessage()


def test_a_zoo_model_runs_as_its_clip_forward():
    net = tiny_x3d()
    runner = cofunc.StreamRunner(net)
    assert runner.frame_shape == net.preprocessing.frame_shape == (3, 36, 36)
    clip = torch.randn(1, 3, net.delay + 4, 36, 36)
    runner.open("v")
    for t in range(clip.shape[2]):
        runner.push("v", clip[0, :, t])
    outputs = runner.run()
    with torch.no_grad():
        expected = net(clip)[0]
    assert [o.frame for o in outputs] == list(range(net.delay, clip.shape[2]))
    for o in outputs:
        torch.testing.assert_close(o.value, expected[:, o.index], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_runner_recompiles_once_per_batch_size():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    layer, params = small_net()
    runner = cofunc.StreamRunner(layer, params, frame_shape=(2,), compile=True, compile_kwargs={"backend": "eager"})
    eager = cofunc.StreamRunner(layer, params, frame_shape=(2,))
    g = torch.Generator().manual_seed(0)
    got, expected = [], []
    for t in range(30):  # streams come and go: 1 .. 9 open, any subset stepped
        for r in (runner, eager):
            if t < 9:
                r.open(t)
            if t in (15, 20):
                for i in range(t - 15, t - 15 + 4):
                    r.close(i)
        ids = [i for i in runner.ids if (i + t) % 3]
        frames = torch.randn(len(ids), 2, generator=g, dtype=torch.float64)
        for r, out in ((runner, got), (eager, expected)):
            if ids:
                r.push_many(ids, frames)
            out += r.tick()
    assert [(o.stream, o.index) for o in got] == [(o.stream, o.index) for o in expected]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.value, b.value)
    sizes = runner.slots.capacities_used
    assert sizes <= {1, 2, 4, 8, 16}
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= len(sizes)
    assert runner.metrics()["compiled_capacities"] == len(sizes)


def test_a_pickled_runner_continues_its_streams():
    import pickle

    layer = cofunc.seq(cofunc.conv1d(2, 3, 3, padding=1), cofunc.conv1d(3, 2, 3, stride=2, padding=1))
    params = cofunc.tree_map(lambda t: t.double(), layer.init_params())  # (lifted lambdas do not pickle)
    runner = cofunc.StreamRunner(layer, params, frame_shape=(2,))
    runner.open("a")
    frames = torch.randn(7, 2, dtype=torch.float64)
    for f in frames[:3]:
        runner.push("a", f)
    runner.tick()
    copy = pickle.loads(pickle.dumps(runner))
    assert repr(copy) == repr(runner) and copy.pending("a") == 2
    for r in (runner, copy):
        for f in frames[3:]:
            r.push("a", f)
    a, b = runner.run(), copy.run()
    assert [(o.frame, o.index) for o in a] == [(o.frame, o.index) for o in b] and len(a) == 3
    assert all(torch.equal(x.value, y.value) for x, y in zip(a, b))
