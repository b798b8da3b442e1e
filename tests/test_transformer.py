"""Continual transformer encoders and the recycling positional encoding.

Reference: ``torch.nn.TransformerEncoderLayer`` / ``torch.nn.TransformerEncoder`` (batch first,
eval mode) applied to every window of ``sequence_len`` tokens. Shapes: clips ``(*B, E, T)``,
steps ``(*B, E)``; retroactive layers emit ``(*B, E, N)`` per step and ``(*B, E, T', N)`` per
clip. Comparisons run in float64 unless they test float32.
"""

from __future__ import annotations

import continual as co
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from cofunc._errors import ConfigurationError, InputShapeError
from cofunc._params import flatten_params, unflatten_params
from cofunc._positional import cyclic_positional_encoding, recycling_positional_encoding
from cofunc._transformer import (
    EncoderLayerConfig,
    channel_layer_norm,
    retroactive_encoder_layer,
    single_output_encoder_layer,
    transformer_encoder,
    window_encoder_layer,
)
from cofunc.nn.positional_encoding import RecyclingPositionalEncoding
from cofunc.nn.transformer import (
    RetroactiveTransformerEncoderLayer,
    SingleOutputTransformerEncoderLayer,
    TransformerEncoder,
    TransformerEncoderLayerFactory,
    convert_transformer_encoder,
)
from conftest import F64, FLOAT32_TOL, assert_tree_close, assert_tree_equal, split_points, step_through, tree_clone

STREAM_SHAPES = st.sampled_from([(), (2,), (2, 3)])
ACTIVATIONS = st.sampled_from(["relu", "gelu", torch.tanh])


@st.composite
def layer_configs(draw):
    """An `EncoderLayerConfig` with tiny sizes and a window length."""
    heads = draw(st.integers(1, 2))
    config = EncoderLayerConfig(
        d_model=heads * draw(st.integers(1, 3)),
        nhead=heads,
        dim_feedforward=draw(st.integers(1, 6)),
        dropout=0.0,
        activation=draw(ACTIVATIONS),
        layer_norm_eps=1e-5,
        norm_first=draw(st.booleans()),
        bias=draw(st.booleans()),
    )
    return config, draw(st.integers(1, 4))


def torch_layer(config: EncoderLayerConfig, dtype=F64) -> nn.TransformerEncoderLayer:
    """A torch layer with random (non-zero) biases and norm affines, in eval mode."""
    module = config.module(dtype=dtype).eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or name.startswith("norm"):
                p.normal_()
    return module


def torch_windows(module, xs, n, index=-1):
    """``module`` on every window of ``n`` tokens of ``xs: (B, E, T)``: token ``index``
    ``(B, E, W)``, or all tokens ``(B, E, W, N)`` when ``index`` is None."""
    outs = []
    with torch.no_grad():
        for w in range(xs.shape[-1] - n + 1):
            o = module(xs[..., w:w + n].transpose(-1, -2))  # (B, N, E)
            outs.append(o.transpose(-1, -2) if index is None else o[:, index])
    return torch.stack(outs, dim=-2 if index is None else -1)


class OutAxis:
    """For `step_through`: stack on the layer's output time axis."""

    def __init__(self, layer):
        self.layer = layer

    def time_axis(self):
        return self.layer.out_time_axis()


def run_steps(layer, params, xs):
    return step_through(layer, params, xs, out_layer=OutAxis(layer))


def check_stepping(layer, params, xs, expected, cuts=()):
    """Step by step, in chunks and via ``forward``: all equal ``expected``; emission from step N."""
    stepped = run_steps(layer, params, xs)
    assert stepped.flags == [t >= layer.delay for t in range(xs.shape[-1])]
    torch.testing.assert_close(stepped.ys, expected)
    torch.testing.assert_close(layer.forward(params, xs), expected)
    state = layer.init_state(params, xs.shape[:-1], dtype=xs.dtype)
    bounds = split_points(list(cuts), xs.shape[-1])
    chunks = []
    for a, b in zip(bounds, bounds[1:]):
        ys, state = layer.steps(params, state, xs[..., a:b])
        chunks.append(ys)
    torch.testing.assert_close(torch.cat(chunks, dim=layer.out_time_axis()), expected)
    assert_tree_close(state, stepped.state, "state after steps vs step")


# --- layers against torch.nn ---------------------------------------------------------------------


@given(cfg=layer_configs(), data=st.data(), extra=st.integers(0, 3), cuts=st.lists(st.integers(0, 8), max_size=2))
def test_single_output_layer_equals_torch(cfg, data, extra, cuts):
    config, n = cfg
    query_index = data.draw(st.integers(-n, n - 1))
    module = torch_layer(config)
    layer = single_output_encoder_layer(**_kwargs(config), sequence_len=n, query_index=query_index)
    params = layer.params_from(module)
    xs = torch.randn(2, config.d_model, n + extra, dtype=F64)
    check_stepping(layer, params, xs, torch_windows(module, xs, n, query_index), cuts)


@given(cfg=layer_configs(), extra=st.integers(0, 3), cuts=st.lists(st.integers(0, 8), max_size=2))
def test_retroactive_layer_equals_torch(cfg, extra, cuts):
    config, n = cfg
    module = torch_layer(config)
    layer = retroactive_encoder_layer(**_kwargs(config), sequence_len=n)
    params = layer.params_from(module)
    xs = torch.randn(2, config.d_model, n + extra, dtype=F64)
    check_stepping(layer, params, xs, torch_windows(module, xs, n, None), cuts)


@given(cfg=layer_configs(), lead=STREAM_SHAPES, index=st.sampled_from([None, -1, 0]))
def test_window_layer_equals_torch(cfg, lead, index):
    """Stateless: a window ``(*B, E, N)`` per step, ``(*B, E, T, N)`` per clip."""
    config, n = cfg
    module = torch_layer(config)
    layer = window_encoder_layer(config, index)
    params = layer.params_from(module)
    windows = torch.randn(lead + (config.d_model, 3, n), dtype=F64)
    with torch.no_grad():
        flat = windows.reshape((-1, config.d_model, 3, n)).movedim(2, 1).reshape(-1, config.d_model, n)
        out = module(flat.transpose(-1, -2))  # (B*T, N, E)
        out = out if index is None else out[:, index:index + 1 if index != -1 else None]
        expected = out.transpose(-1, -2).reshape(windows.shape[:-3] + (3, config.d_model, -1)).movedim(-3, -2)
        expected = expected if index is None else expected.squeeze(-1)
    torch.testing.assert_close(layer.forward(params, windows), expected)
    for t in range(3):
        y, _ = layer.step(params, (), windows[..., t, :])
        torch.testing.assert_close(y, expected[..., t, :] if index is None else expected[..., t])


@given(num_layers=st.integers(1, 4), cfg=layer_configs(), with_norm=st.booleans(), extra=st.integers(0, 2),
       lead=STREAM_SHAPES)
def test_encoder_equals_torch_at_any_depth(num_layers, cfg, with_norm, extra, lead):
    """The step equals ``nn.TransformerEncoder(window)[:, -1]`` for 1..4 layers (co failed at 3+),
    and the torch ``state_dict`` loads unchanged."""
    config, n = cfg
    norm = nn.LayerNorm(config.d_model, dtype=F64) if with_norm else None
    module = nn.TransformerEncoder(torch_layer(config), num_layers, norm, enable_nested_tensor=False).eval()
    with torch.no_grad():  # layers are copies of one layer: make them differ
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    enc = transformer_encoder(config, num_layers, norm, sequence_len=n)
    assert set(flatten_params(enc.init_params())) == set(module.state_dict())
    params = unflatten_params(module.state_dict())
    xs = torch.randn(lead + (config.d_model, n + extra), dtype=F64)
    flat = xs.reshape((-1,) + xs.shape[len(lead):])
    expected = torch_windows(module, flat, n, -1).reshape(lead + (config.d_model, extra + 1))
    check_stepping(enc, params, xs, expected, cuts=(1, n))
    assert enc.delay == n - 1 and enc.receptive_field == n


def test_encoder_one_window_float32():
    """T == N in float32 against the torch module's own (fast-path) forward: ``[:, -1:]``."""
    config = EncoderLayerConfig(16, 4, 32, dropout=0.0, activation="gelu")
    module = nn.TransformerEncoder(config.module(), 3, nn.LayerNorm(16), enable_nested_tensor=False).eval()
    enc = transformer_encoder(config, 3, module.norm, sequence_len=6)
    params = unflatten_params(module.state_dict())
    x = torch.randn(2, 16, 6)
    with torch.no_grad():
        expected = module(x.mT)[:, -1:].mT
    torch.testing.assert_close(enc.forward(params, x), expected, **FLOAT32_TOL)
    state = enc.init_state(params, (2, 16))
    ys, _ = enc.steps(params, state, x)
    torch.testing.assert_close(ys, expected, **FLOAT32_TOL)


def test_gelu_is_gelu():
    """co maps "gelu" to relu; cofunc runs the exact GELU, as torch does."""
    config = EncoderLayerConfig(4, 2, 8, dropout=0.0, activation="gelu")
    assert config.activation_fn is F.gelu
    module = torch_layer(config)
    relu_twin = torch_layer(EncoderLayerConfig(4, 2, 8, dropout=0.0, activation="relu"))
    relu_twin.load_state_dict(module.state_dict())
    layer = single_output_encoder_layer(4, 2, 8, activation="gelu", sequence_len=3)
    xs = torch.randn(1, 4, 3, dtype=F64)
    ours = layer.forward(layer.params_from(module), xs)
    torch.testing.assert_close(ours, torch_windows(module, xs, 3))
    assert not torch.allclose(ours, torch_windows(relu_twin, xs, 3))


def test_large_inputs_stay_finite_and_match_torch():
    """x100 inputs (float32): the retroactive layer and a 2-layer encoder (whose last layer attends
    without projecting the window's keys) stay finite and equal torch."""
    config = EncoderLayerConfig(8, 2, 16, dropout=0.0)
    module = torch_layer(config, dtype=torch.float32)
    layer = retroactive_encoder_layer(8, 2, 16, sequence_len=5)
    params = layer.params_from(module)
    xs = 100 * torch.randn(2, 8, 8)
    ys = run_steps(layer, params, xs).ys
    assert torch.isfinite(ys).all()
    torch.testing.assert_close(ys, torch_windows(module, xs, 5, None), atol=1e-4, rtol=1e-4)
    encoder = nn.TransformerEncoder(module, 2, enable_nested_tensor=False).eval()
    with torch.no_grad():
        for p in encoder.parameters():
            p.mul_(10.0)  # large weights too: attention scores in the thousands
    enc = transformer_encoder(config, 2, sequence_len=5)
    ys = run_steps(enc, unflatten_params(encoder.state_dict()), xs).ys
    assert torch.isfinite(ys).all()
    torch.testing.assert_close(ys, torch_windows(encoder, xs, 5), atol=1e-3, rtol=1e-3)


# --- purity, vmap, compile ---------------------------------------------------------------------------


def _encoder(num_layers=3, dtype=F64):
    config = EncoderLayerConfig(8, 2, 12, dropout=0.0, activation="gelu", norm_first=True)
    enc = transformer_encoder(config, num_layers, nn.LayerNorm(8), sequence_len=4)
    return enc, enc.init_params(dtype=dtype)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_encoder_vmap_equals_batched_and_state_is_pure(num_layers):
    enc, params = _encoder(num_layers)
    xs = torch.randn(3, 8, 7, dtype=F64)
    batched = enc.init_state(params, (3, 8))
    vmapped = torch.utils._pytree.tree_map(lambda t: torch.stack([t] * 3), enc.init_state(params, (8,)))
    vstep = torch.func.vmap(enc.step, in_dims=(None, 0, 0))
    for t in range(7):
        snapshot = tree_clone(batched)
        y_b, new_batched = enc.step(params, batched, xs[..., t])
        assert_tree_equal(batched, snapshot, f"state after step {t}")
        y_v, vmapped = vstep(params, vmapped, xs[..., t])
        batched = new_batched
        if bool(enc.valid(batched).all()):
            torch.testing.assert_close(y_v, y_b)
    assert_tree_close(vmapped, batched, "vmapped vs batched state")
    snapshot = tree_clone(batched)
    enc.steps(params, batched, xs, pad_end=True)
    assert_tree_equal(batched, snapshot, "state after steps")


@pytest.mark.slow
@pytest.mark.parametrize("num_layers", [1, 3])
def test_compiled_encoder_step_fullgraph_no_recompiles(num_layers):
    enc, params = _encoder(num_layers, dtype=torch.float32)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(enc.step, fullgraph=True, backend=backend)
    state = eager = enc.init_state(params, (2, 8))
    for t in range(8):
        x = torch.randn(2, 8)
        y, state = compiled(params, state, x)
        y_eager, eager = enc.step(params, eager, x)
        if bool(enc.valid(eager).all()):
            torch.testing.assert_close(y, y_eager, **FLOAT32_TOL)
    _, state = enc.steps(params, state, torch.randn(2, 8, 3))
    compiled(params, state, torch.randn(2, 8))
    assert len(graphs) == 1


# --- configuration errors --------------------------------------------------------------------------


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match="activation"):
        EncoderLayerConfig(4, 2, activation="swish")
    with pytest.raises(ConfigurationError, match="parameters"):
        EncoderLayerConfig(4, 2, activation=nn.PReLU())
    with pytest.raises(ConfigurationError, match="divisible"):
        EncoderLayerConfig(6, 4)
    with pytest.raises(ConfigurationError, match="num_layers"):
        transformer_encoder(EncoderLayerConfig(4, 2), 0, sequence_len=3)
    with pytest.raises(ConfigurationError, match="sequence_len"):
        transformer_encoder(EncoderLayerConfig(4, 2), 2)
    with pytest.raises(ConfigurationError, match="query_index"):
        single_output_encoder_layer(4, 2, sequence_len=3, query_index=5)
    with pytest.raises(ConfigurationError, match="normalises"):
        transformer_encoder(EncoderLayerConfig(4, 2), 2, nn.LayerNorm(5), sequence_len=3)
    layer = window_encoder_layer(EncoderLayerConfig(4, 2, 8), query_index=4)
    with pytest.raises(InputShapeError, match="query_index"):
        layer.step(layer.init_params(), (), torch.randn(1, 4, 3))


def test_channel_layer_norm():
    norm = channel_layer_norm(4, eps=1e-3)
    ref = nn.LayerNorm(4, eps=1e-3)
    with torch.no_grad():
        ref.weight.normal_(), ref.bias.normal_()
    params = norm.params_from(ref)
    xs = torch.randn(2, 4, 5)
    torch.testing.assert_close(norm.forward(params, xs), ref(xs.mT).mT)
    torch.testing.assert_close(norm.step(params, (), xs[..., 1])[0], ref(xs[..., 1]))
    assert set(flatten_params(norm.init_params())) == {"weight", "bias"}


# --- nn adapters -------------------------------------------------------------------------------------


def test_encoder_adapter_loads_torch_state_dict():
    module = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 3,
                                   nn.LayerNorm(8), enable_nested_tensor=False).eval().to(F64)
    ours = TransformerEncoder.build_from(module, sequence_len=4)
    assert isinstance(ours, nn.TransformerEncoder)
    assert ours.state_dict().keys() == module.state_dict().keys()
    ours.load_state_dict(module.state_dict())  # strict
    xs = torch.randn(2, 8, 6, dtype=F64)
    expected = torch_windows(module, xs, 4)
    torch.testing.assert_close(ours(xs), expected)
    outs = [ours.forward_step(xs[:, :, t]) for t in range(6)]
    assert [o is None for o in outs] == [True, True, True, False, False, False]
    torch.testing.assert_close(torch.stack(outs[3:], dim=2), expected)
    assert ours.delay == 3 and ours.receptive_field == 4
    converted = convert_transformer_encoder(module, 4)
    torch.testing.assert_close(converted(xs), expected)


def test_adapter_states_carry_no_autograd_history():
    """With grad enabled, stored states are detached (memory would grow with the stream); the
    step output still has a graph to the params."""
    enc = TransformerEncoder(TransformerEncoderLayerFactory(8, 2, 16, dropout=0.0, sequence_len=3), num_layers=2)
    for t in range(5):
        y = enc.forward_step(torch.randn(1, 8))
    assert y.requires_grad
    leaves = torch.utils._pytree.tree_leaves(enc.get_state())
    assert leaves and not any(t.requires_grad for t in leaves)
    enc.forward_steps(torch.randn(1, 8, 3))
    assert not any(t.requires_grad for t in torch.utils._pytree.tree_leaves(enc.get_state()))


def test_layer_adapters_and_factory():
    factory = TransformerEncoderLayerFactory(8, 2, 16, dropout=0.0, activation="gelu", sequence_len=4)
    single, retro = factory("single_output"), factory("retroactive")
    assert isinstance(single, SingleOutputTransformerEncoderLayer) and isinstance(retro, nn.TransformerEncoderLayer)
    reference = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True).eval()
    assert single.state_dict().keys() == reference.state_dict().keys()
    single.load_state_dict(reference.state_dict())
    retro.load_state_dict(reference.state_dict())
    xs = torch.randn(1, 8, 5)
    torch.testing.assert_close(single(xs), torch_windows(reference, xs, 4), **FLOAT32_TOL)
    torch.testing.assert_close(retro.forward_steps(xs), torch_windows(reference, xs, 4, None), **FLOAT32_TOL)
    built = RetroactiveTransformerEncoderLayer.build_from(reference, sequence_len=4)
    torch.testing.assert_close(built(xs), retro(xs))
    enc = TransformerEncoder(factory, num_layers=2)
    assert enc.sequence_len == 4 and len(enc.layers) == 2
    with pytest.raises(ConfigurationError, match="mask"):
        single(xs, src_mask=torch.zeros(5, 5))
    with pytest.raises(ConfigurationError, match="mha_type"):
        factory("regular")


def test_encoder_matches_co_two_layers_where_co_is_correct():
    """co's 2-layer encoder (relu, post-norm) with the same weights: the same None positions and
    the same outputs for its first N - 1 emitted steps. From the N-th on co is wrong (its
    ``RetroactiveUnity`` residual wraps its index modulo N - 1 instead of N), cofunc still
    equals torch."""
    torch.manual_seed(2)
    n = 4
    reference = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2,
                                      enable_nested_tensor=False).eval().to(F64)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs = co.TransformerEncoder.build_from(reference, sequence_len=n).to(F64).eval()
    ours = TransformerEncoder.build_from(reference, sequence_len=n)
    xs = torch.randn(2, 8, 10, dtype=F64)
    a = [ours.forward_step(xs[:, :, t]) for t in range(10)]
    b = [theirs.forward_step(xs[:, :, t]) for t in range(10)]
    assert [o is None for o in a] == [o is None for o in b] == [t < n - 1 for t in range(10)]
    for p, q in zip(a[n - 1:2 * n - 2], b[n - 1:2 * n - 2]):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(torch.stack(a[n - 1:], dim=2), torch_windows(reference, xs, n))
    assert not torch.allclose(a[-1], b[-1])  # co's defect, see the docstring


# --- recycling positional encoding ----------------------------------------------------------------


@given(learned=st.booleans(), lead=STREAM_SHAPES, length=st.integers(0, 12), cuts=st.lists(st.integers(0, 12), max_size=2))
def test_positional_steps_equal_forward(learned, lead, length, cuts):
    """Positions wrap modulo num_embeds; step, chunked steps and forward agree bit for bit."""
    pe = recycling_positional_encoding(4, 5, learned)
    params = pe.init_params()
    xs = torch.randn(lead + (4, length))
    expected = pe.forward(params, xs)
    table = pe.table(params)
    torch.testing.assert_close(expected, xs + table[torch.arange(length) % 5].mT)
    stepped = step_through(pe, params, xs)
    assert torch.equal(stepped.ys, expected)
    state = pe.init_state(params, lead + (4,))
    bounds = split_points(cuts, length)
    chunks = []
    for a, b in zip(bounds, bounds[1:]):
        ys, state = pe.steps(params, state, xs[..., a:b])
        chunks.append(ys)
    assert torch.equal(torch.cat(chunks, dim=-1), expected)
    assert torch.equal(state.position, torch.full(lead, length))


def test_positional_forward_is_stateless_and_fixed_pattern_is_cos():
    """The fixed pattern equals co's buffer; co's forward changes its state, cofunc's does not."""
    ours = RecyclingPositionalEncoding(6, 9, learned=False)
    theirs = co.RecyclingPositionalEncoding(6, 9, learned=False)
    assert torch.equal(ours.pe.pattern, theirs.pe.pattern)
    assert torch.equal(cyclic_positional_encoding(9, 6), theirs.pe.pattern)
    assert ours.state_dict().keys() == theirs.state_dict().keys() == {"pe.pattern"}
    x = torch.randn(2, 6, 4)
    assert torch.equal(ours(x), ours(x))
    first, second = theirs(x), theirs(x)
    assert not torch.equal(first, second)  # co's defect
    assert torch.equal(ours(x), first)
    theirs.clean_state()
    steps = [ours.forward_step(x[:, :, t]) for t in range(4)]
    co_steps = [theirs.forward_step(x[:, :, t]) for t in range(4)]
    for a, b in zip(steps, co_steps):
        assert torch.equal(a, b)
    learned = RecyclingPositionalEncoding(6, 9)
    assert learned.state_dict().keys() == {"pe.weight"}


def test_positional_streams_out_of_step_under_vmap():
    pe = recycling_positional_encoding(3, 4)
    params = pe.init_params()
    state = pe.init_state(params, (2, 3))
    state = state._replace(position=torch.tensor([0, 6]))
    x = torch.zeros(2, 3)
    y, new = torch.func.vmap(pe.step, in_dims=(None, 0, 0))(params, state, x)
    table = pe.table(params)
    assert torch.equal(y, torch.stack([table[0], table[2]]))
    assert torch.equal(new.position, torch.tensor([1, 7]))


def _kwargs(config: EncoderLayerConfig) -> dict:
    return dict(d_model=config.d_model, nhead=config.nhead, dim_feedforward=config.dim_feedforward, dropout=0.0,
                activation=config.activation, layer_norm_eps=config.layer_norm_eps, norm_first=config.norm_first,
                bias=config.bias)
