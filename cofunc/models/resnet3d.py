"""Continual 3D ResNets: CoSlow (Slow-8x8-R50) and CoI3D (I3D-8x8-R50).

Both are ``pytorchvideo.models.resnet.create_resnet`` with the settings of pytorchvideo's
``torch.hub`` entries ``slow_r50`` and ``i3d_r50``, as continual networks. The module tree and
parameter names are pytorchvideo's (``blocks.0.conv.weight``,
``blocks.1.res_blocks.0.branch2.conv_a.weight``, ...), so a pytorchvideo ``state_dict`` loads
unchanged.

Layout: ``forward`` takes clips ``(B, 3, T, H, W)`` and returns class scores
``(B, num_classes, T')``; ``forward_step`` takes frames ``(B, 3, H, W)`` and returns
``(B, num_classes)`` (None while warming up, and for I3D on every other step: its temporal
pool has stride 2); ``forward_steps`` takes clips and returns the emitted scores. With the
defaults, ``forward`` on a clip of ``clip_length`` frames of ``crop_size`` pixels returns one
score vector equal to pytorchvideo's output on that clip, and stepping the clip from a fresh
state with ``pad_end=True`` returns the same.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Sequence, Tuple, Union

from torch import nn

import cofunc.nn as cn
from cofunc import ConfigurationError

from ._blocks import (
    TEMPORAL_FILLS,
    TEMPORAL_PADDINGS,
    ResBlock,
    SpatialMean,
    VideoNet,
    check_choice,
    final_norm,
    head_activation_module,
    init_weights,
    stage,
    temporal_conv,
)

# The temporal kernel of each block's conv_a, per stage; a list is repeated over the stage's
# blocks (pytorchvideo's create_res_stage).
Kernels = Sequence[Union[int, Sequence[int]]]
SLOW_KERNELS: Kernels = (1, 1, 3, 3)  # create_resnet's default (1,1,1), (1,1,1), (3,1,1), (3,1,1)
I3D_KERNELS: Kernels = (3, (3, 1), (3, 1), (1, 3))  # hub i3d_r50: (3,1,1), [(3,1,1), (1,1,1)], ...
R50_DEPTHS = (3, 4, 6, 3)


def slow_r50(
    num_classes: int = 400,
    *,
    clip_length: int = 8,
    crop_size: int = 224,
    temporal_padding: str = "keep",
    temporal_fill: str = "zeros",
    head_pool: Optional[int] = None,
    stem_dim_out: int = 64,
    stage_depths: Sequence[int] = R50_DEPTHS,
    dropout_rate: float = 0.5,
    head_activation: Optional[str] = None,
    input_channel: int = 3,
) -> VideoNet:
    """Continual Slow-8x8-R50 (pytorchvideo hub ``slow_r50``): stem conv 1x7x7, conv_a temporal
    kernels 1, 1, 3, 3 in res2-res5, head average pool (8, 7, 7).

    Args:
        num_classes: outputs of the final projection.
        clip_length: frames per clip (8); the head pool averages them by default.
        crop_size: frame size (224); the head's spatial pool covers ``ceil(crop_size / 32)``.
        temporal_padding: "keep" (the regular network's temporal padding: stepping a clip from
            a fresh state with ``pad_end=True`` equals ``forward``) or "remove" (no temporal
            padding: every output is computed from real frames only).
        temporal_fill: how a fresh state pads the start of a stream in the temporally padded
            convolutions: "zeros" (as ``forward``) or "replicate" (the first frame each
            convolution receives, co's ``temporal_fill="replicate"``, co3d's
            ``--co3d_temporal_fill replicate``). Only the first outputs of a stream differ;
            ``forward`` pads with zeros either way.
        head_pool: frames averaged by the head (default ``clip_length``; CoSlow uses up to 64).
        stem_dim_out, stage_depths: width and depth (64 and (3, 4, 6, 3) for R50; smaller
            values give small test networks).
        dropout_rate, head_activation, input_channel: as ``create_resnet`` (no head activation
            by default, as the hub model).

    Example:
        >>> from cofunc.models import slow_r50
        >>> net = slow_r50(num_classes=5, crop_size=32, stem_dim_out=4, stage_depths=(1, 1, 1, 1))
        >>> net.delay, net.receptive_field  # two 3x1x1 conv_a, head pool 8
        (9, 12)
    """
    return _resnet("slow_r50", num_classes, clip_length, crop_size, temporal_padding, temporal_fill, head_pool, stem_dim_out,
                   stage_depths, dropout_rate, head_activation, input_channel, stem_kernel_t=1,
                   stage_kernels=SLOW_KERNELS, stage1_pool=False)


def i3d_r50(
    num_classes: int = 400,
    *,
    clip_length: int = 8,
    crop_size: int = 224,
    temporal_padding: str = "keep",
    temporal_fill: str = "zeros",
    head_pool: Optional[int] = None,
    stem_dim_out: int = 64,
    stage_depths: Sequence[int] = R50_DEPTHS,
    dropout_rate: float = 0.5,
    head_activation: Optional[str] = None,
    input_channel: int = 3,
) -> VideoNet:
    """Continual I3D-8x8-R50 (pytorchvideo hub ``i3d_r50``): stem conv 5x7x7, conv_a temporal
    kernels 3 / (3, 1) / (3, 1) / (1, 3) repeated over res2-res5, a temporal max pool (2, 1, 1)
    with stride (2, 1, 1) after res2, head average pool (4, 7, 7) for 8 input frames.

    The temporal pool halves the frame rate: the network emits a score every other step, and
    ``head_pool`` counts frames after the pool (default ``clip_length // 2``). With
    ``temporal_padding="remove"`` the 3 frames of padding before the pool (stem 2, res2 1) go,
    which moves the pool's pairing of frames by one: the unpadded network pools other frame
    pairs than the padded one, so their outputs differ beyond the start-up. Other arguments as
    `slow_r50`.

    Example:
        >>> from cofunc.models import i3d_r50
        >>> net = i3d_r50(num_classes=5, crop_size=32, stem_dim_out=4, stage_depths=(1, 1, 1, 1))
        >>> net.delay, net.stride  # stem 2, res2 1, pool 1, res3 2, res4 2, head pool 6
        (14, (2,))
    """
    return _resnet("i3d_r50", num_classes, clip_length, crop_size, temporal_padding, temporal_fill, head_pool, stem_dim_out,
                   stage_depths, dropout_rate, head_activation, input_channel, stem_kernel_t=5,
                   stage_kernels=I3D_KERNELS, stage1_pool=True)


def _resnet(name, num_classes, clip_length, crop_size, temporal_padding, temporal_fill, head_pool, stem_dim_out, stage_depths,
            dropout_rate, head_activation, input_channel, stem_kernel_t, stage_kernels, stage1_pool) -> VideoNet:
    """``create_resnet`` (bottleneck blocks, spatial strides 1, 2, 2, 2, no temporal strides in
    the stages)."""
    check_choice("temporal_padding", temporal_padding, TEMPORAL_PADDINGS)
    check_choice("temporal_fill", temporal_fill, TEMPORAL_FILLS)
    if len(stage_depths) != 4 or min(stage_depths) < 1:
        raise ConfigurationError(f"{name}: stage_depths needs 4 positive block counts, got {tuple(stage_depths)}")
    temporal_stride = 2 if stage1_pool else 1
    head_pool = clip_length // temporal_stride if head_pool is None else head_pool
    config = dict(model=name, num_classes=num_classes, clip_length=clip_length, crop_size=crop_size,
                  temporal_padding=temporal_padding, temporal_fill=temporal_fill, head_pool=head_pool)

    blocks = [_stem(input_channel, stem_dim_out, stem_kernel_t, temporal_padding, temporal_fill)]
    dim_in, dim_out = stem_dim_out, stem_dim_out * 4
    for idx, depth in enumerate(stage_depths):
        kernels = stage_kernels[idx]
        kernels = [kernels] if isinstance(kernels, int) else list(kernels)
        kernels = (kernels * depth)[:depth]
        spatial_stride = 1 if idx == 0 else 2
        blocks.append(stage([
            _res_block(dim_in if i == 0 else dim_out, dim_out // 4, dim_out, kernels[i],
                       spatial_stride if i == 0 else 1, temporal_padding, temporal_fill)
            for i in range(depth)
        ]))
        dim_in, dim_out = dim_out, dim_out * 2
        if idx == 0 and stage1_pool:
            blocks.append(cn.MaxPool3d((2, 1, 1), stride=(2, 1, 1), padding=0))

    spatial = int(math.ceil(crop_size / 32))  # the stem and stages stride 32 in space
    blocks.append(_head(dim_in, num_classes, (head_pool, spatial, spatial), dropout_rate, head_activation))
    return init_weights(VideoNet(blocks, config))


def _stem(dim_in: int, dim_out: int, kernel_t: int, temporal_padding: str, temporal_fill: str) -> cn.Sequential:
    """``create_res_basic_stem``: conv (t, 7, 7) with spatial stride 2, BN, ReLU, max pool
    (1, 3, 3) with spatial stride 2."""
    return cn.Sequential(OrderedDict(
        conv=temporal_conv(dim_in, dim_out, (kernel_t, 7, 7), temporal_padding, temporal_fill, stride=(1, 2, 2),
                           padding=(3, 3), bias=False),
        norm=nn.BatchNorm3d(dim_out),
        activation=nn.ReLU(),
        pool=cn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    ))


def _res_block(dim_in: int, dim_inner: int, dim_out: int, kernel_t: int, spatial_stride: int,
               temporal_padding: str, temporal_fill: str) -> ResBlock:
    """``create_res_block`` with ``create_bottleneck_block``: conv_a (t, 1, 1), conv_b
    (1, 3, 3) carrying the spatial stride, conv_c 1x1x1; a 1x1x1 conv + BN shortcut when the
    channels or the spatial size change."""
    branch2 = cn.Sequential(OrderedDict(
        conv_a=temporal_conv(dim_in, dim_inner, (kernel_t, 1, 1), temporal_padding, temporal_fill, bias=False),
        norm_a=nn.BatchNorm3d(dim_inner),
        act_a=nn.ReLU(),
        conv_b=cn.Conv3d(dim_inner, dim_inner, (1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                         padding=(0, 1, 1), bias=False),
        norm_b=nn.BatchNorm3d(dim_inner),
        act_b=nn.ReLU(),
        conv_c=cn.Conv3d(dim_inner, dim_out, 1, bias=False),
        norm_c=final_norm(dim_out),
    ))
    shortcut = dim_in != dim_out or spatial_stride > 1
    return ResBlock(
        branch2,
        branch1_conv=cn.Conv3d(dim_in, dim_out, 1, stride=(1, spatial_stride, spatial_stride), bias=False) if shortcut else None,
        branch1_norm=nn.BatchNorm3d(dim_out) if shortcut else None,
        activation=nn.ReLU(),
    )


def _head(dim_in: int, num_classes: int, pool_kernel: Tuple[int, int, int], dropout_rate: float,
          activation: Optional[str]) -> cn.Sequential:
    """``create_res_basic_head``: average pool (stride 1), dropout, projection, activation,
    then the spatial output mean."""
    parts = OrderedDict(pool=cn.AvgPool3d(pool_kernel, stride=1))
    if dropout_rate > 0:
        parts["dropout"] = nn.Dropout(dropout_rate)
    parts["proj"] = cn.Linear(dim_in, num_classes, channel_dim=1)
    act = head_activation_module(activation)
    if act is not None:
        parts["activation"] = act
    parts["output_pool"] = SpatialMean()
    return cn.Sequential(parts)
