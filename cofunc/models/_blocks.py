"""Building blocks shared by the continual video models, named like pytorchvideo's modules.

Every block is a `cofunc.nn.ContinualModule` whose children carry pytorchvideo's attribute names,
so a pytorchvideo ``state_dict`` loads unchanged. ``forward`` is the regular clip computation
written with the children's torch ``forward`` (training-mode batch norm and dropout work as in
pytorchvideo); ``forward_step`` / ``forward_steps`` run the functional layer the block builds
from its children's layers.

Shapes: clips ``(B, C, T, H, W)``, steps ``(B, C, H, W)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor, nn

import cofunc.nn as cn
from cofunc import ConfigurationError, Delay, InputShapeError, Layer, Lift, Remap, avg_pool1d, broadcast_reduce, residual_alignment, seq
from ._preprocessing import video_preprocessing

TEMPORAL_PADDINGS = ("keep", "remove")
SE_SCOPES = ("clip", "frame", "clip_forward_frame_steps")
TEMPORAL_FILLS = ("zeros", "replicate")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigurationError(f"`{name}` must be one of {choices}, got {value!r}")


def temporal_conv(dim_in: int, dim_out: int, kernel, temporal_padding: str, temporal_fill: str, **kwargs) -> cn.Conv3d:
    """A ``Conv3d`` whose temporal padding is ``kernel[0] // 2`` ("keep") or 0 ("remove"), and
    whose fresh state pads the stream's start with zeros or the first frame (``temporal_fill``;
    ``forward`` always pads with zeros, as the regular network)."""
    spatial = kwargs.pop("padding", (0, 0))
    pad = (temporal_pad(kernel[0], temporal_padding), *spatial)
    fill = temporal_fill if pad[0] else None
    return cn.Conv3d(dim_in, dim_out, kernel, padding=pad, temporal_fill=fill, **kwargs)


def temporal_pad(kernel_t: int, temporal_padding: str) -> int:
    """The temporal padding of a conv with temporal kernel ``kernel_t``: the regular network's
    ``kernel_t // 2`` ("keep") or none ("remove")."""
    return kernel_t // 2 if temporal_padding == "keep" else 0


def round_width(width, multiplier, min_width=8, divisor=8):
    """pytorchvideo.layers.utils.round_width (channel counts of X3D and its SE blocks)."""
    if not multiplier:
        return width
    width *= multiplier
    min_width = min_width or divisor
    width_out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if width_out < 0.9 * width:
        width_out += divisor
    return int(width_out)


def round_repeats(repeats, multiplier):
    """pytorchvideo.layers.utils.round_repeats (block counts of X3D)."""
    if not multiplier:
        return repeats
    return int(math.ceil(multiplier * repeats))


# Module-level functions, not lambdas, so that models pickle (torch.save, deepcopy, workers).
def _mean_hw(params, x):
    return x.mean(dim=(-2, -1))


def _mean_hw_keepdim(params, x):
    return x.mean(dim=(-2, -1), keepdim=True)


def _unsqueeze_hw(params, x):
    return x[..., None, None]


def spatial_mean() -> Lift:
    """The mean over the two spatial axes: frames ``(*B, C, H, W) -> (*B, C)``, clips
    ``(*B, C, T, H, W) -> (*B, C, T)``. Ends the models: pytorchvideo's ``output_pool``
    averages the head's 1x1 map (a no-op there); here the time axis stays."""
    return Lift(_mean_hw, "spatial_mean", pointwise=False, step_rank=3, out_rank=1)


def spatial_unsqueeze() -> Lift:
    """Frames ``(*B, C) -> (*B, C, 1, 1)``, clips ``(*B, C, T) -> (*B, C, T, 1, 1)``."""
    return Lift(_unsqueeze_hw, "spatial_unsqueeze", pointwise=False, step_rank=1, out_rank=3)


class SpatialMean(cn.LayerModule):
    """Module form of `spatial_mean` (no params): clips ``(B, C, T, H, W) -> (B, C, T)``."""

    def __init__(self):
        super().__init__(spatial_mean())


class Swish(nn.Module):
    """``x * sigmoid(x)``, computed as pytorchvideo's ``Swish`` computes it (bit-identical)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


cn.register(Swish, cn.lift_nn_module)


# --- squeeze-and-excitation ------------------------------------------------------------------


def _gate(values):
    """``x * gates`` (the residual branch first, as fvcore's ``torch.mul(input, gates)``)."""
    x, gates = values
    return x * gates


class SqueezeExcitation(cn.ContinualModule):
    """fvcore's ``SqueezeExcitation(is_3d=True)`` as a continual module: ``x * gate(pool(x))``
    with ``gate = block = Sequential(Conv3d 1x1x1, ReLU, Conv3d 1x1x1, Sigmoid)``.

    ``scope="clip"``: the pooled value of frame ``t`` averages the frames ``t - (W - 1) ..
    t + (W - 1)`` of a centred window of ``2W - 1`` frames, counting real frames only
    (``count_include_pad=False``). For a clip of exactly ``W`` frames every window holds the
    whole clip, so each frame is gated by the clip mean, exactly as in the regular network; in
    a longer stream each frame is gated by the mean of its ``2W - 1`` neighbours. Delay
    ``W - 1`` (temporal padding kept) or ``2W - 2`` (removed).

    ``scope="frame"``: each frame is gated by its own spatial mean. No delay; the clip
    ``forward`` then differs from the regular network.

    ``scope="clip_forward_frame_steps"`` (co3d's CoX3D module, whose SE is a residual over co's
    ``AdaptiveAvgPool3d`` with a 1-frame step window): ``forward`` is the clip scope (the regular
    X3D), the step modes are the frame scope. The two modes then compute different networks, as
    the published module does; needs the temporal padding kept.

    Params: ``block.0.weight``, ``block.0.bias``, ``block.2.weight``, ``block.2.bias``.
    """

    def __init__(self, num_channels: int, num_channels_reduced: int, scope: str = "clip", window: int = 1,
                 temporal_padding: str = "keep"):
        super().__init__()
        check_choice("se", scope, SE_SCOPES)
        check_choice("temporal_padding", temporal_padding, TEMPORAL_PADDINGS)
        if window < 1:
            raise ConfigurationError(f"SqueezeExcitation: the window must be at least 1 frame, got {window}")
        self.block = cn.Sequential(
            nn.Conv3d(num_channels, num_channels_reduced, kernel_size=1, bias=True),
            nn.ReLU(),
            nn.Conv3d(num_channels_reduced, num_channels, kernel_size=1, bias=True),
            nn.Sigmoid(),
        )
        if scope == "clip_forward_frame_steps" and temporal_padding != "keep":
            raise ConfigurationError(
                "SqueezeExcitation: scope 'clip_forward_frame_steps' needs temporal_padding='keep' (its clip "
                f"forward and its steps would otherwise emit different numbers of frames), got {temporal_padding!r}"
            )
        self.scope = scope
        self.window = window
        self.temporal_padding = temporal_padding
        # Param-free pools, kept outside the module tree: one for the step modes, one for forward.
        step_scope = "clip" if scope == "clip" else "frame"
        forward_scope = "frame" if scope == "frame" else "clip"
        self.__dict__["_co_pool"] = self._make_pool(step_scope)
        self.__dict__["_forward_pool"] = self._make_pool(forward_scope)

    def extra_repr(self):
        return f"scope={self.scope!r}, window={self.window}, temporal_padding={self.temporal_padding!r}"

    def _make_pool(self, scope: str) -> Layer:
        """``(*B, C, H, W) -> (*B, C, 1, 1)`` per step: the spatial mean, then (clip scope) the
        temporal mean over the centred window."""
        if scope == "frame" or self.window == 1:
            return Lift(_mean_hw_keepdim, "spatial_mean", True, 3)
        w = self.window
        pad = w - 1 if self.temporal_padding == "keep" else 0
        # A 1d pool over (C, T): torch's avg_pool3d rejects clips shorter than the kernel even
        # when the padding covers them.
        temporal = avg_pool1d(2 * w - 1, stride=1, padding=pad, count_include_pad=False)
        return seq(spatial_mean(), temporal, spatial_unsqueeze())

    def _align(self, pool: Optional[Layer] = None) -> Delay:
        """The frame selection pairing each frame with its gates: a delay by the pool's delay
        (padding kept) or the centre frames of the pool's windows (padding removed)."""
        return residual_alignment(self.__dict__["_co_pool"] if pool is None else pool, "centered")

    def _build_layer(self):
        module = seq(self.__dict__["_co_pool"], self.block.layer)
        # Not `residual(...)`: the gates (*B, C, 1, 1) broadcast over the frames (*B, C, H, W),
        # and a string reduce requires equal shapes. The block's params sit under "1" twice:
        # broadcast_reduce branch "1", then seq(pool, block) child "1".
        inner = broadcast_reduce(self._align(), module, reduce=_gate, auto_delay=False)
        return Remap(inner, {"1.1": "block"}, "se", 3)


    def forward(self, x: Tensor) -> Tensor:
        pool = self.__dict__["_forward_pool"]
        gates = self.block(pool.forward({}, x))
        return self._align(pool).forward({}, x) * gates


# --- residual blocks -------------------------------------------------------------------------


class ResBlock(cn.ContinualModule):
    """pytorchvideo's ``ResBlock``: ``activation(shortcut(x) + branch2(x))`` with
    ``shortcut = branch1_norm(branch1_conv(x))`` (each optional; identity if both are absent).

    The shortcut is aligned to ``branch2``: delayed when ``branch2`` keeps its temporal padding,
    cropped to the centre frames of ``branch2``'s window when the padding is removed.
    """

    # The shortcut's data flow, for `cofunc.nn.fold_batch_norms`.
    _sequential_pairs = (("branch1_conv", "branch1_norm"),)

    def __init__(self, branch2: nn.Module, branch1_conv: Optional[nn.Module] = None,
                 branch1_norm: Optional[nn.Module] = None, activation: Optional[nn.Module] = None):
        super().__init__()
        self.branch1_conv = None if branch1_conv is None else cn.continual(branch1_conv)
        self.branch1_norm = None if branch1_norm is None else cn.continual(branch1_norm)
        self.branch2 = cn.continual(branch2)
        self.activation = None if activation is None else cn.continual(activation)
        main = self.branch2.layer
        if main.stride != 1:
            raise ConfigurationError(f"ResBlock: branch2 must have temporal stride 1, got {main.stride}")

    def _shrink(self) -> Optional[Delay]:
        """The frame selection that aligns the shortcut's clip to branch2's (None: equal padding,
        the block's broadcast-reduce delays the shortcut)."""
        return residual_alignment(self.branch2.layer, "centered", delay_equal=False)

    def _build_layer(self):
        main = self.branch2.layer
        parts = [(name, getattr(self, name).layer) for name in ("branch1_conv", "branch1_norm") if getattr(self, name) is not None]
        shrink = self._shrink()
        if shrink is not None:
            parts.append(("shrink", shrink))
        shortcut = seq(OrderedDict(parts)) if parts else Delay(0, main.step_rank)
        children = [("0", broadcast_reduce(shortcut, main, reduce="sum"))]
        if self.activation is not None:
            children.append(("1", self.activation.layer))

        # The shortcut seq picks branch1_conv / branch1_norm out of the block's own params.
        return Remap(seq(OrderedDict(children)), {"0.0": "", "0.1": "branch2"}, "res_block")


    def forward(self, x: Tensor) -> Tensor:
        main = self.branch2(x)
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = self.branch1_conv(shortcut)
        if self.branch1_norm is not None:
            shortcut = self.branch1_norm(shortcut)
        shrink = self._shrink()
        if shrink is not None:
            shortcut = shrink.forward({}, shortcut)
        out = shortcut + main
        return out if self.activation is None else self.activation(out)


def stage(blocks) -> cn.Sequential:
    """pytorchvideo's ``ResStage``: its blocks under ``res_blocks.0``, ``res_blocks.1``, ..."""
    return cn.Sequential(OrderedDict(res_blocks=cn.Sequential(*blocks)))


class VideoNet(cn.Sequential):
    """pytorchvideo's ``Net``: the stem, stages and head under ``blocks.0``, ``blocks.1``, ...

    A `cofunc.nn.Sequential` with one child ``blocks``: ``forward(x)`` maps a clip
    ``(B, 3, T, H, W)`` to class scores ``(B, num_classes, T')``; ``forward_step(frame)`` maps a
    frame ``(B, 3, H, W)`` to ``(B, num_classes)`` (or None while warming up, or on the steps a
    temporal stride skips); ``forward_steps`` maps clips to the emitted scores
    ``(B, num_classes, T'')``. ``config`` records the builder's arguments.
    """

    def __init__(self, blocks, config: dict):
        blocks = blocks if isinstance(blocks, OrderedDict) else OrderedDict((str(i), b) for i, b in enumerate(blocks))
        super().__init__(OrderedDict(blocks=cn.Sequential(blocks)))
        self.config = dict(config)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    _REBUILT_ON_DEMAND = cn.ContinualModule._REBUILT_ON_DEMAND + ("_co_frame_sizes",)

    # Indexing reaches the blocks, as pytorchvideo's ``net.blocks[i]``: the module has one child.
    def __getitem__(self, index):
        """``net[i]`` is block ``i`` (the stem, a stage, the head); ``net[a:b]`` is a `VideoNet`
        of those blocks: ``net[:-1]`` is the network without its head (features
        ``(B, C, T', H', W')`` per clip, ``(B, C, H', W')`` per step). A slice shares the blocks'
        modules (and weights) with ``net``, keeps their ``blocks.i`` names and the
        ``preprocessing``, and steps on its own stream state.

        Example:
            >>> import torch
            >>> from cofunc.models import x3d
            >>> net = x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0).eval()
            >>> features = net[:-1]
            >>> features(torch.randn(1, 3, 4, 32, 32)).shape
            torch.Size([1, 48, 4, 1, 1])
        """
        if isinstance(index, slice):
            return VideoNet(OrderedDict(list(self.blocks._modules.items())[index]), self.config)
        return self.blocks[index]

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self):
        return iter(self.blocks)

    # --- frame size checks -----------------------------------------------------------------------
    _sequential_children = True  # the forward below only checks the frames first

    def forward(self, input):
        self.check_frames(tuple(input.shape[:2]) + tuple(input.shape[3:]))
        return super().forward(input)

    def _fresh_state(self, layer, step_shape, like):
        self.check_frames(step_shape)  # a stream starts: its frames fix the shapes of every layer
        return super()._fresh_state(layer, step_shape, like)

    def check_frames(self, shape) -> None:
        """Raise `cofunc.InputShapeError` unless frames of ``shape`` ``(B, C, H, W)`` fit the
        network: frames smaller than ``min_frame_size`` leave the head's pool no window. Larger
        frames are fine (the head's output is averaged over space, as pytorchvideo's)."""
        sizes = self.__dict__.setdefault("_co_frame_sizes", set())
        key = tuple(int(s) for s in shape)
        if key in sizes:
            return
        try:
            self.layer.step_output_shape(key)
        except InputShapeError as error:
            smallest = self.min_frame_size(key[1] if len(key) > 1 else 3)
            built = f" (built for crop_size={self.config['crop_size']})" if "crop_size" in self.config else ""
            raise InputShapeError(
                f"{self._name()}: frames of {key[-2]}x{key[-1]} pixels are too small for this network"
                f"{built}: it needs at least {smallest}x{smallest}; `net.preprocessing` makes frames of the "
                f"published size ({error})"
            ) from None
        sizes.add(key)

    def _name(self) -> str:
        config = self.config
        return config.get("model") or (f"x3d_{config['size'].lower()}" if "size" in config else type(self).__name__)

    def min_frame_size(self, channels: int = 3) -> int:
        """The smallest square frame side the network accepts (its head pools at least one window)."""
        def fits(side):
            try:
                self.layer.step_output_shape((1, channels, side, side))
                return True
            except InputShapeError:
                return False

        low, high = 1, max(2, int(self.config.get("crop_size", 2)))
        while not fits(high):
            high *= 2
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle + 1, high)
        return low

    @property
    def preprocessing(self):
        """The published model's frame preprocessing (a `VideoPreprocessing`: frame rate,
        resize, crop, normalisation), scaled to this model's ``crop_size``."""
        return video_preprocessing(self.config)


# --- weight initialisation --------------------------------------------------------------------


def init_weights(model: nn.Module, fc_init_std: float = 0.01) -> nn.Module:
    """pytorchvideo's ``init_net_weights(style="resnet")``: He (fan-out) convs with zero bias,
    batch norm weight 1 (0 for the last norm of each residual branch) and bias 0, linear
    weights N(0, ``fc_init_std``) with zero bias."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            if m.weight is not None:
                m.weight.data.fill_(0.0 if getattr(m, "block_final_bn", False) else 1.0)
            if m.bias is not None:
                m.bias.data.zero_()
        if isinstance(m, nn.Linear):
            m.weight.data.normal_(mean=0.0, std=fc_init_std)
            if m.bias is not None:
                m.bias.data.zero_()
    return model


def final_norm(num_features: int) -> nn.Module:
    """The last batch norm of a residual branch (zero-initialised weight, as pytorchvideo's)."""
    norm = cn.continual(nn.BatchNorm3d(num_features))
    norm.block_final_bn = True
    return norm


def head_activation_module(name: Optional[str]) -> Optional[nn.Module]:
    check_choice("head_activation", name, ("softmax", "sigmoid", None))
    if name == "softmax":
        return nn.Softmax(dim=1)
    if name == "sigmoid":
        return nn.Sigmoid()
    return None
