"""The continual video model zoo (`cofunc.models`): CoX3D, CoSlow, CoI3D.

Small networks (few channels and blocks, 32x32 frames, float64) check that stepping equals the
clip ``forward`` in the exact configurations, the delays and receptive fields, the continual
options (temporal padding kept or removed, clip- or frame-scope squeeze-and-excitation, extended
head pools), streams and vmap. Full-size networks are built on the meta device only, for their
parameter counts and delays. Equality with pytorchvideo's networks is in
test_models_pytorchvideo.py (a second environment).

Shapes: clips ``(B, 3, T, H, W)`` in, scores ``(B, K, T')`` out; steps ``(B, 3, H, W)`` in,
``(B, K)`` out.
"""

from __future__ import annotations

import pytest
import torch

import cofunc.nn as cn
from cofunc import ConfigurationError
from cofunc.demo import randomize_norms
from cofunc.models import i3d_r50, slow_r50, x3d
from cofunc.models._blocks import SqueezeExcitation
from cofunc.nn.module import TrainingModeStepWarning

F64 = torch.float64
K = 5  # classes of the small networks
CROP = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """float64, eval mode, random norms (the builders zero the last norm of each residual branch,
    which would make those branches vanish)."""
    return randomize_norms(net.double(), seed)


def clip(frames: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, CROP, CROP, generator=g, dtype=F64)


# Small configurations. x3d: depth factor 0.5 gives stages of 1, 1, 3, 2 blocks; SE on blocks 0
# (and 2) of each stage: 5 SE blocks; 4-frame clips. slow: conv_a kernels 1 | 1 | 3, 3 | 3.
# i3d: conv_a kernels 3 | 3, 1 | 3, 1 | 1, 3 and the temporal pool (stride 2) after res2.
def small_x3d(**kw):
    kw.setdefault("head_activation", None)  # raw scores: comparisons see every difference
    return x3d("XS", num_classes=K, clip_length=4, crop_size=CROP, stem_dim_in=4, head_dim_out=16,
               depth_factor=0.5, **kw)


def small_slow(**kw):
    return slow_r50(num_classes=K, crop_size=CROP, stem_dim_out=4, stage_depths=(1, 1, 2, 1), **kw)


def small_i3d(**kw):
    return i3d_r50(num_classes=K, crop_size=CROP, stem_dim_out=4, stage_depths=(1, 2, 2, 2), **kw)


# name: (builder, delay with temporal padding kept, stride, clip length of the head pool (input frames))
SMALL = {
    # stem 2 + 7 blocks x 1 + 5 clip-scope SE x 3 + head pool 4 -> 3
    "x3d_clip": (lambda **kw: small_x3d(se="clip", **kw), 27, 1, 4),
    # stem 2 + 7 blocks x 1 + head pool 3
    "x3d_frame": (lambda **kw: small_x3d(se="frame", **kw), 12, 1, 4),
    # two 3x1x1 conv_a in res4, one in res5, head pool 8 -> 7
    "slow": (small_slow, 10, 1, 8),
    # stem 2 + res2 1 + pool 1, then at half rate: res3 1, res4 1, res5 1, head pool 4 -> 3; x2
    "i3d": (small_i3d, 16, 2, 8),
}


# --- full-size networks: parameter counts and delays ------------------------------------------


@pytest.mark.parametrize(
    "build, millions",
    [
        (lambda: x3d("XS"), 3.79),
        (lambda: x3d("S"), 3.79),
        (lambda: x3d("M"), 3.79),
        (lambda: x3d("L"), 6.15),
        (slow_r50, 32.45),
        (i3d_r50, 28.04),
    ],
    ids=["x3d_xs", "x3d_s", "x3d_m", "x3d_l", "slow_r50", "i3d_r50"],
)
def test_full_size_parameter_counts(build, millions):
    """The parameter counts the CoX3D paper reports for 400 classes (built, never run)."""
    with torch.device("meta"):
        net = build()
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == millions


@pytest.mark.parametrize(
    "build, delay, rf",
    [
        # X3D-S (13 frames): stem 2, 3 + 5 + 11 + 7 = 26 blocks x 1, head pool 13 -> 12. The
        # co3d repository reports 40 (frame-scope SE) and 220 (clip scope: 15 SE blocks x 12).
        (lambda: x3d("S", se="frame"), 40, 69),
        (lambda: x3d("S", se="clip"), 220, 69 + 15 * 24),
        # Extended head pool (CoX3D-S_64): 40 - 12 + 63.
        (lambda: x3d("S", se="frame", head_pool=64), 91, 69 - 12 + 63),
        # X3D-XS: 4-frame head pool; X3D-M: 16 frames; X3D-L: 5 + 10 + 25 + 15 = 55 blocks, 29 SE.
        (lambda: x3d("XS", se="frame"), 31, 60),
        (lambda: x3d("M", se="frame"), 43, 72),
        (lambda: x3d("L", se="frame"), 72, 130),
        (lambda: x3d("L", se="clip"), 72 + 29 * 15, 130 + 29 * 30),
        # Slow: conv_a 3x1x1 in the 6 + 3 blocks of res4 and res5, head pool 8 -> 7.
        (slow_r50, 16, 26),
        # I3D: stem 2, res2 3, pool 1, then at half rate (x2): res3 2, res4 3, res5 1, head 3.
        (i3d_r50, 24, 42),
    ],
    ids=["x3d_s_frame", "x3d_s_clip", "x3d_s_frame_64", "x3d_xs", "x3d_m", "x3d_l", "x3d_l_clip", "slow", "i3d"],
)
def test_full_size_delays(build, delay, rf):
    with torch.device("meta"):
        net = build()
    assert (net.delay, net.receptive_field) == (delay, rf)
    assert net.delay == net.receptive_field - 1 - net.padding[0]


@pytest.mark.parametrize("build", [lambda **kw: x3d("S", **kw), slow_r50, i3d_r50], ids=["x3d_s", "slow", "i3d"])
def test_removing_temporal_padding_keeps_the_receptive_field(build):
    """Without temporal padding the first output needs a full receptive field of real frames."""
    with torch.device("meta"):
        keep, remove = build(), build(temporal_padding="remove")
    assert remove.padding == (0,)
    assert remove.receptive_field == keep.receptive_field
    assert remove.delay == remove.receptive_field - 1 > keep.delay


# --- exact stepping -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL))
def test_stepping_a_clip_with_pad_end_equals_forward(name):
    """With the temporal padding kept, stepping from a fresh state with ``pad_end`` reproduces
    ``forward``, for a clip of the head pool's length (one score) and a longer one, in one
    chunk or several."""
    build, _, stride, length = SMALL[name]
    net = randomize(build())
    for frames in (length, length + 5):
        xs = clip(frames)
        expected = net(xs)
        assert expected.shape == (2, K, frames // stride - length // stride + 1)
        net.clean_state()
        torch.testing.assert_close(net.forward_steps(xs, pad_end=True), expected)
        net.clean_state()
        cut = frames // 2
        first = net.forward_steps(xs[:, :, :cut])
        rest = net.forward_steps(xs[:, :, cut:], pad_end=True)
        parts = [p for p in (first, rest) if p is not None]
        torch.testing.assert_close(torch.cat(parts, dim=2), expected)


@pytest.mark.parametrize("name", ["x3d_frame", "slow", "i3d"])
def test_step_by_step_emits_forward_outputs_after_the_delay(name):
    """``forward_step``: None for the first ``delay`` steps, then every ``stride`` steps the next
    output of ``forward`` (no end padding: the outputs that need none)."""
    build, delay, stride, _ = SMALL[name]
    net = randomize(build())
    assert (net.delay, net.stride) == (delay, (stride,))
    xs = clip(delay + 2 * stride + 1, batch=1)
    outs = [net.forward_step(xs[:, :, t]) for t in range(xs.shape[2])]
    assert [o is not None for o in outs] == [t >= delay and (t - delay) % stride == 0 for t in range(len(outs))]
    emitted = torch.stack([o for o in outs if o is not None], dim=2)
    torch.testing.assert_close(emitted, net(xs)[:, :, : emitted.shape[2]])


def test_extended_head_pool_steps_exactly():
    """CoX3D's extended global pool (here 9 frames for a 4-frame model): more delay, still exact."""
    net = randomize(small_x3d(se="frame", head_pool=9))
    assert net.delay == SMALL["x3d_frame"][1] + 5
    xs = clip(11)
    expected = net(xs)
    assert expected.shape[2] == 3
    torch.testing.assert_close(net.forward_steps(xs, pad_end=True), expected)


# --- squeeze-and-excitation scopes ---------------------------------------------------------


def _se(scope, temporal_padding="keep", window=4):
    se = SqueezeExcitation(6, 8, scope, window, temporal_padding).double().eval()
    with torch.no_grad():
        for p in se.parameters():
            p.normal_()
    return se


def test_clip_scope_se_gates_every_frame_of_a_clip_with_the_clip_mean():
    """On a clip of ``window`` frames, clip scope is fvcore's SqueezeExcitation: every frame is
    multiplied by the gates of the whole clip's mean; stepping with ``pad_end`` agrees."""
    se = _se("clip")
    x = torch.randn(2, 6, 4, 5, 5, dtype=F64)
    expected = x * se.block(x.mean(dim=(2, 3, 4), keepdim=True))
    torch.testing.assert_close(se(x), expected)
    assert se.delay == 3
    torch.testing.assert_close(se.forward_steps(x, pad_end=True), expected)


def test_clip_scope_se_on_a_longer_clip_gates_with_the_centred_window():
    """Frame ``t`` is gated by the mean of frames ``t - 3 .. t + 3`` that exist (window 4)."""
    se = _se("clip")
    x = torch.randn(1, 6, 9, 3, 3, dtype=F64)
    expected = torch.stack([
        x[:, :, t] * se.block(x[:, :, max(0, t - 3): t + 4].mean(dim=(2, 3, 4), keepdim=True))[:, :, 0]
        for t in range(9)
    ], dim=2)
    torch.testing.assert_close(se(x), expected)
    torch.testing.assert_close(se.forward_steps(x, pad_end=True), expected)


def test_frame_scope_se_gates_each_frame_with_its_own_mean():
    se = _se("frame")
    x = torch.randn(2, 6, 5, 3, 3, dtype=F64)
    torch.testing.assert_close(se(x), x * se.block(x.mean(dim=(3, 4), keepdim=True)))
    assert se.delay == 0
    steps = torch.stack([se.forward_step(x[:, :, t]) for t in range(5)], dim=2)
    torch.testing.assert_close(steps, se(x))


def test_clip_scope_se_without_padding_gates_the_centre_frames():
    se = _se("clip", "remove", window=2)  # windows of 3 frames, no padding
    x = torch.randn(1, 6, 6, 3, 3, dtype=F64)
    expected = torch.stack([
        x[:, :, t] * se.block(x[:, :, t - 1: t + 2].mean(dim=(2, 3, 4), keepdim=True))[:, :, 0] for t in range(1, 5)
    ], dim=2)
    torch.testing.assert_close(se(x), expected)
    assert se.delay == 2
    torch.testing.assert_close(se.forward_steps(x), expected)


def test_frame_scope_x3d_runs_in_every_mode_and_differs_from_clip_scope():
    """se="frame" (the published CoX3D) steps exactly too, but its ``forward`` is another
    function than the regular X3D (clip scope), with the same weights."""
    clip_net = randomize(small_x3d(se="clip"))
    frame_net = small_x3d(se="frame").double().eval()
    frame_net.load_state_dict(clip_net.state_dict())
    xs = clip(4)
    out = frame_net(xs)
    torch.testing.assert_close(frame_net.forward_steps(xs, pad_end=True), out)
    with cn.call_mode("forward_steps"):
        frame_net.clean_state()
        torch.testing.assert_close(frame_net(xs, pad_end=True), out)
    assert not torch.allclose(out, clip_net(xs), rtol=1e-3, atol=1e-6)


# --- temporal padding removed ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL))
def test_removed_padding_changes_only_the_start(name):
    """Padding only changes outputs whose window reaches before the stream's start: without it,
    the outputs are those of the padded network once a receptive field of frames has passed.
    Stepping the unpadded network equals its ``forward`` (it has no end padding to flush).

    With a temporal stride (I3D) the removed padding also moves the stride's phase (which
    frames the pool pairs): the padded network then agrees on the stream without its first
    ``phase`` frames."""
    build, _, stride, _ = SMALL[name]
    keep = randomize(build())
    remove = build(temporal_padding="remove").double().eval()
    remove.load_state_dict(keep.state_dict())
    assert remove.delay == remove.receptive_field - 1
    xs = clip(remove.receptive_field + 2 * stride)
    out = remove(xs)
    assert out.shape[2] == 3
    # Output k of a network is emitted at step delay + k * stride.
    lag = remove.delay - keep.delay
    phase = lag % stride
    assert phase == (1 if name == "i3d" else 0)  # I3D: 25 more frames of delay, stride 2
    # On the shortened stream the padded network needs ``phase`` more steps to see a whole
    # receptive field of real frames: compare from the first such output.
    first = -(-phase // stride)
    skip = (lag - phase) // stride
    torch.testing.assert_close(out[:, :, first:], keep(xs[:, :, phase:])[:, :, skip + first: skip + 3])
    torch.testing.assert_close(remove.forward_steps(xs), out)


# --- structure, streams, training ------------------------------------------------------------


def test_state_dict_keys_follow_pytorchvideo():
    x3d_keys = set(small_x3d().state_dict())
    for key in (
        "blocks.0.conv.conv_t.weight",  # the spatial 1x3x3 stem conv (pytorchvideo's naming)
        "blocks.0.conv.conv_xy.weight",  # the temporal 5x1x1 one
        "blocks.0.norm.running_var",
        "blocks.1.res_blocks.0.branch1_conv.weight",
        "blocks.2.res_blocks.0.branch1_norm.weight",
        "blocks.3.res_blocks.2.branch2.norm_b.1.block.2.bias",
        "blocks.4.res_blocks.1.branch2.norm_c.weight",
        "blocks.5.pool.pre_conv.weight",
        "blocks.5.pool.post_conv.weight",
        "blocks.5.proj.bias",
    ):
        assert key in x3d_keys
    # Stage 1's first block changes the size but not the channels: a shortcut conv, no norm.
    assert "blocks.1.res_blocks.0.branch1_norm.weight" not in x3d_keys
    # SE on every other block only.
    assert "blocks.3.res_blocks.1.branch2.norm_b.1.block.0.weight" not in x3d_keys
    i3d_keys = set(small_i3d().state_dict())
    assert {"blocks.0.conv.weight", "blocks.1.res_blocks.0.branch1_norm.running_mean",
            "blocks.3.res_blocks.1.branch2.conv_a.weight", "blocks.6.proj.weight"} <= i3d_keys
    assert not any(k.startswith("blocks.2.") for k in i3d_keys)  # the temporal max pool
    assert small_i3d().blocks[3].res_blocks[0].branch2.conv_a.kernel_size == (3, 1, 1)
    assert small_i3d().blocks[3].res_blocks[1].branch2.conv_a.kernel_size == (1, 1, 1)


@pytest.mark.parametrize("name", ["x3d_clip", "i3d"])
def test_functional_layer_with_stream_dims_and_vmap(name):
    """The functional view: two stream dims at once, and vmap over streams, equal ``forward``
    applied to each stream."""
    net = randomize(SMALL[name][0]())
    layer, params = net.layer, net.params
    xs = clip(10, batch=6).reshape(2, 3, 3, 10, CROP, CROP)
    expected = torch.stack([net(xs[i]) for i in range(2)])
    state = layer.init_state(params, (2, 3, 3, CROP, CROP), dtype=F64)
    ys, _ = layer.steps(params, state, xs, pad_end=True)
    torch.testing.assert_close(ys, expected)

    def run(x):
        return layer.steps(params, layer.init_state(params, (3, CROP, CROP), dtype=F64), x, pad_end=True)[0]

    torch.testing.assert_close(torch.vmap(run)(xs[:, 0]), expected[:, 0])


def test_training_mode_forward_and_stepping_guard():
    """``forward`` is the regular network also in training mode (batch statistics, dropout);
    stepping in training mode warns (co steps it with each step's batch statistics)."""
    net = small_slow().train()
    norm = net.blocks[0].norm
    before = norm.running_mean.clone()
    out = net(torch.randn(2, 3, 8, CROP, CROP))
    out.sum().backward()
    assert not torch.equal(norm.running_mean, before)
    assert net.blocks[5].proj.weight.grad is not None
    with pytest.warns(TrainingModeStepWarning, match="eval"):
        net.forward_step(torch.randn(2, 3, CROP, CROP))


@pytest.mark.parametrize(
    "build",
    [
        lambda: x3d("XXL"),
        lambda: x3d("S", se="global"),
        lambda: x3d("S", temporal_padding="none"),
        lambda: slow_r50(temporal_padding="same"),
        lambda: i3d_r50(head_activation="relu"),
    ],
)
def test_invalid_options_are_rejected(build):
    with torch.device("meta"), pytest.raises(ConfigurationError):
        build()


# --- defaults, sizes and slices ---------------------------------------------------------------


def test_x3d_defaults_to_the_published_continual_model():
    """``x3d(size)`` is CoX3D (frame-scope SE: a 60-frame stream predicts), ``se="clip"`` the
    original X3D; sizes in any case."""
    with torch.device("meta"):
        default, original = x3d("s"), x3d("S", se="clip")
    assert default.config["se"] == "frame" and default.config["size"] == "S"
    assert (default.delay, original.delay) == (40, 220)
    with pytest.raises(ConfigurationError, match="size"):
        x3d("xxs")


@pytest.mark.parametrize(
    "build",
    [
        lambda: x3d("XS", num_classes=K, crop_size=96, stem_dim_in=4, head_dim_out=16, depth_factor=0.5),
        lambda: slow_r50(num_classes=K, crop_size=96, stem_dim_out=4, stage_depths=(1, 1, 1, 1)),
        lambda: i3d_r50(num_classes=K, crop_size=96, stem_dim_out=4, stage_depths=(1, 1, 1, 1)),
    ],
    ids=["x3d", "slow", "i3d"],
)
def test_too_small_frames_fail_when_the_stream_starts(build):
    """Frames that leave the head's pool no window (96-pixel crops: a 3x3 head pool over the
    32-fold downsampled frame) raise InputShapeError at the first step, in forward and in the
    functional init_state, before any state is stored."""
    from cofunc import InputShapeError

    net = randomize(build())
    smallest = net.min_frame_size()
    assert smallest == 65  # ceil(side / 32) >= 3
    side = smallest - 1
    with pytest.raises(InputShapeError, match=rf"frames of {side}x{side} .*at least {smallest}x{smallest}"):
        net.forward_step(torch.randn(1, 3, side, side, dtype=F64))
    assert net.get_state() is None
    with pytest.raises(InputShapeError, match="too small"):
        net(torch.randn(1, 3, 8, side, side, dtype=F64))
    with pytest.raises(InputShapeError, match="smaller than the pooling window"):
        net.layer.init_state(net.params, (1, 3, side, smallest))
    # The smallest size steps, and so do larger frames (the head averages its maps over space).
    for size in (smallest, 100):
        net.clean_state()
        xs = torch.randn(1, 3, net.delay + 2, size, size, dtype=F64)
        with torch.no_grad():
            out = net.forward_steps(xs)
        assert out is not None and out.shape[:2] == (1, K)


def test_slices_are_continual_networks():
    """``net[:-1]`` is the network without its head: a VideoNet sharing the blocks, with
    pytorchvideo's names, whose steps equal its forward."""
    net = randomize(small_x3d(se="frame"))
    features = net[:-1]
    assert type(features) is type(net) and len(features) == len(net) - 1
    assert set(features.state_dict()) == {k for k in net.state_dict() if not k.startswith(f"blocks.{len(net) - 1}.")}
    assert features[0] is net[0] is net.blocks[0]
    xs = clip(10)
    with torch.no_grad():
        want = features(xs)
        assert want.shape[:3] == (2, net[-1].pool.pre_conv.in_channels, 10)
        torch.testing.assert_close(features.forward_steps(xs, pad_end=True), want)
        torch.testing.assert_close(net[-1](want), net(xs))  # the head on the features: the network
        features.clean_state()
        outs = [features.forward_step(xs[:, :, t]) for t in range(10)]
    emitted = torch.stack([y for y in outs if y is not None], dim=2)
    assert emitted.shape[2] == 10 - features.delay
    torch.testing.assert_close(emitted, want[:, :, : emitted.shape[2]])
    assert [type(b).__name__ for b in net] == ["Sequential"] * len(net)
