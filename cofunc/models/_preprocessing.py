"""What a video zoo model expects of its frames: frame rate, resize, crop, normalisation.

The values are those of pytorchvideo's published Kinetics-400 models (its hub tutorial's
``model_transform_params``, the frame rate being 30 fps divided by the sampling rate):

| model | frames per second | short side | centre crop | mean | std |
| --- | --- | --- | --- | --- | --- |
| X3D-XS | 2.5 (every 12th of 30) | 182 | 182 | 0.45 | 0.225 |
| X3D-S | 5 (every 6th) | 182 | 182 | 0.45 | 0.225 |
| X3D-M | 6 (every 5th) | 256 | 256 | 0.45 | 0.225 |
| X3D-L | 6 (every 5th) | 320 | 320 | 0.45 | 0.225 |
| Slow-8x8-R50, I3D-8x8-R50 | 3.75 (every 8th) | 256 | 256 | 0.45 | 0.225 |

The hub models are tested on larger frames than the ``crop_size`` they are built with (182 for
X3D-S, built for 160); a model built with another ``crop_size`` scales side and crop by the
same factor, so small test models get proportionally small frames.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cofunc import ConfigurationError, InputShapeError

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

# model: (frames per second, test size, crop_size the model is built with by default)
_PUBLISHED = {
    "x3d_xs": (30 / 12, 182, 160),
    "x3d_s": (30 / 6, 182, 160),
    "x3d_m": (30 / 5, 256, 224),
    "x3d_l": (30 / 5, 320, 312),
    "slow_r50": (30 / 8, 256, 224),
    "i3d_r50": (30 / 8, 256, 224),
}


@dataclasses.dataclass(frozen=True)
class VideoPreprocessing:
    """Turns decoded RGB frames into a model's input frames.

    ``frame_rate``: frames per second the model steps at (a video is sampled to it; None keeps
    every frame). Each kept frame ``(H, W, 3)`` uint8 is scaled to [0, 1], normalised with
    ``mean`` and ``std``, resized (bilinear) so that its short side is ``side_size`` and centre
    cropped to ``crop_size`` squared: the order and operations of pytorchvideo's transforms
    (``Div255``, ``Normalize``, ``ShortSideScale``, ``CenterCrop``).

    Example:
        >>> import torch
        >>> pre = VideoPreprocessing(frame_rate=5.0, side_size=36, crop_size=32)
        >>> pre(torch.zeros(48, 64, 3, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
        >>> pre.frame_shape
        (3, 32, 32)
    """

    frame_rate: Optional[float]
    side_size: int
    crop_size: int
    mean: Tuple[float, ...] = KINETICS_MEAN
    std: Tuple[float, ...] = KINETICS_STD

    @property
    def frame_shape(self) -> Tuple[int, int, int]:
        """The shape of a preprocessed frame, ``(3, crop_size, crop_size)``."""
        return (len(self.mean), self.crop_size, self.crop_size)

    def __call__(self, frame: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(H, W, C)`` uint8 (as decoded) -> ``(C, crop_size, crop_size)`` of ``dtype``."""
        if frame.dim() != 3 or frame.shape[-1] != len(self.mean):
            raise InputShapeError(f"VideoPreprocessing: expected an (H, W, {len(self.mean)}) frame, got shape "
                                  f"{tuple(frame.shape)}")
        x = frame.permute(2, 0, 1).to(dtype) / 255.0
        mean = torch.tensor(self.mean, dtype=dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype).view(-1, 1, 1)
        x = (x - mean) / std
        h, w = x.shape[-2:]
        if min(h, w) != self.side_size:
            # pytorchvideo's ShortSideScale: the short side to side_size, the long one floored.
            if w < h:
                size = (int(math.floor(float(h) / w * self.side_size)), self.side_size)
            else:
                size = (self.side_size, int(math.floor(float(w) / h * self.side_size)))
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
            h, w = size
        if h < self.crop_size or w < self.crop_size:
            raise InputShapeError(f"VideoPreprocessing: a frame of {h}x{w} after resizing is smaller than the "
                                  f"{self.crop_size}x{self.crop_size} crop")
        top = (h - self.crop_size) // 2
        left = (w - self.crop_size) // 2
        return x[:, top: top + self.crop_size, left: left + self.crop_size].contiguous()


def video_preprocessing(config: dict) -> VideoPreprocessing:
    """The published preprocessing of the zoo video model built with ``config`` (`VideoNet.config`)."""
    name = config.get("model") or (f"x3d_{config['size'].lower()}" if "size" in config else None)
    if name not in _PUBLISHED:
        raise ConfigurationError(f"video_preprocessing: no published preprocessing for model {name!r}; "
                                 f"known: {', '.join(_PUBLISHED)}")
    fps, size, built_crop = _PUBLISHED[name]
    size = int(round(size * config.get("crop_size", built_crop) / built_crop))
    return VideoPreprocessing(frame_rate=fps, side_size=size, crop_size=size)
