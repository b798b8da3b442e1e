"""`cofunc.profile`: parameter, state, MAC and memory accounting, checked against hand counts.

MACs follow the usual convention (FlopCounterMode's FLOPs / 2): a convolution output element
costs ``C_in / groups * prod(kernel)`` MACs, a linear output element ``in_features``; pools,
activations and biases cost nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cofunc
import cofunc.nn
from cofunc._profile import LiveTensorBytes, Profile, count_macs, profile

INT64 = 8


def conv_macs(c_out, c_in, kernel, out_spatial, groups=1, batch=1):
    """MACs of one output frame of a convolution (hand formula)."""
    return batch * c_out * (c_in // groups) * math.prod(kernel) * math.prod(out_spatial)


def test_conv3d_step_macs_by_hand():
    """A conv3d step costs one output frame: Cout * Cin/groups * kt*kh*kw * H' * W' per stream."""
    layer = cofunc.conv3d(4, 6, kernel_size=(3, 3, 2), stride=(1, 2, 1), padding=(1, 1, 0), groups=2)
    b, h, w = 3, 9, 7
    p = profile(layer, layer.init_params(), (b, 4, h, w))
    h_out, w_out = (h + 2 - 3) // 2 + 1, w - 2 + 1
    one_frame = conv_macs(6, 4, (3, 3, 2), (h_out, w_out), groups=2, batch=b)
    assert p.macs_period == (one_frame,)
    assert p.macs_per_step == one_frame == p.macs_emitting_step == p.macs_per_prediction
    # forward on receptive_field = 3 frames with temporal padding 1 on both ends: 3 output frames
    assert (p.clip_length, p.clip_outputs) == (3, 3)
    assert p.clip_macs == 3 * one_frame
    assert p.mac_ratio == 3.0


def test_strided_conv_macs_averaged_over_its_stride():
    """A temporal stride s: one step in s convolves, the others cost nothing in eager mode."""
    layer = cofunc.conv3d(2, 5, kernel_size=(3, 1, 1), stride=(3, 1, 1))
    b, h, w = 2, 4, 4
    p = profile(layer, layer.init_params(), (b, 2, h, w))
    one_frame = conv_macs(5, 2, (3, 1, 1), (h, w), batch=b)
    assert (p.delay, p.stride) == (2, 3)
    assert p.macs_period == (one_frame, 0, 0)
    assert p.macs_per_step == pytest.approx(one_frame / 3)
    assert p.macs_emitting_step == one_frame
    assert p.macs_per_prediction == one_frame
    assert p.clip_outputs == 1 and p.clip_macs == one_frame


def test_seq_macs_state_and_params_by_hand():
    """conv (every step) -> relu -> max pool (stride 2, no MACs) -> conv (every second step)."""
    layer = cofunc.seq(
        cofunc.conv3d(2, 4, 3, padding=1),
        cofunc.lift(torch.relu),
        cofunc.max_pool3d(2),
        cofunc.conv3d(4, 6, (1, 3, 3)),
    )
    b, h, w = 2, 8, 10
    params = layer.init_params()
    p = profile(layer, params, (b, 2, h, w))
    c1 = conv_macs(4, 2, (3, 3, 3), (h, w), batch=b)
    c2 = conv_macs(6, 4, (1, 3, 3), (h // 2 - 2, w // 2 - 2), batch=b)
    assert (p.delay, p.stride, p.receptive_field) == (2, 2, 4)
    assert p.macs_period == (c1 + c2, c1)
    assert p.macs_per_step == pytest.approx(c1 + c2 / 2)
    assert p.macs_per_prediction == 2 * c1 + c2
    # forward on 4 frames: conv1 (padded) keeps 4 frames, the pool halves them, conv2 keeps 2
    assert p.clip_outputs == 2 and p.clip_macs == 4 * c1 + 2 * c2
    # state: conv1 buffers 2 input frames, the pool 1 frame of conv1's output; conv2 (one-frame
    # kernel, stride 1) and relu are stateless; each stateful layer has an int64 counter per stream
    f32 = 4
    assert p.state_leaves == 4
    assert p.state_bytes == b * 2 * 2 * h * w * f32 + b * INT64 + b * 4 * 1 * h * w * f32 + b * INT64
    torch_net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(4, 6, (1, 3, 3)))
    assert p.n_params == sum(t.numel() for t in torch_net.parameters())
    assert p.param_bytes == f32 * p.n_params


def test_linear_macs_params_and_peak_memory():
    layer = cofunc.linear(5, 7)
    module = nn.Linear(5, 7)
    p = profile(layer, layer.params_from(module), (3, 5))
    assert p.macs_period == (3 * 5 * 7,)
    assert p.n_params == sum(t.numel() for t in module.parameters()) == 42
    assert (p.state_leaves, p.state_bytes) == (0, 0)
    # the step allocates exactly its output, (3, 7) float32
    assert p.peak_step_bytes == 3 * 7 * 4


def test_params_count_batch_norm_statistics_like_state_dict():
    """Params are the module's state_dict: running statistics count, as the docs say."""
    bn = nn.BatchNorm3d(4).eval()
    layer = cofunc.lift_module(bn)
    p = profile(layer, layer.params_from(bn), (1, 4, 3, 3))
    assert p.n_params == sum(t.numel() for t in bn.state_dict().values()) == 4 * 4 + 1
    assert p.param_bytes == 4 * 4 * 4 + INT64
    assert p.macs_per_step == 0  # normalisation is element-wise: no MACs


def test_params_count_of_converted_network_equals_torch():
    torch_net = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 4, (2, 1, 1), groups=4))
    net = cofunc.nn.continual(torch_net)
    p = profile(net.layer, net.params, (1, 3, 5, 5))
    assert p.n_params == sum(t.numel() for t in torch_net.parameters())
    assert p.param_bytes == sum(t.numel() * t.element_size() for t in torch_net.parameters())


def test_pools_cost_no_macs():
    layer = cofunc.avg_pool3d(3, stride=1, padding=1)
    p = profile(layer, layer.init_params(), (2, 3, 6, 6))
    assert p.macs_period == (0,) and p.clip_macs == 0
    assert p.mac_ratio == 1.0  # 0 / 0 by convention
    assert p.state_bytes == 2 * 3 * 2 * 6 * 6 * 4 + 2 * INT64


def test_float64_params_set_the_dtype():
    layer = cofunc.conv1d(2, 3, 4)
    params = layer.init_params(dtype=torch.float64)
    p = profile(layer, params, (5, 2))
    assert p.dtype == torch.float64
    assert p.state_bytes == 5 * 2 * 3 * 8 + 5 * INT64
    assert p.param_bytes == (3 * 2 * 4 + 3) * 8
    assert p.macs_period == (5 * 3 * 2 * 4,)


def test_clip_length_sets_the_regular_clip():
    layer = cofunc.conv1d(2, 3, 4)  # receptive field 4, no padding
    p = profile(layer, layer.init_params(), (1, 2), clip_length=10)
    assert (p.clip_length, p.clip_outputs) == (10, 7)
    assert p.clip_macs == 7 * 3 * 2 * 4
    default = profile(layer, layer.init_params(), (1, 2))
    assert (default.clip_length, default.clip_outputs, default.clip_macs) == (4, 1, 3 * 2 * 4)
    with pytest.raises(cofunc.ConfigurationError, match="clip_length"):
        profile(layer, layer.init_params(), (1, 2), clip_length=0)


def test_multi_stream_layer():
    """A parallel layer takes a list of step shapes; branch costs add up."""
    layer = cofunc.parallel(cofunc.conv1d(2, 3, 3), cofunc.conv1d(4, 5, 1))
    p = profile(layer, layer.init_params(), [(2, 2), (2, 4)])
    assert p.macs_emitting_step == 2 * 3 * 2 * 3 + 2 * 4 * 5
    # the one-frame branch is delayed by 2 to align with the other: both branches buffer frames
    assert p.state_bytes == 2 * 2 * 2 * 4 + 2 * INT64 + 2 * 5 * 2 * 4 + 2 * INT64


def test_attention_counts_matmuls_and_cpu_sdpa():
    """Matmul attention is counted by torch's registry; the CPU SDPA kernel by cofunc's formula."""
    b, heads, lq, lk, d = 2, 3, 4, 6, 5
    q, k, v = torch.randn(b, heads, lq, d), torch.randn(b, heads, lk, d), torch.randn(b, heads, lk, d)
    expected = 2 * b * heads * lq * lk * d  # Q K^T and weights @ V
    macs, _ = count_macs(F.scaled_dot_product_attention, q, k, v)
    assert macs == expected
    macs, _ = count_macs(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
    assert macs == expected


def test_live_tensor_bytes_follows_frees_and_views():
    """Peak = the most bytes allocated at once; views and inputs cost nothing."""
    x = torch.zeros(1000)  # allocated before: not counted

    def fn():
        a = x + 1  # 4000 B
        view = a[:10]  # a view: nothing new
        b = a * 2  # 8000 B live
        del a, view
        c = b + 1  # a is freed before c is allocated: still 8000 B
        return c.sum()  # 4 B more

    tracker = LiveTensorBytes()
    with tracker:
        out = fn()
    assert tracker.peak == 8000 + 4
    assert tracker.current == 4  # only the result survives
    del out


def test_step_peak_memory_bounds():
    """A conv step holds at least its output and the new state; the shift register adds the
    concatenated window, so it stays below twice everything it touches."""
    layer = cofunc.conv3d(3, 8, 3, padding=1)
    b, h, w = 1, 16, 16
    p = profile(layer, layer.init_params(), (b, 3, h, w))
    output = b * 8 * h * w * 4
    assert p.peak_step_bytes >= output + p.state_bytes
    window = b * 3 * 3 * h * w * 4
    assert p.peak_step_bytes <= 2 * (output + p.state_bytes + window)


def test_table_and_dict():
    layer = cofunc.seq(cofunc.conv1d(2, 3, 3, stride=2), cofunc.linear(3, 4))
    p = profile(layer, layer.init_params(), (1, 2))
    assert isinstance(p, Profile)
    text = str(p)
    assert layer.label in text
    for needle in ("params", "state", "MACs per step (mean over 2)", "MACs per prediction, regular", "peak memory"):
        assert needle in text
    assert f"{p.macs_per_prediction:,}" in text
    d = p.as_dict()
    assert d["macs_per_step"] == p.macs_per_step and d["dtype"] == "torch.float32"
    assert d["macs_period"] == (2 * 3 * 3 + 3 * 4, 0)


def test_profile_leaves_global_rng_alone():
    """Inputs come from a private generator: profiling does not disturb the caller's RNG."""
    layer = cofunc.conv1d(1, 1, 2)
    params = layer.init_params()
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    profile(layer, params, (1, 1))
    assert torch.equal(torch.rand(3), expected)


def test_rejects_non_layers():
    with pytest.raises(cofunc.ConfigurationError, match="cofunc Layer"):
        profile(nn.Linear(2, 2), {}, (1, 2))
