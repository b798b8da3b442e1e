"""Randomly composed small networks: the three call modes agree.

Hypothesis draws networks of depth 1-4 from convs (kernel, stride, padding, dilation), avg and
max pools (ceil_mode, count_include_pad), a lifted ReLU, ``broadcast_reduce`` blocks (2-3
branches, sum/concat/max/mul) and residual blocks (plain or shrunk centered/lagging/leading,
sum or mul). Networks are valid by design:

- spatial sizes never change (spatial kernels 1 or 3 with "same" padding, stride 1), so only
  channels are tracked;
- parallel branches share one temporal stride ``s`` and keep the clip length: each branch is
  a "same"-padded layer (odd receptive field ``r``, padding ``(r - 1) / 2``) strided by ``s``,
  optionally followed by stride-1 "same" layers, so every branch outputs
  ``(T - 1) // s + 1`` frames;
- residual modules have stride 1, equal in and out channels and padding at most half their
  receptive field, and the shrink mode is drawn among the valid ones (docs/design.md, section 3);
- at most two temporally strided layers, so clips stay short; ``ceil_mode`` only outside
  branches (it changes a branch's length).

For each network and clip ``(*B, C, T, *S)`` (T at least the receptive field), in float64:
``forward`` vs ``steps(pad_end=True)`` vs step by step (outputs after ``delay`` steps, then every
``stride`` steps, equal to the clip outputs) vs chunked ``steps``.
"""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cofunc
from conftest import F64, assert_tree_close, clip_len, expected_flags, fresh_state, split_points, step_through, time_slice

CONV = {1: cofunc.conv1d, 2: cofunc.conv2d}
AVG = {1: cofunc.avg_pool1d, 2: cofunc.avg_pool2d}
MAX = {1: cofunc.max_pool1d, 2: cofunc.max_pool2d}


@dataclasses.dataclass
class Builder:
    """Draws layers for clips ``(*B, C, T, *S)`` with ``dims - 1`` spatial axes of fixed size."""

    draw: callable
    dims: int
    strided: int = 0  # temporally strided layers so far (at most two)

    def spatial(self, k_time: int, *, stride_time=1, pad_time=0, dil_time=1):
        """Per-axis (kernel, stride, padding, dilation) with "same" spatial axes."""
        ks = self.draw(st.sampled_from([1, 3]))
        kernel = (k_time,) + (ks,) * (self.dims - 1)
        stride = (stride_time,) + (1,) * (self.dims - 1)
        padding = (pad_time,) + (ks // 2,) * (self.dims - 1)
        dilation = (dil_time,) + (1,) * (self.dims - 1)
        return kernel, stride, padding, dilation

    def time_stride(self) -> int:
        if self.strided >= 2 or not self.draw(st.integers(0, 3)) == 0:
            return 1
        self.strided += 1
        return 2

    # --- free layers (top level: any temporal configuration) -----------------------------------
    def conv(self, c_in: int, *, stride=None, same=False, c_out=None) -> Tuple[cofunc.Layer, int]:
        c_out = self.draw(st.integers(1, 3)) if c_out is None else c_out
        k = self.draw(st.sampled_from([1, 3])) if same else self.draw(st.integers(1, 3))
        d = self.draw(st.integers(1, 2))
        rf = d * (k - 1) + 1
        p = (rf - 1) // 2 if same else self.draw(st.integers(0, rf - 1))
        s = self.time_stride() if stride is None else stride
        kernel, strides, padding, dilation = self.spatial(k, stride_time=s, pad_time=p, dil_time=d)
        return CONV[self.dims](c_in, c_out, kernel, strides, padding, dilation, bias=self.draw(st.booleans())), c_out

    def pool(self, c_in: int, *, stride=None, same=False) -> Tuple[cofunc.Layer, int]:
        kind = self.draw(st.sampled_from(["avg", "max"]))
        k = self.draw(st.sampled_from([1, 3])) if same else self.draw(st.integers(1, 3))
        p = k // 2 if same else self.draw(st.integers(0, k // 2))
        s = self.time_stride() if stride is None else stride
        ceil = False if same else self.draw(st.booleans())
        kernel, strides, padding, dilation = self.spatial(k, stride_time=s, pad_time=p)
        if kind == "max":
            if not same:
                dilation = (self.draw(st.integers(1, 2)),) + dilation[1:]
            return MAX[self.dims](kernel, strides, padding, dilation, ceil_mode=ceil), c_in
        return AVG[self.dims](kernel, strides, padding, ceil_mode=ceil, count_include_pad=self.draw(st.booleans())), c_in

    # --- blocks ---------------------------------------------------------------------------------
    def branch(self, c_in: int, stride: int, c_out=None) -> Tuple[cofunc.Layer, int]:
        """A "same"-length branch of temporal stride ``stride``: a strided same layer, then
        maybe a ReLU or a stride-1 same conv. ``c_out`` forces the output channels (sum)."""
        first = self.draw(st.sampled_from(["conv", "pool"] + (["relu", "delay"] if stride == 1 else [])))
        if first == "conv":
            layer, c = self.conv(c_in, stride=stride, same=True)
        elif first == "pool":
            layer, c = self.pool(c_in, stride=stride, same=True)
        elif first == "relu":
            layer, c = cofunc.lift(torch.relu), c_in
        else:
            layer, c = cofunc.delay(self.draw(st.integers(1, 2))), c_in
        layers = [layer]
        tail = self.draw(st.sampled_from(["none", "relu", "conv"]))
        if tail == "relu":
            layers.append(cofunc.lift(torch.relu))
        if tail == "conv" or (c_out is not None and c != c_out):
            conv, c = self.conv(c, stride=1, same=True, c_out=c_out)
            layers.append(conv)
        return (layers[0] if len(layers) == 1 else cofunc.seq(*layers)), c

    def broadcast_reduce(self, c_in: int) -> Tuple[cofunc.Layer, int]:
        stride = self.time_stride()
        how = self.draw(st.sampled_from(["sum", "concat", "max", "mul"]))
        n = self.draw(st.integers(2, 3))
        c_out = None if how == "concat" else self.draw(st.integers(1, 3))
        branches, channels = [], []
        for _ in range(n):
            b, c = self.branch(c_in, stride, c_out)
            branches.append(b)
            channels.append(c)
        return cofunc.broadcast_reduce(*branches, reduce=how), (sum(channels) if how == "concat" else c_out)

    def residual(self, c_in: int) -> Tuple[cofunc.Layer, int]:
        def conv(c_out):
            k = self.draw(st.integers(1, 3))
            p = self.draw(st.integers(0, (k - 1) // 2))  # at most half: some shrink mode fits
            kernel, strides, padding, dilation = self.spatial(k, pad_time=p)
            return CONV[self.dims](c_in if c_out is None else c_out, c_in, kernel, strides, padding, dilation)

        if self.draw(st.booleans()):
            module = conv(None)
        else:
            hidden = self.draw(st.integers(1, 3))
            k = self.draw(st.integers(1, 3))
            kernel, strides, padding, dilation = self.spatial(k, pad_time=self.draw(st.integers(0, (k - 1) // 2)))
            module = cofunc.seq(CONV[self.dims](c_in, hidden, kernel, strides, padding, dilation), cofunc.lift(torch.relu), conv(hidden))
        rf, p, pe, d = module.receptive_field, module.padding, module.padding_end, module.delay
        if rf - 1 == 2 * p and pe == p:
            shrink = False
        else:
            modes = [m for m, ok in (("centered", (rf - 1) % 2 == 0 and pe <= (rf - 1) // 2 <= d),
                                     ("lagging", pe <= d), ("leading", pe == 0)) if ok]
            shrink = self.draw(st.sampled_from(modes))
        return cofunc.residual(module, reduce=self.draw(st.sampled_from(["sum", "mul"])), residual_shrink=shrink), c_in


@dataclasses.dataclass(frozen=True)
class Network:
    layer: cofunc.Layer
    dims: int
    channels: int
    spatial: Tuple[int, ...]
    kinds: List[str]

    def __repr__(self):  # hypothesis prints this for failing examples
        return f"Network({self.layer.label}, dims={self.dims}, channels={self.channels}, spatial={self.spatial})"


@st.composite
def networks(draw):
    dims = draw(st.integers(1, 2))
    builder = Builder(draw, dims)
    c = c_in = draw(st.integers(1, 3))
    layers, kinds = [], []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "pool", "relu", "broadcast_reduce", "residual"]))
        if kind == "relu":
            layer = cofunc.lift(torch.relu)
        else:
            layer, c = getattr(builder, kind)(c)
        layers.append(layer)
        kinds.append(kind)
    if cofunc.seq(*layers).step_rank is None:  # only rank-agnostic layers: a 1x1 conv gives the rank
        layers.insert(0, CONV[dims](c_in, c_in, 1))
        kinds.insert(0, "conv")
    spatial = (draw(st.integers(2, 3)),) * (dims - 1)
    return Network(cofunc.seq(*layers), dims, c_in, spatial, kinds)


@given(net=networks(), lead=st.sampled_from([(1,), (2,), (2, 1)]), extra=st.integers(0, 4), data=st.data())
def test_random_network_call_modes(net, lead, extra, data):
    layer = net.layer
    torch.manual_seed(0)
    params = layer.init_params(dtype=F64)
    T = layer.receptive_field + extra
    xs = torch.randn(lead + (net.channels, T) + net.spatial, dtype=F64)
    ys = layer.forward(params, xs)
    # Step by step: outputs after `delay` steps, then every `stride`, equal to the clip's.
    run = step_through(layer, params, xs)
    assert run.flags == expected_flags(layer.delay, layer.stride, T)
    n = clip_len(layer, run.ys)
    assert 0 < n <= clip_len(layer, ys)
    torch.testing.assert_close(run.ys, time_slice(layer, ys, 0, n))
    # One chunk with end padding: the whole clip forward; the state is the unpadded one.
    state = fresh_state(layer, params, xs)
    padded, after = layer.steps(params, state, xs, pad_end=True)
    torch.testing.assert_close(padded, ys)
    assert_tree_close(after, run.state, "state after steps(pad_end=True)")
    # Any chunking, end padding on the last chunk only.
    bounds = split_points(data.draw(st.lists(st.integers(0, T), max_size=3)), T)
    outs = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        chunk, state = layer.steps(params, state, time_slice(layer, xs, a, b), pad_end=i == len(bounds) - 2)
        outs.append(chunk)
    torch.testing.assert_close(torch.cat(outs, dim=layer.time_axis()), ys)


@settings(max_examples=8)
@given(net=networks())
def test_random_network_vmap_equals_batched(net):
    """``vmap(step)`` over 2 streams equals the batched step (valid outputs and states)."""
    layer = net.layer
    torch.manual_seed(0)
    params = layer.init_params(dtype=F64)
    state = layer.init_state(params, (2, net.channels) + net.spatial, dtype=F64)
    vstate = state
    vstep = torch.func.vmap(layer.step, in_dims=(None, 0, 0))
    for t in range(min(layer.receptive_field + 2, 10)):
        x = torch.randn((2, net.channels) + net.spatial, dtype=F64)
        y, state = layer.step(params, state, x)
        yv, vstate = vstep(params, vstate, x)
        valid = layer.valid(state).expand(2)
        assert torch.equal(layer.valid(vstate).expand(2), valid), f"step {t}"
        if bool(valid.all()):
            torch.testing.assert_close(yv, y, msg=f"step {t}")
        assert_tree_close(vstate, state, f"state after step {t}")
