"""`from_slowfast_x3d` against pytorchvideo 0.1.5's own X3D: a state dict with SlowFast's X3D
names and shapes (`_slowfast_x3d`), converted, loads strictly into ``create_x3d`` and gives the
scores of SlowFast's forward on the original names (the shortcut batch norm folded). Runs in the
pytorchvideo environment (``make test-pytorchvideo``)."""

from __future__ import annotations

import pytest
import torch

from _slowfast_x3d import slowfast_x3d_forward, slowfast_x3d_state_dict
from cofunc.models import from_slowfast_x3d, x3d

pytestmark = pytest.mark.pytorchvideo


def test_converted_slowfast_checkpoint_runs_in_pytorchvideos_x3d():
    from pytorchvideo.models.x3d import create_x3d

    sd = slowfast_x3d_state_dict(num_classes=5, dim_c1=4, dim_c5=16, depth_factor=1.0)
    theirs = create_x3d(input_clip_length=4, input_crop_size=32, model_num_class=5, depth_factor=1.0,
                        stem_dim_in=4, head_dim_out=16, head_activation=None).double().eval()
    converted = from_slowfast_x3d({"model_state": sd})
    theirs.load_state_dict(converted, strict=True)
    ours = x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0, se="clip",
               head_activation=None).double().eval()
    ours.load_state_dict(from_slowfast_x3d(sd, ours), strict=True)
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        want = slowfast_x3d_forward(sd, x, softmax=False)
        torch.testing.assert_close(theirs(x), want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours(x)[:, :, 0], want, rtol=1e-10, atol=1e-12)
