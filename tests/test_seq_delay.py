"""`cofunc.seq` (temporal arithmetic of sequential composition) and `cofunc.delay`.

The folding rules are docs/design.md, section 3 (Principles 5 and 6 of the Continual Inference
paper). Step-path comparisons run in float64.
"""

from __future__ import annotations

from typing import List, Tuple

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import cofunc
from conftest import (
    assert_tree_close,
    assert_tree_equal,
    clip_len,
    expected_flags,
    fresh_state,
    split_points,
    step_through,
    time_slice,
)

F64 = torch.float64


# --- the paper's worked example --------------------------------------------------------------

# Steps 0..11 of seq(conv k3 p2 s2, conv k3 p0 s1): nothing for delay = 4 steps, then every
# stride = 2 steps. Written out rather than computed, so the test does not share the formula.
PAPER_FLAGS = [False, False, False, False, True, False, True, False, True, False, True, False]


def _paper_net(dims: int):
    if dims == 1:
        return cofunc.seq(cofunc.conv1d(2, 3, 3, padding=2, stride=2), cofunc.conv1d(3, 2, 3, padding=0, stride=1))
    return cofunc.seq(
        cofunc.conv3d(2, 3, 3, padding=(2, 1, 1), stride=(2, 1, 1)),
        cofunc.conv3d(3, 2, 3, padding=(0, 1, 1), stride=1),
    )


@pytest.mark.parametrize("dims", [1, 3])
def test_paper_example(dims):
    """Receptive field 7, padding 2, delay 4, stride 2; the step outputs, empty ones included,
    match the clip forward; ``steps(pad_end=True)`` adds the end-padded last frame."""
    net = _paper_net(dims)
    assert (net.receptive_field, net.padding, net.delay, net.stride) == (7, 2, 4, 2)
    params = net.init_params(dtype=F64)
    spatial = (4, 5) if dims == 3 else ()
    xs = torch.randn((2, 2, 12) + spatial, dtype=F64)
    forward = net.forward(params, xs)
    assert forward.shape[2] == 5  # conv 1: (12 + 4 - 3) // 2 + 1 = 7 frames; conv 2: 7 - 2 = 5
    run = step_through(net, params, xs)
    assert run.flags == PAPER_FLAGS
    assert run.ys.shape[2] == 4  # the 5th output needs end padding
    torch.testing.assert_close(run.ys, forward[:, :, :4])
    for t, y in enumerate(run.outputs):
        if not PAPER_FLAGS[t]:  # empty steps still return a tensor of the output's shape
            assert y.shape == forward[:, :, 0].shape
    ys, _ = net.steps(params, fresh_state(net, params, xs), xs, pad_end=True)
    torch.testing.assert_close(ys, forward)


def test_paper_example_matches_torch_sequential():
    """The seq's forward is torch.nn.Sequential's, with the same state_dict keys."""
    net = _paper_net(1)
    module = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3, padding=2, stride=2), torch.nn.Conv1d(3, 2, 3))
    params = cofunc.unflatten_params(dict(module.state_dict()))
    assert set(cofunc.flatten_params(net.init_params())) == set(module.state_dict())
    xs = torch.randn(1, 2, 12)
    with torch.no_grad():
        assert torch.equal(net.forward(params, xs), module(xs))


# --- random stacks ------------------------------------------------------------------------------


@st.composite
def stacks(draw):
    """1-4 convs with random kernel, stride, padding and dilation, optionally with relu after
    and delays before them. Returns (layers, meta, dims, channels, spatial) where meta lists each
    layer's (receptive_field, padding, stride) as drawn, not as the layer reports it."""
    dims = draw(st.sampled_from([1, 2]))
    spatial = (3,) if dims == 2 else ()
    channels = draw(st.integers(1, 2))
    layers, meta = [], []
    c = channels
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            n = draw(st.integers(0, 3))
            layers.append(cofunc.delay(n))
            meta.append((n + 1, 0, 1))
        k, s, d = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
        rf = d * (k - 1) + 1
        p = draw(st.integers(0, rf - 1))
        mode = draw(st.sampled_from(["zeros", "zeros", "replicate"]))
        c_out = draw(st.integers(1, 2))
        if dims == 1:
            conv = cofunc.conv1d(c, c_out, k, stride=s, padding=p, dilation=d, padding_mode=mode)
        else:
            conv = cofunc.conv2d(c, c_out, (k, 3), stride=(s, 1), padding=(p, 1), dilation=(d, 1), padding_mode=mode)
        layers.append(conv)
        meta.append((rf, p, s))
        c = c_out
        if draw(st.booleans()):
            layers.append(cofunc.lift(torch.relu))
            meta.append((1, 0, 1))
    if draw(st.booleans()):
        n = draw(st.integers(0, 3))
        layers.append(cofunc.delay(n))
        meta.append((n + 1, 0, 1))
    return layers, meta, dims, channels, spatial


def _fold(meta) -> Tuple[int, int, int]:
    """docs/design.md, section 3: rf = rf_prev + (rf_i - 1) * stride_prev; padding = p_0 + p_1 s_0 +
    p_2 s_0 s_1 + ...; stride = product of strides."""
    rf, padding, stride = 1, 0, 1
    for rf_i, p_i, s_i in meta:
        rf += (rf_i - 1) * stride
        padding += p_i * stride
        stride *= s_i
    return rf, padding, stride


def _min_len(net) -> int:
    """The shortest clip whose forward gives every layer at least one frame."""
    T = 1
    while True:
        n = T
        for layer in net.layers:
            n = (n + layer.padding + layer.padding_end - layer.receptive_field) // layer.stride + 1
            if n < 1:
                break
        else:
            return T
        T += 1


def _stack_net(draw_result, lead):
    layers, meta, dims, channels, spatial = draw_result
    net = cofunc.seq(*layers)
    note(net.label)
    params = net.init_params(dtype=F64)
    return net, params, meta, (lead, channels, spatial)


def _clip(shape_info, T):
    lead, channels, spatial = shape_info
    return torch.randn(lead + (channels, T) + spatial, dtype=F64)


@given(stack=stacks())
def test_stack_metadata(stack):
    """receptive_field, padding, stride and delay follow the folding rules."""
    layers, meta, *_ = stack
    net = cofunc.seq(*layers)
    rf, padding, stride = _fold(meta)
    assert (net.receptive_field, net.padding, net.stride) == (rf, padding, stride)
    assert net.delay == rf - 1 - padding
    # Children keep their own metadata and get the stream rank from their neighbours.
    assert [(c.receptive_field, c.padding, c.stride) for c in net.layers] == meta
    assert all(c.step_rank == net.step_rank for c in net.layers)


@given(stack=stacks(), lead=st.sampled_from([(), (2,), (2, 3)]), extra=st.integers(0, 8))
def test_stack_step_emits_forward_frames(stack, lead, extra):
    """From a fresh state: ``delay`` empty steps, then every ``stride`` steps the next frame of
    the clip forward."""
    net, params, meta, shape_info = _stack_net(stack, lead)
    T = _min_len(net) + extra
    xs = _clip(shape_info, T)
    run = step_through(net, params, xs)
    assert run.flags == expected_flags(net.delay, net.stride, T)
    forward = net.forward(params, xs)
    n_real = sum(1 for k in range(clip_len(net, forward)) if k * net.stride + net.delay <= T - 1)
    assert clip_len(net, run.ys) == n_real
    torch.testing.assert_close(run.ys, time_slice(net, forward, 0, n_real))


@given(stack=stacks(), lead=st.sampled_from([(), (2,), (2, 3)]), extra=st.integers(0, 8))
def test_stack_steps_pad_end_equals_forward(stack, lead, extra):
    net, params, _, shape_info = _stack_net(stack, lead)
    xs = _clip(shape_info, _min_len(net) + extra)
    state = fresh_state(net, params, xs)
    ys, padded_state = net.steps(params, state, xs, pad_end=True)
    torch.testing.assert_close(ys, net.forward(params, xs))
    _, plain_state = net.steps(params, state, xs)
    assert_tree_equal(padded_state, plain_state, "pad_end must not change the state")


@given(stack=stacks(), lead=st.sampled_from([(), (2,)]), data=st.data())
def test_stack_steps_equals_repeated_step(stack, lead, data):
    """``steps`` on a chunk equals ``step`` on each frame, from a fresh state and mid-stream
    (strided children gate their successors, so states must agree too)."""
    net, params, _, shape_info = _stack_net(stack, lead)
    T = data.draw(st.integers(1, net.receptive_field + 2 * net.stride + 2), label="T")
    prefix = data.draw(st.integers(0, T), label="prefix")
    xs = _clip(shape_info, T)
    head = step_through(net, params, time_slice(net, xs, 0, prefix))
    rest = time_slice(net, xs, prefix, T)
    by_step = step_through(net, params, rest, state=head.state)
    assert by_step.flags == expected_flags(net.delay, net.stride, T - prefix, start=prefix)
    ys, state = net.steps(params, head.state, rest)
    torch.testing.assert_close(ys, by_step.ys)
    assert_tree_close(state, by_step.state, "state")


@given(stack=stacks(), lead=st.sampled_from([(), (2,)]), data=st.data())
def test_stack_chunking_invariance(stack, lead, data):
    """Chunks split at arbitrary points (empty ones included) give one ``steps`` call's outputs
    and state; ``pad_end`` on the last chunk completes the clip forward."""
    net, params, _, shape_info = _stack_net(stack, lead)
    T = _min_len(net) + data.draw(st.integers(0, 8), label="extra")
    cuts = split_points(data.draw(st.lists(st.integers(0, T), max_size=4), label="cuts"), T)
    xs = _clip(shape_info, T)
    state = fresh_state(net, params, xs)
    whole, whole_state = net.steps(params, state, xs)
    pieces: List[torch.Tensor] = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        ys, state = net.steps(params, state, time_slice(net, xs, a, b), pad_end=i == len(cuts) - 2)
        pieces.append(ys)
    ys = torch.cat(pieces, dim=net.time_axis())
    torch.testing.assert_close(ys, net.forward(params, xs))
    torch.testing.assert_close(time_slice(net, ys, 0, clip_len(net, whole)), whole)
    assert_tree_close(state, whole_state, "state")


def test_seq_names_and_params():
    """Children are named "0", "1", ... or by a mapping; stateless children add no params."""
    net = cofunc.seq(cofunc.conv1d(1, 2, 3), cofunc.lift(torch.relu), cofunc.delay(1), cofunc.conv1d(2, 1, 1, bias=False))
    assert set(cofunc.flatten_params(net.init_params())) == {"0.weight", "0.bias", "3.weight"}
    named = cofunc.seq({"conv": cofunc.conv1d(1, 2, 3), "act": cofunc.lift(torch.relu)})
    assert set(cofunc.flatten_params(named.init_params())) == {"conv.weight", "conv.bias"}


def test_seq_rejects_non_layers():
    with pytest.raises(cofunc.ConfigurationError):
        cofunc.seq(torch.nn.Conv1d(1, 1, 3))
    with pytest.raises(cofunc.ConfigurationError):
        cofunc.seq()


def test_seq_empty_steps_do_not_advance_downstream():
    """After a strided layer, a step without output leaves the downstream state untouched."""
    net = cofunc.seq(cofunc.conv1d(1, 1, 1, stride=2), cofunc.conv1d(1, 1, 3))
    params = net.init_params(dtype=F64)
    state = net.init_state(params, (2, 1), dtype=F64)
    _, state = net.step(params, state, torch.ones(2, 1, dtype=F64))  # emits (step 0)
    _, after = net.step(params, state, torch.ones(2, 1, dtype=F64))  # empty (step 1)
    assert not bool(net.valid(after).any())
    assert_tree_equal(after[1], state[1], "downstream state after an empty step")
    assert after[1].count.tolist() == [1, 1] and after[0].count.tolist() == [2, 2]


# --- delay -------------------------------------------------------------------------------------


@given(n=st.integers(0, 4), lead=st.sampled_from([(), (2,), (2, 3)]), rank=st.integers(1, 3), T=st.integers(1, 9))
def test_delay_semantics(n, lead, rank, T):
    """``forward`` is the identity; ``step`` emits the frame from ``n`` steps earlier (valid from
    step ``n`` on); ``steps(pad_end=True)`` from a fresh state returns the input."""
    layer = cofunc.delay(n, step_rank=rank)
    assert (layer.receptive_field, layer.padding, layer.delay, layer.stride) == (n + 1, 0, n, 1)
    xs = torch.randn(lead + (2, T) + (3,) * (rank - 1), dtype=F64)
    assert torch.equal(layer.forward({}, xs), xs)
    run = step_through(layer, {}, xs)
    assert run.flags == [t >= n for t in range(T)]
    for t in range(n, T):
        assert torch.equal(run.outputs[t], xs.select(layer.time_axis(), t - n))
    ys, state = layer.steps({}, fresh_state(layer, {}, xs), xs, pad_end=True)
    assert torch.equal(ys, xs)
    ys, state = layer.steps({}, fresh_state(layer, {}, xs), xs)
    assert torch.equal(ys, run.ys)
    assert_tree_equal(state, run.state, "state")


@given(n=st.integers(0, 4), data=st.data())
def test_delay_chunking_invariance(n, data):
    layer = cofunc.delay(n, step_rank=2)
    T = data.draw(st.integers(0, 9), label="T")
    cuts = split_points(data.draw(st.lists(st.integers(0, T), max_size=4), label="cuts"), T)
    xs = torch.randn(2, 2, T, 3, dtype=F64)
    state = fresh_state(layer, {}, xs)
    whole, whole_state = layer.steps({}, state, xs)
    pieces = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        ys, state = layer.steps({}, state, time_slice(layer, xs, a, b))
        pieces.append(ys)
    assert torch.equal(torch.cat(pieces, dim=layer.time_axis()), whole)
    assert_tree_equal(state, whole_state, "state")


def test_delay_errors():
    with pytest.raises(cofunc.ConfigurationError):
        cofunc.delay(-1)
    with pytest.raises(cofunc.ConfigurationError):
        cofunc.delay(1, step_rank=0)
    with pytest.raises(cofunc.StateError):  # without a rank, stream dims cannot be found
        cofunc.delay(2).init_state({}, (2, 3))


def test_replicate_conv_behind_delay_replicates_its_first_real_frame():
    """A conv whose padding is all at the start (delay 0) behind a delay gets its first real
    frame at the very step the stack starts emitting: it must still replicate that frame, even
    though every stream is past the stack's warm-up (a regression: the warm-up hint skipped it)."""
    net = cofunc.seq(cofunc.delay(1), cofunc.conv1d(1, 1, 2, padding=1, padding_mode="replicate"))
    params = net.init_params(dtype=F64)
    xs = torch.randn(1, 4, dtype=F64)
    run = step_through(net, params, xs)
    torch.testing.assert_close(run.ys, net.forward(params, xs)[:, :3])
