"""Equivalence with co 1.2.4 (``import continual as co``) for pools, adaptive pools, Linear,
closures, Skip, Reshape and the containers: with the same options and weights, cofunc.nn's
modules return ``None`` at the same steps and the same outputs otherwise, and the same
``forward_steps`` outputs.

Where co is wrong (docs/design.md, section 7), cofunc is compared with
torch.nn instead, and a test shows the difference: max pooling padded with zeros, temporal
dilation in pooling, ``count_include_pad=False`` and ``ceil_mode`` ignored when stepping,
shrunk residuals crashing in ``forward_steps``, ``Reshape`` shapes that include the batch size,
and ``continual`` of adaptive pools.

Shapes: clips ``(B, C, T, *S)``, steps ``(B, C, *S)``; float64 throughout.
"""

from __future__ import annotations

import warnings

import continual as co
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import cofunc
import cofunc.nn as cn

F64 = torch.float64
POOLS = {"avg": {1: "AvgPool1d", 2: "AvgPool2d", 3: "AvgPool3d"}, "max": {1: "MaxPool1d", 2: "MaxPool2d", 3: "MaxPool3d"}}

# co logs a warning for every temporally strided module it builds; expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def steps_of(module, xs):
    """``forward_step`` on each frame of ``xs: (B, C, T, *S)``: T outputs (or None)."""
    return [module.forward_step(xs[:, :, t]) for t in range(xs.shape[2])]


def assert_same_steps(ours, theirs):
    """The same steps are empty (None), and the outputs agree elsewhere."""
    assert [o is None for o in ours] == [o is None for o in theirs]
    for a, b in zip(ours, theirs):
        if a is not None:
            torch.testing.assert_close(a, b)


def assert_same_optional(a, b):
    assert (a is None) == (b is None)
    if a is not None:
        torch.testing.assert_close(a, b)


def assert_same_call_modes(ours, theirs, xs, split: int, same_delay: bool = True):
    """Step by step, then (fresh) ``forward_steps`` in two non-empty chunks (co fails on empty
    ones), the second end-padded."""
    if same_delay:
        assert ours.delay == theirs.delay
    split = max(1, min(split, xs.shape[2] - 1))
    assert_same_steps(steps_of(ours, xs), steps_of(theirs, xs))
    ours.clean_state()
    theirs.clean_state()
    assert_same_optional(ours.forward_steps(xs[:, :, :split]), theirs.forward_steps(xs[:, :, :split]))
    assert_same_optional(ours.forward_steps(xs[:, :, split:], pad_end=True), theirs.forward_steps(xs[:, :, split:], pad_end=True))


# --- pools where co is right -----------------------------------------------------------------------


@st.composite
def co_pool_configs(draw):
    """Options co steps correctly: no ceil_mode, no temporal dilation, averages counting the
    padding; co's max pools are given ``temporal_fill="neg_inf"`` (torch's padding)."""
    dims = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["avg", "max"]))
    kernel = (draw(st.integers(1, 4)),) + tuple(draw(st.integers(1, 3)) for _ in range(dims - 1))
    kwargs = dict(
        kernel_size=kernel,
        stride=tuple(draw(st.integers(1, 3)) for _ in range(dims)),
        padding=tuple(draw(st.integers(0, k // 2)) for k in kernel),
    )
    if kind == "max" and dims > 1:
        kwargs["dilation"] = (1,) + tuple(draw(st.integers(1, 2)) for _ in range(dims - 1))
    spatial = tuple(d * (k - 1) + 1 + draw(st.integers(0, 2)) for k, d in zip(kernel[1:], kwargs.get("dilation", (1,) * dims)[1:]))
    return kind, dims, kwargs, spatial, draw(st.integers(0, 8)), draw(st.integers(0, 8))


@given(co_pool_configs())
def test_pools_equal_co(config):
    kind, dims, kwargs, spatial, extra, split = config
    name = POOLS[kind][dims]
    ours = getattr(cn, name)(**kwargs)
    theirs = getattr(co, name)(**kwargs, **({"temporal_fill": "neg_inf"} if kind == "max" else {}))
    xs = torch.randn((2, 2, kwargs["kernel_size"][0] + extra) + spatial, dtype=F64)
    assert torch.equal(ours(xs), theirs(xs))
    assert_same_call_modes(ours, theirs, xs, split)


@pytest.mark.parametrize("name, kwargs, frame", [
    ("AdaptiveAvgPool3d", dict(output_size=(1, 1, 1), kernel_size=3), (2, 3, 3)),
    ("AdaptiveMaxPool3d", dict(output_size=(1, 2, 1), kernel_size=2, stride=2), (2, 3, 3)),
    ("AdaptiveAvgPool2d", dict(output_size=(1, 2), kernel_size=3, padding=1), (3, 4)),
    ("AdaptiveMaxPool2d", dict(output_size=(1, 3), kernel_size=4, stride=3, padding=2), (2, 3)),
])
def test_adaptive_pools_equal_co(name, kwargs, frame):
    """Steps and forward_steps agree for any clip; ``forward`` agrees on unpadded clips one
    window long (co's forward pools the whole clip, cofunc's every window)."""
    ours, theirs = getattr(cn, name)(**kwargs), getattr(co, name)(**kwargs)
    xs = torch.randn((2, frame[0], 9) + frame[1:], dtype=F64)
    if name == "AdaptiveMaxPool2d":  # co pads max pooling's time with zeros by default
        theirs = getattr(co, name)(**kwargs, temporal_fill="neg_inf")
    assert_same_call_modes(ours, theirs, xs, 4)
    if not kwargs.get("padding"):
        window = xs[:, :, : kwargs["kernel_size"]]
        assert torch.equal(ours(window), theirs(window))


# --- pools: where co is wrong, cofunc equals torch.nn ------------------------------------------------


def test_max_pool_padding_on_negative_inputs():
    """co's MaxPool3d pads time with zeros (its default temporal_fill): on negative inputs its
    first step returns 0 where torch pools -inf padding. cofunc pads with -inf."""
    kwargs = dict(kernel_size=(3, 1, 1), stride=1, padding=(1, 0, 0))
    xs = -1.0 - torch.rand(1, 2, 5, 2, 2, dtype=F64)
    expected = nn.MaxPool3d(**kwargs)(xs)
    theirs = steps_of(co.MaxPool3d(**kwargs), xs)
    ours = steps_of(cn.MaxPool3d(**kwargs), xs)
    assert torch.equal(theirs[1], torch.zeros_like(theirs[1]))  # co: the padding won
    torch.testing.assert_close(torch.stack(ours[1:], dim=2), expected[:, :, :4])
    assert torch.equal(cn.MaxPool3d(**kwargs).forward_steps(xs, pad_end=True), expected)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_temporal_dilation(stride):
    """co's ring buffer wraps at the kernel size instead of the dilated window: wrong values.
    cofunc's steps equal torch's dilated pooling."""
    xs = torch.randn(2, 2, 9, dtype=F64)
    expected = F.max_pool1d(xs, 2, stride, 0, 2)
    ours = [o for o in steps_of(cn.MaxPool1d(2, stride, dilation=2), xs) if o is not None]
    theirs = [o for o in steps_of(co.MaxPool1d(2, stride, dilation=2), xs) if o is not None]
    torch.testing.assert_close(torch.stack(ours, dim=2), expected)
    assert not torch.allclose(torch.stack(theirs, dim=2)[:, :, : expected.shape[2]], expected)


def test_avg_pool_count_include_pad_false():
    """co divides the padded edge windows by the kernel size when stepping; torch (and
    cofunc) divide by the real frames."""
    xs = torch.ones(1, 1, 5, dtype=F64)
    expected = nn.AvgPool1d(3, 1, 1, count_include_pad=False)(xs)
    assert torch.equal(expected, torch.ones_like(xs))
    ours = cn.AvgPool1d(3, 1, 1, count_include_pad=False)
    theirs = co.AvgPool1d(3, 1, 1, count_include_pad=False)
    torch.testing.assert_close(ours.forward_steps(xs, pad_end=True), expected)
    co_steps = theirs.forward_steps(xs, pad_end=True)
    torch.testing.assert_close(co_steps[0, 0, 0], torch.tensor(2 / 3, dtype=F64))  # co: wrong divisor


def test_avg_pool_ceil_mode():
    """co's steps miss ceil_mode's last partial window (4 outputs of torch's 5)."""
    xs = torch.randn(1, 2, 9, dtype=F64)
    expected = nn.AvgPool1d(2, 2, ceil_mode=True)(xs)
    assert expected.shape[2] == 5
    assert co.AvgPool1d(2, 2, ceil_mode=True).forward_steps(xs, pad_end=True).shape[2] == 4
    torch.testing.assert_close(cn.AvgPool1d(2, 2, ceil_mode=True).forward_steps(xs, pad_end=True), expected)


def test_avg_pool_temporal_dilation_is_rejected():
    """co accepts a temporal dilation for average pooling that its forward (torch's) ignores;
    cofunc rejects it at construction, as torch has no such option."""
    theirs = co.AvgPool1d(2, 1, dilation=2)
    xs = torch.randn(1, 1, 6, dtype=F64)
    assert theirs(xs).shape[2] != theirs.forward_steps(xs, pad_end=True).shape[2]
    with pytest.raises(cofunc.ConfigurationError, match="dilation"):
        cofunc.Pool("avg", 1, 2, dilation=2)


def test_continual_of_adaptive_pools():
    """``co.continual(nn.AdaptiveAvgPool3d)`` fails; cofunc converts it given the window."""
    ref = nn.AdaptiveAvgPool3d((1, 1, 1))
    with pytest.raises(TypeError):
        co.continual(ref)
    ours = cn.continual(ref, temporal_window=3)
    theirs = co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=3)
    xs = torch.randn(1, 2, 6, 3, 3, dtype=F64)
    assert_same_steps(steps_of(ours, xs), steps_of(theirs, xs))


# --- Linear, closures, Skip, Reshape -----------------------------------------------------------------


def test_linear_equals_co():
    torch.manual_seed(0)
    theirs = co.Linear(3, 4, channel_dim=1).double()
    ours = cn.Linear(3, 4, channel_dim=1).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    xs = torch.randn(2, 3, 5, 2, dtype=F64)
    assert torch.equal(ours(xs), theirs(xs))
    assert_same_call_modes(ours, theirs, xs, 2)
    last = co.Linear(2, 3).double()  # co's default channel_dim=-1: the last axis
    ours_last = cn.Linear.build_from(last, channel_dim=-1)
    assert torch.equal(ours_last(xs[:, :2].movedim(1, -1)), last(xs[:, :2].movedim(1, -1)))
    assert_same_call_modes(ours_last, last, xs[:, :2].movedim(1, -1), 1)


CLOSURES = {
    "lambda": lambda m: m.Lambda(lambda x: x * 3 + x.flip(1)),
    "lambda_takes_time": lambda m: m.Lambda(nn.Softmax(dim=1), takes_time=True),
    "add": lambda m: m.Add(2.5),
    "multiply": lambda m: m.Multiply(-1.5),
    "constant": lambda m: m.Constant(4.0),
    "zero": lambda m: m.Zero(),
    "one": lambda m: m.One(),
    "identity": lambda m: m.Identity(),
    "skip": lambda m: m.Skip(3),
}


@pytest.mark.parametrize("name", sorted(CLOSURES))
def test_closures_and_skip_equal_co(name):
    """Same outputs at the same steps. ``Skip(3).delay`` differs on purpose: co reports 0
    although its first 3 steps are empty; cofunc's delay counts them (docs/design.md, section 3)."""
    ours, theirs = CLOSURES[name](cn), CLOSURES[name](co)
    xs = torch.randn(2, 3, 6, 2, dtype=F64)
    torch.testing.assert_close(ours(xs), theirs(xs))
    assert_same_call_modes(ours, theirs, xs, 2, same_delay=name != "skip")
    if name == "skip":
        assert (ours.delay, theirs.delay) == (3, 0)


def test_reshape_without_the_batch_size():
    """co's ``Reshape(B, *shape)`` includes the batch size and fails on another batch;
    cofunc's ``Reshape(*shape)`` equals it on batch B and serves any batch."""
    xs = torch.randn(2, 2, 5, 6, dtype=F64)
    ours, theirs = cn.Reshape(4, 3), co.Reshape(2, 4, 3)
    assert torch.equal(ours(xs), theirs(xs))
    assert_same_call_modes(ours, theirs, xs, 2)
    other = torch.randn(3, 2, 5, 6, dtype=F64)
    with pytest.raises(RuntimeError):
        theirs(other)
    assert torch.equal(ours(other), torch.stack([other[:, :, t].reshape(3, 4, 3) for t in range(5)], dim=2))


# --- containers --------------------------------------------------------------------------------------


def paired(build, seed=0):
    """The same container from co and cofunc.nn (``build(lib)``), with co's weights loaded.

    The keys agree except where co's auto-delay wrapped a branch as ``Sequential(m, Delay)``
    and so added a ``.0.`` level; cofunc adds none (docs/design.md, section 2)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        theirs = build(co).double()
        ours = build(cn).double()
    mine, co_sd = ours.state_dict(), theirs.state_dict()
    assert [k.replace(".0.", ".") for k in co_sd] == [k.replace(".0.", ".") for k in mine] or list(co_sd) == list(mine)
    assert [v.shape for v in mine.values()] == [v.shape for v in co_sd.values()]
    ours.load_state_dict(dict(zip(mine, co_sd.values())), strict=True)
    return ours, theirs


CONTAINERS = {
    "broadcast_parallel_reduce": lambda m: m.Sequential(
        m.Broadcast(2), m.Parallel(m.Conv1d(2, 2, 3, padding=1), m.Conv1d(2, 2, 1)), m.Reduce("sum")),
    "broadcast_reduce_concat": lambda m: m.BroadcastReduce(
        m.Conv1d(2, 3, 3, padding=1), m.Conv1d(2, 2, 1), m.MaxPool1d(3, 1, padding=1), reduce="concat"),
    "broadcast_reduce_strided": lambda m: m.BroadcastReduce(
        m.Conv1d(2, 2, 3, stride=2, padding=1), m.Conv1d(2, 2, 3, stride=2, padding=1), reduce="max"),
    "residual": lambda m: m.Residual(m.Conv2d(2, 2, 3, padding=1)),
    "residual_mul": lambda m: m.Residual(m.Conv2d(2, 2, (3, 1), padding=(1, 0)), reduce="mul"),
    "residual_true": lambda m: m.Residual(m.Conv2d(2, 2, (3, 1)), residual_shrink=True),
    "residual_centered": lambda m: m.Residual(m.Conv2d(2, 2, (3, 1)), residual_shrink="centered"),
    "residual_lagging": lambda m: m.Residual(m.Conv2d(2, 2, (3, 1)), residual_shrink="lagging"),
    "residual_leading": lambda m: m.Residual(m.Conv2d(2, 2, (3, 1)), residual_shrink="leading"),
    "conditional_true": lambda m: m.Conditional(lambda mod, x: True, m.Conv2d(2, 2, (3, 1)), m.Multiply(2.0)),
    "conditional_false": lambda m: m.Conditional(lambda mod, x: False, m.Conv2d(2, 2, (3, 1)), m.Multiply(2.0)),
    "sequential_residual_pool": lambda m: m.Sequential(
        m.Conv2d(2, 2, (3, 3), padding=(1, 1)), nn.ReLU(), m.Residual(m.Conv2d(2, 2, (3, 1), padding=(1, 0))),
        m.AvgPool2d((2, 1), stride=(2, 1)), m.Linear(2, 3, channel_dim=1)),
}
SHRUNK = ("residual_true", "residual_centered", "residual_lagging")
FRAMES = {1: (2,), 2: (2, 3)}


def _clip(name, T):
    dims = 1 if name.startswith(("broadcast", "broadcast_reduce")) else 2
    return torch.randn((2,) + FRAMES[dims][:1] + (T,) + FRAMES[dims][1:], dtype=F64)


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_containers_step_like_co(name):
    """Same forward, same delay, same outputs at the same steps (both step by step)."""
    ours, theirs = paired(CONTAINERS[name])
    xs = _clip(name, 8)
    torch.testing.assert_close(ours(xs), theirs(xs))
    assert ours.delay == theirs.delay
    assert_same_steps(steps_of(ours, xs), steps_of(theirs, xs))


@pytest.mark.parametrize("name", sorted(set(CONTAINERS) - set(SHRUNK) - {"conditional_false"}))
def test_containers_forward_steps_like_co(name):
    ours, theirs = paired(CONTAINERS[name])
    xs = _clip(name, 9)
    assert_same_optional(ours.forward_steps(xs[:, :, :4]), theirs.forward_steps(xs[:, :, :4]))
    assert_same_optional(ours.forward_steps(xs[:, :, 4:], pad_end=True), theirs.forward_steps(xs[:, :, 4:], pad_end=True))


@pytest.mark.parametrize("name", SHRUNK)
def test_shrunk_residual_forward_steps(name):
    """co's shrunk residuals (True, "centered", "lagging") crash in ``forward_steps``: their
    residual delay emits a different number of frames than the conv. cofunc's equal the clip
    forward (with end padding) and the step outputs (without)."""
    ours, theirs = paired(CONTAINERS[name])
    xs = _clip(name, 8)
    with pytest.raises(RuntimeError, match="must match the size"):
        theirs.forward_steps(xs, pad_end=True)
    torch.testing.assert_close(ours.forward_steps(xs, pad_end=True), theirs(xs))
    ours.clean_state()
    stepped = [o for o in steps_of(paired(CONTAINERS[name])[0], xs) if o is not None]
    torch.testing.assert_close(ours.forward_steps(xs), torch.stack(stepped, dim=2))


def test_conditional_forward_steps_pad_end():
    """co's Conditional drops ``pad_end`` in ``forward_steps``, so its delayed identity branch
    never flushes its last 2 frames; cofunc's stream completes the clip forward."""
    ours, theirs = paired(CONTAINERS["conditional_false"])
    xs = _clip("conditional_false", 9)
    expected = theirs(xs)
    assert torch.equal(expected, 2 * xs)
    assert theirs.forward_steps(xs, pad_end=True).shape[2] == 7
    torch.testing.assert_close(ours.forward_steps(xs, pad_end=True), expected)


def test_parallel_dispatch_like_co():
    frames = [torch.randn(1, 2, dtype=F64) for _ in range(3)]
    mapping = [2, 0, [0, 2], 1]
    ours, theirs = cn.ParallelDispatch(mapping).forward_step(frames), co.ParallelDispatch(mapping).forward_step(frames)
    assert ours[0] is theirs[0] and ours[2][1] is theirs[2][1] and ours[3] is theirs[3]
    assert isinstance(ours[2], list) and isinstance(theirs[2], list)
