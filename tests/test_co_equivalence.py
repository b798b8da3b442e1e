"""Equivalence with co 1.2.4 (``import continual as co``): with the same weights, cofunc.nn's
modules emit the same step outputs at the same steps (None included) and the same
``forward_steps`` outputs.

Shapes: clips ``(B, C, T, *S)``, steps ``(B, C, *S)``. Everything runs in float64: co sums ``k_t``
partial convolutions per output, cofunc convolves a window, so the two agree to rounding only.
co logs a warning for every temporally strided conv it builds; that is expected.
"""

from __future__ import annotations

import continual as co
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import cofunc.nn as cn

F64 = torch.float64
CO_CONV = {1: co.Conv1d, 2: co.Conv2d, 3: co.Conv3d}
CN_CONV = {1: cn.Conv1d, 2: cn.Conv2d, 3: cn.Conv3d}
SPATIAL_SIZE = 5  # large enough for every drawn spatial kernel, dilation and padding


def step_through(module, xs):
    """``forward_step`` on each frame of ``xs: (B, C, T, *S)``; a list of T outputs (or None)."""
    return [module.forward_step(xs[:, :, t]) for t in range(xs.shape[2])]


def assert_same_steps(ours, theirs):
    """Same None positions, and equal outputs (to float64 rounding) where both emit."""
    assert [o is None for o in ours] == [o is None for o in theirs]
    for a, b in zip(ours, theirs):
        if a is not None:
            torch.testing.assert_close(a, b)


def assert_same_optional(a, b):
    assert (a is None) == (b is None)
    if a is not None:
        torch.testing.assert_close(a, b)


def pair_convs(dims, kwargs, seed=0):
    """A co conv and a cofunc conv with the same options and weights (float64).

    co's ``temporal_fill`` defaults to zeros whatever the padding mode; cofunc follows the
    padding mode, so co's is set to match (as co's own ``build_from`` does).
    """
    torch.manual_seed(seed)
    theirs = CO_CONV[dims](**kwargs, temporal_fill=kwargs.get("padding_mode", "zeros")).to(F64)
    ours = CN_CONV[dims](**kwargs).to(F64)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@st.composite
def conv_configs(draw):
    """Conv options co supports: temporal dilation 1, temporal padding <= k_t - 1, padding mode
    zeros or replicate. Kernel 1 with temporal stride > 1 is left out: co ignores the stride
    there (see `test_co_ignores_stride_of_temporal_kernel_1`)."""
    dims = draw(st.integers(1, 3))
    n_space = dims - 1
    groups = draw(st.sampled_from([1, 2]))
    kt = draw(st.integers(1, 4))
    stride_t = 1 if kt == 1 else draw(st.integers(1, 3))
    pad_t = draw(st.integers(0, kt - 1))
    ks = [draw(st.integers(1, 3)) for _ in range(n_space)]
    kwargs = dict(
        in_channels=groups * draw(st.integers(1, 2)),
        out_channels=groups * draw(st.integers(1, 2)),
        kernel_size=(kt, *ks),
        stride=(stride_t, *[draw(st.integers(1, 2)) for _ in range(n_space)]),
        padding=(pad_t, *[draw(st.integers(0, k - 1)) for k in ks]),
        dilation=(1, *[draw(st.integers(1, 2)) for _ in range(n_space)]),
        groups=groups,
        bias=draw(st.booleans()),
        padding_mode=draw(st.sampled_from(["zeros", "replicate"])),
    )
    batch = draw(st.integers(1, 2))
    n_steps = draw(st.integers(1, 9))
    return dims, kwargs, batch, n_steps


def clip(dims, in_channels, batch, n_steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_channels, n_steps, *([SPATIAL_SIZE] * (dims - 1)), generator=g, dtype=F64)


# Example counts and deadlines come from the suite's hypothesis profile (tests/conftest.py).
@given(conv_configs())
def test_conv_steps_equal_co(config):
    dims, kwargs, batch, n_steps = config
    ours, theirs = pair_convs(dims, kwargs)
    assert ours.delay == theirs.delay and ours.receptive_field == theirs.receptive_field
    long_clip = clip(dims, kwargs["in_channels"], batch, 9, seed=1)  # at least one kernel long
    assert torch.equal(ours(long_clip), theirs(long_clip))
    xs = clip(dims, kwargs["in_channels"], batch, n_steps)
    assert_same_steps(step_through(ours, xs), step_through(theirs, xs))


@given(conv_configs(), st.integers(0, 9), st.booleans())
def test_conv_forward_steps_equal_co(config, split, pad_end):
    """Two chunks, the second with or without end padding, from a fresh state."""
    dims, kwargs, batch, n_steps = config
    ours, theirs = pair_convs(dims, kwargs)
    xs = clip(dims, kwargs["in_channels"], batch, n_steps + 1)
    split = min(split, n_steps)
    first, rest = xs[:, :, :split], xs[:, :, split:]
    if split:
        assert_same_optional(ours.forward_steps(first), theirs.forward_steps(first))
    assert_same_optional(ours.forward_steps(rest, pad_end=pad_end), theirs.forward_steps(rest, pad_end=pad_end))


@pytest.mark.parametrize("pad_end", [False, True])
def test_conv_forward_steps_then_steps_equal_co(pad_end):
    """Mixing forward_steps and forward_step keeps the two libraries in step."""
    ours, theirs = pair_convs(3, dict(in_channels=2, out_channels=4, kernel_size=(3, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1)))
    xs = clip(3, 2, 2, 12)
    assert_same_optional(ours.forward_steps(xs[:, :, :5], pad_end=pad_end), theirs.forward_steps(xs[:, :, :5], pad_end=pad_end))
    assert_same_steps(step_through(ours, xs[:, :, 5:9]), step_through(theirs, xs[:, :, 5:9]))
    assert_same_optional(ours.forward_steps(xs[:, :, 9:]), theirs.forward_steps(xs[:, :, 9:]))


def test_conv_replicate_temporal_fill_with_zero_padding_equals_co():
    """temporal_fill='replicate' with padding_mode='zeros' ("boring video" warm-up): the steps
    equal co's, although neither equals the zero-padded clip forward."""
    kwargs = dict(in_channels=2, out_channels=3, kernel_size=3, padding=2)
    torch.manual_seed(0)
    theirs = co.Conv1d(**kwargs, temporal_fill="replicate").to(F64)
    ours = cn.Conv1d(**kwargs, temporal_fill="replicate").to(F64)
    ours.load_state_dict(theirs.state_dict())
    xs = clip(1, 2, 2, 7)
    ours_steps = step_through(ours, xs)
    assert_same_steps(ours_steps, step_through(theirs, xs))
    assert not torch.allclose(ours_steps[0], ours(xs)[:, :, 0])


def test_co_ignores_stride_of_temporal_kernel_1():
    """A co defect cofunc does not repeat: co's kernel-1 conv emits on every step despite a
    temporal stride of 2; cofunc emits every other step, matching the clip forward."""
    ours, theirs = pair_convs(1, dict(in_channels=2, out_channels=2, kernel_size=1, stride=2))
    xs = clip(1, 2, 1, 6)
    theirs_steps = step_through(theirs, xs)
    ours_steps = step_through(ours, xs)
    assert all(o is not None for o in theirs_steps)
    assert [o is None for o in ours_steps] == [False, True] * 3
    torch.testing.assert_close(torch.stack(ours_steps[::2], dim=2), ours(xs))


# --- Sequential ----------------------------------------------------------------------------------


def torch_cnn3d(seed=0):
    """conv, BN, ReLU, strided conv (float64, eval mode, non-trivial BN statistics)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
        nn.Conv3d(4, 3, (3, 3, 3), stride=(2, 1, 1), padding=(1, 0, 0)),
    )
    with torch.no_grad():
        net[1].running_mean.copy_(torch.randn(4))
        net[1].running_var.copy_(torch.rand(4) + 0.5)
        net[1].weight.copy_(torch.rand(4) + 0.5)
        net[1].bias.copy_(torch.randn(4))
    return net.to(F64).eval()


def co_and_cofunc_cnn3d():
    """The same CNN built both ways: co by hand, cofunc by converting torch.nn."""
    ref = torch_cnn3d()
    theirs = co.Sequential(
        co.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
        co.Conv3d(4, 3, (3, 3, 3), stride=(2, 1, 1), padding=(1, 0, 0)),
    ).to(F64)
    theirs.load_state_dict(ref.state_dict())
    ours = cn.continual(ref)
    return ours.eval(), theirs.eval()


def test_sequential_cnn3d_steps_equal_co():
    ours, theirs = co_and_cofunc_cnn3d()
    assert (ours.delay, ours.receptive_field, ours.stride[0], ours.padding[0]) == (
        theirs.delay, theirs.receptive_field, theirs.stride[0], theirs.padding[0],
    )
    xs = torch.randn(2, 2, 11, 5, 5, dtype=F64)
    assert torch.equal(ours(xs), theirs(xs))
    assert_same_steps(step_through(ours, xs), step_through(theirs, xs))


@pytest.mark.parametrize("pad_end", [False, True])
def test_sequential_cnn3d_forward_steps_equal_co(pad_end):
    ours, theirs = co_and_cofunc_cnn3d()
    xs = torch.randn(2, 2, 12, 5, 5, dtype=F64)
    assert_same_optional(ours.forward_steps(xs[:, :, :3]), theirs.forward_steps(xs[:, :, :3]))
    assert_same_optional(ours.forward_steps(xs[:, :, 3:], pad_end=pad_end), theirs.forward_steps(xs[:, :, 3:], pad_end=pad_end))
    if not pad_end:  # after pad_end co's state is wrong, see the test below
        more = torch.randn(2, 2, 5, 5, 5, dtype=F64)
        assert_same_steps(step_through(ours, more), step_through(theirs, more))


def test_sequential_pad_end_continuation_where_co_goes_wrong():
    """co's Sequential flushes end padding child by child, so downstream children store states
    advanced by padding outputs and the stream goes on out of step. cofunc emits the same padded
    outputs and then continues exactly like co without the padding call."""
    ours, theirs = co_and_cofunc_cnn3d()
    _, reference = co_and_cofunc_cnn3d()
    xs = torch.randn(2, 2, 8, 5, 5, dtype=F64)
    more = torch.randn(2, 2, 6, 5, 5, dtype=F64)
    assert_same_optional(ours.forward_steps(xs, pad_end=True), theirs.forward_steps(xs, pad_end=True))
    reference.forward_steps(xs)
    expected = step_through(reference, more)
    assert_same_steps(step_through(ours, more), expected)
    assert [o is None for o in step_through(theirs, more)] != [o is None for o in expected]


def test_sequential_with_delay_and_strides_equals_co():
    torch.manual_seed(0)
    theirs = co.Sequential(
        co.Conv1d(2, 3, 3, padding=1, stride=2), co.Delay(2), nn.ReLU(), co.Conv1d(3, 2, 3, padding=2),
    ).to(F64)
    ours = cn.Sequential(
        cn.Conv1d(2, 3, 3, padding=1, stride=2), cn.Delay(2), nn.ReLU(), cn.Conv1d(3, 2, 3, padding=2),
    ).to(F64)
    ours.load_state_dict(theirs.state_dict())
    assert (ours.delay, ours.receptive_field) == (theirs.delay, theirs.receptive_field)
    xs = torch.randn(2, 2, 16, dtype=F64)
    assert_same_steps(step_through(ours, xs), step_through(theirs, xs))
    ours.clean_state()
    theirs.clean_state()
    assert_same_optional(ours.forward_steps(xs), theirs.forward_steps(xs))


# --- Delay ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0, 1, 3])
@pytest.mark.parametrize("step_shape", [(2, 3), (1, 2, 4, 4)])
def test_delay_equals_co(delay, step_shape):
    ours, theirs = cn.Delay(delay), co.Delay(delay)
    assert (ours.delay, ours.receptive_field) == (theirs.delay, theirs.receptive_field)
    xs = torch.randn(step_shape[0], step_shape[1], 7, *step_shape[2:], dtype=F64)
    assert torch.equal(ours(xs), theirs(xs))
    assert_same_steps(step_through(ours, xs), step_through(theirs, xs))
    for pad_end in (False, True):
        ours.clean_state()
        theirs.clean_state()
        assert_same_optional(ours.forward_steps(xs[:, :, :2]), theirs.forward_steps(xs[:, :, :2]))
        assert_same_optional(ours.forward_steps(xs[:, :, 2:], pad_end=pad_end), theirs.forward_steps(xs[:, :, 2:], pad_end=pad_end))
