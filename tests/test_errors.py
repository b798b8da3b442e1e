"""Bad inputs, foreign states and invalid configurations raise cofunc's documented errors.

Every message names the layer, what was expected and what came. A failed call leaves the
adapter's stored state exactly as it was: ``get_state()`` is the same object with the same
values after the error. Step inputs are ``(B, C, *S)``, clips ``(B, C, T, *S)``.
"""

from __future__ import annotations

import optree
import pytest
import torch
from torch import nn

import cofunc
import cofunc.nn as cn


def leaves(state):
    return optree.tree_leaves(state, namespace="cofunc")


def snapshot(state):
    return optree.tree_map(torch.clone, state, namespace="cofunc")


def assert_same_state(a, b):
    assert optree.tree_structure(a, namespace="cofunc") == optree.tree_structure(b, namespace="cofunc")
    for x, y in zip(leaves(a), leaves(b)):
        assert x.dtype == y.dtype and torch.equal(x, y)


def raises_and_keeps_state(module, call, error, *fragments):
    """``call(module)`` raises ``error`` whose message holds every fragment, and the stored state
    is untouched (same object, same values). Returns the message."""
    stored = module.get_state()
    before = snapshot(stored)
    with pytest.raises(error) as info:
        call(module)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert module.get_state() is stored
    if stored is not None:
        assert_same_state(module.get_state(), before)
    return message


# --- modules with a running stream -------------------------------------------------------------
# Each factory returns a module that has taken a few steps of shape (2, C, *S).

CONV3D = "conv3d(2->3, kernel_size=(3, 3, 3))"


def conv3d():
    m = cn.Conv3d(2, 3, 3, padding=1)
    m.forward_steps(torch.randn(2, 2, 3, 4, 4))
    return m


def strided_conv1d():
    m = cn.Conv1d(2, 3, 3, stride=2)
    m.forward_steps(torch.randn(2, 2, 4))
    return m


def delay():
    m = cn.Delay(2)
    m.forward_steps(torch.randn(2, 2, 3, 4))
    return m


def delay_then_conv():
    """The error is found by the second child, after the first has computed its new state."""
    m = cn.Sequential(cn.Delay(1), cn.Conv2d(2, 3, (3, 1)))
    m.forward_steps(torch.randn(2, 2, 4, 5))
    return m


def cnn3d():
    m = cn.continual(nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 3, (3, 1, 1), stride=(2, 1, 1)))).eval()
    m.forward_steps(torch.randn(2, 2, 4, 4, 4))
    return m


# --- wrong rank, channel count, a time axis ---------------------------------------------------


@pytest.mark.parametrize("fresh", [True, False])
def test_wrong_rank_of_a_step_input(fresh):
    module = cn.Conv3d(2, 3, 3, padding=1) if fresh else conv3d()
    raises_and_keeps_state(module, lambda m: m.forward_step(torch.randn(2, 4)), cofunc.InputShapeError, CONV3D, "3", "got shape (2, 4)")


def test_wrong_rank_of_a_clip():
    raises_and_keeps_state(conv3d(), lambda m: m.forward_steps(torch.randn(2, 2, 4)), cofunc.InputShapeError, CONV3D, "got shape (2, 2, 4)")


def test_wrong_rank_for_a_running_delay():
    """A delay takes any rank, but not a different one from the stream it is delaying."""
    raises_and_keeps_state(delay(), lambda m: m.forward_step(torch.randn(2, 2, 4, 4)), cofunc.InputShapeError, "delay(2)", "(2, 4)", "(2, 2, 4, 4)")


@pytest.mark.parametrize(
    "make, call, fragments",
    [
        (conv3d, lambda m: m.forward_step(torch.randn(2, 5, 4, 4)), (CONV3D, "expected 2 channels", "(2, 5, 4, 4)")),
        (conv3d, lambda m: m.forward_steps(torch.randn(2, 5, 3, 4, 4)), (CONV3D, "expected 2 channels", "(2, 5, 3, 4, 4)")),
        (cnn3d, lambda m: m.forward_step(torch.randn(2, 5, 4, 4)), (CONV3D.replace("2->3", "2->4"), "expected 2 channels", "(2, 5, 4, 4)")),
        (delay, lambda m: m.forward_step(torch.randn(2, 3, 4)), ("delay(2)", "(2, 4)", "(2, 3, 4)")),
        (delay_then_conv, lambda m: m.forward_step(torch.randn(2, 5, 5)), ("delay(1)", "(2, 5)", "(2, 5, 5)")),
        (delay_then_conv, lambda m: m.forward_steps(torch.randn(2, 5, 3, 5)), ("delay(1)", "(2, 5)", "(2, 5, 3, 5)")),
    ],
    ids=["conv3d_step", "conv3d_steps", "cnn3d_step", "delay_step", "delay_then_conv_step", "delay_then_conv_steps"],
)
def test_wrong_channel_count(make, call, fragments):
    raises_and_keeps_state(make(), call, cofunc.InputShapeError, *fragments)


@pytest.mark.parametrize("fresh", [True, False])
def test_a_clip_passed_to_forward_step(fresh):
    module = cn.Conv3d(2, 3, 3, padding=1) if fresh else conv3d()
    raises_and_keeps_state(
        module, lambda m: m.forward_step(torch.randn(2, 2, 5, 4, 4)), cofunc.InputShapeError,
        CONV3D, "expected a step (B, C, *S) with 4 dims", "(2, 2, 5, 4, 4)", "clip passed to forward_step",
    )


def test_spatial_size_changed_mid_stream():
    raises_and_keeps_state(conv3d(), lambda m: m.forward_step(torch.randn(2, 2, 5, 5)), cofunc.InputShapeError, CONV3D, "(2, 4, 4)", "(2, 5, 5)")


# --- states from another layer or another batch --------------------------------------------------


def test_set_state_with_a_state_of_another_structure():
    conv = conv3d()
    own_type = type(conv.get_state()).__name__
    for foreign in (delay().get_state(), cnn3d().get_state()):
        raises_and_keeps_state(conv, lambda m: m.set_state(foreign), cofunc.StateError, CONV3D, "set_state", own_type)


def test_set_state_with_a_state_of_another_shape():
    conv = conv3d()
    other = cn.Conv3d(2, 3, (5, 3, 3), padding=(2, 1, 1))
    other.forward_step(torch.randn(2, 2, 4, 4))
    raises_and_keeps_state(conv, lambda m: m.set_state(other.get_state()), cofunc.StateError, CONV3D, "set_state", "(2, 2, 2, 4, 4)", "(2, 2, 4, 4, 4)")


def test_layer_step_with_another_layers_state():
    conv = conv3d()
    layer, params, x = conv.layer, conv.params, torch.randn(2, 2, 4, 4)
    # Another layer type.
    own_type = type(conv.get_state()).__name__
    with pytest.raises(cofunc.StateError, match=rf"conv3d\(2->3.*{own_type}.*DelayState"):
        layer.step(params, delay().get_state(), x)
    # The same type, from a conv with another temporal kernel (a longer buffer).
    other = cn.Conv3d(2, 3, (5, 3, 3), padding=(2, 1, 1))
    other.forward_step(x)
    with pytest.raises(cofunc.StateError) as info:
        layer.step(params, other.get_state(), x)
    for fragment in (CONV3D, "buffering 2 frames", "got a buffer of shape (2, 2, 4, 4, 4)"):
        assert fragment in str(info.value)
    # The same type, from a conv with another input channel count.
    wide = cn.Conv3d(4, 3, 3)
    wide.forward_step(torch.randn(2, 4, 4, 4))
    with pytest.raises(cofunc.StateError, match=r"conv3d\(2->3"):
        layer.step(params, wide.get_state(), x)
    # And through the adapter: a foreign state put in a fresh module is refused at the next step.
    fresh = cn.Conv3d(2, 3, 3, padding=1)
    fresh.set_state(other.get_state())
    raises_and_keeps_state(fresh, lambda m: m.forward_step(x), cofunc.StateError, CONV3D)


@pytest.mark.parametrize(
    "make, label",
    [(conv3d, CONV3D), (strided_conv1d, "conv1d(2->3"), (delay, "delay(2)"), (cnn3d, "conv3d(2->4"), (delay_then_conv, "delay(1)")],
)
def test_batch_size_changed_mid_stream(make, label):
    module = make()
    step_shape = leaves(module.get_state())[0].shape  # (2, C, n, *S): the first buffer
    frame = torch.randn(3, step_shape[1], *step_shape[3:])
    clip = frame.unsqueeze(2).expand(-1, -1, 2, *frame.shape[2:])
    for call in (lambda m: m.forward_step(frame), lambda m: m.forward_steps(clip)):
        raises_and_keeps_state(module, call, cofunc.StateError, label, "streams of shape (2,)", "(3,)", "re-initialise")


# --- dtype and device -------------------------------------------------------------------------------


@pytest.mark.parametrize("fresh", [True, False])
def test_float64_input_to_float32_module(fresh):
    module = cn.Conv3d(2, 3, 3, padding=1) if fresh else conv3d()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    raises_and_keeps_state(module, lambda m: m.forward_step(x), cofunc.DTypeDeviceError, CONV3D, "torch.float64", "torch.float32")
    raises_and_keeps_state(module, lambda m: m.forward_steps(x.unsqueeze(2)), cofunc.DTypeDeviceError, CONV3D, "torch.float64", "torch.float32")


def test_dtype_changed_mid_stream_for_a_delay():
    """A delay has no params; its stream's dtype is fixed by the first step."""
    raises_and_keeps_state(delay(), lambda m: m.forward_step(torch.randn(2, 2, 4, dtype=torch.float64)), cofunc.DTypeDeviceError, "delay(2)", "torch.float64", "torch.float32")


def test_float64_input_to_a_float32_sequential():
    raises_and_keeps_state(cnn3d(), lambda m: m.forward_step(torch.randn(2, 2, 4, 4, dtype=torch.float64)), cofunc.DTypeDeviceError, "conv3d(2->4", "torch.float64", "torch.float32")


@pytest.mark.parametrize("make, label", [(conv3d, CONV3D), (delay, "delay(2)")])
def test_input_on_another_device(make, label):
    """The meta device stands in for a second device: the state and params live on the CPU."""
    module = make()
    step_shape = leaves(module.get_state())[0].shape
    x = torch.empty(2, step_shape[1], *step_shape[3:], device="meta")
    raises_and_keeps_state(module, lambda m: m.forward_step(x), cofunc.DTypeDeviceError, label, "meta", "cpu")


# --- invalid configurations, at construction ------------------------------------------------------


@pytest.mark.parametrize(
    "build, fragments",
    [
        (lambda: cn.Conv1d(2, 2, 3, padding=3), ("conv1d(2->2", "temporal padding", "receptive_field - 1 = 2")),
        (lambda: cn.Conv2d(2, 2, (3, 3), padding=(5, 0), dilation=(2, 1)), ("conv2d(2->2", "temporal padding", "receptive_field - 1 = 4")),
        (lambda: cn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), ("conv2d(2->2", "'reflect'", "temporal padding 0")),
        (lambda: cn.Conv1d(2, 2, 3, padding=1, padding_mode="circular"), ("conv1d(2->2", "'circular'")),
        (lambda: cn.Conv2d(2, 2, 3, padding="full"), ("conv2d(2->2", "'same' or 'valid'", "'full'")),
        (lambda: cn.Conv3d(4, 6, 3, groups=3), ("conv3d(4->6", "in_channels (4)", "groups (3)")),
        (lambda: cn.Conv1d(2, 3, 3, groups=2), ("conv1d(2->3", "out_channels (3)", "groups (2)")),
        (lambda: cn.Conv2d(2, 2, 3, padding="same", stride=(2, 1)), ("conv2d(2->2", "'same'", "strided")),
        (lambda: cn.Conv1d(2, 2, 3, padding_mode="mirror"), ("conv1d(2->2", "padding_mode", "'mirror'")),
        (lambda: cn.Conv1d(2, 2, 3, temporal_fill="neg_inf"), ("conv1d(2->2", "temporal_fill", "'neg_inf'")),
        (lambda: cn.continual(nn.Conv1d(2, 2, 3, padding=3)), ("conv1d(2->2", "temporal padding")),
        (lambda: cn.continual(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")), ("conv2d(2->2", "'reflect'")),
        (lambda: cn.Delay(-1), ("delay", "non-negative", "-1")),
    ],
    ids=[
        "padding_over_rf", "padding_over_dilated_rf", "reflect_temporal", "circular_temporal", "padding_string",
        "groups_in", "groups_out", "same_strided", "padding_mode", "temporal_fill", "convert_padding_over_rf",
        "convert_reflect", "negative_delay",
    ],
)
def test_invalid_configuration_raised_at_construction(build, fragments):
    with pytest.raises(cofunc.ConfigurationError) as info:
        build()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


def test_batch_norm_without_running_statistics_refuses_to_step():
    """Its clip forward is torch's, but it normalises over time, so a step cannot equal it."""
    bn = cn.continual(nn.BatchNorm1d(3, track_running_stats=False)).eval()
    x = torch.randn(2, 3, 5)
    assert torch.equal(bn(x), nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps))
    for call in (lambda m: m.forward_step(x[:, :, 0]), lambda m: m.forward_steps(x)):
        raises_and_keeps_state(bn, call, cofunc.ConfigurationError, "BatchNorm1d", "track_running_stats=True")


def test_valid_edge_configurations_are_accepted():
    """The limits themselves are fine: padding = rf - 1, reflect padding in space only."""
    x = torch.randn(1, 2, 6, 5)
    for conv in (cn.Conv1d(2, 2, 3, padding=2), cn.Conv2d(2, 2, 3, padding=(0, 1), padding_mode="reflect"), cn.Conv2d(2, 2, 3, padding="same")):
        clip = x if conv.layer.dims == 2 else x[..., 0]
        torch.testing.assert_close(conv.forward_steps(clip, pad_end=True), conv(clip), atol=1e-5, rtol=1e-4)
