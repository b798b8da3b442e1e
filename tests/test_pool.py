"""Continual pooling: ``avg_pool1d/2d/3d``, ``max_pool1d/2d/3d``, co's adaptive pools, and their
``cofunc.nn`` adapters.

Shapes: clips ``(*B, C, T, *S)``, steps ``(*B, C, *S)``.

- ``forward`` is torch.nn's pooling, bit for bit, for every option (kernel, stride, padding,
  dilation, ceil_mode, count_include_pad, divisor_override);
- from a fresh state, step outputs appear after ``delay`` empty steps, then every ``stride``
  steps, and equal the clip outputs, including those whose windows hold start padding (max
  pooling pads with -inf; averages divide as torch does);
- ``steps(pad_end=True)`` equals ``forward``; chunked ``steps`` equal repeated ``step``;
- the adaptive pools equal torch.nn's adaptive pooling of each window of ``kernel_size`` frames
  (and so torch.nn's ``forward`` when the clip is one window long);
- ``vmap(step)`` equals the batched step; the nn adapters' ``update_state=False`` changes
  nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import cofunc
import cofunc.nn as cn
from conftest import (
    F64,
    assert_tree_close,
    assert_tree_equal,
    clip_len,
    expected_flags,
    fresh_state,
    split_points,
    step_through,
    time_slice,
    tree_clone,
)

CORE_POOL = {
    ("avg", 1): cofunc.avg_pool1d, ("avg", 2): cofunc.avg_pool2d, ("avg", 3): cofunc.avg_pool3d,
    ("max", 1): cofunc.max_pool1d, ("max", 2): cofunc.max_pool2d, ("max", 3): cofunc.max_pool3d,
}
NN_POOL = {
    ("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d, ("avg", 3): nn.AvgPool3d,
    ("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d, ("max", 3): nn.MaxPool3d,
}
CN_POOL = {
    ("avg", 1): cn.AvgPool1d, ("avg", 2): cn.AvgPool2d, ("avg", 3): cn.AvgPool3d,
    ("max", 1): cn.MaxPool1d, ("max", 2): cn.MaxPool2d, ("max", 3): cn.MaxPool3d,
}
CORE_ADAPTIVE = {
    ("avg", 2): cofunc.adaptive_avg_pool2d, ("avg", 3): cofunc.adaptive_avg_pool3d,
    ("max", 2): cofunc.adaptive_max_pool2d, ("max", 3): cofunc.adaptive_max_pool3d,
}
NN_ADAPTIVE = {
    ("avg", 2): nn.AdaptiveAvgPool2d, ("avg", 3): nn.AdaptiveAvgPool3d,
    ("max", 2): nn.AdaptiveMaxPool2d, ("max", 3): nn.AdaptiveMaxPool3d,
}
CN_ADAPTIVE = {
    ("avg", 2): cn.AdaptiveAvgPool2d, ("avg", 3): cn.AdaptiveAvgPool3d,
    ("max", 2): cn.AdaptiveMaxPool2d, ("max", 3): cn.AdaptiveMaxPool3d,
}
VMAP_STEP = dict(in_dims=(None, 0, 0))


# --- configurations ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """A pooling configuration that torch.nn accepts, with input sizes that fit it.

    kwargs: the keyword arguments shared by ``torch.nn.{Avg,Max}PoolNd`` and cofunc's makers.
    spatial: spatial sizes ``S``; length: a clip length with at least one output.
    """

    kind: str
    dims: int
    kwargs: dict
    spatial: Tuple[int, ...]
    length: int
    channels: int = 2

    def layer(self) -> cofunc.Pool:
        return CORE_POOL[(self.kind, self.dims)](**self.kwargs)

    def module(self) -> nn.Module:
        return NN_POOL[(self.kind, self.dims)](**self.kwargs)

    def adapter(self) -> cn.ContinualModule:
        return CN_POOL[(self.kind, self.dims)](**self.kwargs)

    def clip(self, lead=(2,), length: Optional[int] = None, dtype=F64) -> torch.Tensor:
        """A random clip ``(*lead, C, T, *S)`` (randn: negative values exercise max padding)."""
        length = self.length if length is None else length
        return torch.randn(tuple(lead) + (self.channels, length) + self.spatial, dtype=dtype)


def _tuple(value, n):
    return (value,) * n if isinstance(value, int) else tuple(value)


@st.composite
def pool_configs(draw, dims=None, kind=None):
    """Every torch.nn option: padding <= kernel // 2 (torch's limit), dilation for max pooling,
    ceil_mode, count_include_pad and divisor_override for averages; int or tuple spellings."""
    dims = draw(st.integers(1, 3)) if dims is None else dims
    kind = draw(st.sampled_from(["avg", "max"])) if kind is None else kind
    kernel = [draw(st.integers(1, 4))] + [draw(st.integers(1, 3)) for _ in range(dims - 1)]
    stride = [draw(st.integers(1, 3)) for _ in range(dims)]
    padding = [draw(st.integers(0, k // 2)) for k in kernel]
    dilation = [draw(st.integers(1, 2)) if kind == "max" else 1 for _ in range(dims)]
    compact = lambda v: v[0] if len(set(v)) == 1 and draw(st.booleans()) else tuple(v)  # noqa: E731
    kwargs = dict(kernel_size=compact(kernel), padding=compact(padding), ceil_mode=draw(st.booleans()))
    if draw(st.integers(0, 4)):  # mostly explicit strides; sometimes torch's default (= kernel)
        kwargs["stride"] = compact(stride)
    else:
        stride = kernel
    if kind == "max":
        kwargs["dilation"] = compact(dilation)
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
        if dims > 1 and draw(st.booleans()):
            kwargs["divisor_override"] = draw(st.integers(1, 5))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    # torch's avg_pool3d wants every input size >= the kernel, padding or not; others count it.
    short = [s if (kind, dims) == ("avg", 3) else max(1, s - 2 * p) for s, p in zip(span, padding)]
    spatial = tuple(s + draw(st.integers(0, 2)) for s in short[1:])
    length = short[0] + draw(st.integers(0, 6))
    return PoolConfig(kind, dims, kwargs, spatial, length)


def torch_pool(module: nn.Module, xs: torch.Tensor, dims: int) -> torch.Tensor:
    """torch.nn's pooling of a clip with any number of leading stream dims ``(*B, C, T, *S)``."""
    lead = xs.shape[: xs.dim() - dims - 1]
    ys = module(xs.reshape((-1,) + xs.shape[len(lead):]))
    return ys.reshape(lead + ys.shape[1:])


def assert_call_modes(layer, params, xs, **tol):
    """From a fresh state: step outputs appear at ``expected_flags`` and equal ``forward``'s
    first frames; ``steps`` equals the stepping (outputs and state); ``steps(pad_end=True)``
    equals ``forward``. ``xs: (*B, C, T, *S)``."""
    ys = layer.forward(params, xs)
    run = step_through(layer, params, xs)
    assert run.flags == expected_flags(layer.delay, layer.stride, clip_len(layer, xs))
    n = clip_len(layer, run.ys)
    assert n <= clip_len(layer, ys)
    torch.testing.assert_close(run.ys, time_slice(layer, ys, 0, n), **tol)
    state = fresh_state(layer, params, xs)
    chunk, after = layer.steps(params, state, xs)
    torch.testing.assert_close(chunk, run.ys, **tol)
    assert_tree_close(after, run.state, "state after steps", **tol)
    padded, after_padded = layer.steps(params, state, xs, pad_end=True)
    torch.testing.assert_close(padded, ys, **tol)
    assert_tree_close(after_padded, run.state, "pad_end changed the returned state", **tol)
    return ys


# --- forward equals torch.nn ---------------------------------------------------------------------


@given(cfg=pool_configs(), lead=st.sampled_from([(), (1,), (2,), (2, 1)]))
def test_forward_equals_torch_nn_exactly(cfg, lead):
    """Core ``forward`` and the adapter's equal torch.nn's pooling bit for bit (float32)."""
    xs = cfg.clip(lead, dtype=torch.float32)
    expected = torch_pool(cfg.module(), xs, cfg.dims)
    assert torch.equal(cfg.layer().forward({}, xs), expected)
    if len(lead) <= 1:  # torch.nn (and so the adapter) take one optional batch dim
        adapter = cfg.adapter()
        assert isinstance(adapter, NN_POOL[(cfg.kind, cfg.dims)])
        assert torch.equal(adapter(xs), expected)


# --- stepping ------------------------------------------------------------------------------------


@given(cfg=pool_configs(), lead=st.sampled_from([(), (2,), (1, 2)]), extra=st.integers(0, 4))
def test_step_modes_equal_forward(cfg, lead, extra):
    layer = cfg.layer()
    assert layer.receptive_field == _tuple(cfg.kwargs.get("dilation", 1), cfg.dims)[0] * (
        _tuple(cfg.kwargs["kernel_size"], cfg.dims)[0] - 1) + 1
    assert layer.delay == layer.receptive_field - 1 - layer.padding
    xs = cfg.clip(lead, cfg.length + extra)
    ys = assert_call_modes(layer, {}, xs)
    assert torch.equal(ys, torch_pool(cfg.module().to(F64), xs, cfg.dims))


@given(cfg=pool_configs(), data=st.data())
def test_chunked_steps_equal_one_chunk(cfg, data):
    """Any split of the stream into chunks (empty ones included) gives the same outputs and
    state; ``pad_end`` on the last chunk completes the clip forward."""
    layer = cfg.layer()
    xs = cfg.clip((2,), cfg.length + 3)
    T = clip_len(layer, xs)
    bounds = split_points(data.draw(st.lists(st.integers(0, T), max_size=3)), T)
    state = fresh_state(layer, {}, xs)
    outs = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        ys, state = layer.steps({}, state, time_slice(layer, xs, a, b), pad_end=i == len(bounds) - 2)
        outs.append(ys)
    torch.testing.assert_close(torch.cat(outs, dim=layer.time_axis()), layer.forward({}, xs))


def test_max_pool_pads_time_with_minus_infinity():
    """All-negative input: a zero-padded max pool would output 0 on the first step; torch pads
    with -inf, and so do cofunc's steps."""
    pool = cofunc.max_pool3d((3, 1, 1), stride=1, padding=(1, 0, 0))
    xs = -1.0 - torch.rand(1, 2, 5, 2, 2, dtype=F64)
    ys = assert_call_modes(pool, {}, xs)
    assert torch.equal(ys, F.max_pool3d(xs, (3, 1, 1), 1, (1, 0, 0)))
    assert bool((ys < 0).all())


def test_average_divisors_at_the_padded_edges():
    """``count_include_pad=False`` divides the edge windows by the real frames only, in step
    mode as in ``forward``; ``ceil_mode``'s last partial window too (co ignores both)."""
    xs = torch.ones(1, 1, 5, dtype=F64)
    exclude = cofunc.avg_pool1d(3, stride=1, padding=1, count_include_pad=False)
    include = cofunc.avg_pool1d(3, stride=1, padding=1)
    assert torch.equal(assert_call_modes(exclude, {}, xs), torch.ones(1, 1, 5, dtype=F64))
    torch.testing.assert_close(assert_call_modes(include, {}, xs)[0, 0], torch.tensor([2 / 3, 1, 1, 1, 2 / 3], dtype=F64))
    ceil = cofunc.avg_pool1d(2, stride=2, ceil_mode=True)  # 5 frames: windows [0,1], [2,3], [4]
    ys = assert_call_modes(ceil, {}, torch.arange(5, dtype=F64).reshape(1, 1, 5))
    torch.testing.assert_close(ys[0, 0], torch.tensor([0.5, 2.5, 4.0], dtype=F64))


@pytest.mark.parametrize("T", [4, 5, 6, 7])
def test_dilated_strided_max_pool(T):
    """Temporal dilation with stride and padding (co computes it wrongly)."""
    pool = cofunc.max_pool1d(2, stride=2, padding=1, dilation=3, ceil_mode=True)
    assert (pool.receptive_field, pool.delay, pool.stride) == (4, 2, 2)
    xs = torch.randn(2, 3, T, dtype=F64)
    ys = assert_call_modes(pool, {}, xs)
    assert torch.equal(ys, F.max_pool1d(xs, 2, 2, 1, 3, True))


def test_pool_metadata():
    assert (cofunc.avg_pool3d(3).delay, cofunc.avg_pool3d(3).stride) == (2, 3)
    pool = cofunc.max_pool2d((3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1))
    assert (pool.receptive_field, pool.padding, pool.delay, pool.stride) == (5, 1, 3, 1)
    assert cofunc.max_pool1d(1).stateful is False  # one-frame window, stride 1: no buffer


# --- adaptive pools ------------------------------------------------------------------------------


@st.composite
def adaptive_configs(draw):
    kind = draw(st.sampled_from(["avg", "max"]))
    dims = draw(st.integers(2, 3))
    kernel = draw(st.integers(1, 4))
    dilation = draw(st.integers(1, 2))
    rf = dilation * (kernel - 1) + 1
    out = tuple(draw(st.sampled_from([None, 1, 2])) for _ in range(dims - 1))
    kwargs = dict(output_size=(1,) + out, kernel_size=kernel, stride=draw(st.integers(1, 3)),
                  padding=draw(st.integers(0, rf - 1)), dilation=dilation)
    spatial = tuple(draw(st.integers(2, 4)) for _ in range(dims - 1))
    return kind, dims, kwargs, spatial


def adaptive_windows(kind, dims, kwargs, xs):
    """The obvious clip computation: pad time with the fill (0, or -inf for max), cut windows of
    ``kernel_size`` frames ``dilation`` apart every ``stride`` frames, pool each with torch.nn's
    adaptive pool. ``xs: (B, C, T, *S) -> (B, C, T', *S')``."""
    k, s, p, d = kwargs["kernel_size"], kwargs["stride"], kwargs["padding"], kwargs["dilation"]
    fill = float("-inf") if kind == "max" else 0.0
    pad = xs.new_full(xs.shape[:2] + (p,) + xs.shape[3:], fill)
    padded = torch.cat([pad, xs, pad], dim=2)
    pool = NN_ADAPTIVE[(kind, dims)](kwargs["output_size"])
    rf = d * (k - 1) + 1
    outs = [pool(padded[:, :, start:start + rf:d]) for start in range(0, padded.shape[2] - rf + 1, s)]
    return torch.cat(outs, dim=2)


@given(cfg=adaptive_configs(), extra=st.integers(0, 5))
def test_adaptive_pool_step_modes(cfg, extra):
    kind, dims, kwargs, spatial = cfg
    layer = CORE_ADAPTIVE[(kind, dims)](**kwargs)
    xs = torch.randn((2, 2, max(1, layer.receptive_field - 2 * layer.padding) + extra) + spatial, dtype=F64)
    ys = assert_call_modes(layer, {}, xs)
    # Equal to rounding: the window averages sum strided views in another order.
    torch.testing.assert_close(ys, adaptive_windows(kind, dims, kwargs, xs))


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("dims", [2, 3])
def test_adaptive_pool_forward_equals_torch_nn_on_one_window(kind, dims):
    """A clip exactly ``kernel_size`` frames long: one output, torch.nn's adaptive pool exactly
    (core, adapter, and `continual` of the torch module with ``temporal_window``)."""
    out = (1, 2) if dims == 2 else (1, 2, None)
    ref = NN_ADAPTIVE[(kind, dims)](out)
    xs = torch.randn((2, 3, 4) + (5,) * (dims - 1))
    expected = ref(xs)
    assert torch.equal(CORE_ADAPTIVE[(kind, dims)](out, kernel_size=4).forward({}, xs), expected)
    adapter = CN_ADAPTIVE[(kind, dims)](out, kernel_size=4)
    converted = cn.continual(ref, temporal_window=4)
    assert type(converted) is CN_ADAPTIVE[(kind, dims)] and converted.kernel_size == 4
    for module in (adapter, converted):
        assert torch.equal(module(xs), expected)
        assert module.forward_steps(xs[:, :, :3]) is None
        torch.testing.assert_close(module.forward_step(xs[:, :, 3]), expected.squeeze(2))


def test_adaptive_pool_forward_slides_over_longer_clips():
    """Over a longer clip, ``forward`` pools every window (co's semantics), not the whole clip."""
    pool = cofunc.adaptive_avg_pool3d((1, 1, 1), kernel_size=3)
    xs = torch.randn(1, 2, 6, 3, 3, dtype=F64)
    ys = pool.forward({}, xs)
    assert ys.shape == (1, 2, 4, 1, 1)
    torch.testing.assert_close(ys[:, :, 1], xs[:, :, 1:4].mean(dim=(2, 3, 4)).unsqueeze(-1).unsqueeze(-1))


# --- nn adapters ---------------------------------------------------------------------------------


def adapter_steps(module, xs):
    """``forward_step`` on each frame of ``xs: (B, C, T, *S)``: the list of outputs (or None)."""
    return [module.forward_step(xs[:, :, t]) for t in range(xs.shape[2])]


@given(cfg=pool_configs(), probe_at=st.integers(0, 4))
def test_adapter_call_modes(cfg, probe_at):
    """forward_step: None while warming up and on strided steps, then the clip outputs;
    forward_steps(pad_end=True) from a fresh state equals forward; a step with
    ``update_state=False`` returns what the real step returns and leaves the state alone."""
    module = cfg.adapter()
    xs = cfg.clip((2,))
    T = xs.shape[2]
    ys = module(xs)
    torch.testing.assert_close(module.forward_steps(xs, pad_end=True), ys)
    module.clean_state()
    outs = []
    for t in range(T):
        if t == min(probe_at, T - 1) and t > 0:
            before = tree_clone(module.get_state())
            probe = module.forward_step(xs[:, :, t], update_state=False)
            assert_tree_equal(module.get_state(), before, "update_state=False changed the state")
            real = module.forward_step(xs[:, :, t])
            assert (probe is None) == (real is None)
            assert probe is None or torch.equal(probe, real)
            outs.append(real)
        else:
            outs.append(module.forward_step(xs[:, :, t]))
    layer = module.layer
    assert [o is None for o in outs] == [not f for f in expected_flags(layer.delay, layer.stride, T)]
    emitted = [o for o in outs if o is not None]
    if emitted:
        torch.testing.assert_close(torch.stack(emitted, dim=2), ys[:, :, : len(emitted)])


def test_adapter_forward_steps_update_state_false():
    pool = cn.AvgPool2d((3, 2), stride=(2, 1), padding=(1, 0), count_include_pad=False)
    xs = torch.randn(2, 3, 9, 4, dtype=F64)
    pool.forward_steps(xs[:, :, :4])
    before = tree_clone(pool.get_state())
    probe = pool.forward_steps(xs[:, :, 4:], pad_end=True, update_state=False)
    assert_tree_equal(pool.get_state(), before)
    torch.testing.assert_close(pool.forward_steps(xs[:, :, 4:], pad_end=True), probe)
    fresh = cn.AvgPool2d((3, 2), stride=(2, 1), padding=(1, 0), count_include_pad=False)
    torch.testing.assert_close(torch.cat([fresh.forward_steps(xs[:, :, :4]), probe], 2), pool(xs))


def test_adapter_build_from_and_continual():
    """`continual` copies every option of torch.nn pools (max and average)."""
    refs = [
        nn.MaxPool3d((3, 2, 2), stride=(1, 2, 2), padding=(1, 1, 0), dilation=(2, 1, 1), ceil_mode=True),
        nn.AvgPool2d((2, 3), stride=1, padding=(1, 1), ceil_mode=True, count_include_pad=False, divisor_override=4),
        nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False),
    ]
    for ref in refs:
        module = cn.continual(ref)
        assert isinstance(module, type(ref)) and isinstance(module, cn.ContinualModule)
        for name in ("kernel_size", "stride", "padding", "ceil_mode", "dilation", "count_include_pad", "divisor_override"):
            assert getattr(module, name, None) == getattr(ref, name, None), name
        dims = int(type(ref).__name__[-2])
        xs = torch.randn((2, 2, 7) + (6,) * (dims - 1), dtype=F64)
        assert torch.equal(module(xs), ref(xs))
        torch.testing.assert_close(module.forward_steps(xs, pad_end=True), ref(xs))


# --- vmap over streams ---------------------------------------------------------------------------

VMAP_CASES = {
    "max3d_padded_dilated": (lambda: cofunc.max_pool3d((2, 2, 2), stride=(1, 1, 1), padding=1, dilation=(2, 1, 1)), (2, 3, 3)),
    "avg2d_strided_exclude_pad": (lambda: cofunc.avg_pool2d((3, 2), stride=(2, 1), padding=(1, 0), count_include_pad=False), (2, 4)),
    "avg1d_ceil": (lambda: cofunc.avg_pool1d(3, stride=2, padding=1, ceil_mode=True), (3,)),
    "adaptive_max3d": (lambda: cofunc.adaptive_max_pool3d((1, 1, 2), kernel_size=3, stride=2, padding=1), (2, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(VMAP_CASES))
def test_vmap_step_equals_batched_step(name):
    make, frame_shape = VMAP_CASES[name]
    layer = make()
    state = layer.init_state({}, (3,) + frame_shape, dtype=F64)
    vstate = tree_clone(state)
    vstep = torch.func.vmap(layer.step, **VMAP_STEP)
    for t in range(8):
        x = torch.randn((3,) + frame_shape, dtype=F64)
        y, state = layer.step({}, state, x)
        yv, vstate = vstep({}, vstate, x)
        valid = layer.valid(state)
        assert torch.equal(valid, layer.valid(vstate)), f"step {t}"
        if bool(valid.all()):
            torch.testing.assert_close(yv, y, msg=f"step {t}")
        assert_tree_close(vstate, state, f"state after step {t}")


# --- configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize("build", [
    lambda: cofunc.max_pool1d(3, padding=2),  # padding above kernel // 2, as torch.nn rejects
    lambda: cofunc.avg_pool2d((2, 2), padding=(0, 2)),
    lambda: cofunc.max_pool2d(2, return_indices=True),
    lambda: cofunc.avg_pool3d(2, divisor_override=0),
    lambda: cofunc.Pool("avg", 1, 3, dilation=2),  # torch's average pooling has no dilation
    lambda: cofunc.max_pool1d(0),
    lambda: cofunc.max_pool2d((2, 2, 2)),  # three sizes for a 2d pool
    lambda: cofunc.adaptive_avg_pool3d((2, 1, 1), kernel_size=3),  # temporal output size must be 1
    lambda: cofunc.adaptive_max_pool2d((1, 1), kernel_size=3, padding=3),
    lambda: cn.MaxPool2d(2, temporal_fill="replicate"),
    lambda: cn.AdaptiveAvgPool3d((1, 1, 1)),  # no temporal window
])
def test_configuration_errors_at_construction(build):
    with pytest.raises(cofunc.ConfigurationError):
        build()


def test_continual_adaptive_pool_needs_a_temporal_window():
    with pytest.raises(cofunc.UnsupportedModuleError, match="temporal_window"):
        cn.continual(nn.AdaptiveAvgPool3d(1))
    with pytest.raises(cofunc.UnsupportedModuleError, match="temporal output size"):
        cn.continual(nn.AdaptiveAvgPool2d((2, 1)), temporal_window=3)
    assert cn.continual(nn.AdaptiveMaxPool2d((None, 1)), temporal_window=2).delay == 1
