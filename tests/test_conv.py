"""Continual convolutions (`cofunc.conv1d/2d/3d`): clip parity with torch.nn and step semantics.

Hypothesis draws whole configurations (dims, kernel, stride, padding, padding_mode, dilation,
groups, bias), clip lengths and stream shapes. Step-path comparisons run in float64, where the
different conv algorithms of the step and clip paths agree to ~1e-15; `forward` against torch.nn
is checked bit for bit in float32.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import cofunc
from conftest import (
    CO_CONV,
    F64,
    NN_CONV,
    as_tuple,
    same_pads,
    assert_tree_equal,
    clip_len,
    expected_flags,
    fresh_state,
    split_points,
    step_through,
    conv_configs,
    time_slice,
)

STREAM_SHAPES = st.sampled_from([(), (2,), (2, 3)])


# --- forward: the clip path is torch.nn's computation ------------------------------------------


@given(cfg=conv_configs(), batch=st.integers(1, 2), extra=st.integers(0, 4))
def test_forward_equals_torch(cfg, batch, extra):
    """``forward`` with a module's own params is bit-identical to the module."""
    module = cfg.module()
    layer = cfg.layer()
    xs = cfg.clip((batch,), cfg.min_len + extra, dtype=torch.float32)
    params = layer.params_from(module)
    assert set(params) == set(dict(module.named_parameters()))
    with torch.no_grad():
        expected = module(xs)
    actual = layer.forward(params, xs)
    assert actual.shape == expected.shape
    assert torch.equal(actual, expected)


@given(cfg=conv_configs(max_temporal_kernel=3), lead=st.sampled_from([(), (2, 3)]))
def test_forward_stream_dims(cfg, lead):
    """Clips with no batch dim or several stream dims give torch's output on the streams
    flattened into one batch dim, bit for bit."""
    module = cfg.module()
    layer = cfg.layer()
    xs = cfg.clip(lead, cfg.min_len + 1, dtype=torch.float32)
    with torch.no_grad():
        expected = module(xs.reshape((-1,) + xs.shape[len(lead):]))
    actual = layer.forward(layer.params_from(module), xs)
    assert actual.shape == lead + expected.shape[1:]
    assert torch.equal(actual.reshape(expected.shape), expected)


# --- configuration errors ------------------------------------------------------------------------


@st.composite
def raw_conv_configs(draw):
    """Configurations drawn without regard to validity (torch.nn may reject them, cofunc may)."""
    dims = draw(st.integers(1, 3))
    kernel = [draw(st.integers(0, 3)) for _ in range(dims)]
    stride = [draw(st.integers(0, 2)) for _ in range(dims)]
    dilation = [draw(st.integers(0, 2)) for _ in range(dims)]
    mode = draw(st.sampled_from(["zeros", "replicate", "reflect", "circular", "bogus"]))
    padding = draw(
        st.one_of(
            st.sampled_from(["same", "valid", "full"]),
            st.integers(-1 if mode == "zeros" else 0, 4),
            st.tuples(*[st.integers(-1 if mode == "zeros" else 0, 4) for _ in range(dims)]),
        )
    )
    return dims, dict(
        in_channels=draw(st.integers(1, 4)), out_channels=draw(st.integers(1, 4)), kernel_size=tuple(kernel),
        stride=tuple(stride), padding=padding, dilation=tuple(dilation), groups=draw(st.integers(1, 3)),
        bias=draw(st.booleans()), padding_mode=mode,
    )


def _torch_rejects(dims, kwargs) -> bool:
    """Does torch.nn reject the configuration, at construction or on a comfortably large input?"""
    try:
        module = NN_CONV[dims](**kwargs)
        with torch.no_grad():
            module(torch.zeros((1, kwargs["in_channels"]) + (16,) * dims))
    except (ValueError, RuntimeError):
        return True
    return False


def _temporal_pads(dims, kwargs):
    kernel, dilation, padding = kwargs["kernel_size"], kwargs["dilation"], kwargs["padding"]
    if padding == "same":
        return same_pads(kernel, dilation)[0]
    if padding == "valid":
        return (0, 0)
    p = as_tuple(padding, dims)[0]
    return (p, p)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@given(raw=raw_conv_configs())
def test_configuration_errors(raw):
    """What torch.nn rejects, cofunc rejects at construction with ConfigurationError; so are the
    temporal paddings a stream cannot produce (more than receptive_field - 1, or reflect and
    circular modes, which pad with future frames). Everything else constructs."""
    dims, kwargs = raw
    note(f"conv{dims}d({kwargs})")
    design_reject = False
    if not _torch_rejects(dims, kwargs):
        rf = kwargs["dilation"][0] * (kwargs["kernel_size"][0] - 1) + 1
        start, end = _temporal_pads(dims, kwargs)
        design_reject = max(start, end) > rf - 1 or (kwargs["padding_mode"] in ("reflect", "circular") and (start or end))
        if not design_reject:
            layer = CO_CONV[dims](**kwargs)
            assert layer.receptive_field == rf
            assert layer.padding == start and layer.padding_end == end
            assert layer.delay == rf - 1 - start
            assert layer.stride == kwargs["stride"][0]
            return
    with pytest.raises(cofunc.ConfigurationError) as info:
        CO_CONV[dims](**kwargs)
    assert f"conv{dims}d" in str(info.value)  # the message names the layer


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=3),  # more padding than receptive_field - 1
        dict(kernel_size=3, dilation=2, padding=(5, 0)),
        dict(kernel_size=(3, 1), padding=(1, 0), padding_mode="reflect"),
        dict(kernel_size=(3, 3), padding=(1, 1), padding_mode="circular"),
        dict(kernel_size=(3, 3), padding="same", padding_mode="reflect"),
        dict(kernel_size=3, padding="same", stride=2),
        dict(kernel_size=3, groups=3),
        dict(kernel_size=(3, 3, 3)),  # three values for a 2-d conv
        dict(kernel_size=0),
        dict(kernel_size=3, stride=0),
        dict(kernel_size=3, padding=-1),
        dict(kernel_size=3, padding_mode="mirror"),
        dict(kernel_size=3, temporal_fill="reflect"),
    ],
)
def test_configuration_error_examples(kwargs):
    kwargs = dict(in_channels=2, out_channels=2) | kwargs
    with pytest.raises(cofunc.ConfigurationError):
        cofunc.conv2d(**kwargs)


def test_reflect_with_spatial_padding_only_is_accepted():
    layer = cofunc.conv2d(2, 2, (3, 3), padding=(0, 1), padding_mode="reflect")
    assert (layer.padding, layer.delay) == (0, 2)


# --- params --------------------------------------------------------------------------------------


@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_init_params_like_torch(cfg, seed):
    """Fresh params have torch.nn's names, shapes and dtype, and its initialisation: the same
    draws from the same seed, within kaiming-uniform's bound 1/sqrt(fan_in)."""
    layer = cfg.layer()
    torch.manual_seed(seed)
    params = layer.init_params()
    torch.manual_seed(seed)
    module = cfg.module()
    expected = dict(module.named_parameters())
    assert set(params) == set(expected) == ({"weight", "bias"} if cfg.kwargs["bias"] else {"weight"})
    for name, p in params.items():
        assert p.shape == expected[name].shape and p.dtype == torch.float32
        assert not p.requires_grad
        assert torch.equal(p, expected[name])
    fan_in = module.weight.shape[1] * math.prod(module.weight.shape[2:])
    bound = 1 / math.sqrt(fan_in)
    for p in params.values():
        assert float(p.abs().max()) <= bound
    params64 = layer.init_params(dtype=F64)
    assert all(p.dtype == F64 for p in params64.values())


def test_init_params_distribution():
    """Weights are uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)]: moments of a large draw."""
    layer = cofunc.conv3d(16, 32, (3, 3, 3))
    w = layer.init_params()["weight"]
    bound = 1 / math.sqrt(16 * 27)
    assert float(w.abs().max()) <= bound
    assert abs(float(w.mean())) < 0.02 * bound
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.02 * bound


# --- step semantics ---------------------------------------------------------------------------


@given(cfg=conv_configs(), lead=STREAM_SHAPES, extra=st.integers(0, 7))
def test_step_emits_forward_frames(cfg, lead, extra):
    """From a fresh state: ``delay`` empty steps, then a valid output every ``stride`` steps,
    the k-th being frame k of the clip forward (start padding reproduced by the fresh state)."""
    layer = cfg.layer()
    params = layer.init_params(dtype=F64)
    T = cfg.min_len + extra
    xs = cfg.clip(lead, T)
    lo, _ = cfg.pads[0]
    assert layer.receptive_field == cfg.rf
    assert layer.delay == cfg.rf - 1 - lo
    assert layer.stride == cfg.t_stride
    run = step_through(layer, params, xs)
    assert run.flags == expected_flags(layer.delay, layer.stride, T)
    reference = layer.forward(params, xs)
    # The frames the stream can produce: those whose window ends by the last input frame.
    n_real = sum(1 for k in range(cfg.forward_len(T)) if k * cfg.t_stride + cfg.rf - 1 - lo <= T - 1)
    assert clip_len(layer, run.ys) == n_real
    torch.testing.assert_close(run.ys, time_slice(layer, reference, 0, n_real))
    # Every step, valid or not, returns a tensor of the same fixed shape.
    assert {tuple(y.shape) for y in run.outputs} == {layer.step_output_shape(xs.select(layer.time_axis(), 0).shape)}
    if layer.stateful:
        assert run.state.count.shape == lead and bool((run.state.count == T).all())
    else:  # kernel 1 and stride 1 in time: nothing to remember
        assert run.state == () and cfg.rf == cfg.t_stride == 1


@given(cfg=conv_configs(), lead=STREAM_SHAPES, extra=st.integers(0, 7))
def test_steps_pad_end_equals_forward(cfg, lead, extra):
    """``steps(pad_end=True)`` from a fresh state is the clip forward; the padding leaves the
    returned state as ``pad_end=False`` leaves it."""
    layer = cfg.layer()
    params = layer.init_params(dtype=F64)
    xs = cfg.clip(lead, cfg.min_len + extra)
    state = fresh_state(layer, params, xs)
    ys, padded_state = layer.steps(params, state, xs, pad_end=True)
    torch.testing.assert_close(ys, layer.forward(params, xs))
    _, plain_state = layer.steps(params, state, xs)
    assert_tree_equal(padded_state, plain_state, "state after pad_end")


@given(cfg=conv_configs(), lead=STREAM_SHAPES, data=st.data())
def test_steps_equals_repeated_step(cfg, lead, data):
    """``steps`` on a chunk equals ``step`` on each of its frames (valid outputs, final state),
    from a fresh state and from mid-stream."""
    layer = cfg.layer()
    params = layer.init_params(dtype=F64)
    T = data.draw(st.integers(1, cfg.rf + 2 * cfg.t_stride + 2), label="T")
    prefix = data.draw(st.integers(0, T), label="prefix")
    xs = cfg.clip(lead, T)
    head = step_through(layer, params, time_slice(layer, xs, 0, prefix))
    rest = time_slice(layer, xs, prefix, T)
    by_step = step_through(layer, params, rest, state=head.state)
    ys, state = layer.steps(params, head.state, rest)
    assert by_step.flags == expected_flags(layer.delay, layer.stride, T - prefix, start=prefix)
    torch.testing.assert_close(ys, by_step.ys)
    assert_tree_equal(state, by_step.state, "state")


@given(cfg=conv_configs(), lead=STREAM_SHAPES, data=st.data())
def test_chunking_invariance(cfg, lead, data):
    """Splitting a stream into chunks at arbitrary points (empty chunks included) gives the same
    outputs and state as one ``steps`` call, and ``pad_end`` on the last chunk gives forward."""
    layer = cfg.layer()
    params = layer.init_params(dtype=F64)
    T = cfg.min_len + data.draw(st.integers(0, 7), label="extra")
    cuts = split_points(data.draw(st.lists(st.integers(0, T), max_size=4), label="cuts"), T)
    xs = cfg.clip(lead, T)
    state = fresh_state(layer, params, xs)
    whole, whole_state = layer.steps(params, state, xs)
    pieces = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        last = i == len(cuts) - 2
        ys, state = layer.steps(params, state, time_slice(layer, xs, a, b), pad_end=last)
        pieces.append(ys)
    ys = torch.cat(pieces, dim=layer.time_axis())
    forward = layer.forward(params, xs)
    torch.testing.assert_close(ys, forward)
    torch.testing.assert_close(time_slice(layer, ys, 0, clip_len(layer, whole)), whole)
    assert_tree_equal(state, whole_state, "state")


@pytest.mark.parametrize("padding_mode", ["zeros", "replicate"])
def test_temporal_fill_reproduces_start_padding(padding_mode):
    """The first output depends on start padding only: zeros, or copies of the first frame."""
    layer = cofunc.conv1d(1, 1, 3, padding=2, bias=False, padding_mode=padding_mode)
    params = {"weight": torch.ones(1, 1, 3, dtype=F64)}
    xs = torch.tensor([[[5.0, 7.0]]], dtype=F64)
    run = step_through(layer, params, xs)
    assert run.flags == [True, True]
    first = 5.0 if padding_mode == "zeros" else 15.0
    assert run.ys.flatten().tolist() == [first, (12.0 if padding_mode == "zeros" else 17.0)]


def test_temporal_fill_override():
    """``temporal_fill`` decouples the stream start from the spatial padding mode; the clip
    forward is then not torch's, but the stream still starts from replicated frames."""
    layer = cofunc.conv2d(1, 1, (3, 1), padding=(1, 0), temporal_fill="replicate")
    assert layer.padding_mode == "zeros" and layer.temporal_fill == "replicate"
    params = {"weight": torch.ones(1, 1, 3, 1, dtype=F64), "bias": torch.zeros(1, dtype=F64)}
    y, state = layer.step(params, layer.init_state(params, (1, 1, 2), dtype=F64), torch.full((1, 1, 2), 2.0, dtype=F64))
    assert not bool(layer.valid(state))
    y, state = layer.step(params, state, torch.full((1, 1, 2), 3.0, dtype=F64))
    assert bool(layer.valid(state))
    assert y.flatten().tolist() == [7.0, 7.0]  # 2 (replicated) + 2 + 3


def test_step_float32_close_to_forward():
    """The float32 step path agrees with forward within float32 rounding."""
    layer = cofunc.conv3d(3, 4, 3, padding=(1, 1, 1))
    params = layer.init_params()
    xs = torch.randn(2, 3, 6, 5, 5)
    run = step_through(layer, params, xs)
    torch.testing.assert_close(run.ys, layer.forward(params, xs)[:, :, :5], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_step_keeps_the_frame_layout(bias, channels_last):
    """A 1x1x1 step is a matrix product that writes the layout it reads: a sum of a contiguous and
    a channels-last frame (a residual) costs about ten times a sum of two alike."""
    layer = cofunc.conv3d(8, 6, 1, bias=bias)
    params = layer.init_params()
    frame = torch.randn(1, 8, 5, 7)
    if channels_last:
        frame = frame.contiguous(memory_format=torch.channels_last)
    y, _ = layer.step(params, (), frame)
    want = torch.nn.functional.conv2d(frame, params["weight"][:, :, 0], params.get("bias"))
    torch.testing.assert_close(y, want)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@given(dims=st.integers(1, 3), kt=st.integers(2, 5), dilation=st.integers(1, 2), spatial_stride=st.integers(1, 2),
       depthwise=st.booleans(), bias=st.booleans(), lead=STREAM_SHAPES, channels_last=st.booleans())
def test_temporal_kernel_steps_equal_forward(dims, kt, dilation, spatial_stride, depthwise, bias, lead, channels_last):
    """Kernels ``(kt, 1, 1)`` step as matrix products (a batched one per channel when depthwise,
    X3D's stem; one over the folded taps otherwise, Slow's res4 and res5): outputs equal the clip
    forward in every stream, for any stream shape, stride in space and frame layout."""
    channels = 3
    layer = getattr(cofunc, f"conv{dims}d")(
        channels, channels if depthwise else 4, (kt,) + (1,) * (dims - 1), stride=(1,) + (spatial_stride,) * (dims - 1),
        dilation=(dilation,) + (1,) * (dims - 1), groups=channels if depthwise else 1, bias=bias,
    )
    assert layer._depthwise_in_time == depthwise and layer._pointwise_in_space == (not depthwise)
    params = layer.init_params(dtype=F64)
    xs = torch.randn(lead + (channels, layer.receptive_field + 3) + (5,) * (dims - 1), dtype=F64)
    if channels_last and dims == 3 and len(lead) == 1:  # a batched clip (B, C, T, H, W)
        xs = xs.contiguous(memory_format=torch.channels_last_3d)
    run = step_through(layer, params, xs)
    torch.testing.assert_close(run.ys, layer.forward(params, xs).narrow(layer.time_axis(), 0, clip_len(layer, run.ys)))
