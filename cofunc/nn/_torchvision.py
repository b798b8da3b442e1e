"""Converters for torchvision's video classification networks (``torchvision.models.video``):
``r3d_18``, ``mc3_18``, ``r2plus1d_18`` (`VideoResNet` with ``BasicBlock`` or ``Bottleneck``)
and ``s3d``.

Imported by `continual` the first time it meets a module from ``torchvision`` (so that
``import cofunc.nn`` never imports torchvision). torchvision's ``nn.Sequential`` subclasses
(``Conv2Plus1D``, ``BasicStem``, ``R2Plus1dStem``, ``TemporalSeparableConv``,
``Conv3dNormActivation``) and ``nn.Conv3d`` subclasses (``Conv3DSimple``,
``Conv3DNoTemporal``) convert as their torch.nn base classes; this module adds the residual
blocks, the inception block and the two networks, whose ``forward`` methods compute more than
their children (a sum, a concatenation, a flatten, a mean).

Every converted module keeps torchvision's child names, so ``state_dict`` keys are
torchvision's and its weights load unchanged. Clips ``(B, 3, T, H, W)``, steps ``(B, 3, H, W)``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from torch import Tensor, nn
from torchvision.models.video import S3D, VideoResNet
from torchvision.models.video.resnet import BasicBlock, Bottleneck
from torchvision.models.video.s3d import SepInceptionBlock3D

from .. import ConfigurationError, Delay, Layer, Remap, broadcast_reduce, residual_alignment, seq
from .container import BroadcastReduce, Sequential
from .convert import continual, register, temporal_window
from .linear import Linear
from .module import ContinualModule
from .pooling import AdaptiveAvgPool3d
from .shape import Reshape

#: The clip length (input frames) whose pooled frames the final temporal pool averages when
#: `continual` gets no ``temporal_window``: torchvision's video references train and evaluate
#: the ResNets on 16-frame clips.
DEFAULT_CLIP_LENGTH = 16


class VideoResidualBlock(ContinualModule):
    """torchvision's ``BasicBlock`` / ``Bottleneck``: ``relu(downsample(x) + convs(x))``, with
    ``convs`` its children ``conv1``, ``conv2`` (and ``conv3``), each a continual `Sequential`.

    The shortcut (``x``, or ``downsample(x)`` when channels or strides change) is delayed to
    meet the convolutions' output: by their delay (in input steps; after a temporally strided
    ``downsample``, the delay goes before it).
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self._conv_names = tuple(name for name in ("conv1", "conv2", "conv3") if hasattr(block, name))
        for name in self._conv_names:
            setattr(self, name, continual(getattr(block, name)))
        self.downsample = None if block.downsample is None else continual(block.downsample)
        self.relu = continual(block.relu)
        self.train(block.training)

    def _main(self) -> Layer:
        return seq(OrderedDict((name, getattr(self, name)._hooked_layer()) for name in self._conv_names))

    def _shrink(self) -> Optional[Layer]:
        """The frames of ``x`` a shortcut without ``downsample`` keeps (None: the block's
        broadcast-reduce delays it). torchvision pads its convolutions equally, so None."""
        return residual_alignment(self._main(), "centered", delay_equal=False)

    def _build_layer(self) -> Layer:
        main = self._main()
        if self.downsample is not None:
            shortcut = self.downsample._hooked_layer()
        else:
            shortcut = self._shrink() or Delay(0, main.step_rank)
        if shortcut.stride != main.stride:
            raise ConfigurationError(
                f"{type(self).__name__}: the shortcut's temporal stride {shortcut.stride} differs from the "
                f"convolutions' {main.stride}"
            )
        block = broadcast_reduce(OrderedDict(shortcut=shortcut, main=main), reduce="sum")
        body = seq(OrderedDict(add=block, relu=self.relu._hooked_layer()))
        # Params are the block's own names: the convolutions at the top, the shortcut's under
        # "downsample".
        return Remap(body, {"add.shortcut": "downsample", "add.main": ""}, "video_residual_block")

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for name in self._conv_names:
            out = getattr(self, name)(out)
        if self.downsample is not None:
            shortcut = self.downsample(x)
        else:
            shrink = self._shrink()
            shortcut = x if shrink is None else shrink.forward({}, x)
        return self.relu(out + shortcut)


def _convert_block(block: nn.Module) -> VideoResidualBlock:
    return VideoResidualBlock(block)


def _convert_inception(block: SepInceptionBlock3D) -> BroadcastReduce:
    """S3D's inception block: four branches concatenated on the channel axis (the 1x1x1 branch
    delayed to the others' delay of 1)."""
    branches = OrderedDict((name, continual(getattr(block, name))) for name in ("branch0", "branch1", "branch2", "branch3"))
    return BroadcastReduce(branches, reduce="concat").train(block.training)


def clip_frames(layer: Layer, frames: int) -> int:
    """How many output frames ``layer``'s clip ``forward`` makes of ``frames`` input frames."""
    span = frames + layer.padding + layer.padding_end - layer.receptive_field
    return span // layer.stride + 1 if span >= 0 else 0


def _window(trunk: ContinualModule, what: str) -> int:
    """The temporal window of the final pool: `continual`'s ``temporal_window``, or the frames a
    clip of ``DEFAULT_CLIP_LENGTH`` frames leaves at the pool."""
    window = temporal_window()
    if window is None:
        window = clip_frames(trunk.layer, DEFAULT_CLIP_LENGTH)
    if not isinstance(window, int) or window < 1:
        raise ConfigurationError(f"continual({what}): temporal_window must be a positive int, got {window!r}")
    return window


def _convert_video_resnet(model: VideoResNet) -> Sequential:
    """``VideoResNet``: stem, ``layer1`` .. ``layer4``, then the adaptive pool over a temporal
    window, ``flatten`` and ``fc`` per frame: clips ``(B, 3, T, H, W) -> (B, K, T')``, steps
    ``(B, 3, H, W) -> (B, K)``."""
    trunk = Sequential(OrderedDict((name, continual(getattr(model, name)))
                                   for name in ("stem", "layer1", "layer2", "layer3", "layer4")))
    window = _window(trunk, type(model).__name__)
    parts = OrderedDict(trunk.named_children())
    parts["avgpool"] = continual(model.avgpool, temporal_window=window)
    parts["flatten"] = Reshape(-1)
    parts["fc"] = Linear.build_from(model.fc, channel_dim=1)
    return Sequential(parts).train(model.training)


def _convert_s3d(model: S3D) -> Sequential:
    """``S3D``: ``features``, ``avgpool`` (2x7x7), ``classifier`` (dropout, 1x1x1 conv), then
    the mean over a temporal window and the frame (torchvision's ``mean(dim=(2, 3, 4))``) and
    ``flatten``: clips ``(B, 3, T, H, W) -> (B, K, T')``, steps ``(B, 3, H, W) -> (B, K)``."""
    trunk = Sequential(OrderedDict((name, continual(getattr(model, name))) for name in ("features", "avgpool", "classifier")))
    window = _window(trunk, "S3D")
    parts = OrderedDict(trunk.named_children())
    parts["mean"] = AdaptiveAvgPool3d((1, 1, 1), window)
    parts["flatten"] = Reshape(-1)
    return Sequential(parts).train(model.training)


register(BasicBlock, _convert_block)
register(Bottleneck, _convert_block)
register(SepInceptionBlock3D, _convert_inception)
register(VideoResNet, _convert_video_resnet)
register(S3D, _convert_s3d)
