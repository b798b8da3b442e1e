"""Continual X3D (CoX3D): ``pytorchvideo.models.x3d.create_x3d`` as a continual network.

The module tree and parameter names are pytorchvideo's (``blocks.0.conv.conv_t.weight``, ...),
so the ``state_dict`` of a pytorchvideo X3D (``torch.hub`` ``x3d_xs/s/m/l``, or
``create_x3d(...)``) loads unchanged with ``load_state_dict``.

Layout: ``forward`` takes clips ``(B, 3, T, H, W)`` and returns class scores
``(B, num_classes, T')``; ``forward_step`` takes frames ``(B, 3, H, W)`` and returns
``(B, num_classes)`` (None while warming up); ``forward_steps`` takes clips and returns the
emitted scores.

Which network is which (``se=``, the scope of squeeze-and-excitation):

* ``se="frame"`` (the default): the published continual X3D, CoX3D. Each frame is gated by its
  own mean, so a stream predicts after a short warm-up (delay 40 frames for X3D-S, 31 for XS,
  43 for M, 72 for L). ``forward`` computes the same network over a clip (steps equal it), which
  is not the original X3D: on the same weights its scores differ from X3D's.
* ``se="clip"``: the original X3D (pytorchvideo's ``create_x3d``, SlowFast's X3D). ``forward`` on
  a clip of ``clip_length`` frames of ``crop_size`` pixels equals pytorchvideo's output (up to
  float rounding), and stepping that clip from a fresh state with ``pad_end=True`` returns the
  same; but each SE block pools a whole clip window, so a stream waits ``clip_length - 1`` frames
  per SE block (delay 220 for X3D-S, 7 s at 30 fps).
* ``se="clip_forward_frame_steps"``: co3d's CoX3D module as published, two networks in one
  module (``forward`` is the original X3D, the steps are CoX3D).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional

from torch import nn

import cofunc.nn as cn
from cofunc import ConfigurationError

from ._blocks import (
    SE_SCOPES,
    TEMPORAL_FILLS,
    TEMPORAL_PADDINGS,
    ResBlock,
    SpatialMean,
    SqueezeExcitation,
    Swish,
    VideoNet,
    check_choice,
    final_norm,
    head_activation_module,
    init_weights,
    round_repeats,
    round_width,
    stage,
    temporal_conv,
)

# size: (input_clip_length, input_crop_size, depth_factor), as pytorchvideo's hub x3d_xs ... x3d_l.
X3D_SIZES = {
    "XS": (4, 160, 2.2),
    "S": (13, 160, 2.2),
    "M": (16, 224, 2.2),
    "L": (16, 312, 5.0),
}
_STAGE_DEPTHS = (1, 2, 5, 3)


def x3d(
    size: str = "S",
    num_classes: int = 400,
    *,
    clip_length: Optional[int] = None,
    crop_size: Optional[int] = None,
    temporal_padding: str = "keep",
    temporal_fill: str = "zeros",
    se: str = "frame",
    head_pool: Optional[int] = None,
    width_factor: float = 2.0,
    depth_factor: Optional[float] = None,
    stem_dim_in: int = 12,
    bottleneck_factor: float = 2.25,
    se_ratio: float = 0.0625,
    head_dim_out: int = 2048,
    dropout_rate: float = 0.5,
    head_activation: Optional[str] = "softmax",
    input_channel: int = 3,
) -> VideoNet:
    """A continual X3D network (pytorchvideo's ``create_x3d`` with the hub's size settings).

    Args:
        size: "XS" (4-frame clips of 160x160), "S" (13 frames, 160), "M" (16, 224) or "L"
            (16, 312, depth factor 5.0), in any case ("s" is "S"). ``clip_length``,
            ``crop_size`` and ``depth_factor`` override the size's values. Frames smaller than
            the network's ``min_frame_size()`` (129 pixels for ``crop_size`` 160) raise
            `cofunc.InputShapeError` when a stream starts (or in ``forward``); larger ones
            are averaged over space by the head (``net.preprocessing`` gives the published
            test size, 182 for X3D-S).
        num_classes: outputs of the final projection.
        temporal_padding: "keep" pads time as the regular network (stepping a clip from a fresh
            state with ``pad_end=True`` equals ``forward``); "remove" drops every temporal
            padding (the stem's temporal conv, each block's 3x3x3 conv, the clip-scope SE
            windows), so every emitted output is computed from real frames only. Once a
            receptive field of frames has passed, both emit the same outputs; without padding
            the start-up outputs that mix in padding are skipped, so the first output comes
            later (``delay = receptive_field - 1``: 68 instead of 40 steps for X3D-S with
            frame-scope SE).
        temporal_fill: how a fresh state pads the start of a stream in the temporally padded
            convolutions (the stem's 5x1x1, each block's 3x3x3): "zeros" (as ``forward``) or
            "replicate" (the first frame each convolution receives: co's
            ``temporal_fill="replicate"``, which co3d's published CoX3D evaluation passes as
            ``--co3d_temporal_fill replicate``). Only the first outputs of a stream differ;
            ``forward`` pads with zeros either way.
        se: "frame" (default, the published CoX3D, for streaming) pools the
            squeeze-and-excitation input of each frame on its own: a short delay, but
            ``forward`` is then not the original X3D (each frame is gated by its own mean).
            "clip" (the original X3D, for clips) pools it over the whole clip (a centred window
            of ``2 * clip_length - 1`` frames that counts real frames only: exact for clips of
            ``clip_length`` frames; delay ``clip_length - 1`` per SE block).
            "clip_forward_frame_steps" is co3d's CoX3D module as published: ``forward`` is the
            regular X3D (clip scope), the step modes use frame scope (its delay); needs
            ``temporal_padding="keep"``.
        head_pool: frames averaged by the head's temporal pool (default ``clip_length``);
            CoX3D extends it, e.g. to 64.
        width_factor, depth_factor, stem_dim_in, bottleneck_factor: as in ``create_x3d``.
        se_ratio, head_dim_out, dropout_rate, input_channel: as in ``create_x3d`` (smaller
            values give small test networks).
        head_activation: "softmax" (pytorchvideo's default, applied in every mode), "sigmoid"
            or None.

    Returns:
        A `VideoNet` (a `cofunc.nn.Sequential`), initialised as pytorchvideo initialises X3D.

    Example:
        >>> import torch
        >>> from cofunc.models import x3d
        >>> net = x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0).eval()
        >>> net(torch.randn(1, 3, 4, 32, 32)).shape
        torch.Size([1, 5, 1])
        >>> net.delay  # stem 2, 11 blocks 1 each, head pool 3 (frame-scope SE adds none)
        16
        >>> x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0, se="clip").delay
        37
    """
    size = size.upper() if isinstance(size, str) else size
    check_choice("size", size, tuple(X3D_SIZES))
    check_choice("temporal_padding", temporal_padding, TEMPORAL_PADDINGS)
    check_choice("se", se, SE_SCOPES)
    check_choice("temporal_fill", temporal_fill, TEMPORAL_FILLS)
    if se == "clip_forward_frame_steps" and temporal_padding != "keep":
        raise ConfigurationError(f"x3d: se='clip_forward_frame_steps' needs temporal_padding='keep', got {temporal_padding!r}")
    default_length, default_crop, default_depth = X3D_SIZES[size]
    clip_length = default_length if clip_length is None else clip_length
    crop_size = default_crop if crop_size is None else crop_size
    depth_factor = default_depth if depth_factor is None else depth_factor
    head_pool = clip_length if head_pool is None else head_pool
    config = dict(size=size, num_classes=num_classes, clip_length=clip_length, crop_size=crop_size,
                  temporal_padding=temporal_padding, temporal_fill=temporal_fill, se=se, head_pool=head_pool)

    blocks = []
    stem_dim_out = round_width(stem_dim_in, width_factor)
    blocks.append(_stem(input_channel, stem_dim_out, temporal_padding, temporal_fill))

    stage_dims = [stem_dim_in]
    for _ in range(3):
        stage_dims.append(round_width(stage_dims[-1], 2.0, divisor=8))
    dim_in = stem_dim_out
    for idx, depth in enumerate(_STAGE_DEPTHS):
        dim_out = round_width(stage_dims[idx], width_factor)
        dim_inner = int(bottleneck_factor * dim_out)
        res_blocks = []
        for i in range(round_repeats(depth, depth_factor)):
            res_blocks.append(_res_block(
                dim_in if i == 0 else dim_out, dim_inner, dim_out, spatial_stride=2 if i == 0 else 1,
                # SE on every other block, from the first (pytorchvideo: (idx + 1) % 2).
                se_ratio=se_ratio if (i + 1) % 2 else 0.0, se=se, se_window=clip_length,
                temporal_padding=temporal_padding, temporal_fill=temporal_fill,
            ))
        blocks.append(stage(res_blocks))
        dim_in = dim_out

    spatial = int(math.ceil(crop_size / 32))  # total spatial stride 32, as create_x3d
    blocks.append(_head(dim_in, dim_inner, head_dim_out, num_classes, (head_pool, spatial, spatial),
                        dropout_rate, head_activation))
    return init_weights(VideoNet(blocks, config))


def _stem(dim_in: int, dim_out: int, temporal_padding: str, temporal_fill: str) -> cn.Sequential:
    """``create_x3d_stem``: a 1x3x3 conv (named ``conv_t`` in pytorchvideo), a depthwise 5x1x1
    conv (named ``conv_xy``), batch norm, ReLU."""
    conv = cn.Sequential(OrderedDict(
        conv_t=cn.Conv3d(dim_in, dim_out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
        conv_xy=temporal_conv(dim_out, dim_out, (5, 1, 1), temporal_padding, temporal_fill, bias=False, groups=dim_out),
    ))
    return cn.Sequential(OrderedDict(conv=conv, norm=nn.BatchNorm3d(dim_out), activation=nn.ReLU()))


def _res_block(dim_in, dim_inner, dim_out, spatial_stride, se_ratio, se, se_window, temporal_padding,
               temporal_fill="zeros") -> ResBlock:
    """``create_x3d_res_block`` with ``create_x3d_bottleneck_block``."""
    if se_ratio > 0.0:
        squeeze = SqueezeExcitation(dim_inner, round_width(dim_inner, se_ratio), se, se_window, temporal_padding)
    else:
        squeeze = cn.Identity()
    branch2 = cn.Sequential(OrderedDict(
        conv_a=cn.Conv3d(dim_in, dim_inner, 1, bias=False),
        norm_a=nn.BatchNorm3d(dim_inner),
        act_a=nn.ReLU(),
        conv_b=temporal_conv(dim_inner, dim_inner, (3, 3, 3), temporal_padding, temporal_fill,
                             stride=(1, spatial_stride, spatial_stride), padding=(1, 1), bias=False, groups=dim_inner),
        norm_b=cn.Sequential(nn.BatchNorm3d(dim_inner), squeeze),
        act_b=Swish(),
        conv_c=cn.Conv3d(dim_inner, dim_out, 1, bias=False),
        norm_c=final_norm(dim_out),
    ))
    # pytorchvideo: a shortcut conv when channels or spatial size change, a norm only when
    # channels change.
    needs_conv = dim_in != dim_out or spatial_stride > 1
    return ResBlock(
        branch2,
        branch1_conv=cn.Conv3d(dim_in, dim_out, 1, stride=(1, spatial_stride, spatial_stride), bias=False) if needs_conv else None,
        branch1_norm=nn.BatchNorm3d(dim_out) if dim_in != dim_out else None,
        activation=nn.ReLU(),
    )


def _head(dim_in, dim_inner, dim_out, num_classes, pool_kernel, dropout_rate, activation) -> cn.Sequential:
    """``create_x3d_head``: a projected pool (1x1x1 conv, BN, ReLU, average pool, 1x1x1 conv,
    ReLU), dropout, the class projection, the activation and the spatial output mean."""
    pool = cn.Sequential(OrderedDict(
        pre_conv=cn.Conv3d(dim_in, dim_inner, 1, bias=False),
        pre_norm=nn.BatchNorm3d(dim_inner),
        pre_act=nn.ReLU(),
        pool=cn.AvgPool3d(pool_kernel, stride=1),
        post_conv=cn.Conv3d(dim_inner, dim_out, 1, bias=False),
        post_act=nn.ReLU(),
    ))
    parts = OrderedDict(pool=pool)
    if dropout_rate > 0:
        parts["dropout"] = nn.Dropout(dropout_rate)
    parts["proj"] = cn.Linear(dim_out, num_classes, channel_dim=1)
    act = head_activation_module(activation)
    if act is not None:
        parts["activation"] = act
    parts["output_pool"] = SpatialMean()
    return cn.Sequential(parts)
