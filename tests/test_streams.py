"""Stream selections: the accepted forms agree, everything else raises `StateError` up front.

A state's leaves start with the stream dim ``B``. Streams are selected by a bool mask ``(B,)``,
a list of ``B`` Python bools, a list or 1-d integer tensor of distinct indices in ``[0, B)``, or
a slice. Step inputs of the layers here are ``(B, C)`` frames.
"""

from __future__ import annotations

import optree
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cofunc

B = 4


def _layer():
    """A seq whose second conv only advances on real inputs: the state has two counters."""
    return cofunc.seq(cofunc.conv1d(2, 3, 3, padding=1), cofunc.conv1d(3, 2, 2))


def _running(steps: int = 3):
    layer = _layer()
    params = layer.init_params()
    state = layer.init_state(params, (B, 2))
    for _ in range(steps):
        _, state = layer.step(params, state, torch.randn(B, 2))
    return layer, params, state


def _leaves(state):
    return optree.tree_leaves(state, namespace="cofunc")


def _assert_equal(a, b):
    assert optree.tree_structure(a, namespace="cofunc") == optree.tree_structure(b, namespace="cofunc")
    for x, y in zip(_leaves(a), _leaves(b)):
        assert x.shape == y.shape and torch.equal(x, y)


def _forms(chosen):
    """Every accepted spelling of the streams in ``chosen`` (a sorted list of indices)."""
    mask = [i in chosen for i in range(B)]
    forms = [torch.tensor(mask), mask, list(chosen), torch.tensor(chosen, dtype=torch.int64),
             torch.tensor(chosen, dtype=torch.int32), tuple(chosen)]
    if chosen and chosen == list(range(chosen[0], chosen[-1] + 1)):
        forms.append(slice(chosen[0], chosen[-1] + 1))
    return forms


@given(chosen=st.lists(st.integers(0, B - 1), unique=True).map(sorted))
def test_accepted_forms_select_the_same_streams(chosen):
    layer, params, state = _running()
    fresh = layer.init_state(params, (B, 2))
    x = torch.randn(B, 2)
    expected_take = optree.tree_map(lambda leaf: leaf[chosen], state, namespace="cofunc")
    results = []
    for form in _forms(chosen):
        taken = cofunc.take_streams(state, form)
        _assert_equal(taken, expected_take)
        reset = cofunc.reset_streams(state, form, fresh)
        put = cofunc.put_streams(state, form, optree.tree_map(torch.zeros_like, taken, namespace="cofunc"))
        y, valid, stepped = cofunc.step_streams(layer, params, state, x, form)
        results.append((reset, put, y, valid, stepped))
    for reset, put, y, valid, stepped in results[1:]:
        for a, b in zip((reset, put, y, valid, stepped), results[0]):
            _assert_equal(a, b)
    reset, put, y, valid, stepped = results[0]
    for i in range(B):
        one = lambda tree: optree.tree_map(lambda leaf: leaf[i], tree, namespace="cofunc")  # noqa: E731
        _assert_equal(one(reset), one(fresh if i in chosen else state))
        _assert_equal(one(stepped)[0].count, one(state)[0].count + (i in chosen))
        if i not in chosen:  # a paused stream outputs zeros and reports no output
            assert not bool(valid[i]) and torch.equal(y[i], torch.zeros_like(y[i]))


BAD = {
    "(B, 1) mask": torch.ones(B, 1, dtype=torch.bool),
    "length-1 mask": torch.ones(1, dtype=torch.bool),
    "0-d mask": torch.tensor(True),
    "mask of the wrong length": torch.tensor([True, False, True]),
    "bool list of the wrong length": [True, False],
    "int mask": torch.tensor([1, 0, 1, 1]),
    "float mask": torch.ones(B),
    "floats": [1.7],
    "None": None,
    "an int": 2,
    "negative index": [-1],
    "repeated index": [1, 1],
    "out of range": [B],
    "2-d index tensor": torch.tensor([[0, 1]]),
    "mixed list": [0, True],
    "zero-step slice": slice(0, B, 0),
    "string": "all",
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("op", ["step_streams", "reset_streams", "take_streams", "put_streams"])
def test_other_forms_raise_state_error_naming_the_stream_count(op, name):
    layer, params, state = _running()
    before = optree.tree_map(torch.clone, state, namespace="cofunc")
    streams = BAD[name]
    calls = {
        "step_streams": lambda: cofunc.step_streams(layer, params, state, torch.randn(B, 2), streams),
        "reset_streams": lambda: cofunc.reset_streams(state, streams, layer.init_state(params, (B, 2))),
        "take_streams": lambda: cofunc.take_streams(state, streams),
        "put_streams": lambda: cofunc.put_streams(state, streams, cofunc.take_streams(state, [0])),
    }
    with pytest.raises(cofunc.StateError) as info:
        calls[op]()
    assert op in str(info.value) and f"{B} streams" in str(info.value)
    _assert_equal(state, before)
    # the stream goes on: the next step of every stream works
    _, state = layer.step(params, state, torch.randn(B, 2))
    assert state[0].count.tolist() == [4] * B


def test_a_b1_mask_no_longer_corrupts_the_counters():
    """Before: a (B, 1) mask broadcast the counters to (B, B) and the next step failed."""
    layer, params, state = _running()
    with pytest.raises(cofunc.StateError):
        cofunc.step_streams(layer, params, state, torch.randn(B, 2), torch.ones(B, 1, dtype=torch.bool))


def test_put_and_reset_check_the_other_state():
    layer, params, state = _running()
    other = cofunc.conv1d(2, 3, 4)
    foreign = other.init_state(other.init_params(), (B, 2))
    with pytest.raises(cofunc.StateError, match="reset_streams: the fresh state is structured"):
        cofunc.reset_streams(state, [0], foreign)
    with pytest.raises(cofunc.StateError, match=r"put_streams: leaf 0 of the sub-state should be \(1, 2, 2\)"):
        cofunc.put_streams(state, [0], cofunc.take_streams(state, [0, 1]))


def test_stack_streams_needs_states_of_one_layer():
    layer, params, state = _running()
    one = cofunc.unstack_streams(state)
    assert len(one) == B
    _assert_equal(cofunc.stack_streams(one), state)
    with pytest.raises(cofunc.StateError, match="at least one state"):
        cofunc.stack_streams([])
    other = cofunc.seq(cofunc.conv1d(2, 3, 3, padding=1), cofunc.conv1d(3, 2, 3))
    foreign = cofunc.unstack_streams(other.init_state(other.init_params(), (1, 2)))[0]
    with pytest.raises(cofunc.StateError, match="leaf 2 of state 1"):
        cofunc.stack_streams([one[0], foreign])
    with pytest.raises(cofunc.StateError, match="state 2 is structured"):
        cofunc.stack_streams([one[0], one[1], (one[0][0],)])


def test_step_streams_on_a_stateless_layer_takes_the_streams_from_the_input():
    layer = cofunc.linear(2, 3)
    params = layer.init_params()
    x = torch.randn(B, 2)
    y, valid, state = cofunc.step_streams(layer, params, (), x, [True, False, True, True])
    assert state == () and valid.tolist() == [True, False, True, True]
    torch.testing.assert_close(y[[0, 2, 3]], layer.step(params, (), x)[0][[0, 2, 3]])
    assert torch.equal(y[1], torch.zeros(3))
    with pytest.raises(cofunc.StateError, match="4 streams"):
        cofunc.step_streams(layer, params, (), x, [True])


def test_stack_streams_of_stateless_states_is_the_empty_state():
    """Generic code stacks whatever init_state gives, stateless layers included."""
    layer = cofunc.linear(2, 3)
    one = layer.init_state(layer.init_params(), (2,))
    assert cofunc.stack_streams([one, one]) == ()
