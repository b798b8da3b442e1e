"""`cofunc.nn.continual` on torchvision's video classification networks (``r3d_18``,
``mc3_18``, ``r2plus1d_18``, ``s3d``, and a ``VideoResNet`` of ``Bottleneck`` blocks).

The converted network's clip ``forward`` is checked against torchvision's on the same weights,
its steps against its ``forward``. torchvision only imports beside the torch of the second venv,
so every test is marked ``pytorchvideo`` (``make test-pytorchvideo``); torchvision is imported
inside the tests, so collection works without it. Weights are random (no downloads),
batch-norm statistics randomised so that every branch counts, models in eval mode.

torchvision's networks map clips ``(B, 3, T, H, W)`` to scores ``(B, K)``; the continual ones to
``(B, K, T')``, one score vector per temporal window, ``T' = 1`` for a clip that fills it.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import cofunc
import cofunc.nn as cn
from cofunc.demo import randomize_norms

pytestmark = [pytest.mark.pytorchvideo, pytest.mark.usefixtures("one_thread")]

TOL = dict(atol=2e-5, rtol=1e-4)
RESNETS = ("r3d_18", "mc3_18", "r2plus1d_18")


@pytest.fixture(scope="module")
def tvm():
    import torchvision.models.video as tvm

    return tvm


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random norms (torchvision initialises them to the identity) and classifier weights
    (torchvision's 0.01 makes tiny scores), eval mode."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.1, generator=g)
    return randomize_norms(net, seed)


def clip(t: int, size: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, t, size, size, generator=torch.Generator().manual_seed(seed))


def pool_frames(net: torch.nn.Module, x: torch.Tensor, before: str) -> int:
    """Frames reaching ``net``'s child ``before`` for the clip ``x`` (torchvision's own forward)."""
    seen = {}

    def record(module, args):
        seen["t"] = args[0].shape[2]

    hook = getattr(net, before).register_forward_pre_hook(record)
    with torch.no_grad():
        net(x)
    hook.remove()
    return seen["t"]


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_forward_equals_torchvision(tvm, name):
    tv = randomize(getattr(tvm, name)(num_classes=10))
    net = cn.continual(tv)
    assert type(net) is cn.Sequential
    assert list(net.state_dict()) == list(tv.state_dict())
    x = clip(16, 32, batch=2)
    with torch.no_grad():
        want, got = tv(x), net(x)
    assert got.shape == (2, 10, 1)
    torch.testing.assert_close(got[..., 0], want, **TOL)
    # The default window is what a 16-frame clip leaves at the pool, in torchvision's forward.
    assert net.avgpool.kernel_size == pool_frames(tv, x, "avgpool")
    # torchvision's weights load unchanged, and conversion copies them (the source is untouched).
    fresh = cn.continual(randomize(getattr(tvm, name)(num_classes=10), seed=5))
    fresh.load_state_dict(tv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), got, atol=0, rtol=0)
        tv.fc.weight.add_(1.0)
        torch.testing.assert_close(net(x), got, atol=0, rtol=0)


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_steps_equal_forward(tvm, name):
    tv = randomize(getattr(tvm, name)(num_classes=10), seed=2)
    net = cn.continual(tv, temporal_window=2)
    # Spatial 16: the final maps are 1x1; long enough for several single-step outputs.
    x = clip(net.delay + 12, 16, seed=3)
    with torch.no_grad():
        want = net(x)
        assert want.shape[-1] > 3
        torch.testing.assert_close(net.forward_steps(x, pad_end=True), want, **TOL)
        net.clean_state()
        outs = [net.forward_step(x[:, :, t]) for t in range(x.shape[2])]
    emitted = [(t, y) for t, y in enumerate(outs) if y is not None]
    assert emitted[0][0] == net.delay
    assert all((t - net.delay) % net.stride[0] == 0 for t, _ in emitted)
    got = torch.stack([y for _, y in emitted], dim=-1)
    torch.testing.assert_close(got, want[..., : got.shape[-1]], **TOL)


@pytest.mark.parametrize("name", ("r3d_18", "r2plus1d_18"))
def test_converted_network_folds_its_batch_norms(tvm, name):
    """`fold_batch_norms` on a converted torchvision network: every norm follows a conv inside a
    Sequential (r(2+1)d's mid norm included), so all fold; the clip and the steps stay equal."""
    tv = randomize(getattr(tvm, name)(num_classes=10), seed=4)
    net = cn.continual(tv, temporal_window=2)
    folded = cn.fold_batch_norms(net)
    norms = lambda m: sum(isinstance(n, torch.nn.modules.batchnorm._BatchNorm) for n in m.modules())  # noqa: E731
    assert norms(net) > 0 and norms(folded) == 0
    x = clip(net.delay + 3, 16, seed=5)
    with torch.no_grad():
        want = net(x)
        torch.testing.assert_close(folded(x), want, **TOL)
        torch.testing.assert_close(folded.forward_steps(x, pad_end=True), want, **TOL)


def test_resnet_window_matches_a_longer_torchvision_clip(tvm):
    """With ``temporal_window`` = the pooled frames of a longer clip, forward equals
    torchvision on that clip (the window is the only clip length a stream knows)."""
    tv = randomize(tvm.r2plus1d_18(num_classes=7), seed=4)
    x = clip(32, 16, seed=6)
    net = cn.continual(tv, temporal_window=pool_frames(tv, x, "avgpool"))
    with torch.no_grad():
        torch.testing.assert_close(net(x)[..., 0], tv(x), **TOL)


def test_bottleneck_video_resnet(tvm):
    """torchvision's ``Bottleneck`` (no builder uses it): 1x1x1, 3x3x3 (temporal stride 2), 1x1x1."""
    from torchvision.models.video.resnet import BasicStem, Bottleneck, Conv3DSimple, VideoResNet

    tv = randomize(VideoResNet(Bottleneck, [Conv3DSimple] * 4, [1, 2, 1, 1], BasicStem, num_classes=5), seed=7)
    net = cn.continual(tv)
    assert list(net.state_dict()) == list(tv.state_dict())
    x = clip(16, 16, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(net(x)[..., 0], tv(x), **TOL)
        long = clip(net.delay + 10, 16, seed=9)
        torch.testing.assert_close(net.forward_steps(long, pad_end=True), net(long), **TOL)


def test_blocks_alone(tvm):
    """Each block converts on its own: a strided BasicBlock with downsample steps as its
    torchvision forward computes."""
    tv = randomize(tvm.r3d_18(), seed=10)
    block = cn.continual(tv.layer2[0])
    assert type(block).__name__ == "VideoResidualBlock" and block.downsample is not None
    assert block.stride == (2,)
    x = torch.randn(1, 64, 9, 8, 8)
    with torch.no_grad():
        want = tv.layer2[0](x.clone())
        torch.testing.assert_close(block(x), want, **TOL)
        torch.testing.assert_close(block.forward_steps(x, pad_end=True), want, **TOL)


def test_s3d_forward_and_steps(tvm):
    """S3D at its smallest input (16 frames of 224x224: its 2x7x7 pool needs 7x7 maps)."""
    tv = randomize(tvm.s3d(num_classes=6), seed=11)
    net = cn.continual(tv)
    assert list(net.state_dict()) == list(tv.state_dict())
    x = clip(16, 224, seed=12)
    with torch.no_grad():
        want, got = tv(x), net(x)
        assert got.shape == (1, 6, 1)
        torch.testing.assert_close(got[..., 0], want, **TOL)
        torch.testing.assert_close(net.forward_steps(x, pad_end=True), got, **TOL)


def test_s3d_features_step_by_step(tvm):
    """S3D's features (separable convs, max pools, inception blocks) frame by frame, on small
    frames (the features have no minimum size; the head's 7x7 pool does)."""
    tv = randomize(tvm.s3d(), seed=13)
    features = cn.continual(tv.features)
    x = clip(features.delay + 18, 32, seed=14)
    with torch.no_grad():
        want = tv.features(x)
        torch.testing.assert_close(features(x), want, **TOL)
        outs = [features.forward_step(x[:, :, t]) for t in range(x.shape[2])]
    got = torch.stack([y for y in outs if y is not None], dim=2)
    assert got.shape[2] >= 2
    torch.testing.assert_close(got, want[:, :, : got.shape[2]], **TOL)


def test_s3d_temporal_window(tvm):
    tv = randomize(tvm.s3d(num_classes=3), seed=15)
    net = cn.continual(tv, temporal_window=2)
    assert net.mean.kernel_size == 2
    x = clip(24, 224, seed=16)  # 24 frames leave 2 at the final mean
    with torch.no_grad():
        torch.testing.assert_close(net(x)[..., 0], tv(x), **TOL)


def test_converted_model_is_a_continual_module(tvm):
    """What a user does next: print it, copy it, pickle it, export its step."""
    net = cn.continual(randomize(tvm.mc3_18(num_classes=4), seed=17), temporal_window=1)
    text = repr(net)
    assert "VideoResidualBlock" in text and "AdaptiveAvgPool3d(output_size=(1, 1, 1), kernel_size=1)" in text
    x = clip(4, 16, seed=18)
    with torch.no_grad():
        want = net(x)
        for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
            torch.testing.assert_close(other(x), want, atol=0, rtol=0)
        # The functional core runs it as any layer: many streams, one step each.
        layer, params = net.layer, net.params
        frames = torch.randn(3, 3, 16, 16)
        state = layer.init_state(params, frames.shape)
        for _ in range(net.delay + 1):
            y, state = layer.step(params, state, frames)
        assert y.shape == (3, 4) and bool(layer.valid(state).all())


def test_bad_temporal_window(tvm):
    with pytest.raises(cofunc.ConfigurationError, match="temporal_window"):
        cn.continual(tvm.r3d_18(), temporal_window=0)
