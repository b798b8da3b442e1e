"""A step's output for a stream that did not emit is zeros, however the step runs.

Two streams at different positions (one warming up or between strided outputs, one emitting)
are stepped batched (eager), vmapped and compiled: every mode gives the same outputs, zeros for
the streams whose ``valid`` is False, and what the stream alone gives for the others. Frames are
``(B, C)`` or ``(B, C, H)``; tokens ``(B, E)``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import cofunc
from conftest import F64, tree_stack


def _encoder():
    layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)
    return cofunc.transformer_encoder(layer, 2, sequence_len=3)


# name -> (layer factory, frame shape of one stream)
CASES = {
    "conv with start padding": (lambda: cofunc.conv1d(2, 3, 3, padding=1), (2,)),
    "conv without padding": (lambda: cofunc.conv1d(2, 3, 3), (2,)),
    "strided conv": (lambda: cofunc.conv1d(2, 3, 3, stride=2, padding=1), (2,)),
    "strided max pool": (lambda: cofunc.max_pool2d((2, 1), stride=(2, 1)), (2, 3)),
    "delay": (lambda: cofunc.delay(2, step_rank=1), (2,)),
    "seq: delayed conv then linear (bias)": (lambda: cofunc.seq(cofunc.conv1d(2, 3, 3), cofunc.linear(3, 2)), (2,)),
    "seq: strided conv then conv": (
        lambda: cofunc.seq(cofunc.conv2d(2, 3, (3, 1), stride=(2, 1)), cofunc.conv2d(3, 2, (2, 3), padding=(0, 1))),
        (2, 4),
    ),
    "residual": (lambda: cofunc.residual(cofunc.conv1d(2, 2, 3, padding=1)), (2,)),
    "broadcast-reduce": (
        lambda: cofunc.broadcast_reduce(cofunc.conv1d(2, 2, 3), cofunc.conv1d(2, 2, 2, padding=1), reduce="sum"),
        (2,),
    ),
    "single-output attention": (lambda: cofunc.single_output_attention(4, 2, sequence_len=3), (4,)),
    "2-layer encoder": (_encoder, (4,)),
}

POSITIONS = (0, 3)  # stream 0 fresh (its first step does not emit), stream 1 past warm-up


def _setup(name):
    make, frame_shape = CASES[name]
    torch.manual_seed(0)
    layer = make()
    params = layer.init_params(dtype=F64)
    fresh = layer.init_state(params, frame_shape, dtype=F64)
    states = []
    for k in POSITIONS:
        state = fresh
        for _ in range(k):
            _, state = layer.step(params, state, torch.randn(frame_shape, dtype=F64))
        states.append(state)
    x = torch.randn((2,) + frame_shape, dtype=F64)
    return layer, params, states, x


def _check(layer, params, states, x, y, new_state, mode):
    valid = layer.valid(new_state).expand(2)
    for i in range(2):
        y_i, s_i = layer.step(params, states[i], x[i])
        assert bool(valid[i]) == bool(layer.valid(s_i)), mode
        if valid[i]:
            torch.testing.assert_close(y[i], y_i, msg=f"{mode}, stream {i}")
        else:
            assert torch.equal(y[i], torch.zeros_like(y[i])), f"{mode}, stream {i}: not emitted, got {y[i]}"
            assert torch.equal(y_i, torch.zeros_like(y_i)), f"{mode}, stream {i} alone: not emitted, got {y_i}"
    return valid


@pytest.mark.parametrize("name", sorted(CASES))
def test_not_emitted_outputs_are_zeros_eager_and_vmapped(name):
    layer, params, states, x = _setup(name)
    batched = tree_stack(states)
    y, s = layer.step(params, batched, x)
    valid = _check(layer, params, states, x, y, s, "eager")
    assert valid.tolist() != [True, True]  # the case really mixes emitting and silent streams
    y_v, s_v = torch.func.vmap(layer.step, in_dims=(None, 0, 0))(params, batched, x)
    _check(layer, params, states, x, y_v, s_v, "vmapped")
    torch.testing.assert_close(y_v, y, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seq: delayed conv then linear (bias)", "strided conv", "2-layer encoder"])
def test_not_emitted_outputs_are_zeros_compiled(name):
    torch._dynamo.reset()
    layer, params, states, x = _setup(name)
    batched = tree_stack(states)
    y, s = torch.compile(layer.step, backend="aot_eager", fullgraph=True)(params, batched, x)
    _check(layer, params, states, x, y, s, "compiled")
    torch.testing.assert_close(y, layer.step(params, batched, x)[0], rtol=0, atol=0)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["conv with start padding", "seq: strided conv then conv", "2-layer encoder"])
def test_streams_that_all_emit_pay_no_select(name):
    """Eager, when every stream emits, the step runs no `where` on the output (nor on states)."""
    layer, params, states, x = _setup(name)
    state = tree_stack([states[1], states[1]])
    for _ in range(3):  # to a step on which both streams emit (past a strided gap)
        _, probe = layer.step(params, state, x)
        if bool(layer.valid(probe).all()):
            break
        state = probe
    with _Ops() as ops:
        y, s = layer.step(params, state, x)
    assert bool(layer.valid(s).all())
    assert "where" not in ops.names, ops.names
    assert y.abs().sum() > 0
