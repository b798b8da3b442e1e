"""Continual multi-head attention (`single_output_attention`, `retroactive_attention`) and the
nn adapters ``SingleOutputMultiheadAttention`` / ``RetroactiveMultiheadAttention``.

Reference: ``torch.nn.MultiheadAttention(batch_first=True)`` applied to every window of
``sequence_len`` consecutive tokens. Shapes: clips ``(*B, E, T)``, steps ``(*B, E)``;
single-output steps emit ``(*B, E)``, retroactive steps ``(*B, E, N)`` (all window tokens).
Comparisons run in float64 (tight tolerances) unless they test float32 behaviour.
"""

from __future__ import annotations

import continual as co
import pytest
import torch
import torch._dynamo
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from cofunc._attention import AttentionState, retroactive_attention, single_output_attention
from cofunc._errors import ConfigurationError, DTypeDeviceError, InputShapeError, StateError
from cofunc._params import flatten_params
from cofunc.nn.multihead_attention import RetroactiveMultiheadAttention, SingleOutputMultiheadAttention
from conftest import F64, FLOAT32_TOL, assert_tree_close, assert_tree_equal, split_points, step_through, tree_clone

STREAM_SHAPES = st.sampled_from([(), (2,), (2, 3)])


@st.composite
def mha_configs(draw):
    """(embed_dim, num_heads, sequence_len, query_index) with tiny sizes."""
    heads = draw(st.integers(1, 3))
    embed = heads * draw(st.integers(1, 3))
    n = draw(st.integers(1, 5))
    query_index = draw(st.integers(-n, n - 1))
    return embed, heads, n, query_index


def torch_windows(module: nn.MultiheadAttention, q, k=None, v=None, n: int = 1, query_index=None):
    """``module`` on every window of ``n`` tokens of clips ``(B, C, T)``: single output (token
    ``query_index``) ``(B, E, W)``, or all tokens ``(B, E, W, N)`` when ``query_index`` is None."""
    k = q if k is None else k
    v = q if v is None else v
    outs = []
    with torch.no_grad():
        for w in range(q.shape[-1] - n + 1):
            qw, kw, vw = (t[..., w:w + n].transpose(-1, -2) for t in (q, k, v))
            o = module(qw, kw, vw)[0]  # (B, N, E)
            outs.append(o[:, query_index] if query_index is not None else o.transpose(-1, -2))
    return torch.stack(outs, dim=-1 if query_index is not None else -2)


class OutAxis:
    """For `step_through`: stack the outputs on the layer's output time axis (retroactive
    outputs carry a window axis after it)."""

    def __init__(self, layer):
        self.layer = layer

    def time_axis(self):
        return self.layer.out_time_axis()


def run_steps(layer, params, xs, state=None):
    return step_through(layer, params, xs, state, out_layer=OutAxis(layer))


def make_pair(embed, heads, n, query_index=None, bias=True, kdim=None, vdim=None, dtype=F64):
    """A cofunc layer (single-output if ``query_index`` is an int, else retroactive), a torch
    module and the module's params."""
    module = nn.MultiheadAttention(embed, heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=True, dtype=dtype).eval()
    if bias:  # torch initialises biases to zero; make them matter
        with torch.no_grad():
            module.in_proj_bias.normal_()
            module.out_proj.bias.normal_()
    if query_index is None:
        layer = retroactive_attention(embed, heads, n, bias=bias, kdim=kdim, vdim=vdim)
    else:
        layer = single_output_attention(embed, heads, n, query_index, bias=bias, kdim=kdim, vdim=vdim)
    return layer, module, layer.params_from(module)


# --- forward equals torch.nn on every window ------------------------------------------------------


@given(cfg=mha_configs(), bias=st.booleans(), batch=st.integers(1, 2), extra=st.integers(0, 3), retro=st.booleans())
def test_forward_equals_torch_on_every_window(cfg, bias, batch, extra, retro):
    embed, heads, n, qi = cfg
    layer, module, params = make_pair(embed, heads, n, None if retro else qi, bias)
    xs = torch.randn(batch, embed, n + extra, dtype=F64)
    expected = torch_windows(module, xs, n=n, query_index=None if retro else qi)
    actual = layer.forward(params, xs)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("retro", [False, True])
def test_forward_one_window_float32(retro):
    """T == N in float32: the module's output (all tokens, or the query token)."""
    layer, module, params = make_pair(8, 2, 6, None if retro else -1, dtype=torch.float32)
    x = torch.randn(3, 8, 6)
    with torch.no_grad():
        out = module(x.mT, x.mT, x.mT)[0]  # (B, N, E)
    expected = out.mT.unsqueeze(-2) if retro else out[:, -1].unsqueeze(-1)
    torch.testing.assert_close(layer.forward(params, x), expected, **FLOAT32_TOL)


@given(embed=st.sampled_from([2, 4]), kdim=st.integers(1, 4), vdim=st.integers(1, 4), n=st.integers(1, 4),
       retro=st.booleans(), bias=st.booleans())
def test_cross_attention_with_own_key_and_value_sizes(embed, kdim, vdim, n, retro, bias):
    """kdim/vdim: params q/k/v_proj_weight like torch, inputs are (query, key, value) tuples."""
    layer, module, params = make_pair(embed, 2, n, None if retro else -1, bias, kdim, vdim)
    assert set(flatten_params(params)) == set(module.state_dict())
    q, k, v = (torch.randn(2, c, n + 2, dtype=F64) for c in (embed, kdim, vdim))
    expected = torch_windows(module, q, k, v, n=n, query_index=None if retro else -1)
    torch.testing.assert_close(layer.forward(params, (q, k, v)), expected)
    state = layer.init_state(params, [(2, embed), (2, kdim), (2, vdim)])
    outs = []
    for t in range(n + 2):
        y, state = layer.step(params, state, (q[..., t], k[..., t], v[..., t]))
        if bool(layer.valid(state).all()):
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs, dim=-1 if not retro else -2), expected)


def test_packed_weights_with_separate_key_value_inputs():
    """Same sizes but distinct key/value streams: packed weights, three projections."""
    layer, module, params = make_pair(4, 2, 3, -1)
    q, k, v = (torch.randn(1, 4, 5, dtype=F64) for _ in range(3))
    torch.testing.assert_close(layer.forward(params, (q, k, v)), torch_windows(module, q, k, v, n=3, query_index=-1))


# --- steps: repeated step, chunks, continuation ---------------------------------------------------


@given(cfg=mha_configs(), lead=STREAM_SHAPES, extra=st.integers(0, 4), cuts=st.lists(st.integers(0, 12), max_size=3),
       retro=st.booleans())
def test_steps_equal_repeated_step_and_forward(cfg, lead, extra, cuts, retro):
    """Step by step, chunk by chunk (any cut points, empty chunks included) and the clip forward
    agree; emission starts at step N; the final states agree."""
    embed, heads, n, qi = cfg
    layer, _, params = make_pair(embed, heads, n, None if retro else qi)
    length = n + extra
    xs = torch.randn(lead + (embed, length), dtype=F64)
    stepped = run_steps(layer, params, xs)
    assert stepped.flags == [t >= n - 1 for t in range(length)]
    expected = layer.forward(params, xs)
    torch.testing.assert_close(stepped.ys, expected)
    state = layer.init_state(params, lead + (embed,), dtype=F64)
    chunks = []
    bounds = split_points(cuts, length)
    for a, b in zip(bounds, bounds[1:]):
        ys, state = layer.steps(params, state, xs[..., a:b])
        chunks.append(ys)
    torch.testing.assert_close(torch.cat(chunks, dim=-1 if not retro else -2), expected)
    assert_tree_close(state, stepped.state, "state after steps vs step")


@pytest.mark.parametrize("retro", [False, True])
def test_continuation_over_a_shifted_window(retro):
    """Far past the first window, each step still equals torch on the latest N tokens."""
    n = 4
    layer, module, params = make_pair(6, 3, n, None if retro else 1)
    xs = torch.randn(2, 6, 3 * n + 5, dtype=F64)
    state = layer.init_state(params, (2, 6))
    for t in range(xs.shape[-1]):
        y, state = layer.step(params, state, xs[..., t])
    window = xs[..., -n:]
    expected = torch_windows(module, window, n=n, query_index=None if retro else 1)
    torch.testing.assert_close(y, expected.squeeze(-1) if not retro else expected.squeeze(-2))
    assert int(state.count[0]) == xs.shape[-1]


def test_retroactive_steps_stay_finite_for_large_inputs():
    """x100 and x1000 inputs: finite and equal to torch (co's incremental update overflows)."""
    layer, module, params = make_pair(8, 2, 5, None, dtype=torch.float32)
    xs = torch.randn(2, 8, 9)
    for scale in (100.0, 1000.0):
        big = xs * scale
        ys = run_steps(layer, params, big).ys
        assert torch.isfinite(ys).all()
        expected = torch_windows(module, big, n=5)
        torch.testing.assert_close(ys, expected, atol=1e-3 * scale, rtol=1e-4)
        state = layer.init_state(params, (2, 8))
        ys_chunk, _ = layer.steps(params, state, big)
        torch.testing.assert_close(ys_chunk, expected, atol=1e-3 * scale, rtol=1e-4)


# --- purity and streams -----------------------------------------------------------------------------


@pytest.mark.parametrize("retro", [False, True])
def test_step_and_steps_leave_the_state_untouched(retro):
    layer, _, params = make_pair(4, 2, 3, None if retro else 0)
    state = layer.init_state(params, (2, 4))
    for t in range(4):
        _, state = layer.step(params, state, torch.randn(2, 4, dtype=F64))
    snapshot = tree_clone(state)
    layer.step(params, state, torch.randn(2, 4, dtype=F64))
    layer.steps(params, state, torch.randn(2, 4, 5, dtype=F64), pad_end=True)
    torch.func.vmap(layer.step, in_dims=(None, 0, 0))(params, state, torch.randn(2, 4, dtype=F64))
    assert_tree_equal(state, snapshot, "state after step/steps/vmapped step")


@given(cfg=mha_configs(), retro=st.booleans())
def test_vmap_equals_batched(cfg, retro):
    """``vmap(step, in_dims=(None, 0, 0))`` over single-stream states equals the batched step,
    including streams that start at different times (out of step)."""
    embed, heads, n, qi = cfg
    layer, _, params = make_pair(embed, heads, n, None if retro else qi)
    xs = torch.randn(3, embed, n + 3, dtype=F64)
    batched = layer.init_state(params, (3, embed))
    single = layer.init_state(params, (embed,))
    vmapped = torch.utils._pytree.tree_map(lambda t: torch.stack([t] * 3), single)
    # Stream 2 is one step ahead: give it an extra token first (both paths alike).
    extra = torch.randn(embed, dtype=F64)
    _, ahead = layer.step(params, single, extra)
    batched = torch.utils._pytree.tree_map(lambda b, a: torch.cat([b[:2], a.unsqueeze(0)]), batched, ahead)
    vmapped = torch.utils._pytree.tree_map(lambda b, a: torch.cat([b[:2], a.unsqueeze(0)]), vmapped, ahead)
    vstep = torch.func.vmap(layer.step, in_dims=(None, 0, 0))
    for t in range(xs.shape[-1]):
        y_b, batched = layer.step(params, batched, xs[..., t])
        y_v, vmapped = vstep(params, vmapped, xs[..., t])
        valid = layer.valid(batched)
        assert torch.equal(valid, layer.valid(vmapped))
        torch.testing.assert_close(y_v[valid], y_b[valid])
    assert_tree_close(vmapped, batched, "vmapped vs batched state")


@pytest.mark.slow
@pytest.mark.parametrize("query_index", [-1, 1, None])
def test_compiled_step_fullgraph_no_recompiles(query_index):
    """One graph for all steps (the counter advancing never recompiles), also after a chunked
    ``steps``; eager results. ``query_index=None``: retroactive."""
    layer, _, params = make_pair(8, 2, 4, query_index, dtype=torch.float32)
    params = torch.utils._pytree.tree_map(torch.Tensor.detach, params)  # states without autograd history
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(layer.step, fullgraph=True, backend=backend)
    state = eager = layer.init_state(params, (2, 8))
    for t in range(10):
        x = torch.randn(2, 8)
        y, state = compiled(params, state, x)
        y_eager, eager = layer.step(params, eager, x)
        torch.testing.assert_close(y, y_eager, **FLOAT32_TOL)
    _, state = layer.steps(params, state, torch.randn(2, 8, 3))
    compiled(params, state, torch.randn(2, 8))
    assert len(graphs) == 1


# --- errors -----------------------------------------------------------------------------------------


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match="divisible"):
        single_output_attention(6, 4, 3)
    with pytest.raises(ConfigurationError, match="query_index"):
        single_output_attention(4, 2, 3, query_index=3)
    with pytest.raises(ConfigurationError, match="query_index"):
        single_output_attention(4, 2, 3, query_index=-4)
    with pytest.raises(ConfigurationError, match="sequence_len"):
        retroactive_attention(4, 2, 0)
    with pytest.raises(ConfigurationError, match="sequence_len"):
        SingleOutputMultiheadAttention(4, 2)
    with pytest.raises(ConfigurationError, match="add_bias_kv"):
        RetroactiveMultiheadAttention(4, 2, add_bias_kv=True, sequence_len=3)
    with pytest.raises(ConfigurationError, match="embed_dim"):
        single_output_attention(4, 2, 3).params_from(nn.MultiheadAttention(8, 2))


def test_input_and_state_errors():
    layer, _, params = make_pair(4, 2, 3, -1)
    state = layer.init_state(params, (2, 4))
    with pytest.raises(InputShapeError, match="time axis"):
        layer.step(params, state, torch.randn(2, 4, 5, dtype=F64))
    with pytest.raises(InputShapeError, match="C=4"):
        layer.step(params, state, torch.randn(2, 5, dtype=F64))
    with pytest.raises(StateError, match="stream"):
        layer.step(params, state, torch.randn(3, 4, dtype=F64))
    with pytest.raises(DTypeDeviceError):
        layer.step(params, state, torch.randn(2, 4))
    other = retroactive_attention(4, 2, 3)
    with pytest.raises(StateError, match="another layer"):
        other.step(params, state, torch.randn(2, 4, dtype=F64))
    with pytest.raises(StateError):
        layer.step(params, (state.keys, state.count), torch.randn(2, 4, dtype=F64))
    cross = single_output_attention(4, 2, 3, kdim=3)
    with pytest.raises(InputShapeError, match="tuple"):
        cross.forward(cross.init_params(), torch.randn(1, 4, 3))


def test_fresh_state_layout():
    layer = single_output_attention(6, 3, 5, query_index=1)
    state = layer.init_state(layer.init_params(), (2, 7, 6))
    assert isinstance(state, AttentionState)
    assert state.queries.shape == (2, 7, 3, 3, 2)  # N - 1 - query position = 3 pending queries
    assert state.keys.shape == state.values.shape == (2, 7, 3, 4, 2)
    assert state.count.shape == (2, 7) and state.count.dtype == torch.int64
    assert layer.receptive_field == 5 and layer.delay == 4 and layer.padding == 0 and layer.stride == 1


def test_init_params_like_torch():
    layer = single_output_attention(6, 2, 3, kdim=4)
    params = flatten_params(layer.init_params(dtype=F64))
    module = nn.MultiheadAttention(6, 2, kdim=4)
    assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in module.state_dict().items()}
    assert all(v.dtype == F64 for v in params.values())
    assert torch.equal(params["in_proj_bias"], torch.zeros(18, dtype=F64))  # torch zeroes the biases


# --- co 1.2.4 equivalence -----------------------------------------------------------------------------


@pytest.mark.parametrize("query_index", [-1, -2, 0, 2])
def test_single_output_matches_co(query_index):
    """Same weights: the same step outputs at the same steps (None while warming up)."""
    torch.manual_seed(1)
    theirs = co.SingleOutputMultiheadAttention(8, 2, sequence_len=5, query_index=query_index, batch_first=True,
                                               embed_dim_second=True).to(F64)
    ours = SingleOutputMultiheadAttention(8, 2, sequence_len=5, query_index=query_index, embed_dim_second=True).to(F64)
    ours.load_state_dict(theirs.state_dict())
    xs = torch.randn(2, 8, 11, dtype=F64)
    a = [ours.forward_step(xs[:, :, t]) for t in range(11)]
    b = [theirs.forward_step(xs[:, :, t]) for t in range(11)]
    assert [o is None for o in a] == [o is None for o in b] == [t < 4 for t in range(11)]
    for p, q in zip(a[4:], b[4:]):
        torch.testing.assert_close(p, q)


def test_retroactive_matches_co_and_fixes_its_overflow():
    torch.manual_seed(1)
    theirs = co.RetroactiveMultiheadAttention(8, 2, sequence_len=5, batch_first=True, embed_dim_second=True).to(F64)
    ours = RetroactiveMultiheadAttention(8, 2, sequence_len=5, batch_first=True, embed_dim_second=True).to(F64)
    ours.load_state_dict(theirs.state_dict())
    xs = torch.randn(2, 8, 11, dtype=F64)
    a = [ours.forward_step(xs[:, :, t]) for t in range(11)]
    b = [theirs.forward_step(xs[:, :, t]) for t in range(11)]
    assert [o is None for o in a] == [o is None for o in b]
    for p, q in zip(a[4:], b[4:]):
        torch.testing.assert_close(p, q)
    ours.clean_state()
    theirs.clean_state()
    big = xs.float() * 100
    ours.float(), theirs.float()
    assert torch.isfinite(ours.forward_steps(big)).all()
    assert not torch.isfinite(theirs.forward_steps(big)).all()


# --- nn adapters --------------------------------------------------------------------------------------


def test_adapter_state_dict_and_build_from():
    module = nn.MultiheadAttention(8, 2, batch_first=True)
    ours = SingleOutputMultiheadAttention.build_from(module, sequence_len=4, embed_dim_second=True)
    assert isinstance(ours, nn.MultiheadAttention)
    assert ours.state_dict().keys() == module.state_dict().keys()
    for key, value in module.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    retro = RetroactiveMultiheadAttention(8, 2, sequence_len=4)
    retro.load_state_dict(module.state_dict())  # strict: same keys
    assert ours.delay == retro.delay == 3 and ours.receptive_field == 4


@pytest.mark.parametrize("layout", ["embed_dim_second", "batch_first", "time_first"])
def test_adapter_layouts(layout):
    """co's flags pick the clip layout; outputs keep it, retroactive windows before the features."""
    n, e = 4, 6
    kwargs = dict(embed_dim_second=layout == "embed_dim_second", batch_first=layout != "time_first",
                  sequence_len=n, forward_returns_attn_mask=False)
    single = SingleOutputMultiheadAttention(e, 2, **kwargs).to(F64)
    retro = RetroactiveMultiheadAttention(e, 2, **kwargs).to(F64)
    retro.load_state_dict(single.state_dict())
    native = torch.randn(2, e, n + 2, dtype=F64)  # (B, E, T)
    clip = {"embed_dim_second": native, "batch_first": native.transpose(1, 2), "time_first": native.permute(2, 0, 1)}[layout]
    y_single = single.layer.forward(single.params, native)  # (B, E, W)
    y_retro = retro.layer.forward(retro.params, native)  # (B, E, W, N)
    expect_single = {"embed_dim_second": y_single, "batch_first": y_single.transpose(1, 2), "time_first": y_single.permute(2, 0, 1)}
    expect_retro = {"embed_dim_second": y_retro, "batch_first": y_retro.permute(0, 2, 3, 1),
                    "time_first": y_retro.permute(2, 3, 0, 1)}
    torch.testing.assert_close(single(clip), expect_single[layout])
    torch.testing.assert_close(retro(clip), expect_retro[layout])
    torch.testing.assert_close(single.forward_steps(clip), expect_single[layout])
    torch.testing.assert_close(retro.forward_steps(clip), expect_retro[layout])
    retro.clean_state()
    for t in range(n + 2):
        y = retro.forward_step(native[:, :, t])
    last = y_retro[:, :, -1]  # (B, E, N)
    torch.testing.assert_close(y, {"embed_dim_second": last, "batch_first": last.transpose(1, 2),
                                   "time_first": last.permute(2, 0, 1)}[layout])


def test_adapter_stepping_contract():
    mha = SingleOutputMultiheadAttention(4, 2, sequence_len=3, embed_dim_second=True)
    xs = torch.randn(1, 4, 5)
    out, weights = mha(xs)  # co's default returns a pair: the weights are not computed
    assert weights is None and out.shape == (1, 4, 3)
    assert mha.forward_steps(xs[:, :, :2]) is None
    assert mha.forward_step(xs[:, :, 2], update_state=False) is not None
    state = mha.get_state()
    assert int(state.count) == 2
    torch.testing.assert_close(mha.forward_step(xs[:, :, 2]), out[:, :, 0], **FLOAT32_TOL)
    torch.testing.assert_close(mha.forward_steps(xs[:, :, 3:]), out[:, :, 1:], **FLOAT32_TOL)
    mha.clean_state()
    assert mha.get_state() is None
    with pytest.raises(ConfigurationError, match="mask"):
        mha(xs, attn_mask=torch.zeros(5, 5))
    with pytest.raises(ConfigurationError, match="single_output_forward"):
        SingleOutputMultiheadAttention(4, 2, sequence_len=3, single_output_forward=False)


def test_adapter_state_carries_no_autograd_history():
    mha = RetroactiveMultiheadAttention(8, 2, sequence_len=4, embed_dim_second=True)
    for t in range(6):
        y = mha.forward_step(torch.randn(1, 8))
    assert y.requires_grad
    assert not any(t.requires_grad for t in mha.get_state())


def test_adapter_cross_attention_steps():
    mha = RetroactiveMultiheadAttention(4, 2, kdim=3, vdim=5, sequence_len=3, embed_dim_second=True,
                                        forward_returns_attn_mask=False).to(F64)
    q, k, v = (torch.randn(2, c, 4, dtype=F64) for c in (4, 3, 5))
    expected = mha(q, k, v)
    outs = [mha.forward_step(q[:, :, t], k[:, :, t], v[:, :, t]) for t in range(4)]
    assert [o is None for o in outs] == [True, True, False, False]
    torch.testing.assert_close(torch.stack(outs[2:], dim=2), expected)
