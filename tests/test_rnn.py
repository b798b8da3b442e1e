"""Continual recurrent layers (`cofunc.rnn/gru/lstm` and `cofunc.nn.RNN/GRU/LSTM`).

Layouts: clips ``(*B, C, T)``, steps ``(*B, C)``; torch.nn's RNNs take ``(B, T, C)``
(``batch_first=True``) and hidden states ``(num_layers, B, H)``. ``forward`` and the nn
adapters' ``forward`` must be bit-identical to torch.nn (same kernel); ``step`` computes the cell
equations with plain matmuls and ``steps`` uses torch's fused kernel, so step paths are compared
with tolerances (float32) or in float64.
"""

from __future__ import annotations

import continual as co
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import cofunc
from cofunc._errors import ConfigurationError, DTypeDeviceError, InputShapeError, StateError, UnsupportedModuleError
from cofunc._rnn import LSTMState, Recurrent, RNNState, gru, lstm, rnn
from cofunc.nn.rnn import GRU, LSTM, RNN
from conftest import FLOAT32_TOL, assert_tree_close, assert_tree_equal, split_points, tree_clone

pytestmark = [
    # torch's own notices: projected LSTMs skip oneDNN; dropout with one layer does nothing.
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
    pytest.mark.filterwarnings("ignore:dropout option adds dropout after all but last recurrent layer"),
]

F64 = torch.float64
VMAP_STEP = dict(in_dims=(None, 0, 0))
KINDS = ["rnn_tanh", "rnn_relu", "gru", "lstm", "lstm_proj"]


def make(kind, input_size=3, hidden_size=5, num_layers=2, bias=True, dropout=0.0, dtype=torch.float32):
    """A cofunc layer and an equivalent torch.nn module (``batch_first=True``, eval mode)."""
    common = dict(num_layers=num_layers, bias=bias, dropout=dropout)
    if kind.startswith("rnn"):
        nonlinearity = kind[4:]
        layer = rnn(input_size, hidden_size, nonlinearity=nonlinearity, **common)
        module = nn.RNN(input_size, hidden_size, nonlinearity=nonlinearity, batch_first=True, dtype=dtype, **common)
    elif kind == "gru":
        layer = gru(input_size, hidden_size, **common)
        module = nn.GRU(input_size, hidden_size, batch_first=True, dtype=dtype, **common)
    else:
        proj = 2 if kind == "lstm_proj" else 0
        layer = lstm(input_size, hidden_size, proj_size=proj, **common)
        module = nn.LSTM(input_size, hidden_size, proj_size=proj, batch_first=True, dtype=dtype, **common)
    return layer, module.eval()


def random_hx(layer, batch, dtype=torch.float32):
    """A random torch-layout ``hx``: ``h (L, *batch, H_out)``, or ``(h, c)`` for the LSTM."""
    h = torch.randn((layer.num_layers,) + tuple(batch) + (layer.output_size,), dtype=dtype)
    if layer.mode == "LSTM":
        return h, torch.randn((layer.num_layers,) + tuple(batch) + (layer.hidden_size,), dtype=dtype)
    return h


def torch_run(module, xs, hx=None):
    """torch.nn on a clip ``(B, C, T)``: ``(out (B, H_out, T), h_n)``."""
    with torch.no_grad():
        out, h_n = module(xs.transpose(1, 2), hx)
    return out.transpose(1, 2), h_n


def step_loop(layer, params, state, xs):
    """``layer.step`` over every frame of ``xs (*B, C, T)``: outputs ``(*B, H_out, T)`` and state."""
    ys = []
    for t in range(xs.shape[-1]):
        y, state = layer.step(params, state, xs[..., t])
        ys.append(y)
    return torch.stack(ys, -1), state


def as_tuple(h_n):
    return h_n if isinstance(h_n, tuple) else (h_n,)


# --- forward: torch's computation, bit for bit ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_torch(kind, num_layers, bias):
    """``forward`` (and ``forward_hx``) with a module's own params equal the module exactly,
    including dropout > 0 in eval mode."""
    layer, module = make(kind, num_layers=num_layers, bias=bias, dropout=0.3)
    params = layer.params_from(module)
    xs = torch.randn(2, 3, 7)
    expected, h_n = torch_run(module, xs)
    with torch.no_grad():
        assert torch.equal(layer.forward(params, xs), expected)
        hx = random_hx(layer, (2,))
        out, h = layer.forward_hx(params, xs, hx)
    expected, h_n = torch_run(module, xs, hx)
    assert torch.equal(out, expected)
    for a, b in zip(as_tuple(h), as_tuple(h_n)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_nn_forward_equals_torch(kind):
    """The adapter's ``forward(x, hx)`` is torch's call, with ``out`` as ``(B, H_out, T)``; a
    module with ``batch_first=False`` has the same weights and gives the same result."""
    layer, module = make(kind, num_layers=2)
    ours = {"rnn_tanh": RNN, "rnn_relu": RNN, "gru": GRU}.get(kind, LSTM).build_from(module)
    xs, hx = torch.randn(2, 3, 6), random_hx(layer, (2,))
    expected, h_n = torch_run(module, xs, hx)
    with torch.no_grad():
        out, h = ours(xs, hx)
    assert torch.equal(out, expected)
    for a, b in zip(as_tuple(h), as_tuple(h_n)):
        assert torch.equal(a, b)
    time_first = type(module)(**_module_kwargs(module), batch_first=False).eval()
    time_first.load_state_dict(module.state_dict())
    with torch.no_grad():
        out_tf, _ = time_first(xs.permute(2, 0, 1), hx)
        assert torch.equal(ours.forward(xs, hx)[0], out_tf.permute(1, 2, 0))
        # The unbatched clip (C, T) also works, as in torch.nn.
        hx0 = tuple(t[:, 0] for t in hx) if isinstance(hx, tuple) else hx[:, 0]
        torch.testing.assert_close(ours(xs[0], hx0)[0], expected[0], **FLOAT32_TOL)


def _module_kwargs(module):
    kwargs = dict(input_size=module.input_size, hidden_size=module.hidden_size, num_layers=module.num_layers, bias=module.bias)
    if module.mode.startswith("RNN"):
        kwargs["nonlinearity"] = module.nonlinearity
    if module.mode == "LSTM":
        kwargs["proj_size"] = module.proj_size
    return kwargs


def test_param_names_equal_torch():
    """Params carry torch's names in torch's order; adapters' ``state_dict`` is torch's and loads
    strictly both ways; ``functional_call`` with the params is strict."""
    for kind in KINDS:
        layer, module = make(kind, num_layers=3)
        params = layer.init_params()
        assert list(params) == list(module.state_dict()) == list(module._flat_weights_names) == layer.param_names
        assert all(params[k].shape == v.shape for k, v in module.state_dict().items())
        ours = {"rnn_tanh": RNN, "rnn_relu": RNN, "gru": GRU}.get(kind, LSTM).build_from(module)
        assert list(ours.state_dict()) == list(module.state_dict())
        assert list(ours.params) == list(params)
        ours.load_state_dict(module.state_dict(), strict=True)
        module.load_state_dict(ours.state_dict(), strict=True)
        xs = torch.randn(1, 3, 4)
        with torch.no_grad():
            out = torch.func.functional_call(module, params, (xs.transpose(1, 2),), strict=True)[0]
            assert torch.equal(out.transpose(1, 2), layer.forward(params, xs))
        no_bias = make(kind, bias=False)[0].init_params()
        assert not any(name.startswith("bias") for name in no_bias)


def test_init_params_like_torch():
    """``init_params`` draws from torch's initialiser: U(-1/sqrt(H), 1/sqrt(H)) for every tensor,
    and the same values as the torch module under the same seed."""
    layer = lstm(3, 16, num_layers=2, proj_size=4)
    torch.manual_seed(1)
    params = layer.init_params(dtype=F64)
    torch.manual_seed(1)
    module = nn.LSTM(3, 16, num_layers=2, proj_size=4, dtype=F64)
    for name, p in module.named_parameters():
        assert torch.equal(params[name], p.detach())
        assert p.dtype == F64 and p.abs().max() <= 16 ** -0.5


# --- stepping: equal to torch.nn from the same hidden state ----------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("kind", KINDS)
def test_step_from_hx_equals_torch(kind, dtype):
    """Steps from ``state_from_hx(hx)`` give torch.nn's output from ``hx``, and the final state
    converts back to its ``h_n``."""
    layer, module = make(kind, num_layers=2, bias=kind != "gru", dtype=dtype)
    params = layer.params_from(module)
    xs, hx = torch.randn(3, 3, 8, dtype=dtype), random_hx(layer, (3,), dtype)
    expected, h_n = torch_run(module, xs, hx)
    tol = FLOAT32_TOL if dtype == torch.float32 else {}
    with torch.no_grad():
        ys, state = step_loop(layer, params, layer.state_from_hx(hx), xs)
    torch.testing.assert_close(ys, expected, **tol)
    for a, b in zip(as_tuple(layer.hx_from_state(state)), as_tuple(h_n)):
        torch.testing.assert_close(a, b, **tol)
    # And `steps` (the fused kernel) from the same state.
    with torch.no_grad():
        ys2, state2 = layer.steps(params, layer.state_from_hx(hx), xs)
    torch.testing.assert_close(ys2, expected, **tol)
    assert_tree_close(state2, state, "steps vs step", **tol)


@pytest.mark.parametrize("kind", KINDS)
def test_steps_equal_repeated_step(kind):
    """``steps`` over a chunk equals ``step`` frame by frame, from a non-zero state, with two
    stream dims; the input state is left untouched."""
    layer = make(kind, num_layers=3)[0]
    params = layer.init_params(dtype=F64)
    xs = torch.randn(2, 2, 3, 6, dtype=F64)
    state = layer.state_from_hx(random_hx(layer, (2, 2), F64))
    snapshot = tree_clone(state)
    ys, end = layer.steps(params, state, xs)
    ys_loop, end_loop = step_loop(layer, params, state, xs)
    torch.testing.assert_close(ys, ys_loop)
    assert_tree_close(end, end_loop, "state")
    assert_tree_equal(state, snapshot, "input state changed")
    # From a fresh state, `steps` equals `forward`, and `pad_end` changes nothing.
    fresh = layer.init_state(params, (2, 2, 3))
    ys_pad, end_pad = layer.steps(params, fresh, xs, pad_end=True)
    torch.testing.assert_close(ys_pad, layer.forward(params, xs))
    assert_tree_close(end_pad, layer.steps(params, fresh, xs)[1])


@given(
    kind=st.sampled_from(KINDS),
    cuts=st.lists(st.integers(0, 9), max_size=3),
    lead=st.sampled_from([(), (2,), (2, 2)]),
)
def test_chunk_splitting_invariance(kind, cuts, lead):
    """Any split of a clip into chunks (empty ones included) gives the same outputs and state
    as one ``steps`` call."""
    layer = make(kind)[0]
    params = layer.init_params(dtype=F64)
    xs = torch.randn(lead + (3, 9), dtype=F64)
    whole, end = layer.steps(params, layer.init_state(params, lead + (3,)), xs)
    points = split_points(cuts, 9)
    state, parts = layer.init_state(params, lead + (3,)), []
    for a, b in zip(points, points[1:]):
        ys, state = layer.steps(params, state, xs[..., a:b])
        assert ys.shape == lead + (layer.output_size, b - a)
        parts.append(ys)
    torch.testing.assert_close(torch.cat(parts, -1), whole)
    assert_tree_close(state, end, "state")


@given(
    kind=st.sampled_from(KINDS),
    input_size=st.integers(1, 4),
    hidden_size=st.integers(3, 6),
    num_layers=st.integers(1, 3),
    bias=st.booleans(),
    lead=st.sampled_from([(), (1,), (3,), (2, 2)]),
    length=st.integers(1, 6),
)
def test_hypothesis_sizes(kind, input_size, hidden_size, num_layers, bias, lead, length):
    """Over sizes, layers and stream shapes: ``forward`` equals torch.nn per stream (exactly with
    one batch dim), ``step`` and ``steps`` equal ``forward`` (float64)."""
    layer, module = make(kind, input_size, hidden_size, num_layers, bias, dtype=F64)
    params = layer.params_from(module)
    xs = torch.randn(lead + (input_size, length), dtype=F64)
    with torch.no_grad():
        out = layer.forward(params, xs)
        flat = xs.reshape((-1, input_size, length))
        expected = torch_run(module, flat)[0].reshape(lead + (layer.output_size, length))
        if len(lead) == 1:
            assert torch.equal(out, expected)
        torch.testing.assert_close(out, expected)
        state = layer.init_state(params, lead + (input_size,))
        assert state.h.shape == lead + (num_layers, layer.output_size)
        ys, end = step_loop(layer, params, state, xs)
        torch.testing.assert_close(ys, out)
        ys2, end2 = layer.steps(params, state, xs)
        torch.testing.assert_close(ys2, out)
        assert_tree_close(end2, end, "state")
        assert layer.step_output_shape(lead + (input_size,)) == lead + (layer.output_size,)


# --- metadata ------------------------------------------------------------------------------------


def test_metadata():
    for kind in KINDS:
        layer = make(kind)[0]
        assert (layer.delay, layer.receptive_field, layer.stride, layer.padding) == (0, 1, 1, 0)
        assert layer.clock(layer.init_state({}, (2, 3))) is None
        params = layer.init_params()
        _, state = layer.step(params, layer.init_state(params, (2, 3)), torch.randn(2, 3))
        assert bool(layer.valid(state).all())
    assert type(lstm(2, 3).init_state({}, (2,))) is LSTMState
    assert type(gru(2, 3).init_state({}, (2,))) is RNNState
    assert isinstance(rnn(2, 3), Recurrent) and isinstance(rnn(2, 3), cofunc.Layer)


# --- torch.func ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_equals_batched(kind):
    """``vmap(step)`` over the streams equals the batched step for several steps; ``vmap`` of
    ``steps`` and ``forward`` (a cell loop under vmap) equals the batched fused kernel;
    vmapping over params too (an ensemble) equals running each member."""
    layer = make(kind)[0]
    params = layer.init_params()
    xs = torch.randn(4, 3, 5)
    state = vstate = layer.state_from_hx(random_hx(layer, (4,)))
    vstep = torch.func.vmap(layer.step, **VMAP_STEP)
    for t in range(5):
        y, state = layer.step(params, state, xs[..., t])
        vy, vstate = vstep(params, vstate, xs[..., t])
        torch.testing.assert_close(vy, y, **FLOAT32_TOL)
        assert_tree_close(vstate, state, f"step {t}", **FLOAT32_TOL)
    start = layer.state_from_hx(random_hx(layer, (4,)))
    ys, end = layer.steps(params, start, xs)
    vys, vend = torch.func.vmap(layer.steps, in_dims=(None, 0, 0))(params, start, xs)
    torch.testing.assert_close(vys, ys, **FLOAT32_TOL)
    assert_tree_close(vend, end, "steps", **FLOAT32_TOL)
    torch.testing.assert_close(torch.func.vmap(layer.forward, in_dims=(None, 0))(params, xs), layer.forward(params, xs), **FLOAT32_TOL)
    members = [layer.init_params() for _ in range(3)]
    stacked = {k: torch.stack([m[k] for m in members]) for k in members[0]}
    vys = torch.func.vmap(layer.forward, in_dims=(0, None))(stacked, xs)
    for i, m in enumerate(members):
        torch.testing.assert_close(vys[i], layer.forward(m, xs), **FLOAT32_TOL)


def test_grad_through_steps():
    """Gradients through ``steps`` and ``step`` agree (both differentiable in the params)."""
    layer = lstm(3, 4, num_layers=2, proj_size=2)
    params = layer.init_params(dtype=F64)
    xs = torch.randn(2, 3, 5, dtype=F64)
    state = layer.init_state(params, (2, 3))

    def loss_steps(p):
        return layer.steps(p, state, xs)[0].square().sum()

    def loss_step(p):
        return step_loop(layer, p, state, xs)[0].square().sum()

    g1, g2 = torch.func.grad(loss_steps)(params), torch.func.grad(loss_step)(params)
    for name in params:
        torch.testing.assert_close(g1[name], g2[name])


@pytest.mark.slow
def test_compiled_step_equals_eager():
    """``torch.compile(step, fullgraph=True)`` (inductor): eager's outputs and states over 8
    steps, from one graph, also after the state went through ``steps``."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    layer = lstm(3, 6, num_layers=2, proj_size=4)
    params = layer.init_params()
    compiled = torch.compile(layer.step, fullgraph=True)
    state = eager = layer.init_state(params, (2, 3))
    xs = torch.randn(2, 3, 8)
    for t in range(6):
        y, state = compiled(params, state, xs[..., t])
        y_eager, eager = layer.step(params, eager, xs[..., t])
        torch.testing.assert_close(y, y_eager, **FLOAT32_TOL)
        assert_tree_close(state, eager, f"step {t}", **FLOAT32_TOL)
    _, state = layer.steps(params, state, xs[..., 6:7])
    y, state = compiled(params, state, xs[..., 7])
    _, eager = layer.steps(params, eager, xs[..., 6:7])
    torch.testing.assert_close(y, layer.step(params, eager, xs[..., 7])[0], **FLOAT32_TOL)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rnn_relu", "gru"])
def test_compiled_vmapped_step_has_no_graph_break(kind):
    """The vmapped step compiles as one graph (checked with the cheap ``aot_eager`` backend)."""
    torch._dynamo.reset()
    layer = make(kind, num_layers=2)[0]
    params = layer.init_params()
    fn = torch.func.vmap(layer.step, **VMAP_STEP)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    state = layer.init_state(params, (3, 3))
    x = torch.randn(3, 3)
    y, s = compiled(params, state, x)
    y_eager, s_eager = layer.step(params, state, x)
    torch.testing.assert_close(y, y_eager, **FLOAT32_TOL)
    assert_tree_close(s, s_eager, "state", **FLOAT32_TOL)


# --- composition ---------------------------------------------------------------------------------


def test_in_seq_after_strided_conv():
    """Behind a strided conv, the recurrent state advances only on steps with a real input:
    the emitted step outputs equal the clip ``forward``, and ``steps`` equals both."""
    net = cofunc.seq(cofunc.conv1d(2, 3, 3, stride=2, padding=1), gru(3, 4, num_layers=2))
    params = net.init_params(dtype=F64)
    xs = torch.randn(2, 2, 9, dtype=F64)
    expected = net.forward(params, xs)
    state, outs = net.init_state(params, (2, 2)), []
    for t in range(9):
        y, state = net.step(params, state, xs[..., t])
        if bool(net.valid(state).all()):
            outs.append(y)
    ys = torch.stack(outs, -1)
    torch.testing.assert_close(ys, expected[..., : ys.shape[-1]])
    ys2, state2 = net.steps(params, net.init_state(params, (2, 2)), xs, pad_end=True)
    torch.testing.assert_close(ys2, expected)
    assert_tree_close(state2, state, "state")


# --- errors --------------------------------------------------------------------------------------


def test_errors_name_the_layer():
    layer = lstm(3, 5, num_layers=2)
    params = layer.init_params()
    state = layer.init_state(params, (2, 3))
    with pytest.raises(InputShapeError, match=r"lstm\(3->5, num_layers=2\).*3 channels"):
        layer.step(params, state, torch.randn(2, 4))
    with pytest.raises(InputShapeError, match="time axis"):
        layer.step(params, state, torch.randn(2, 3, 4))
    with pytest.raises(InputShapeError, match=r"lstm\(3->5"):
        layer.forward(params, torch.randn(2, 4, 6))
    with pytest.raises(InputShapeError, match=r"lstm\(3->5"):
        layer.steps(params, state, torch.randn(2, 4, 6))
    with pytest.raises(InputShapeError, match="at least one frame"):
        layer.forward(params, torch.randn(2, 3, 0))
    # States from other layers: another kind, another hidden size, another depth.
    for other in (gru(3, 5, num_layers=2), lstm(3, 6, num_layers=2), lstm(3, 5, num_layers=1)):
        foreign = other.init_state(other.init_params(), (2, 3))
        with pytest.raises(StateError, match=r"lstm\(3->5, num_layers=2\)"):
            layer.step(params, foreign, torch.randn(2, 3))
        with pytest.raises(StateError, match=r"lstm\(3->5, num_layers=2\)"):
            layer.steps(params, foreign, torch.randn(2, 3, 4))
    with pytest.raises(StateError, match="re-initialise"):
        layer.step(params, state, torch.randn(3, 3))
    with pytest.raises(DTypeDeviceError, match=r"lstm\(3->5"):
        layer.step(params, state, torch.randn(2, 3, dtype=F64))
    with pytest.raises(DTypeDeviceError, match=r"lstm\(3->5"):
        layer.step(layer.init_params(dtype=F64), state, torch.randn(2, 3, dtype=F64))
    with pytest.raises(StateError, match=r"lstm\(3->5.*pair"):
        layer.state_from_hx(torch.zeros(2, 1, 5))
    with pytest.raises(StateError, match=r"num_layers=2"):
        layer.state_from_hx((torch.zeros(1, 1, 5), torch.zeros(1, 1, 5)))
    with pytest.raises(UnsupportedModuleError, match="bidirectional"):
        layer.params_from(nn.LSTM(3, 5, num_layers=2, bidirectional=True))
    with pytest.raises(ConfigurationError, match="differs"):
        layer.params_from(nn.LSTM(3, 6, num_layers=2))


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match="proj_size"):
        lstm(3, 4, proj_size=4)
    with pytest.raises(ConfigurationError, match="nonlinearity"):
        rnn(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ConfigurationError, match="proj_size"):
        Recurrent("GRU", 3, 4, proj_size=2)
    with pytest.raises(ConfigurationError, match="hidden_size"):
        gru(3, 0)
    with pytest.raises(ConfigurationError, match="dropout"):
        gru(3, 4, dropout=1.5)
    with pytest.raises(ConfigurationError, match="hidden_size"):
        GRU(3, 0)
    with pytest.raises(UnsupportedModuleError, match="bidirectional"):
        GRU.build_from(nn.GRU(3, 4, bidirectional=True))
    with pytest.raises(UnsupportedModuleError, match="nn.LSTM"):
        LSTM.build_from(nn.GRU(3, 4))


# --- nn adapters -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_nn_stepping_equals_forward(kind):
    """``forward_step`` and ``forward_steps`` continue each other and equal ``forward`` from the
    same ``hx``; ``update_state=False`` leaves the state; ``get_hx`` is torch's ``h_n``."""
    layer, module = make(kind, num_layers=2)
    ours = {"rnn_tanh": RNN, "rnn_relu": RNN, "gru": GRU}.get(kind, LSTM).build_from(module)
    assert (ours.delay, ours.receptive_field, ours.stride, ours.padding) == (0, 1, (1,), (0,))
    xs, hx = torch.randn(2, 3, 7), random_hx(layer, (2,))
    with torch.no_grad():
        expected, h_n = ours(xs, hx)
        ours.set_state(hx)
        firsts = ours.forward_steps(xs[:, :, :4])
        middle = ours.forward_step(xs[:, :, 4])
        before = tree_clone(ours.get_state())
        peek = ours.forward_step(xs[:, :, 5], update_state=False)
        assert_tree_equal(ours.get_state(), before, "update_state=False")
        torch.testing.assert_close(ours.forward_step(xs[:, :, 5]), peek)
        last = ours.forward_steps(xs[:, :, 6:])
    torch.testing.assert_close(torch.cat([firsts, middle[..., None], peek[..., None], last], -1), expected, **FLOAT32_TOL)
    for a, b in zip(as_tuple(ours.get_hx()), as_tuple(h_n)):
        torch.testing.assert_close(a, b, **FLOAT32_TOL)
    assert ours.forward_steps(xs[:, :, :0]) is None
    ours.clean_state()
    assert ours.get_state() is None and ours.get_hx() is None


def test_nn_set_state_forms():
    """``set_state`` takes the functional state, torch's ``h``, co's ``(h,)`` and torch's
    ``(h, c)``; wrong forms raise `StateError` naming the layer."""
    gru_m, lstm_m = GRU(3, 4, num_layers=2), LSTM(3, 4, num_layers=2)
    h, c = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    for form in (h, (h,), [h]):
        gru_m.set_state(form)
        assert torch.equal(gru_m.stream_state.h, h.transpose(0, 1))
        assert torch.equal(gru_m.get_hx(), h) and torch.equal(gru_m.get_state()[0], h)  # co's (h,)
    gru_m.set_state(gru_m.get_state())
    assert torch.equal(gru_m.get_hx(), h)
    gru_m.set_state(gru_m.stream_state)
    assert torch.equal(gru_m.get_hx(), h)
    lstm_m.set_state((h, c))
    assert torch.equal(lstm_m.stream_state.c, c.transpose(0, 1))
    assert all(torch.equal(a, b) for a, b in zip(lstm_m.get_state(), (h, c)))  # co's (h, c)
    assert all(torch.equal(a, b) for a, b in zip(lstm_m.get_hx(), (h, c)))
    with pytest.raises(StateError, match=r"gru\(3->4"):
        gru_m.set_state(torch.randn(2, 5, 3))
    with pytest.raises(StateError, match=r"gru\(3->4"):
        gru_m.set_state(lstm_m.stream_state)
    with pytest.raises(StateError, match=r"lstm\(3->4"):
        lstm_m.set_state(h)
    with pytest.raises(StateError, match=r"lstm\(3->4.*another layer"):
        lstm_m.set_state(LSTM(3, 5, num_layers=2).layer.init_state({}, (5, 3)))
    # As in co, a hidden state for another batch of streams starts that batch.
    gru_m.set_state(torch.randn(2, 7, 4))
    assert gru_m.forward_step(torch.randn(7, 3)).shape == (7, 4)
    gru_m.set_state(None)
    assert gru_m.get_state() is None


def test_nn_call_modes_and_containers():
    """``call_mode`` dispatch and use inside `cofunc.nn.Sequential` (stepping)."""
    import cofunc.nn as cn

    rnn_m = RNN(3, 4)
    x = torch.randn(2, 3, 5)
    with torch.no_grad():
        expected, _ = rnn_m(x)
        with cn.call_mode("forward_steps"):
            torch.testing.assert_close(rnn_m(x), expected, **FLOAT32_TOL)
        rnn_m.clean_state()
        rnn_m.call_mode = "forward_step"
        torch.testing.assert_close(rnn_m(x[:, :, 0]), expected[:, :, 0], **FLOAT32_TOL)
    net = cn.Sequential(cn.Conv1d(2, 3, 3, padding=1), LSTM(3, 4))
    xs = torch.randn(2, 2, 6)
    with torch.no_grad():
        reference = net.layer.forward(net.params, xs)
        ys = net.forward_steps(xs, pad_end=True)
    torch.testing.assert_close(ys, reference, **FLOAT32_TOL)


def test_nn_training_dropout_uses_torch():
    """In training mode with dropout, stepping applies torch's dropout (co's behaviour): with the
    same seed, ``forward_steps`` equals the module's training-mode ``forward``."""
    ours = GRU(3, 4, num_layers=2, dropout=0.5).train()
    xs = torch.randn(2, 3, 6)
    torch.manual_seed(5)
    expected, h_n = ours(xs)
    torch.manual_seed(5)
    ys = ours.forward_steps(xs)
    assert torch.equal(ys, expected)
    assert torch.equal(ours.get_hx(), h_n)
    ours.eval()
    ours.clean_state()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_steps(xs), ours(xs)[0], **FLOAT32_TOL)


def test_nn_gradients_flow():
    """Adapters' params are leaf ``nn.Parameter``s that receive gradients through stepping."""
    ours = LSTM(3, 4, proj_size=2)
    ours.forward_steps(torch.randn(2, 3, 4)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.parameters())


# --- co 1.2.4 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_equivalent_to_co(kind):
    """co's ``RNN/GRU/LSTM`` with our ``state_dict``: the same ``forward``, the same step outputs
    from co's ``set_state(h0)``, and the same ``forward_steps``."""
    layer = make(kind)[0]
    if layer.mode == "LSTM":
        ours = LSTM(3, 5, num_layers=2, proj_size=layer.proj_size, dtype=F64)
        theirs = co.LSTM(3, 5, num_layers=2, proj_size=layer.proj_size, dtype=F64)
    elif layer.mode == "GRU":
        ours, theirs = GRU(3, 5, num_layers=2, dtype=F64), co.GRU(3, 5, num_layers=2, dtype=F64)
    else:
        nl = kind[4:]
        ours = RNN(3, 5, num_layers=2, nonlinearity=nl, dtype=F64)
        theirs = co.RNN(3, 5, num_layers=2, nonlinearity=nl, dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    xs, hx = torch.randn(2, 3, 6, dtype=F64), random_hx(layer, (2,), F64)
    with torch.no_grad():
        out, _ = ours(xs, hx)
        out_co, _ = theirs(xs, hx)
        assert torch.equal(out, out_co)
        ours.set_state(hx)
        theirs.set_state(hx)
        for t in range(4):
            torch.testing.assert_close(ours.forward_step(xs[:, :, t]), theirs.forward_step(xs[:, :, t]))
        torch.testing.assert_close(ours.forward_steps(xs[:, :, 4:]), theirs.forward_steps(xs[:, :, 4:]))
        torch.testing.assert_close(ours.forward_step(xs[:, :, 0]), theirs.forward_step(xs[:, :, 0]))
