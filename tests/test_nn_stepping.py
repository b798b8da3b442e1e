"""The nn adapters step like their clip forward: exact clip forward, step timing and values,
chunks, pad_end, update_state, clean_state and get/set_state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import cofunc.nn as cn
from _nn_modules import (
    CN_CONV, CONV_CONFIGS, MODULES, NN_CONV, SPATIAL, assert_close_state, assert_same_state, clip_for, expected_none,
    make_paper_seq, n_emitted,
    randomise_batch_norms, snapshot, stack_emitted, step_through, temporal_stride,
)

# torch warns that padding="same" with an even kernel copies the input; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


# --- clip forward --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONV_CONFIGS))
def test_conv_forward_equals_torch_nn_exactly(name):
    """``forward`` is torch.nn's computation: bit-identical output for the same weights."""
    dims, kwargs = CONV_CONFIGS[name]
    torch.manual_seed(0)
    ref = NN_CONV[dims](**kwargs)
    conv = CN_CONV[dims](**kwargs)
    conv.load_state_dict(ref.state_dict())
    assert isinstance(conv, NN_CONV[dims])
    x = clip_for((2, kwargs["in_channels"]) + SPATIAL[dims], 9, dtype=torch.float32)
    assert torch.equal(conv(x), ref(x))
    assert torch.equal(conv.forward(x), ref(x))


def test_converted_sequential_forward_equals_torch_nn_exactly():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 3, (3, 1, 1), stride=(2, 1, 1)))
    randomise_batch_norms(ref).eval()
    net = cn.continual(ref)
    x = clip_for((2, 2, 4, 4), 8, dtype=torch.float32)
    assert torch.equal(net(x), ref(x))


# --- stepping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODULES))
def test_forward_step_timing_and_values(name):
    """None while warming up and on strided steps; the k-th output is ``forward(x)[:, :, k]``."""
    module, step_shape = MODULES[name]()
    xs = clip_for(step_shape, 11)
    outs = step_through(module, xs)
    assert [o is None for o in outs] == expected_none(11, module.delay, temporal_stride(module))
    emitted = stack_emitted(outs)
    assert emitted is not None
    ref = module.forward(xs)
    torch.testing.assert_close(emitted, ref[:, :, : emitted.shape[2]])


@pytest.mark.parametrize("name", list(MODULES))
def test_forward_steps_pad_end_from_fresh_equals_forward(name):
    module, step_shape = MODULES[name]()
    xs = clip_for(step_shape, 10)
    torch.testing.assert_close(module.forward_steps(xs, pad_end=True), module.forward(xs))


@pytest.mark.parametrize("name", list(MODULES))
def test_forward_steps_equals_forward_step(name):
    """Without end padding, ``forward_steps`` emits exactly what stepping frame by frame emits."""
    module, step_shape = MODULES[name]()
    stepped = copy.deepcopy(module)
    xs = clip_for(step_shape, 10)
    ys = module.forward_steps(xs)
    expected = stack_emitted(step_through(stepped, xs))
    assert ys.shape[2] == n_emitted(10, module.delay, temporal_stride(module))
    torch.testing.assert_close(ys, expected)
    assert_close_state(module.get_state(), stepped.get_state())


@pytest.mark.parametrize("name", list(MODULES))
def test_pad_end_does_not_corrupt_continuation(name):
    """steps(x1, pad_end=True) then steps(x2) gives the outputs and state of steps(cat(x1, x2))."""
    module, step_shape = MODULES[name]()
    whole = copy.deepcopy(module)
    xs = clip_for(step_shape, 12)
    x1, x2 = xs[:, :, :5], xs[:, :, 5:]
    n1 = n_emitted(5, module.delay, temporal_stride(module))
    ref = whole.forward_steps(xs)
    padded = module.forward_steps(x1, pad_end=True)
    torch.testing.assert_close(padded, module.forward(x1))
    ys2 = module.forward_steps(x2)
    torch.testing.assert_close(ys2, ref[:, :, n1:])
    assert_close_state(module.get_state(), whole.get_state())


@pytest.mark.parametrize("name", list(MODULES))
def test_chunked_steps_equal_one_chunk(name):
    """Chunks of uneven length (1, 4, 2, 3 steps) give the same outputs as one chunk."""
    module, step_shape = MODULES[name]()
    whole = copy.deepcopy(module)
    xs = clip_for(step_shape, 10)
    outs, t = [], 0
    for n in (1, 4, 2, 3):
        y = module.forward_steps(xs[:, :, t : t + n])
        if y is not None:
            outs.append(y)
        t += n
    torch.testing.assert_close(torch.cat(outs, dim=2), whole.forward_steps(xs))


@pytest.mark.parametrize("name", ["conv_3d_s3", "cnn3d", "delay", "paper_seq"])
def test_update_state_false_leaves_state_unchanged(name):
    module, step_shape = MODULES[name]()
    probe = copy.deepcopy(module)  # same weights; restored to the stored state to get the true outputs
    xs = clip_for(step_shape, 12)
    # From a fresh state nothing is stored.
    module.forward_steps(xs[:, :, :3], update_state=False)
    module.forward_step(xs[:, :, 0], update_state=False)
    assert module.get_state() is None

    module.forward_steps(xs[:, :, :5])
    stored = module.get_state()
    before = snapshot(stored)
    for call in (
        lambda m, update: m.forward_step(xs[:, :, 5], update_state=update),
        lambda m, update: m.forward_steps(xs[:, :, 5:9], update_state=update),
        lambda m, update: m.forward_steps(xs[:, :, 5:9], pad_end=True, update_state=update),
    ):
        probe.set_state(stored)
        got, want = call(module, False), call(probe, True)
        assert (got is None) == (want is None)
        if got is not None:
            assert torch.equal(got, want)
        assert module.get_state() is stored
        assert_same_state(module.get_state(), before)
    # The stream goes on as if the calls had not happened.
    probe.set_state(stored)
    torch.testing.assert_close(module.forward_steps(xs[:, :, 5:]), probe.forward_steps(xs[:, :, 5:]))


@pytest.mark.parametrize("name", ["conv_2d_groups_s2", "cnn3d", "delay"])
def test_clean_state_restarts_the_stream(name):
    module, step_shape = MODULES[name]()
    xs = clip_for(step_shape, 9)
    first = step_through(module, xs)
    assert module.get_state() is not None
    module.clean_state()
    assert module.get_state() is None
    again = step_through(module, xs)
    assert [o is None for o in again] == [o is None for o in first]
    torch.testing.assert_close(stack_emitted(again), stack_emitted(first))


def test_sequential_clean_state_cleans_children():
    net, step_shape = make_paper_seq()
    xs = clip_for(step_shape, 6)
    net.forward_steps(xs)
    net[0].forward_steps(xs)  # the child used on its own keeps its own stream
    net.clean_state()
    assert net.get_state() is None and net[0].get_state() is None


@pytest.mark.parametrize("name", ["conv_1d_k3_s2_p2_d2", "cnn3d", "delay", "seq_with_delay"])
def test_get_state_set_state_round_trip(name):
    """A snapshot taken with get_state, restored with set_state, reproduces the outputs."""
    module, step_shape = MODULES[name]()
    other = copy.deepcopy(module)  # same weights, its own stream
    xs = clip_for(step_shape, 12)
    module.forward_steps(xs[:, :, :4])
    saved = module.get_state()
    saved_copy = snapshot(saved)
    first = step_through(module, xs[:, :, 4:])
    # Stepping on never changed the snapshot (states are never mutated in place).
    assert_same_state(saved, saved_copy)
    module.set_state(saved)
    second = step_through(module, xs[:, :, 4:])
    assert [o is None for o in first] == [o is None for o in second]
    assert torch.equal(stack_emitted(first), stack_emitted(second))
    # The state moves to another module with the same weights.
    other.set_state(saved_copy)
    assert torch.equal(stack_emitted(step_through(other, xs[:, :, 4:])), stack_emitted(first))


def test_state_does_not_alias_inputs():
    """Changing an input after a step does not change the stored state."""
    for name in ("conv_1d_k3_p1", "delay"):
        module, step_shape = MODULES[name]()
        xs = clip_for(step_shape, 6)
        module.forward_steps(xs[:, :, :4])
        frame = xs[:, :, 4].clone()
        module.forward_step(frame)
        before = snapshot(module.get_state())
        xs.add_(1.0)
        frame.add_(1.0)
        assert_same_state(module.get_state(), before)
