"""The continual model zoo: video networks whose weights load from their regular counterparts.

- `x3d` (CoX3D): pytorchvideo's X3D-XS/S/M/L.
- `slow_r50` (CoSlow) and `i3d_r50` (CoI3D): pytorchvideo's Slow-8x8-R50 and I3D-8x8-R50.
- `st_gcn` (ST-GCN / CoST-GCN), `agcn` (AGCN / CoAGCN), `s_tr` (S-TR / CoS-TR): skeleton action
  recognition on NTU RGB+D, clips ``(B, 3, T, 25, M)``; ``variant="original"`` or ``"star"``.
- `oadtr` (OadTR-b1/-b2 / CoOadTR): online action detection on feature vectors,
  ``(B, 3072 | 4096, T) -> (B, 22, T - 63)``.
- `from_slowfast_x3d`, `from_continual_skeletons`, `from_cooadtr`: the seed papers' published
  checkpoints (SlowFast / co3d, continual-skeletons, CoOadTR) as state dicts for these builders.

Each builder returns a `VideoNet` (a `cofunc.nn.Sequential`) whose ``state_dict`` keys are
pytorchvideo's: the weights of pytorchvideo's hub models (``checkpoint["model_state"]``) load
with ``load_state_dict``, no conversion needed.
"""

from cofunc import CheckpointError

from ._blocks import ResBlock, SqueezeExcitation, Swish, VideoNet
from ._preprocessing import VideoPreprocessing, video_preprocessing
from .checkpoints import from_continual_skeletons, from_cooadtr, from_slowfast_x3d
from .oadtr import OadTR, oadtr
from .resnet3d import i3d_r50, slow_r50
from .skeleton import SkeletonNet, agcn, s_tr, st_gcn
from .x3d import x3d

__all__ = [
    "CheckpointError",
    "OadTR",
    "ResBlock",
    "SkeletonNet",
    "SqueezeExcitation",
    "Swish",
    "VideoNet",
    "VideoPreprocessing",
    "agcn",
    "from_continual_skeletons",
    "from_cooadtr",
    "from_slowfast_x3d",
    "i3d_r50",
    "oadtr",
    "s_tr",
    "slow_r50",
    "st_gcn",
    "video_preprocessing",
    "x3d",
]
