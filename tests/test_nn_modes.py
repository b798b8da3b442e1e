"""Batch norm modes, the Delay module and ``call_mode`` on the nn adapters."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

import cofunc
import cofunc.nn as cn
from _nn_modules import (
    torch_cnn3d,
    F64, clip_for, expected_none,
    make_conv, make_paper_seq, stack_emitted, step_through,
)

# torch warns that padding="same" with an even kernel copies the input; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


# --- batch norm modes ------------------------------------------------------------------------------


def test_batch_norm_train_mode_clip_uses_batch_statistics():
    ref = torch_cnn3d(0)[:2].double()  # conv, BN
    net = cn.continual(copy.deepcopy(ref))
    ref.train()
    net.train()
    x = clip_for((2, 2, 4, 4), 6)
    assert torch.equal(net(x), ref(x))
    # Both updated their running statistics the same way.
    assert torch.equal(net[1].running_mean, ref[1].running_mean)
    assert torch.equal(net[1].running_var, ref[1].running_var)


def test_batch_norm_train_mode_steps_warn():
    """In train mode BN normalises over the clip, which a step cannot see: stepping warns (and
    runs co's per-step batch statistics, so co code keeps running)."""
    net = cn.continual(torch_cnn3d(0)[:3].double()).train()
    x = clip_for((2, 2, 4, 4), 6)
    for module, frame in ((net, x[:, :, 0]), (net[1], torch.randn(2, 4, 4, 4, dtype=F64))):
        with pytest.warns(cn.module.TrainingModeStepWarning, match="BatchNorm3d.*eval"):
            module.forward_step(frame)
        module.clean_state()
    with pytest.warns(cn.module.TrainingModeStepWarning, match="BatchNorm3d"):
        net.forward_steps(x)
    net.clean_state()
    # In eval mode the steps are exact.
    net.eval()
    outs = step_through(net, x)
    torch.testing.assert_close(stack_emitted(outs), net(x)[:, :, : len([o for o in outs if o is not None])])


# --- Delay ---------------------------------------------------------------------------------------------


def test_delay_module():
    d = cn.Delay(2)
    xs = clip_for((2, 3, 4), 6)
    assert d(xs) is xs  # clip forward: identity
    outs = step_through(d, xs)
    assert [o is None for o in outs] == [True, True, False, False, False, False]
    for t in range(2, 6):
        assert torch.equal(outs[t], xs[:, :, t - 2])
    d.clean_state()
    assert torch.equal(d.forward_steps(xs, pad_end=True), xs)
    assert torch.equal(cn.Delay(0).forward_step(xs[:, :, 0]), xs[:, :, 0])


# --- call_mode -----------------------------------------------------------------------------------------


def observed_mode(probe: cn.Delay) -> str:
    """Which mode calling ``probe`` (a fresh ``Delay(1)``) runs, told apart by the output.

    The input ``(1, 1, 4)`` is a clip of 4 steps for ``forward``/``forward_steps`` and one frame
    ``(B, C, S)`` for ``forward_step``: forward returns it whole, forward_steps drops the last
    frame still buffered, forward_step is warming up (None).
    """
    probe.clean_state()
    y = probe(torch.zeros(1, 1, 4))
    if y is None:
        return "forward_step"
    return "forward_steps" if y.shape[2] == 3 else "forward"


def test_call_mode_attribute_names_and_co_ints():
    probe = cn.Delay(1)
    assert probe.call_mode == "forward" and observed_mode(probe) == "forward"
    for value, name in ((2, "forward_step"), (1, "forward_steps"), (0, "forward"), ("forward_step", "forward_step"), ("FORWARD_STEPS", "forward_steps")):
        probe.call_mode = value
        assert probe.call_mode == name
        assert observed_mode(probe) == name
    for bad in ("backward", 3, -1, True, None):
        with pytest.raises(cofunc.ConfigurationError, match="call_mode"):
            probe.call_mode = bad


def test_call_mode_attribute_dispatches_conv_and_sequential():
    net, step_shape = make_paper_seq()
    xs = clip_for(step_shape, 9)
    ref = net.forward(xs)
    net.call_mode = "forward_step"
    outs = [net(xs[:, :, t]) for t in range(9)]
    assert [o is None for o in outs] == expected_none(9, 4, 2)
    torch.testing.assert_close(stack_emitted(outs), ref[:, :, :3])
    net.clean_state()
    net.call_mode = "forward_steps"
    torch.testing.assert_close(net(xs), ref[:, :, :3])
    # A child's own mode does not leak into the container's clip forward.
    net.call_mode = "forward"
    net[0].call_mode = "forward_step"
    assert torch.equal(net(xs), ref)


def test_call_mode_context_wins_and_nests():
    probe = cn.Delay(1)
    probe.call_mode = "forward_steps"
    with cn.call_mode("forward_step"):
        assert observed_mode(probe) == "forward_step"
        with cn.call_mode("forward"):
            assert observed_mode(probe) == "forward"
            with cn.call_mode(1):
                assert observed_mode(probe) == "forward_steps"
            assert observed_mode(probe) == "forward"
        assert observed_mode(probe) == "forward_step"  # leaving the inner context restores the outer
    assert observed_mode(probe) == "forward_steps"  # and leaving all restores the attribute
    probe.call_mode = "forward"
    # co's bug: after a nested exit every later context was ignored. Here they keep working.
    with cn.call_mode("forward_step"):
        assert observed_mode(probe) == "forward_step"
    with cn.call_mode(2):
        assert observed_mode(probe) == "forward_step"
    assert observed_mode(probe) == "forward"


def test_call_mode_context_is_restored_after_an_exception():
    probe = cn.Delay(1)
    with pytest.raises(RuntimeError, match="boom"):
        with cn.call_mode("forward_step"):
            raise RuntimeError("boom")
    assert observed_mode(probe) == "forward"
    with pytest.raises(cofunc.ConfigurationError):
        cn.call_mode("sideways")


def test_call_mode_context_runs_the_step():
    conv, step_shape = make_conv("1d_k3_p1")
    xs = clip_for(step_shape, 5)
    ref = conv.forward(xs)
    with cn.call_mode("forward_step"):
        outs = [conv(xs[:, :, t]) for t in range(5)]
    assert outs[0] is None
    torch.testing.assert_close(stack_emitted(outs), ref[:, :, :4])
    conv.clean_state()
    with cn.call_mode("forward_steps"):
        torch.testing.assert_close(conv(xs, pad_end=True), ref)


def test_call_mode_contexts_do_not_leak_across_threads():
    """Two threads inside different contexts at the same time each see only their own."""
    barrier = threading.Barrier(2, timeout=20)
    seen = {}
    errors = []

    def other():
        try:
            probe = cn.Delay(1)
            barrier.wait()  # 1: the main thread is inside "forward_step"
            seen["other, main in context"] = observed_mode(probe)
            with cn.call_mode("forward_steps"):
                barrier.wait()  # 2: both threads are inside their own contexts
                seen["other, both in context"] = observed_mode(probe)
                barrier.wait()  # 3: the main thread has looked
            seen["other, after"] = observed_mode(probe)
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)
            barrier.abort()

    thread = threading.Thread(target=other)
    thread.start()
    probe = cn.Delay(1)
    with cn.call_mode("forward_step"):
        barrier.wait()
        barrier.wait()
        seen["main, both in context"] = observed_mode(probe)
        barrier.wait()
    thread.join(timeout=20)
    assert not errors
    assert seen == {
        "other, main in context": "forward",
        "other, both in context": "forward_steps",
        "main, both in context": "forward_step",
        "other, after": "forward",
    }
    assert observed_mode(probe) == "forward"
