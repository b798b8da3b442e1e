"""The seed papers' published checkpoints, converted to the key names of `cofunc.models`.

One function per source. Each takes what ``torch.load`` returns for the published file (the
whole checkpoint dict or the bare state dict), returns an ``OrderedDict`` for
``model.load_state_dict``, and, given the ``model`` it is meant for, checks every key and shape
first, raising `CheckpointError` (naming the first differences) for a checkpoint of another
model, variant or size:

- `from_slowfast_x3d`: SlowFast's X3D files (``x3d_xs.pyth`` ... ``x3d_l.pyth``), which co3d's
  CoX3D loads, into `x3d`.
- `from_continual_skeletons`: continual-skeletons' ST-GCN / AGCN / S-TR files (regular ``.pt``
  state dicts, PyTorch Lightning ``.ckpt`` files, or its continual models' ``co`` names) into
  `st_gcn`, `agcn`, `s_tr`.
- `from_cooadtr`: the CoOadTR repository's checkpoints (``co`` numbered names) into `oadtr`.

Example (no download needed to see the conversion work; a real file goes where ``ckpt`` is)::

    net = x3d("S")
    ckpt = torch.load("x3d_s.pyth", map_location="cpu")       # {"model_state": {...}, ...}
    net.load_state_dict(from_slowfast_x3d(ckpt, net))
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from cofunc import CheckpointError

StateDict = "OrderedDict[str, Tensor]"


def _unwrap(checkpoint, containers, source: str) -> Dict[str, Tensor]:
    """The state dict inside a loaded checkpoint file, with a DataParallel ``module.`` prefix
    removed."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a checkpoint dict or a state dict, got {type(checkpoint).__name__}")
    for key in containers:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    sd = {k: v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    if not sd:
        raise CheckpointError(f"{source}: no tensors found (looked in {list(containers)} and at the top level)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _check_against(model: Optional[nn.Module], sd: Dict[str, Tensor], source: str) -> None:
    """Raise `CheckpointError` unless ``sd`` has exactly ``model``'s keys and shapes."""
    if model is None:
        return
    want = model.state_dict()
    label = type(model).__name__
    config = getattr(model, "config", None)
    if config:
        label += "(" + ", ".join(f"{k}={v!r}" for k, v in config.items()) + ")"
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)}, model {tuple(want[k].shape)}"
              for k in want if k in sd and sd[k].shape != want[k].shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} keys missing (first: {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} unexpected keys (first: {extra[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shapes differ (first: {shapes[:2]})")
        raise CheckpointError(
            f"{source}: the checkpoint does not fit {label}: " + "; ".join(parts)
            + ". Is it a checkpoint of another model, variant or size?"
        )


def _fill_batch_counts(sd: Dict[str, Tensor], model: Optional[nn.Module]) -> None:
    """Checkpoints saved without batch norms' ``num_batches_tracked`` get the model's (they do
    not enter any inference computation)."""
    if model is None:
        return
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v.clone()


# --- SlowFast / co3d X3D ------------------------------------------------------------------------

_SLOWFAST_STEM = {
    "conv_xy": "conv.conv_t",   # SlowFast's 1x3x3 spatial conv is pytorchvideo's conv_t
    "conv": "conv.conv_xy",     # and its 5x1x1 depthwise temporal conv is pytorchvideo's conv_xy
    "bn": "norm",
}
_SLOWFAST_BRANCH2 = {
    "a": "conv_a", "a_bn": "norm_a", "b": "conv_b", "b_bn": "norm_b.0",
    "se.fc1": "norm_b.1.block.0", "se.fc2": "norm_b.1.block.2", "c": "conv_c", "c_bn": "norm_c",
}
_SLOWFAST_HEAD = {
    "conv_5": "pool.pre_conv", "conv_5_bn": "pool.pre_norm", "lin_5": "pool.post_conv", "projection": "proj",
}
_STEM_RE = re.compile(r"^s1\.pathway0_stem\.(conv_xy|conv|bn)\.(\w+)$")
_BLOCK_RE = re.compile(r"^s([2-5])\.pathway0_res(\d+)\.(branch1_bn|branch1|branch2\.(?:se\.fc[12]|[abc]_bn|[abc]))\.(\w+)$")
_HEAD_RE = re.compile(r"^head\.(conv_5_bn|conv_5|lin_5|projection)\.(\w+)$")


def from_slowfast_x3d(checkpoint, model: Optional[nn.Module] = None, *, eps: float = 1e-5) -> StateDict:
    """SlowFast's X3D checkpoint (what co3d's CoX3D loads) as a state dict for `x3d`.

    Source names (SlowFast's ``slowfast/models`` X3D; co3d's ``models/x3d`` and its CoX3D's
    flattened ``state_dict`` use the same), the stages ``s2`` .. ``s5`` and blocks ``i``:

    ========================================================  ==========================================
    SlowFast                                                  cofunc (pytorchvideo's ``create_x3d``)
    ========================================================  ==========================================
    ``s1.pathway0_stem.conv_xy`` (1x3x3, spatial)              ``blocks.0.conv.conv_t``
    ``s1.pathway0_stem.conv`` (5x1x1, depthwise temporal)      ``blocks.0.conv.conv_xy``
    ``s1.pathway0_stem.bn``                                    ``blocks.0.norm``
    ``s{s}.pathway0_res{i}.branch1`` / ``branch1_bn``          ``blocks.{s-1}.res_blocks.{i}.branch1_conv`` / ``branch1_norm``
    ``...branch2.a`` / ``a_bn`` / ``b`` / ``b_bn``              ``...branch2.conv_a`` / ``norm_a`` / ``conv_b`` / ``norm_b.0``
    ``...branch2.se.fc1`` / ``se.fc2``                          ``...branch2.norm_b.1.block.0`` / ``block.2``
    ``...branch2.c`` / ``c_bn``                                 ``...branch2.conv_c`` / ``norm_c``
    ``head.conv_5`` / ``conv_5_bn`` / ``lin_5``                 ``blocks.5.pool.pre_conv`` / ``pre_norm`` / ``post_conv``
    ``head.projection``                                        ``blocks.5.proj``
    ========================================================  ==========================================

    The batch norm SlowFast puts on a shortcut whose conv keeps the channel count (``res2``
    block 0 of every size: 24 -> 24 channels, spatial stride 2) has no place in pytorchvideo's
    X3D, which normalises a shortcut only when the channels change. It is folded exactly:
    ``bn(conv(x)) = s * conv(x) + t`` with ``s = weight / sqrt(running_var + eps)`` and
    ``t = bias - running_mean * s``; ``s`` scales the shortcut conv's output channels and ``t``
    joins the bias of the block's last batch norm (``norm_c``), whose output the shortcut is
    added to.

    Args:
        checkpoint: ``torch.load(path)``: a dict with ``"model_state"`` (SlowFast's files) or
            ``"state_dict"``, or a bare state dict.
        model: the `x3d` network it is meant for (optional): keys and shapes are checked.
        eps: SlowFast's batch-norm epsilon (1e-5).

    Returns:
        An ``OrderedDict`` for ``model.load_state_dict``.

    Raises:
        CheckpointError: a key that is not SlowFast X3D's (another model, or a head batch norm
            ``lin_5_bn``, which `x3d` lacks), or a mismatch with ``model``.

    Example:
        >>> import torch
        >>> from cofunc.models import x3d, from_slowfast_x3d
        >>> net = x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0)
        >>> from_slowfast_x3d({"model_state": {"head.projection.bias": torch.zeros(5)}})["blocks.5.proj.bias"].shape
        torch.Size([5])
    """
    source = "from_slowfast_x3d"
    sd = _unwrap(checkpoint, ("model_state", "state_dict", "model"), source)
    out: Dict[str, Tensor] = OrderedDict()
    shortcut_norms: Dict[str, Dict[str, Tensor]] = {}
    for key, value in sd.items():
        m = _STEM_RE.match(key)
        if m:
            out[f"blocks.0.{_SLOWFAST_STEM[m.group(1)]}.{m.group(2)}"] = value
            continue
        m = _BLOCK_RE.match(key)
        if m:
            stage, block, part, attr = int(m.group(1)), m.group(2), m.group(3), m.group(4)
            prefix = f"blocks.{stage - 1}.res_blocks.{block}"
            if part == "branch1":
                out[f"{prefix}.branch1_conv.{attr}"] = value
            elif part == "branch1_bn":
                shortcut_norms.setdefault(prefix, {})[attr] = value
            else:
                out[f"{prefix}.branch2.{_SLOWFAST_BRANCH2[part[len('branch2.'):]]}.{attr}"] = value
            continue
        m = _HEAD_RE.match(key)
        if m:
            out[f"blocks.5.{_SLOWFAST_HEAD[m.group(1)]}.{m.group(2)}"] = value
            continue
        raise CheckpointError(
            f"{source}: {key!r} is not a key of SlowFast's X3D (stem s1.pathway0_stem.*, blocks "
            f"s2-s5.pathway0_res*.branch1/branch2.*, head.conv_5/lin_5/projection.*); is this another model's checkpoint?"
        )
    for prefix, norm in shortcut_norms.items():
        conv_key = f"{prefix}.branch1_conv.weight"
        if conv_key not in out:
            raise CheckpointError(f"{source}: {prefix} has a shortcut batch norm but no shortcut conv")
        conv = out[conv_key]
        needed = ("weight", "bias", "running_mean", "running_var")
        if any(k not in norm for k in needed):
            raise CheckpointError(f"{source}: the shortcut batch norm of {prefix} lacks one of {needed}")
        if conv.shape[0] != conv.shape[1]:
            # Channels change: pytorchvideo keeps this norm.
            for attr, value in norm.items():
                out[f"{prefix}.branch1_norm.{attr}"] = value
            continue
        scale = norm["weight"] / torch.sqrt(norm["running_var"] + eps)
        shift = norm["bias"] - norm["running_mean"] * scale
        out[conv_key] = conv * scale.reshape(-1, *([1] * (conv.dim() - 1))).to(conv.dtype)
        bias_key = f"{prefix}.branch2.norm_c.bias"
        if bias_key not in out:
            raise CheckpointError(f"{source}: {prefix} has no branch2.c_bn to take its shortcut norm's shift")
        out[bias_key] = out[bias_key] + shift.to(out[bias_key].dtype)
    _fill_batch_counts(out, model)
    _check_against(model, out, source)
    return out


# --- continual-skeletons ------------------------------------------------------------------------

# The continual models' co names: a block with a residual is co.Sequential(BroadcastReduce(...),
# ReLU), whose branch "0.1" holds gcn and tcn and whose branch "0.0" holds a conv residual
# (continual-skeletons' own ``CoModelBase.map_state_dict`` undoes the same two levels).
_CO_MAIN_RE = re.compile(r"^(layers\.layer\d+)\.0\.1\.")
_CO_RESIDUAL_RE = re.compile(r"^(layers\.layer\d+)\.0\.0\.residual\.")
_SKELETON_RE = re.compile(
    r"^(data_bn|fc)\.\w+$|^layers\.layer\d+\.(gcn|tcn|residual)\.[\w.]+$"
)


def from_continual_skeletons(checkpoint, model: Optional[nn.Module] = None) -> StateDict:
    """A continual-skeletons checkpoint (ST-GCN, AGCN, S-TR and their "*" and continual forms)
    as a state dict for `st_gcn`, `agcn` or `s_tr`.

    Source names: the regular models' (``models/st_gcn``, ``a_gcn``, ``s_tr`` and ``*_mod``;
    the published ``.pt`` files and the Lightning ``.ckpt`` files' ``"state_dict"`` use them),
    which are cofunc's: ``data_bn.*``, ``layers.layer{i}.gcn.*`` (``A``, ``graph_attn``,
    ``g_conv.{k}``, AGCN's ``a_conv.{k}`` / ``b_conv.{k}``, S-TR's ``data_bn``,
    ``attention_conv.qkv_conv`` / ``attn_out``, ``gcn_residual.{0,1}``, ``bn``),
    ``layers.layer{i}.tcn.{t_conv,bn}.*``, ``layers.layer{i}.residual.{t_conv,bn}.*``, ``fc.*``.
    The continual models' own names (``co.Sequential`` levels: ``layers.layer{i}.0.1.gcn.*``,
    ``layers.layer{i}.0.0.residual.*``) are mapped back, as continual-skeletons'
    ``map_state_dict`` does.

    Which cofunc setting reproduces which published model (the weights are the same):

    - ``st_gcn()`` / ``s_tr()``: ST-GCN / S-TR, stepping CoST-GCN / CoS-TR;
      ``variant="star"``: ST-GCN* / S-TR* (``*_mod``), stepping CoST-GCN* / CoS-TR*.
    - ``agcn()``: AGCN (2s-AGCN, clip attention), stepping CoAGCN (per-frame attention);
      ``agcn(variant="star", attention="frame_published")``: AGCN* / CoAGCN* as published
      (``a_gcn_mod``'s einsum, see `AdaptiveGraphConvolution`).
    - ``zero_padded_pool=True``: the continual models' padded final pool (first prediction at
      step 296 of a 300-frame window for the original variant).

    Args:
        checkpoint: ``torch.load(path)``: a dict with ``"state_dict"`` (Lightning) or
            ``"model_state"``, or a bare state dict.
        model: the network it is meant for (optional): keys and shapes are checked.

    Returns:
        An ``OrderedDict`` for ``model.load_state_dict``.

    Raises:
        CheckpointError: a key outside the skeleton models' names, or a mismatch with
            ``model`` (another model, a Kinetics checkpoint in an NTU model, another size).

    Example:
        >>> import torch
        >>> from cofunc.models import from_continual_skeletons
        >>> sd = from_continual_skeletons({"state_dict": {"layers.layer2.0.1.gcn.A": torch.zeros(3, 25, 25)}})
        >>> list(sd)
        ['layers.layer2.gcn.A']
    """
    source = "from_continual_skeletons"
    sd = _unwrap(checkpoint, ("state_dict", "model_state", "model"), source)
    out: Dict[str, Tensor] = OrderedDict()
    for key, value in sd.items():
        name = _CO_RESIDUAL_RE.sub(r"\1.residual.", _CO_MAIN_RE.sub(r"\1.", key))
        if not _SKELETON_RE.match(name):
            raise CheckpointError(
                f"{source}: {key!r} is not a key of continual-skeletons' models (data_bn.*, layers.layer<i>.gcn/tcn/"
                f"residual.*, fc.*); is this another model's checkpoint?"
            )
        out[name] = value
    _fill_batch_counts(out, model)
    _check_against(model, out, source)
    return out


# --- CoOadTR --------------------------------------------------------------------------------------

# CoVisionTransformer = co.Sequential(linear_encoding, position_encoding, pe_dropout, encoder,
# pre_head_ln, mlp_head): children 0 .. 5.
_OADTR_TOP = {"0": "linear_encoding", "1": "position_encoding", "4.fn": "pre_head_ln", "5": "mlp_head"}
# A single-output layer (continual-transformers' CoSiTransformerEncoder): co.Sequential(
# BroadcastReduce(delay, attention), Lambda(LayerNorm), Residual(feed-forward), Lambda(LayerNorm)).
_SI_LAYER = {
    "0.1.in_proj_weight": "self_attn.in_proj_weight", "0.1.in_proj_bias": "self_attn.in_proj_bias",
    "0.1.out_proj.weight": "self_attn.out_proj.weight", "0.1.out_proj.bias": "self_attn.out_proj.bias",
    "1.fn.weight": "norm1.weight", "1.fn.bias": "norm1.bias",
    "2.1.0.weight": "linear1.weight", "2.1.0.bias": "linear1.bias",
    "2.1.3.weight": "linear2.weight", "2.1.3.bias": "linear2.bias",
    "3.fn.weight": "norm2.weight", "3.fn.bias": "norm2.bias",
}
# A retroactive layer (CoReTransformerEncoder): co.Sequential(BroadcastReduce(unity, attention),
# RetroactiveLambda(nn.Sequential(LayerNorm, Residual(feed-forward), LayerNorm))).
_RE_LAYER = {
    "0.1.in_proj_weight": "self_attn.in_proj_weight", "0.1.in_proj_bias": "self_attn.in_proj_bias",
    "0.1.out_proj.weight": "self_attn.out_proj.weight", "0.1.out_proj.bias": "self_attn.out_proj.bias",
    "1.fn.0.weight": "norm1.weight", "1.fn.0.bias": "norm1.bias",
    "1.fn.1.fn.0.weight": "linear1.weight", "1.fn.1.fn.0.bias": "linear1.bias",
    "1.fn.1.fn.3.weight": "linear2.weight", "1.fn.1.fn.3.bias": "linear2.bias",
    "1.fn.2.weight": "norm2.weight", "1.fn.2.bias": "norm2.bias",
}


def _cooadtr_names(num_layers: int) -> Dict[str, str]:
    names = {}
    if num_layers == 1:
        names.update({f"3.{k}": f"encoder.layers.0.{v}" for k, v in _SI_LAYER.items()})
    else:
        # CoReSiTransformerEncoder = co.Sequential(retroactive layer, RetroactiveLambda(single-output layer), squeeze)
        names.update({f"3.0.{k}": f"encoder.layers.0.{v}" for k, v in _RE_LAYER.items()})
        names.update({f"3.1.fn.{k}": f"encoder.layers.1.{v}" for k, v in _SI_LAYER.items()})
    return names


def from_cooadtr(checkpoint, model: Optional[nn.Module] = None) -> StateDict:
    """A CoOadTR checkpoint (CoOadTR-b1 or -b2, learned or fixed positions) as a state dict
    for `oadtr` (``oadtr(num_layers=1 or 2, positional_encoding="learned" or "fixed")``).

    Source names: the CoOadTR repository's ``CoVisionTransformer`` (``transformer_models/ViT.py``)
    is a ``co.Sequential`` of six numbered children, its encoder continual-transformers'
    ``CoSiTransformerEncoder`` (b1) or ``CoReSiTransformerEncoder`` (b2):

    ===================================================  ===============================================
    CoOadTR                                              cofunc
    ===================================================  ===============================================
    ``0.weight`` / ``0.bias``                            ``linear_encoding.*``
    ``1.pe.weight`` (learned) / ``1.pe.pattern`` (fixed)  ``position_encoding.pe.weight`` / ``.pe.pattern``
    b1: ``3.0.1.in_proj_weight``, ``3.0.1.out_proj.*``   ``encoder.layers.0.self_attn.*``
    b1: ``3.1.fn.*``, ``3.2.1.0.*``, ``3.2.1.3.*``,      ``encoder.layers.0.norm1``, ``linear1``,
    ``3.3.fn.*``                                         ``linear2``, ``norm2``
    b2 layer 0: ``3.0.0.1.*`` (attention),               ``encoder.layers.0.self_attn``, ``norm1``,
    ``3.0.1.fn.0`` / ``fn.1.fn.0`` / ``fn.1.fn.3`` /     ``linear1``, ``linear2``, ``norm2``
    ``fn.2``
    b2 layer 1: ``3.1.fn.`` + b1's layer names           ``encoder.layers.1.*``
    ``4.fn.*``                                           ``pre_head_ln.*``
    ``5.weight`` / ``5.bias``                            ``mlp_head.*``
    ===================================================  ===============================================

    CoOadTR's attention has no biases (``in_proj_bias=False``); ``oadtr``'s default
    ``attn_bias=False`` matches. The number of layers is read from the keys.

    Args:
        checkpoint: ``torch.load(path)``: CoOadTR's ``{"model": ..., "optimizer": ...}`` or a
            bare state dict.
        model: the `oadtr` network it is meant for (optional): keys and shapes are checked.

    Returns:
        An ``OrderedDict`` for ``model.load_state_dict``.

    Raises:
        CheckpointError: a key outside CoOadTR's names, or a mismatch with ``model`` (another
            depth, feature size, number of classes or positional encoding).

    Example:
        >>> import torch
        >>> from cofunc.models import from_cooadtr
        >>> list(from_cooadtr({"model": {"3.1.fn.weight": torch.ones(4), "5.bias": torch.zeros(2)}}))
        ['encoder.layers.0.norm1.weight', 'mlp_head.bias']
    """
    source = "from_cooadtr"
    sd = _unwrap(checkpoint, ("model", "state_dict", "model_state"), source)
    num_layers = 2 if any(k.startswith("3.0.0.") for k in sd) else 1  # b2 nests layer 0 one level deeper
    names = _cooadtr_names(num_layers)
    out: Dict[str, Tensor] = OrderedDict()
    for key, value in sd.items():
        name = names.get(key)
        if name is None:
            for src, dst in _OADTR_TOP.items():
                if key.startswith(src + "."):
                    name = dst + key[len(src):]
                    break
        if name is None:
            raise CheckpointError(
                f"{source}: {key!r} is not a key of CoOadTR-b{num_layers} (co numbered names 0-5, the encoder under "
                f"'3.'); is this another model's checkpoint?"
            )
        out[name] = value
    _check_against(model, out, source)
    return out


__all__ = ["from_continual_skeletons", "from_cooadtr", "from_slowfast_x3d"]
