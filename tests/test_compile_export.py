"""Production paths of a whole network's step: torch.compile (plain and vmapped), torch.export
with a dynamic number of streams, and ONNX run by onnxruntime.

Every path is compared with the eager step over a stream that runs past its warm-up: the
``valid`` flags exactly, the outputs where they are valid, and the states. Compiled and exported
steps compute branch-free, so their outputs on invalid steps are unspecified (eager returns
zeros there) and are not compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
import torch._dynamo.config
import torch._dynamo.utils

import cofunc
from _networks import STEP, network, small_network
from cofunc._export import (
    StepModule,
    compile_step,
    export_onnx,
    export_step,
    flatten_state,
    onnx_names,
    state_spec,
    step_fn,
    unflatten_state,
)
from cofunc._params import flatten_params
from conftest import FLOAT32_TOL, assert_tree_close

N_STEPS = 12


def eager_run(layer, params, xs, state=None):
    """Eager steps over ``xs: (B, C, T, H, W)``: per step ``(y, valid)`` and the final state."""
    if state is None:
        state = layer.init_state(params, xs[:, :, 0].shape)
    step = step_fn(layer)
    out = []
    for t in range(xs.shape[2]):
        y, valid, state = step(params, state, xs[:, :, t])
        out.append((y, valid))
    return out, state


def assert_matches_eager(got, expected, tol=FLOAT32_TOL):
    """``got``/``expected``: per step ``(y, valid)``; valid must agree, y where it is valid."""
    n_valid = 0
    for t, ((y, v), (ye, ve)) in enumerate(zip(got, expected)):
        v, ve = torch.as_tensor(v), torch.as_tensor(ve)
        assert torch.equal(v, ve.expand_as(v)), f"step {t}: valid {v.tolist()} != {ve.tolist()}"
        if bool(ve.any()):
            n_valid += 1
            torch.testing.assert_close(torch.as_tensor(y)[ve], ye[ve], msg=lambda m: f"step {t}: {m}", **tol)
    assert n_valid >= 2, "the stream never got past its warm-up: the comparison would be empty"


# --- torch.compile ---------------------------------------------------------------------------------


class CountingInductor:
    """A torch.compile backend that counts the graphs it compiles and hands them to inductor."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.graphs += 1
        return compile_fx(gm, example_inputs)


@pytest.mark.slow
def test_compiled_network_step_is_one_graph_without_recompiles():
    """``torch.compile(step, fullgraph=True)`` of the whole network: one graph, compiled once,
    serves 20 steps through warm-up and strided output; outputs and states equal eager."""
    layer, params = network()
    xs = torch.randn(3, *STEP[:1], 20, *STEP[1:])
    expected, expected_state = eager_run(layer, params, xs)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    backend = CountingInductor()
    step = compile_step(layer, backend=backend)  # fullgraph=True: a graph break would raise
    state = layer.init_state(params, xs[:, :, 0].shape)
    got = []
    for t in range(xs.shape[2]):
        y, valid, state = step(params, state, xs[:, :, t])
        got.append((y, valid))
    assert backend.graphs == 1
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    assert_matches_eager(got, expected)
    assert_tree_close(state, expected_state, "final state", **FLOAT32_TOL)


@pytest.mark.slow
def test_compiled_vmapped_step_equals_eager():
    """The documented form ``torch.compile(torch.func.vmap(layer.step, in_dims=(None, 0, 0)))``
    on streams stacked from one-stream states equals the eager batched step."""
    layer, params = small_network()
    xs = torch.randn(3, 2, 10, 6, 6)
    expected, expected_state = eager_run(layer, params, xs)

    torch._dynamo.reset()
    backend = CountingInductor()
    compiled = torch.compile(torch.func.vmap(layer.step, in_dims=(None, 0, 0)), fullgraph=True, backend=backend)
    one = layer.init_state(params, xs[0, :, 0].shape)
    state = cofunc.stack_streams([one] * xs.shape[0])
    got = []
    for t in range(xs.shape[2]):
        y, state = compiled(params, state, xs[:, :, t])
        got.append((y, layer.valid(state)))
    assert backend.graphs == 1
    assert_matches_eager(got, expected)
    assert_tree_close(state, expected_state, "final state", **FLOAT32_TOL)


@pytest.mark.slow
def test_compile_step_vmap_option_and_many_layers_in_one_process():
    """`compile_step(vmap=True)` works, and each compiled step has its own dynamo cache: more
    layers than the recompile limit compile without falling back to eager."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    limit = 1
    with torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True):
        for k in range(2, limit + 3):  # limit + 1 layers: one more than a shared cache holds
            layer = cofunc.conv1d(2, 3, k)
            params = layer.init_params()
            xs = torch.randn(4, 2, k + 2)
            step = compile_step(layer, vmap=True, backend=backend)
            state = cofunc.stack_streams([layer.init_state(params, (2,))] * 4)
            eager_state = layer.init_state(params, (4, 2))
            for t in range(xs.shape[2]):
                y, valid, state = step(params, state, xs[:, :, t])
                ye, eager_state = layer.step(params, eager_state, xs[:, :, t])
                assert torch.equal(valid, layer.valid(eager_state))
                if bool(valid.all()):
                    torch.testing.assert_close(y, ye, **FLOAT32_TOL)
    assert len(graphs) == limit + 1


# --- torch.export ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported():
    layer, params = network()
    return layer, params, export_step(layer, params, (3,) + STEP)


@pytest.mark.parametrize("streams", [1, 4])
def test_exported_step_equals_eager_for_any_number_of_streams(exported, streams):
    layer, params, program = exported
    run = program.module()
    xs = torch.randn(streams, STEP[0], N_STEPS, *STEP[1:])
    expected, expected_state = eager_run(layer, params, xs)
    flat = flatten_state(layer.init_state(params, xs[:, :, 0].shape))
    got = []
    for t in range(N_STEPS):
        y, valid, *flat = run(xs[:, :, t], *flat)
        assert valid.shape == (streams,) and valid.dtype == torch.bool
        got.append((y, valid))
    assert_matches_eager(got, expected)
    assert_tree_close(unflatten_state(layer, params, xs[:, :, 0].shape, flat), expected_state, "final state", **FLOAT32_TOL)


def test_exported_program_signature(exported):
    """Inputs: x and one tensor per state leaf, all with the dynamic stream dim; params baked in
    as buffers under their state_dict names."""
    layer, params, program = exported
    n_leaves = len(flatten_state(layer.init_state(params, (1,) + STEP)))
    user_inputs = program.graph_signature.user_inputs
    assert len(user_inputs) == 1 + n_leaves
    assert len(program.graph_signature.user_outputs) == 2 + n_leaves
    expected_keys = {"params." + k for k in flatten_params(params)}
    assert set(program.state_dict) == expected_keys
    for key, value in flatten_params(params).items():
        assert torch.equal(program.state_dict["params." + key], value)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    streams = [placeholders[name].meta["val"].shape[0] for name in user_inputs]
    assert all(isinstance(dim, torch.SymInt) for dim in streams)
    assert len({str(dim) for dim in streams}) == 1, "x and every state leaf share one symbolic stream dim"


def test_export_keeps_params_fixed_and_state_is_not_mutated(exported):
    layer, params, program = exported
    flat = flatten_state(layer.init_state(params, (2,) + STEP))
    before = [t.clone() for t in flat]
    program.module()(torch.randn((2,) + STEP), *flat)
    for a, b in zip(flat, before):
        assert torch.equal(a, b)


def test_export_stateless_layer():
    """A stateless layer exports as ``x -> (y, valid)``, with valid all True per stream."""
    layer = cofunc.linear(4, 3).with_rank(1)
    params = layer.init_params()
    program = export_step(layer, params, (2, 4))
    x = torch.randn(5, 4)
    y, valid = program.module()(x)
    torch.testing.assert_close(y, layer.step(params, (), x)[0])
    assert valid.tolist() == [True] * 5


def test_export_static_streams():
    layer = cofunc.conv1d(2, 3, 3, stride=2)
    params = layer.init_params()
    program = export_step(layer, params, (3, 2), dynamic_streams=False)
    xs = torch.randn(3, 2, 7)
    state = layer.init_state(params, (3, 2))
    flat = flatten_state(state)
    for t in range(7):
        y, valid, *flat = program.module()(xs[:, :, t], *flat)
        ye, state = layer.step(params, state, xs[:, :, t])
        assert torch.equal(valid, layer.valid(state))
        if bool(valid.all()):
            torch.testing.assert_close(y, ye, **FLOAT32_TOL)
    with pytest.raises(Exception):
        program.module()(torch.randn(4, 2), *flatten_state(layer.init_state(params, (4, 2))))


def test_flatten_unflatten_roundtrip():
    layer, params = network()
    state = layer.init_state(params, (2,) + STEP)
    flat = flatten_state(state)
    assert all(isinstance(t, torch.Tensor) for t in flat)
    spec = state_spec(layer, params, (7,) + STEP)  # the structure does not depend on the streams
    rebuilt = unflatten_state(spec, flat)
    assert_tree_close(rebuilt, state, "roundtrip", rtol=0, atol=0)
    assert type(rebuilt) is type(state)
    with pytest.raises(cofunc.ConfigurationError, match="leaves"):
        unflatten_state(spec, flat[:-1])


def test_step_module_rejects_what_it_cannot_export():
    layer = cofunc.conv1d(2, 3, 3)
    params = layer.init_params()
    with pytest.raises(cofunc.ConfigurationError, match="one\\s+stream dim"):
        StepModule(layer, params, (2, 5, 2))
    with pytest.raises(cofunc.ConfigurationError, match="one\\s+stream dim"):
        StepModule(layer, params, (2,))
    par = cofunc.parallel(cofunc.conv1d(2, 3, 3), cofunc.conv1d(2, 3, 3))
    with pytest.raises(cofunc.ConfigurationError, match="multi-stream"):
        StepModule(par, par.init_params(), [(1, 2), (1, 2)])


# --- ONNX ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_model_equals_eager_for_two_numbers_of_streams(tmp_path):
    import onnx  # test dependencies (pyproject's [test] extra), imported here so that the
    import onnxruntime as ort  # rest of the file runs without them

    layer, params = network()
    path = tmp_path / "step.onnx"
    export_onnx(layer, params, (3,) + STEP, path)
    input_names, output_names = onnx_names(layer, layer.init_state(params, (1,) + STEP))
    # Inputs named by the state's paths: "state.<child>.<field>", outputs "next_state.<...>".
    assert input_names[0] == "x" and output_names[:2] == ["y", "valid"]
    assert all(n.startswith("state.") for n in input_names[1:]) and len(set(input_names)) == len(input_names)
    assert output_names[2:] == ["next_" + n for n in input_names[1:]]
    assert any(n.endswith(".buffer") for n in input_names) and any(n.endswith(".count") for n in input_names)

    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == input_names
    assert [o.name for o in model.graph.output] == output_names
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "streams", value.name
    assert not list(tmp_path.glob("*.data")), "params are stored inside the .onnx file"

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for streams in (2, 5):
        xs = torch.randn(streams, STEP[0], N_STEPS, *STEP[1:])
        expected, expected_state = eager_run(layer, params, xs)
        flat = [t.numpy() for t in flatten_state(layer.init_state(params, xs[:, :, 0].shape))]
        got = []
        for t in range(N_STEPS):
            feeds = {"x": xs[:, :, t].numpy(), **dict(zip(input_names[1:], flat))}
            y, valid, *flat = session.run(None, feeds)
            assert valid.dtype == np.bool_ and valid.shape == (streams,)
            got.append((torch.from_numpy(y), torch.from_numpy(valid)))
        assert_matches_eager(got, expected, dict(atol=1e-5, rtol=1e-5))
        for a, e in zip(flat, flatten_state(expected_state)):
            np.testing.assert_allclose(a, e.numpy(), atol=1e-5, rtol=1e-5)


def test_compile_step_has_a_masked_and_a_warm_graph():
    """A stateful stride-1 layer compiles to two graphs: the masked one while some stream warms
    up, the one without masks once every stream has taken `delay` steps; each step equals the
    eager step (outputs, validity, state)."""
    from cofunc._export import CompiledStep

    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    layer = cofunc.seq(cofunc.conv2d(2, 4, 3, padding=1), cofunc.lift(torch.relu), cofunc.conv2d(4, 3, (3, 1)))
    params = layer.init_params()
    step = compile_step(layer, backend=backend)
    assert isinstance(step, CompiledStep) and "warm" in repr(step)
    eager_state = compiled_state = layer.init_state(params, (3, 2, 5))
    warm_at = []
    for t in range(layer.delay + 3):
        x = torch.randn(3, 2, 5)
        warm_at.append(layer.all_streams_warm(eager_state))
        y_e, eager_state = layer.step(params, eager_state, x)
        y_c, valid, compiled_state = step(params, compiled_state, x)
        torch.testing.assert_close(y_c, y_e, **FLOAT32_TOL)
        assert torch.equal(valid.expand(3), layer.valid(eager_state).expand(3))
        assert_tree_close(compiled_state, eager_state)
    assert warm_at == [False] * layer.delay + [True] * 3
    assert len(graphs) == 2


def test_all_streams_warm_needs_every_stream_and_stride_one():
    layer = cofunc.conv1d(1, 1, 3, padding=1)
    params = layer.init_params()
    state = layer.init_state(params, (2, 1))
    assert not layer.all_streams_warm(state)
    _, state = layer.step(params, state, torch.randn(2, 1))
    assert layer.all_streams_warm(state)  # delay 1: every stream has taken one step
    paused = cofunc.reset_streams(state, torch.tensor([False, True]), layer.init_state(params, (2, 1)))
    assert not layer.all_streams_warm(paused)  # stream 1 starts again
    strided = cofunc.conv1d(1, 1, 3, stride=2)
    s = strided.init_state(strided.init_params(), (2, 1))
    for _ in range(4):
        _, s = strided.step(strided.init_params(), s, torch.randn(2, 1))
    assert not strided.all_streams_warm(s)  # strided layers skip steps: always masked
