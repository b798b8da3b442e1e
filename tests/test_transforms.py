"""Pure functions under torch.func and torch.compile.

- purity: ``step`` and ``steps`` never change their input state (snapshots stay valid), also
  under ``vmap``;
- ``vmap(layer.step, in_dims=(None, 0, 0))`` equals the batched path (step inputs with leading
  stream dims), including validity gating after strided layers;
- streams out of step: ``steps`` refuses them, ``step`` (batched or vmapped) serves each stream
  at its own position;
- ``torch.compile(step, fullgraph=True)``: no graph breaks, eager results, no recompiles.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

import cofunc
from conftest import (
    F64,
    FLOAT32_TOL,
    assert_tree_close,
    assert_tree_equal,
    conv_configs,
    fresh_state,
    step_through,
    tree_clone,
    tree_stack,
)

VMAP_STEP = dict(in_dims=(None, 0, 0))


def _seq_strided():
    """A seq whose strided middle conv gates the layers after it (stride 2, delay 1 + 1 + 2 * 1)."""
    return cofunc.seq(
        cofunc.conv2d(2, 3, (3, 1), padding=(1, 0)),
        cofunc.lift(torch.relu),
        cofunc.conv2d(3, 2, (2, 3), stride=(2, 1), padding=(0, 1)),
        cofunc.delay(1),
        cofunc.conv2d(2, 2, (2, 1), padding=(1, 0), padding_mode="replicate"),
    )


# (name, layer factory, frame shape (C, *S) of one stream)
CASES = {
    "conv3d": (lambda: cofunc.conv3d(2, 3, 3, padding=1), (2, 4, 4)),
    "conv1d_strided_replicate": (lambda: cofunc.conv1d(2, 2, 3, stride=2, padding=1, padding_mode="replicate"), (2,)),
    "delay": (lambda: cofunc.delay(2, step_rank=2), (2, 3)),
    "seq_strided": (_seq_strided, (2, 5)),
}


def _case(name, lead=(), dtype=F64):
    make, frame_shape = CASES[name]
    layer = make()
    params = layer.init_params(dtype=dtype)
    state = layer.init_state(params, lead + frame_shape, dtype=dtype)
    return layer, params, state, frame_shape


def _frames(lead, frame_shape, n, dtype=F64):
    """``n`` random step inputs ``(*lead, C, *S)``."""
    return [torch.randn(lead + frame_shape, dtype=dtype) for _ in range(n)]


def _clip(lead, frame_shape, n, dtype=F64):
    """A random clip ``(*lead, C, n, *S)``."""
    return torch.randn(lead + frame_shape[:1] + (n,) + frame_shape[1:], dtype=dtype)


# --- purity ------------------------------------------------------------------------------------


def _assert_pure(layer, params, state, x, xs):
    """Neither ``step``, ``steps`` (with or without end padding) nor a vmapped ``step`` changes
    any leaf of ``state``. ``x``/``xs`` carry one leading stream dim, for vmap."""
    snapshot = tree_clone(state)
    layer.step(params, state, x)
    assert_tree_equal(state, snapshot, "after step")
    layer.steps(params, state, xs)
    assert_tree_equal(state, snapshot, "after steps")
    layer.steps(params, state, xs, pad_end=True)
    assert_tree_equal(state, snapshot, "after steps(pad_end=True)")
    torch.func.vmap(layer.step, **VMAP_STEP)(params, state, x)
    assert_tree_equal(state, snapshot, "after vmap(step)")


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("warm", [0, 1, 3])
def test_purity(name, warm):
    """From a fresh state and from states a few steps in (non-zero buffers, mid-stride)."""
    layer, params, state, frame_shape = _case(name, (2,))
    for x in _frames((2,), frame_shape, warm):
        _, state = layer.step(params, state, x)
    _assert_pure(layer, params, state, torch.randn((2,) + frame_shape, dtype=F64), _clip((2,), frame_shape, 3))


@given(cfg=conv_configs(max_temporal_kernel=3), warm=st.integers(0, 3))
def test_purity_conv_configs(cfg, warm):
    layer = cfg.layer()
    params = layer.init_params(dtype=F64)
    xs = cfg.clip((2,), warm + 3)
    state = step_through(layer, params, xs.narrow(2, 0, warm)).state
    _assert_pure(layer, params, state, xs.select(2, warm), xs.narrow(2, warm, 3))


# --- vmap over streams equals the batched path -------------------------------------------------


def _compare_stream_runs(layer, params, state_a, state_b, frames, run_a, run_b):
    """Step two ways from equal states over ``frames``; valid outputs, validity and states agree.

    Invalid outputs are unspecified (the batched path may skip the work and return zeros), so
    only valid ones are compared.
    """
    for t, x in enumerate(frames):
        y_a, state_a = run_a(params, state_a, x)
        y_b, state_b = run_b(params, state_b, x)
        valid_a, valid_b = layer.valid(state_a), layer.valid(state_b)
        assert torch.equal(valid_a, valid_b), f"step {t}: validity differs"
        mask = valid_a.reshape(valid_a.shape + (1,) * (y_a.dim() - valid_a.dim()))
        torch.testing.assert_close(torch.where(mask, y_a, 0), torch.where(mask, y_b, 0), msg=f"step {t}")
        assert_tree_close(state_a, state_b, f"state after step {t}")
    return state_a


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_equals_batched(name):
    layer, params, state, frame_shape = _case(name, (3,))
    vstep = torch.func.vmap(layer.step, **VMAP_STEP)
    _compare_stream_runs(layer, params, state, state, _frames((3,), frame_shape, 9), layer.step, vstep)


@pytest.mark.parametrize("name", ["conv3d", "seq_strided"])
def test_nested_vmap_equals_batched(name):
    """Two stream dims ``(2, 3)``: vmap of vmap equals the batched step."""
    layer, params, state, frame_shape = _case(name, (2, 3))
    vstep = torch.func.vmap(torch.func.vmap(layer.step, **VMAP_STEP), **VMAP_STEP)
    _compare_stream_runs(layer, params, state, state, _frames((2, 3), frame_shape, 7), layer.step, vstep)


@given(cfg=conv_configs(max_temporal_kernel=3), n=st.integers(1, 7))
def test_vmap_equals_batched_conv_configs(cfg, n):
    layer = cfg.layer()
    params = layer.init_params(dtype=F64)
    xs = cfg.clip((2,), n)
    state = fresh_state(layer, params, xs)
    frames = list(xs.unbind(2))
    vstep = torch.func.vmap(layer.step, **VMAP_STEP)
    _compare_stream_runs(layer, params, state, state, frames, layer.step, vstep)


def test_vmap_per_stream_params():
    """in_dims=(0, 0, 0): an ensemble, one set of params per stream, equals running each alone."""
    layer, _, _, frame_shape = _case("seq_strided")
    params = [layer.init_params(dtype=F64) for _ in range(2)]
    stacked = tree_stack(params)
    frames = _frames((2,), frame_shape, 6)
    state = layer.init_state(params[0], (2,) + frame_shape, dtype=F64)
    alone = [layer.init_state(p, frame_shape, dtype=F64) for p in params]
    vstep = torch.func.vmap(layer.step, in_dims=(0, 0, 0))
    for x in frames:
        y, state = vstep(stacked, state, x)
        for i in range(2):
            y_i, alone[i] = layer.step(params[i], alone[i], x[i])
            if bool(layer.valid(alone[i])):
                torch.testing.assert_close(y[i], y_i)
    assert_tree_close(state, tree_stack(alone), "state")


# --- streams out of step -----------------------------------------------------------------------


def _advance(layer, params, state, frames):
    for x in frames:
        _, state = layer.step(params, state, x)
    return state


@pytest.mark.parametrize("name", sorted(CASES))
def test_steps_rejects_streams_out_of_step(name):
    layer, params, state0, frame_shape = _case(name)
    ahead = _advance(layer, params, state0, _frames((), frame_shape, 2))
    state = tree_stack([state0, ahead])
    for pad_end in (False, True):
        with pytest.raises(cofunc.StreamsOutOfStepError):
            layer.steps(params, state, _clip((2,), frame_shape, 3), pad_end=pad_end)


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=10)  # per case; each example steps three ways (batched, vmapped, alone)
@given(positions=st.tuples(st.integers(0, 5), st.integers(0, 5)), n=st.integers(1, 6))
def test_step_streams_out_of_step(name, positions, n):
    """A state stacked from two streams at different positions: the batched step and the
    vmapped step give each stream what running it alone gives (outputs, validity, state)."""
    layer, params, fresh, frame_shape = _case(name)
    states = [_advance(layer, params, fresh, _frames((), frame_shape, k)) for k in positions]
    frames = _frames((2,), frame_shape, n)
    batched = vmapped = tree_stack(states)
    vstep = torch.func.vmap(layer.step, **VMAP_STEP)
    for t, x in enumerate(frames):
        y, batched = layer.step(params, batched, x)
        y_v, vmapped = vstep(params, vmapped, x)
        for i in range(2):
            y_i, states[i] = layer.step(params, states[i], x[i])
            valid_i = bool(layer.valid(states[i]))
            assert bool(layer.valid(batched)[i]) == valid_i == bool(layer.valid(vmapped)[i])
            if valid_i:
                torch.testing.assert_close(y[i], y_i, msg=f"batched, stream {i}, step {t}")
                torch.testing.assert_close(y_v[i], y_i, msg=f"vmapped, stream {i}, step {t}")
        assert_tree_close(batched, tree_stack(states), f"batched state, step {t}")
        assert_tree_close(vmapped, tree_stack(states), f"vmapped state, step {t}")


# --- torch.compile ---------------------------------------------------------------------------


def _compile_net():
    """conv3d -> relu (lifted) -> strided conv3d: the 3-layer network of the compile tests."""
    return cofunc.seq(
        cofunc.conv3d(2, 3, 3, padding=1),
        cofunc.lift(torch.relu),
        cofunc.conv3d(3, 2, 3, stride=(2, 1, 1), padding=1),
    )


class CountingBackend:
    """A torch.compile backend that counts the graphs dynamo hands it (one per (re)compile)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.slow
def test_compile_no_graph_breaks():
    net = _compile_net()
    params = net.init_params()
    state = net.init_state(params, (2, 2, 4, 4))
    _, state = net.step(params, state, torch.randn(2, 2, 4, 4))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(net.step)(params, state, torch.randn(2, 2, 4, 4))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_step_equals_eager():
    """The default (inductor) compile of the step, fullgraph: eager's valid outputs and states
    for 20 steps, from one graph."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    net = _compile_net()
    params = net.init_params()
    state = eager_state = net.init_state(params, (2, 2, 4, 4))
    compiled = torch.compile(net.step, fullgraph=True)
    for t, x in enumerate(_frames((2,), (2, 4, 4), 20, dtype=torch.float32)):
        y, state = compiled(params, state, x)
        y_eager, eager_state = net.step(params, eager_state, x)
        assert torch.equal(net.valid(state), net.valid(eager_state))
        if bool(net.valid(eager_state).all()):
            torch.testing.assert_close(y, y_eager, **FLOAT32_TOL, msg=f"step {t}")
        assert_tree_close(state, eager_state, f"state after step {t}", **FLOAT32_TOL)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_compiled_step_does_not_recompile():
    """One graph for ~20 steps, also after the state went through a chunked ``steps`` call and
    for the vmapped step (states keep one layout whatever produced them)."""
    net = cofunc.seq(_compile_net(), cofunc.delay(2))
    params = net.init_params()
    for vmapped in (False, True):
        torch._dynamo.reset()
        backend = CountingBackend()
        fn = torch.func.vmap(net.step, **VMAP_STEP) if vmapped else net.step
        compiled = torch.compile(fn, fullgraph=True, backend=backend)
        state = eager_state = net.init_state(params, (2, 2, 4, 4))
        for t, x in enumerate(_frames((2,), (2, 4, 4), 20, dtype=torch.float32)):
            y, state = compiled(params, state, x)
            y_eager, eager_state = net.step(params, eager_state, x)
            if bool(net.valid(eager_state).all()):
                torch.testing.assert_close(y, y_eager, **FLOAT32_TOL, msg=f"step {t}")
        _, state = net.steps(params, state, _clip((2,), (2, 4, 4), 5, dtype=torch.float32))
        for x in _frames((2,), (2, 4, 4), 3, dtype=torch.float32):
            _, state = compiled(params, state, x)
        assert backend.graphs == 1, f"vmapped={vmapped}: {backend.graphs} graphs"
