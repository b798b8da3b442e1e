"""The Layer contract: what a new leaf must supply, and what it gets for free."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import cofunc
from cofunc._clock import emits_after


@dataclasses.dataclass(frozen=True, eq=False)
class PairSum(cofunc.Layer):
    """Sum of the last two frames, emitted every ``stride`` steps: implements only the three
    abstract methods and its metadata, so `steps` takes the default frame-by-frame chunk path."""

    every: int = 1
    pad: int = 0

    @property
    def receptive_field(self):
        return 2

    @property
    def padding(self):
        return self.pad

    @property
    def stride(self):
        return self.every

    @property
    def step_rank(self):
        return 1

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        batch = self.batch_shape(input_shape)
        return (torch.zeros(tuple(input_shape), device=device, dtype=dtype),
                torch.zeros(batch, dtype=torch.int64, device=device))

    def step_unmasked(self, params, state, x):
        last, count = state
        return x + last, (x, count + 1)

    def forward(self, params, xs):
        padded = torch.nn.functional.pad(xs, (self.pad, self.pad))
        return (padded[..., 1:] + padded[..., :-1])[..., :: self.every]

    def clock(self, state):
        return state[1]


def test_missing_method_fails_at_construction():
    @dataclasses.dataclass(frozen=True, eq=False)
    class NoForward(cofunc.Layer):
        def init_state(self, params, input_shape, *, device=None, dtype=None):
            return ()

        def step_unmasked(self, params, state, x):
            return x, state

    with pytest.raises(TypeError, match="forward"):
        NoForward()


@pytest.mark.parametrize("every", [1, 2, 3])
@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("chunks", [(7,), (1, 6), (3, 0, 4), (2, 2, 2, 1)])
def test_default_chunk_path_equals_steps_and_clip(every, pad, chunks):
    layer = PairSum(every, pad)
    xs = torch.randn(2, 3, sum(chunks))
    state = layer.init_state({}, (2, 3))
    outs, start = [], 0
    for n in chunks:
        ys, state = layer.steps({}, state, xs[..., start:start + n])
        outs.append(ys)
        start += n
    stepped_state = layer.init_state({}, (2, 3))
    emitted = []
    for t in range(xs.shape[-1]):
        y, stepped_state = layer.step({}, stepped_state, xs[..., t])
        if bool(emits_after(stepped_state[1], layer.delay, layer.stride).all()):
            emitted.append(y)
    chunked = torch.cat(outs, -1)
    assert torch.equal(chunked, torch.stack(emitted, -1) if emitted else chunked.new_zeros(2, 3, 0))
    assert torch.equal(state[0], stepped_state[0]) and torch.equal(state[1], stepped_state[1])
    # With the end padding flushed, the outputs are the clip forward's.
    full, after = layer.steps({}, layer.init_state({}, (2, 3)), xs, pad_end=True)
    assert torch.allclose(full, layer.forward({}, xs))
    assert torch.equal(after[1], torch.full((2,), xs.shape[-1]))  # the state before the padding


@pytest.mark.parametrize("pad", [0, 1])
def test_default_chunk_path_flushes_after_an_empty_chunk(pad):
    layer = PairSum(1, pad)
    xs = torch.randn(2, 3, 5)
    ys, state = layer.steps({}, layer.init_state({}, (2, 3)), xs)
    flushed, after = layer.steps({}, state, xs[..., :0], pad_end=True)
    assert torch.allclose(torch.cat([ys, flushed], -1), layer.forward({}, xs))
    assert torch.equal(after[1], state[1])
