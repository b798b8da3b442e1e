"""The Continual Inference paper's composition examples, built with cofunc (core and nn).

Example 3, residual blocks. With the same conv weights (a 3x3x3 conv, spatially padded):

- (a) ``residual(conv k3 p1)``, (b) ``broadcast_reduce(conv k3 p1, delay(1))`` and
  (c) ``seq(broadcast(2), parallel(conv k3 p1, delay(1)), reduce("sum"))`` are the same block:
  equal ``forward`` (``x + conv(x)``), delay 1, equal step outputs at the same steps;
- (c') co's README spells the explicit form with ``Delay(2)``: auto-alignment delays the conv
  by one more step, so it has the same ``forward`` and emits the same sequence of outputs, one
  step later (delay 2);
- (d) ``residual(conv k3 p0, residual_shrink="centered")`` is the unpadded block: its clip
  output is (a)'s without the two edge frames (the frames whose windows hold padding), and its
  k-th step output is (a)'s (k+1)-th, in every call mode. "lagging" and "leading" pair the
  conv outputs with other frames and are not equivalent to (a).

Example 4, an Inception block over 3D clips: four branches (1x1x1; 1x1x1 then 3x3x3 padded;
1x1x1 then 5x5x5 padded; 3x3x3 max pool, stride 1, padded, then 1x1x1), concatenated on
channels. Its ``forward`` equals a regular torch.nn Inception block's with the same
``state_dict``; stepping emits its clip outputs after the largest branch delay (2).

Shapes: clips ``(B, C, T, H, W)``, steps ``(B, C, H, W)``.
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

import cofunc
import cofunc.nn as cn
from conftest import F64, FLOAT32_TOL, expected_flags, step_through

C = 3  # channels of the residual blocks


def _run(layer, params, xs):
    """Step through ``xs`` from a fresh state: (flags, emitted outputs stacked on time)."""
    run = step_through(layer, params, xs)
    return run.flags, run.ys


def _padded_steps(layer, params, xs):
    state = layer.init_state(params, xs[:, :, 0].shape, dtype=xs.dtype)
    return layer.steps(params, state, xs, pad_end=True)[0]


# --- Example 3: residual blocks ------------------------------------------------------------------


def residual_blocks():
    """(a), (b), (c), (c') and (d) with one set of conv weights; params keyed as each expects."""
    padded = cofunc.conv3d(C, C, 3, padding=1)
    unpadded = cofunc.conv3d(C, C, 3, padding=(0, 1, 1))
    torch.manual_seed(0)
    conv = padded.init_params(dtype=F64)
    blocks = {
        "a_residual": (cofunc.residual(padded), {"1": conv}),
        "b_broadcast_reduce": (cofunc.broadcast_reduce(padded, cofunc.delay(1)), {"0": conv}),
        "c_explicit": (cofunc.seq(cofunc.broadcast(2), cofunc.parallel(padded, cofunc.delay(1)), cofunc.reduce("sum")), {"1": {"0": conv}}),
        "c_readme_delay2": (cofunc.seq(cofunc.broadcast(2), cofunc.parallel(padded, cofunc.delay(2)), cofunc.reduce("sum")), {"1": {"0": conv}}),
        "d_centered": (cofunc.residual(unpadded, residual_shrink="centered"), {"1": conv}),
    }
    return blocks, padded, conv


def test_example3_same_block_three_ways():
    """(a), (b), (c): one forward, one delay, the same outputs at the same steps."""
    blocks, padded, conv = residual_blocks()
    xs = torch.randn(2, C, 7, 4, 4, dtype=F64)
    expected = xs + padded.forward(conv, xs)
    ref_flags, ref_steps = None, None
    for name in ("a_residual", "b_broadcast_reduce", "c_explicit"):
        layer, params = blocks[name]
        assert (layer.delay, layer.receptive_field, layer.padding, layer.stride) == (1, 3, 1, 1), name
        assert torch.equal(layer.forward(params, xs), expected), name
        flags, ys = _run(layer, params, xs)
        assert flags == expected_flags(1, 1, 7), name
        torch.testing.assert_close(ys, expected[:, :, :6], msg=name)
        torch.testing.assert_close(_padded_steps(layer, params, xs), expected, msg=name)
        if ref_steps is None:
            ref_flags, ref_steps = flags, ys
        assert flags == ref_flags
        assert torch.equal(ys, ref_steps), name


def test_example3_readme_form_with_delay2_is_one_step_later():
    """co's README pairs the padded conv with ``Delay(2)``: the conv is aligned to it, so the
    block has the same forward and the same output sequence, but a delay of 2 instead of 1."""
    blocks, padded, conv = residual_blocks()
    layer, params = blocks["c_readme_delay2"]
    reference, ref_params = blocks["a_residual"]
    assert layer.delay == 2 and reference.delay == 1
    xs = torch.randn(2, C, 7, 4, 4, dtype=F64)
    assert torch.equal(layer.forward(params, xs), reference.forward(ref_params, xs))
    flags, ys = _run(layer, params, xs)
    ref_flags, ref_ys = _run(reference, ref_params, xs)
    assert flags == [False] + ref_flags[:-1]  # every output one step later
    torch.testing.assert_close(ys, ref_ys[:, :, :5])
    torch.testing.assert_close(_padded_steps(layer, params, xs), reference.forward(ref_params, xs))


def test_example3_unpadded_centered_equals_padded_on_inner_frames():
    """(d) vs (a), same weights: ``forward`` drops (a)'s two edge frames; (d)'s k-th step output
    is (a)'s (k+1)-th; (d)'s ``steps(pad_end=True)`` equals its own forward."""
    blocks, padded, conv = residual_blocks()
    a, a_params = blocks["a_residual"]
    d, d_params = blocks["d_centered"]
    assert (d.delay, d.receptive_field, d.padding) == (2, 3, 0)
    xs = torch.randn(2, C, 8, 4, 4, dtype=F64)
    a_clip = a.forward(a_params, xs)
    d_clip = d.forward(d_params, xs)
    assert torch.equal(d_clip, a_clip[:, :, 1:-1])
    a_flags, a_steps = _run(a, a_params, xs)
    d_flags, d_steps = _run(d, d_params, xs)
    assert d_flags == expected_flags(2, 1, 8)
    torch.testing.assert_close(d_steps, a_steps[:, :, 1:])
    torch.testing.assert_close(d_steps, d_clip[:, :, : d_steps.shape[2]])
    torch.testing.assert_close(_padded_steps(d, d_params, xs), d_clip)
    assert a_clip.shape[2] == d_clip.shape[2] + 2 and a_steps.shape[2] == d_steps.shape[2] + 1


@pytest.mark.parametrize("shrink, frames", [("lagging", slice(0, -2)), ("leading", slice(2, None))])
def test_example3_lagging_and_leading_are_different_blocks(shrink, frames):
    """Same conv, other residual frames: not equal to the centred block (nor to (a))."""
    blocks, _, conv = residual_blocks()
    d, d_params = blocks["d_centered"]
    unpadded = cofunc.conv3d(C, C, 3, padding=(0, 1, 1))
    other = cofunc.residual(unpadded, residual_shrink=shrink)
    xs = torch.randn(1, C, 6, 4, 4, dtype=F64)
    ys = other.forward({"1": conv}, xs)
    assert torch.equal(ys, xs[:, :, frames] + unpadded.forward(conv, xs))
    assert not torch.allclose(ys, d.forward(d_params, xs))
    torch.testing.assert_close(_padded_steps(other, {"1": conv}, xs), ys)


def test_example3_nn_adapters_and_torch_reference():
    """The three nn forms load one torch conv's weights (under their own keys) and compute
    ``x + conv(x)`` like a plain torch.nn residual, in every call mode."""
    torch.manual_seed(0)
    ref_conv = nn.Conv3d(C, C, 3, padding=1).double()
    blocks = {
        "residual": (cn.Residual(cn.Conv3d(C, C, 3, padding=1)), "1."),
        "broadcast_reduce": (cn.BroadcastReduce(cn.Conv3d(C, C, 3, padding=1), cn.Delay(1), reduce="sum"), "0."),
        "explicit": (cn.Sequential(cn.Broadcast(2), cn.Parallel(cn.Conv3d(C, C, 3, padding=1), cn.Delay(1)), cn.Reduce("sum")), "1.0."),
    }
    xs = torch.randn(2, C, 6, 4, 4, dtype=F64)
    expected = xs + ref_conv(xs)
    for name, (module, prefix) in blocks.items():
        module = module.double()
        module.load_state_dict({prefix + k: v for k, v in ref_conv.state_dict().items()}, strict=True)
        assert module.delay == 1, name
        assert torch.equal(module(xs), expected), name
        torch.testing.assert_close(module.forward_steps(xs, pad_end=True), expected, msg=name)
        module.clean_state()
        outs = [module.forward_step(xs[:, :, t]) for t in range(6)]
        assert outs[0] is None and all(o is not None for o in outs[1:]), name
        torch.testing.assert_close(torch.stack(outs[1:], dim=2), expected[:, :, :5], msg=name)


# --- Example 4: Inception block ------------------------------------------------------------------


class RegularInception(nn.Module):
    """A regular 3D Inception block: four branches ``"0"``..``"3"``, concatenated on channels.
    ``(B, C_in, T, H, W) -> (B, 4 + 5 + 3 + 2, T, H, W)``."""

    def __init__(self, c_in: int):
        super().__init__()
        self.add_module("0", nn.Sequential(nn.Conv3d(c_in, 4, 1), nn.ReLU()))
        self.add_module("1", nn.Sequential(nn.Conv3d(c_in, 3, 1), nn.ReLU(), nn.Conv3d(3, 5, 3, padding=1), nn.ReLU()))
        self.add_module("2", nn.Sequential(nn.Conv3d(c_in, 2, 1), nn.ReLU(), nn.Conv3d(2, 3, 5, padding=2), nn.ReLU()))
        self.add_module("3", nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), nn.Conv3d(c_in, 2, 1), nn.ReLU()))

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.children()], dim=1)


def core_inception(c_in: int):
    relu = cofunc.lift(torch.relu)
    return cofunc.broadcast_reduce(
        cofunc.seq(cofunc.conv3d(c_in, 4, 1), relu),
        cofunc.seq(cofunc.conv3d(c_in, 3, 1), relu, cofunc.conv3d(3, 5, 3, padding=1), relu),
        cofunc.seq(cofunc.conv3d(c_in, 2, 1), relu, cofunc.conv3d(2, 3, 5, padding=2), relu),
        cofunc.seq(cofunc.max_pool3d(3, stride=1, padding=1), cofunc.conv3d(c_in, 2, 1), relu),
        reduce="concat",
    )


def nn_inception(c_in: int):
    return cn.BroadcastReduce(
        cn.Sequential(cn.Conv3d(c_in, 4, 1), nn.ReLU()),
        cn.Sequential(cn.Conv3d(c_in, 3, 1), nn.ReLU(), cn.Conv3d(3, 5, 3, padding=1), nn.ReLU()),
        cn.Sequential(cn.Conv3d(c_in, 2, 1), nn.ReLU(), cn.Conv3d(2, 3, 5, padding=2), nn.ReLU()),
        cn.Sequential(cn.MaxPool3d(3, stride=1, padding=1), cn.Conv3d(c_in, 2, 1), nn.ReLU()),
        reduce="concat",
    )


def test_example4_inception_core_equals_regular_block():
    torch.manual_seed(0)
    regular = RegularInception(3).eval()
    layer = core_inception(3)
    assert sorted(cofunc.flatten_params(layer.init_params())) == sorted(regular.state_dict())
    assert (layer.delay, layer.receptive_field, layer.padding, layer.stride) == (2, 5, 2, 1)
    params = cofunc.unflatten_params(regular.state_dict())
    xs = torch.randn(2, 3, 7, 5, 5)
    expected = regular(xs)
    assert expected.shape == (2, 14, 7, 5, 5)
    assert torch.equal(layer.forward(params, xs), expected)
    run = step_through(layer, params, xs)
    assert run.flags == expected_flags(2, 1, 7)
    torch.testing.assert_close(run.ys, expected[:, :, :5], **FLOAT32_TOL)
    torch.testing.assert_close(_padded_steps(layer, params, xs), expected, **FLOAT32_TOL)


def test_example4_inception_nn_adapter():
    """The nn block loads the regular block's ``state_dict`` unchanged; all call modes agree."""
    torch.manual_seed(1)
    regular = RegularInception(3).double().eval()
    module = nn_inception(3).double().eval()
    module.load_state_dict(regular.state_dict(), strict=True)
    xs = torch.randn(1, 3, 8, 4, 4, dtype=F64)
    expected = regular(xs)
    assert torch.equal(module(xs), expected)
    outs = [module.forward_step(xs[:, :, t]) for t in range(8)]
    assert [o is None for o in outs] == [True, True] + [False] * 6
    torch.testing.assert_close(torch.stack(outs[2:], dim=2), expected[:, :, :6])
    module.clean_state()
    first = module.forward_steps(xs[:, :, :3])
    rest = module.forward_steps(xs[:, :, 3:], pad_end=True)
    torch.testing.assert_close(torch.cat([first, rest], dim=2), expected)
