"""A step from the state the same layer's last step returned, with a like input, skips the
sublayers' checks (`Layer.step`); every other step is checked in full. These tests make sure
that the shortcut never lets a bad input or state through."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import torch

import cofunc
from cofunc import DTypeDeviceError, InputShapeError, StateError
from cofunc._clock import inputs_fit
from cofunc._layer import Layer


def _net():
    return cofunc.seq(cofunc.conv2d(2, 3, 3, padding=(1, 1)), cofunc.lift(torch.relu), cofunc.delay(2),
                      cofunc.conv2d(3, 2, (2, 1)))


def _stepped(net, params, steps=4, shape=(1, 2, 5)):
    state = net.init_state(params, shape)
    for _ in range(steps):
        _, state = net.step(params, state, torch.randn(shape))
    return state


def test_a_bad_input_after_fitting_steps_raises():
    net = _net()
    params = net.init_params()
    state = _stepped(net, params)
    with pytest.raises(InputShapeError):
        net.step(params, state, torch.randn(1, 2, 6))  # other frames
    with pytest.raises(DTypeDeviceError):
        net.step(params, state, torch.randn(1, 2, 5, dtype=torch.float64))
    with pytest.raises(StateError):
        net.step(params, state, torch.randn(3, 2, 5))  # other streams
    net.step(params, state, torch.randn(1, 2, 5))  # the state is still good


def test_a_rebuilt_or_older_state_is_checked():
    """A state that is not the last one returned (rebuilt, or from earlier) gets every check."""
    net = _net()
    params = net.init_params()
    older = _stepped(net, params)
    _, last = net.step(params, older, torch.randn(1, 2, 5))
    bad = cofunc.tree_map(lambda t: t[..., :4] if t.dim() == 4 else t, last)  # frames cut short
    with pytest.raises((InputShapeError, StateError)):
        net.step(params, bad, torch.randn(1, 2, 5))
    foreign = _stepped(_net(), params, shape=(1, 2, 7))
    with pytest.raises((InputShapeError, StateError)):
        net.step(params, foreign, torch.randn(1, 2, 5))
    net.step(params, older, torch.randn(1, 2, 5))  # a rollback is a good state too


@dataclasses.dataclass(frozen=True, eq=False)
class _StepsAnother(Layer):
    """A leaf whose step calls another layer's public `step` on the state in ``box[0]``."""

    other: Layer
    box: list

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        return ()

    def step_unmasked(self, params, state, x):
        y, _ = self.other.step({}, self.box[0], x)
        return y, state

    def forward(self, params, xs):
        return xs


def test_the_shortcut_does_not_reach_a_nested_step():
    """A layer stepped inside a fitting step checks its own state."""
    inner = cofunc.delay(1, step_rank=2)
    box = [inner.init_state({}, (1, 2, 5))]
    outer = cofunc.seq(cofunc.lift(torch.relu), _StepsAnother(inner, box))
    _, state = outer.step({}, outer.init_state({}, (1, 2, 5)), torch.randn(1, 2, 5))
    box[0] = inner.init_state({}, (1, 2, 9))  # frames of 9, the input has 5
    with pytest.raises(InputShapeError):
        outer.step({}, state, torch.randn(1, 2, 5))  # the outer state fits: its checks are skipped
    assert not inputs_fit()


def _residual_net():
    """The parts of a residual block that have their own shortcut path: a residual sum (a
    broadcast over parallel branches), params read through a `Remap`, a lifted nn.ReLU."""
    block = cofunc.residual(cofunc.seq(cofunc.conv2d(2, 2, 3, padding=(1, 1)), cofunc.lift_module(torch.nn.ReLU())))
    return cofunc.seq(cofunc.Remap(block, {"1": "branch"}), cofunc.lift_module(torch.nn.ReLU(inplace=True)),
                      cofunc.conv2d(2, 2, (2, 1)))


@pytest.mark.parametrize("make", [_net, _residual_net])
def test_fitting_steps_equal_checked_steps(make):
    """The shortcut changes no value: the same frames from the same state, checked on every step
    (a rebuilt state each time) or not."""
    net = make()
    params = net.init_params()
    frames = [torch.randn(1, 2, 5) for _ in range(8)]
    state_a = state_b = net.init_state(params, (1, 2, 5))
    for x in frames:
        y_a, state_a = net.step(params, state_a, x)
        y_b, state_b = net.step(params, state_b, x)
        state_b = cofunc.tree_map(lambda t: t, state_b)  # a new object: never the last one
        assert torch.equal(y_a, y_b)


def test_copies_of_a_layer_do_not_keep_its_last_state():
    net = cofunc.seq(cofunc.conv2d(2, 3, 3, padding=(1, 1)), cofunc.delay(2))  # picklable (no lambdas)
    params = net.init_params()
    _stepped(net, params)
    assert "_last_step" in net.__dict__
    assert "_last_step" not in copy.deepcopy(net).__dict__
    assert "_last_step" not in pickle.loads(pickle.dumps(net)).__dict__


def test_other_params_are_checked():
    """Params of another dtype with the last state: the step is checked (cofunc's error)."""
    net = _net()
    params = net.init_params()
    state = _stepped(net, params)
    doubles = cofunc.tree_map(lambda t: t.double(), params)
    with pytest.raises(DTypeDeviceError):
        net.step(doubles, state, torch.randn(1, 2, 5))
