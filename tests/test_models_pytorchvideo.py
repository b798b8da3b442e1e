"""`cofunc.models` against pytorchvideo 0.1.5: the same architectures, the same parameter names,
and the same outputs for the same weights.

Needs pytorchvideo (and a torchvision that imports beside torch), so it runs in a separate
environment: every test is marked ``pytorchvideo`` (select with ``-m pytorchvideo``, deselect
with ``-m "not pytorchvideo"``); pytorchvideo is imported inside the tests, so collection works
without it.

pytorchvideo networks map clips ``(B, 3, T, H, W)`` to scores ``(B, K)``; the continual ones to
``(B, K, T')``, with ``T' = 1`` for a clip of the model's length.
"""

from __future__ import annotations

import pytest
import torch

from cofunc.demo import randomize_norms
from cofunc.models import i3d_r50, slow_r50, x3d

pytestmark = [pytest.mark.pytorchvideo, pytest.mark.usefixtures("one_thread")]

FLOAT32_TOL = dict(atol=1e-5, rtol=1e-4)




@pytest.fixture(scope="module")
def hub():
    from pytorchvideo.models import hub

    return hub


# Random norms: pytorchvideo zeroes the last norm of each residual branch, which would hide
# those branches.
randomize = randomize_norms


def shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize(
    "hub_name, build",
    [
        ("x3d_xs", lambda: x3d("XS", se="clip")),
        ("x3d_s", lambda: x3d("S", se="clip")),
        ("x3d_m", lambda: x3d("M", se="clip")),
        ("x3d_l", lambda: x3d("L", se="clip")),
        ("slow_r50", slow_r50),
        ("i3d_r50", i3d_r50),
    ],
)
def test_full_size_architectures_have_pytorchvideos_parameters(hub, hub_name, build):
    """Every hub model's state_dict keys and shapes, full size (built on the meta device)."""
    with torch.device("meta"):
        theirs = getattr(hub, hub_name)(pretrained=False)
        ours = build()
    assert shapes(ours) == shapes(theirs)


def _compare(theirs, ours, xs, exact=False):
    """Load pytorchvideo's weights into ours (and back), then compare the backbone's feature
    maps (the scores of random networks hardly depend on the input, so they alone would miss
    small errors), the clip outputs, and the outputs of stepping the clip from a fresh state
    with ``pad_end``."""
    randomize(theirs)
    ours.eval().load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())  # and back: the same names both ways
    with torch.no_grad():
        features = xs
        for block in theirs.blocks[:-1]:
            features = block(features)
        ours_features = ours.blocks[:-1](xs)
        assert torch.equal(ours[:-1](xs), ours_features)  # net[:-1]: the same blocks
        if exact:
            assert torch.equal(ours_features, features)
        else:
            torch.testing.assert_close(ours_features, features, **FLOAT32_TOL)
        expected = theirs(xs)
        out = ours(xs)
        assert out.shape == expected.shape + (1,)
        if exact:
            assert torch.equal(out[..., 0], expected)
        else:
            torch.testing.assert_close(out[..., 0], expected, **FLOAT32_TOL)
        stepped = ours.forward_steps(xs, pad_end=True)
    torch.testing.assert_close(stepped, out, **FLOAT32_TOL)


def test_x3d_xs_hub_model(hub):
    """The hub's X3D-XS (4 frames of 160x160), with raw scores (no softmax)."""
    torch.manual_seed(0)
    theirs = hub.x3d_xs(pretrained=False, model_num_class=7, head_activation=None)
    ours = x3d("XS", num_classes=7, se="clip", head_activation=None)
    _compare(theirs, ours, torch.randn(1, 3, 4, 160, 160))


def test_x3d_s_clip_length(hub):
    """X3D-S's 13-frame clips (SE over 13 frames, head pool 13) at 64x64 with depth factor 1.
    Raw scores: pytorchvideo's default softmax would hide small differences."""
    from pytorchvideo.models.x3d import create_x3d

    torch.manual_seed(0)
    theirs = create_x3d(input_clip_length=13, input_crop_size=64, depth_factor=1.0, model_num_class=7,
                        head_activation=None)
    ours = x3d("S", num_classes=7, crop_size=64, depth_factor=1.0, se="clip", head_activation=None)
    _compare(theirs, ours, torch.randn(2, 3, 13, 64, 64))


def test_x3d_default_softmax_head(hub):
    """Both default to a softmax over the classes."""
    from pytorchvideo.models.x3d import create_x3d

    torch.manual_seed(0)
    theirs = create_x3d(input_clip_length=4, input_crop_size=32, depth_factor=0.5, model_num_class=7)
    ours = x3d("XS", num_classes=7, crop_size=32, depth_factor=0.5, se="clip")
    xs = torch.randn(2, 3, 4, 32, 32)
    _compare(theirs, ours, xs)
    with torch.no_grad():
        torch.testing.assert_close(ours(xs).sum(dim=1), torch.ones(2, 1))


def test_slow_r50_hub_model(hub):
    """The hub's Slow-8x8-R50 at its 224x224 input, narrowed to 8 stem channels."""
    torch.manual_seed(0)
    theirs = hub.slow_r50(pretrained=False, model_num_class=7, stem_dim_out=8)
    ours = slow_r50(num_classes=7, stem_dim_out=8)
    _compare(theirs, ours, torch.randn(1, 3, 8, 224, 224), exact=True)


def test_i3d_r50_hub_model(hub):
    """The hub's I3D-8x8-R50 (temporal pool after res2) at 224x224, 8 stem channels."""
    torch.manual_seed(0)
    theirs = hub.i3d_r50(pretrained=False, model_num_class=7, stem_dim_out=8)
    ours = i3d_r50(num_classes=7, stem_dim_out=8)
    _compare(theirs, ours, torch.randn(1, 3, 8, 224, 224), exact=True)


def test_i3d_r50_small_crop(hub):
    """A 64x64 crop: the head's spatial pool shrinks to 2x2 on both sides."""
    torch.manual_seed(0)
    theirs = hub.i3d_r50(pretrained=False, model_num_class=7, stem_dim_out=8, head_pool_kernel_size=(4, 2, 2))
    ours = i3d_r50(num_classes=7, stem_dim_out=8, crop_size=64)
    _compare(theirs, ours, torch.randn(2, 3, 8, 64, 64), exact=True)
