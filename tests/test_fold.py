"""`cofunc.nn.fold_batch_norms`: eval batch norms folded into the convolutions before them.

The folded network computes what the unfolded one does (clips and streams, every padding mode
and temporal fill), up to float rounding; what it cannot fold it leaves alone.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import cofunc
import cofunc.models
import cofunc.nn as co
from cofunc import ConfigurationError
from cofunc.demo import randomize_norms
from conftest import conv_configs

BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
CONVS = {1: co.Conv1d, 2: co.Conv2d, 3: co.Conv3d}


def _norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _close(a, b, scale=None):
    scale = max(1.0, float(b.abs().max())) if scale is None else scale
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5 * scale)


def _stepped(net: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """Every step output of a fresh stream over ``clip`` (time axis 2), stacked on time."""
    net.clean_state()
    outs = [net.forward_step(frame) for frame in clip.unbind(2)]
    return torch.stack([y for y in outs if y is not None], 2)


@given(cfg=conv_configs(), length=st.integers(0, 5), affine=st.booleans(), seed=st.integers(0, 2**16))
def test_folded_conv_equals_conv_then_norm(cfg, length, affine, seed):
    torch.manual_seed(seed)
    conv = CONVS[cfg.dims](**cfg.kwargs)
    net = randomize_norms(co.Sequential(conv, BATCH_NORMS[cfg.dims](conv.out_channels, affine=affine), nn.ReLU()), seed)
    folded = co.fold_batch_norms(net)
    assert _norms(folded) == 0 and _norms(net) == 1, "a copy is folded, the original kept"
    assert isinstance(folded[0], CONVS[cfg.dims]) and isinstance(folded[1], nn.Identity)
    assert folded[0].bias is not None and folded[0].temporal_fill == conv.temporal_fill
    t = max(net.receptive_field, 1) + length
    x = torch.randn((2, conv.in_channels, t) + cfg.spatial)
    with torch.no_grad():
        want = net(x)
        _close(folded(x), want)
        _close(_stepped(folded, x), _stepped(net, x))


def test_torch_modules_and_nesting_fold():
    """Plain torch Sequentials fold too, through nested Sequentials; other pairs stay."""
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False)),
        nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
        nn.BatchNorm2d(4),  # after a ReLU: not foldable
        nn.Conv2d(4, 4, 1),
        nn.BatchNorm2d(4, track_running_stats=False),  # batch statistics even in eval mode
        nn.ConvTranspose2d(4, 4, 1),
        nn.BatchNorm2d(4),  # after a transposed conv: left alone
    )
    net = randomize_norms(net)
    folded = co.fold_batch_norms(net)
    assert isinstance(folded[1][0], nn.Identity) and type(folded[0][0]) is nn.Conv2d
    assert isinstance(folded[2], nn.BatchNorm2d) and isinstance(folded[4], nn.BatchNorm2d)
    assert isinstance(folded[6], nn.BatchNorm2d)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        _close(folded(x), net(x))


def test_training_mode_is_refused_and_nothing_changes():
    net = co.Sequential(co.Conv1d(2, 3, 3), nn.BatchNorm1d(3))
    with pytest.raises(ConfigurationError, match=r"fold_batch_norms: .*training mode.*\.eval\(\)"):
        co.fold_batch_norms(net)
    assert isinstance(net[1], nn.BatchNorm1d)
    with pytest.raises(ConfigurationError, match="expected an nn.Module"):
        co.fold_batch_norms(net.layer)


def test_channel_mismatch_names_the_modules_and_changes_nothing():
    net = nn.Sequential(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3), nn.Sequential(nn.Conv1d(3, 3, 1), nn.BatchNorm1d(5))).eval()
    with pytest.raises(ConfigurationError, match=r"2.0 then 2.1: BatchNorm1d\(5\) follows a convolution with 3 output"):
        co.fold_batch_norms(net, inplace=True)
    assert isinstance(net[1], nn.BatchNorm1d) and net[0].bias is not None and _norms(net) == 2


class _Gated(nn.Sequential):
    """A Sequential whose forward is not a chain of its children."""

    def forward(self, x):
        return self[0](x) * self[1](x)


def test_inplace_and_overridden_forward():
    net = randomize_norms(nn.Sequential(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3), _Gated(nn.Conv1d(3, 3, 1), nn.BatchNorm1d(3))))
    x = torch.randn(1, 2, 4)
    with torch.no_grad():
        want = net(x)
        same = co.fold_batch_norms(net, inplace=True)
        assert same is net and isinstance(net[1], nn.Identity) and isinstance(net[2][1], nn.BatchNorm1d)
        _close(net(x), want)


def test_continual_refuses_a_subclass_with_its_own_forward():
    """The Sequential converter would chain _Gated's children: a different computation."""
    with pytest.raises(cofunc.UnsupportedModuleError, match=r"_Gated subclasses torch.nn.modules.container.Sequential but overrides forward"):
        co.continual(_Gated(nn.Conv1d(3, 3, 1), nn.BatchNorm1d(3)))
    with pytest.raises(cofunc.UnsupportedModuleError, match="overrides forward"):
        co.Sequential(co.Conv1d(2, 3, 1), _Gated(nn.Conv1d(3, 3, 1), nn.BatchNorm1d(3)))


def test_folded_model_prints_pickles_and_keeps_training_flag():
    net = randomize_norms(co.Sequential(co.Conv3d(3, 4, (3, 1, 1), padding=(1, 0, 0), bias=False), nn.BatchNorm3d(4)))
    folded = co.fold_batch_norms(net)
    assert "Identity()" in repr(folded) and "bias=False" not in repr(folded)
    assert not folded.training and set(folded.state_dict()) == {"0.weight", "0.bias"}
    again = pickle.loads(pickle.dumps(folded))
    x = torch.randn(1, 3, 5, 2, 2)
    with torch.no_grad():
        _close(again(x), net(x))


@pytest.mark.parametrize("build", [
    lambda: cofunc.models.x3d("XS", crop_size=32, num_classes=5),
    lambda: cofunc.models.slow_r50(crop_size=32, num_classes=5),
    lambda: cofunc.models.st_gcn(num_classes=5, clip_length=12),
], ids=["x3d", "slow", "st_gcn"])
def test_zoo_models_fold_every_norm_after_a_conv(build):
    torch.manual_seed(0)
    net = randomize_norms(build())
    folded = co.fold_batch_norms(net)
    assert _norms(folded) < _norms(net)
    if not hasattr(net, "config") or "crop_size" not in net.config:  # a skeleton network
        x = torch.randn(1, 3, net.receptive_field + 2, 25, 2)
        # Left: the data norm (first, no conv before it) and each graph unit's norm (after a
        # sum over the graph's partitions, not one conv).
        assert all(type(m).__name__ in ("DataNorm", "BatchNorm2d") for m in folded.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm))
    else:
        x = torch.randn(1, 3, net.receptive_field + 2, 32, 32)
        assert _norms(folded) == 0
    with torch.no_grad():
        want = net(x)
        _close(folded(x), want)
        _close(_stepped(folded, x), _stepped(net, x), scale=max(1.0, float(want.abs().max())))
