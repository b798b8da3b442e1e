"""Skeleton-based action recognition: ST-GCN, AGCN and S-TR, regular and continual.

One module is both networks: ``forward`` on a clip is the regular network (ST-GCN, AGCN, S-TR),
``forward_step`` / ``forward_steps`` run it continually (CoST-GCN, CoAGCN, CoS-TR), frame by
frame, with the same weights. The architecture and the parameter names follow the
continual-skeletons models (Hedegaard et al., "Continual Spatio-Temporal Graph Convolutional
Networks"): 10 spatio-temporal blocks of 64, 64, 64, 64, 128, 128, 128, 256, 256, 256 channels.
A block is

    relu(tcn(gcn(x)) + residual(x)),   tcn = BatchNorm2d(Conv2d(k=(9, 1), stride=(s, 1)))

where ``gcn`` is a per-frame spatial unit (a graph convolution, an adaptive graph convolution,
or spatial self-attention over the joints of a frame), ``residual`` is none (block 1), the
identity, or a strided 1x1 conv + BatchNorm2d where the channels or the stride change.

Two variants (``variant``):

- ``"original"``: temporal padding 4 and stride 2 in blocks 5 and 8, as the regular networks.
  Stepping a clip from a fresh state with ``pad_end=True`` equals ``forward``; a stream emits
  one prediction every 4 frames.
- ``"star"`` (the papers' "*" models, continual-skeletons' ``*_mod``): no temporal padding and
  stride 1 everywhere, so the residuals are centre-cropped; one prediction per frame, each equal
  to ``forward`` on the last ``clip_length`` frames.

Shapes: clips ``(B, C, T, V, M)`` (NTU RGB+D's layout: C=3 coordinates, V=25 joints, M persons);
frames ``(B, C, V, M)``. Inside, the persons sit next to the joints on one spatial axis,
``(B, C, T, M*V)``, so that every stream keeps one batch entry (the regular code folds the
persons into the batch; the computation per person is the same). ``forward`` returns class
scores ``(B, num_classes, T')`` with ``T' = 1`` for a clip of ``clip_length`` frames; the
features are averaged over the joints, the persons and the last ``clip_length`` frames' outputs.

Example (CoST-GCN*: after 299 warm-up frames, one prediction per frame)::

    net = st_gcn(60, variant="star").eval()          # ST-GCN* / CoST-GCN*, 3.1 M params
    scores = net(clip)                               # (B, 3, 300, 25, 2) -> (B, 60, 1)
    for t in range(clip.shape[2]):
        out = net.forward_step(clip[:, :, t])        # None for t < 299, then (B, 60)
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cofunc.nn as cn
from cofunc import ConfigurationError, Delay, InputShapeError, Lift, Remap, broadcast_reduce, flatten_params, residual_alignment, seq

from ._graph import adjacency

VARIANTS = ("original", "star")
ATTENTION_SCOPES = ("clip", "frame", "frame_published")
CHANNELS = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)
STRIDES = (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigurationError(f"`{name}` must be one of {choices}, got {value!r}")


def _persons_to_batch(x: Tensor, num_joints: int) -> Tensor:
    """``(N, C, T, M*V) -> (N*M, C, T, V)``: one batch entry per person, as the regular code."""
    n, c, t, s = x.shape
    m = s // num_joints
    return x.reshape(n, c, t, m, num_joints).permute(0, 3, 1, 2, 4).reshape(n * m, c, t, num_joints)


def _batch_to_persons(x: Tensor, n: int) -> Tensor:
    """``(N*M, C, T, V) -> (N, C, T, M*V)``, the inverse of `_persons_to_batch`."""
    nm, c, t, v = x.shape
    m = nm // n
    return x.reshape(n, m, c, t, v).permute(0, 2, 3, 1, 4).reshape(n, c, t, m * v)


def _check_joints(x: Tensor, num_joints: int, label: str) -> None:
    if x.dim() != 4 or x.shape[-1] % num_joints:
        raise InputShapeError(
            f"{label}: expected clips (N, C, T, M*V) with V={num_joints} joints per person, got shape {tuple(x.shape)}"
        )


# --- weight initialisation (2s-AGCN's, as continual-skeletons uses it) ------------------------


def _init_conv(conv: nn.Conv2d, branches: int = 1) -> None:
    """He (fan-out) init, or for one of ``branches`` summed graph branches N(0, 2 / (numel * branches))."""
    if branches == 1:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    else:
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (conv.weight.numel() * branches)))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _init_bn(bn: nn.modules.batchnorm._BatchNorm, weight: float = 1.0) -> None:
    nn.init.constant_(bn.weight, weight)
    nn.init.zeros_(bn.bias)


# --- per-frame modules ------------------------------------------------------------------------


def _mean_joints(params, x):  # module level, not a lambda: models pickle
    return x.mean(dim=-1)


def spatial_mean() -> Lift:
    """The mean over the spatial axis: frames ``(*B, C, S) -> (*B, C)``, clips
    ``(*B, C, T, S) -> (*B, C, T)``."""
    return Lift(_mean_joints, "spatial_mean", pointwise=False, step_rank=2, out_rank=1)


class SpatialMean(cn.LayerModule):
    """Module form of `spatial_mean` (no params): clips ``(B, C, T, S) -> (B, C, T)``."""

    def __init__(self):
        super().__init__(spatial_mean())


class FrameModule(cn.ContinualModule):
    """A module that treats every frame on its own: ``forward`` takes clips ``(N, C, T, *S)``, a
    step is ``forward`` on the frame given a time axis of length 1 (stateless, delay 0).

    Subclasses set ``_step_rank`` and ``_out_rank``, the non-batch ranks of a frame in and out,
    and ``_step_kwargs``, keyword arguments of ``forward`` for the step modes (which also run
    ``forward`` on chunks of frames, so it must treat each frame on its own there).
    """

    _step_rank: int = 2
    _out_rank: int = 2
    _step_kwargs: dict = {}

    def _build_layer(self):
        # A partial, not a closure: deep copies of the module (and of its cached layer) then
        # step the copy, not the original.
        return Lift(functools.partial(_frame_apply, self), type(self).__name__, pointwise=False,
                    step_rank=self._step_rank, template=self, keeps_rank=self._step_rank == self._out_rank,
                    out_rank=self._out_rank)



def _frame_apply(module: FrameModule, params, x: Tensor) -> Tensor:
    """``module``'s ``forward`` on clips ``x`` with ``params`` (`FrameModule`'s step function)."""
    if x.shape[2] == 0:
        # Chunked stepping passes empty chunks (convs reject them): the output's shape comes from
        # one stand-in frame.
        return _frame_apply(module, params, x.new_zeros(x.shape[:2] + (1,) + x.shape[3:]))[:, :, :0]
    flat = flatten_params(params)
    if _holds_own_tensors(module, flat):
        # The module's own tensors (the nn adapters' case): skip functional_call's swap of every
        # tensor, a large share of a step's cost.
        return module.forward(x, **module._step_kwargs)
    return torch.func.functional_call(module, flat, (x,), module._step_kwargs, strict=True)


def _holds_own_tensors(module: nn.Module, flat: dict) -> bool:
    """Whether ``flat`` maps every parameter and buffer name of ``module`` to that very tensor."""
    own = dict(module.named_parameters())
    own.update(module.named_buffers())
    return len(own) == len(flat) and all(own.get(name) is t for name, t in flat.items())


class DataNorm(FrameModule, nn.BatchNorm1d):
    """The input batch norm over ``(M, V, C)`` of every frame (the regular networks' ``data_bn``).

    Clips ``(N, C, T, V, M) -> (N, C, T, M*V)``; frames ``(N, C, V, M) -> (N, C, M*V)``. Params:
    ``weight``, ``bias``, ``running_mean``, ``running_var`` of ``M*V*C`` features, ordered
    person, joint, coordinate (as continual-skeletons' and 2s-AGCN's ``data_bn``).
    """

    _step_rank = 3
    _out_rank = 2

    def __init__(self, in_channels: int, num_joints: int, num_persons: int, momentum: float = 0.1):
        nn.BatchNorm1d.__init__(self, num_persons * num_joints * in_channels, momentum=momentum)
        self.in_channels, self.num_joints, self.num_persons = in_channels, num_joints, num_persons
        _init_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.in_channels, self.num_joints, self.num_persons)
        if x.dim() != 5 or (x.shape[1], x.shape[3], x.shape[4]) != expected:
            raise InputShapeError(
                f"DataNorm: expected clips (N, C, T, V, M) with (C, V, M) = {expected}, got shape {tuple(x.shape)}"
            )
        n, c, t, v, m = x.shape
        y = nn.BatchNorm1d.forward(self, x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t))
        return y.reshape(n, m, v, c, t).permute(0, 3, 4, 1, 2).reshape(n, c, t, m * v)


class GraphConvolution(FrameModule):
    """ST-GCN's spatial graph convolution of one frame, with a learnable edge importance.

    ``relu(bn(sum_k g_conv[k](x @ (A[k] * graph_attn[k]))) + gcn_residual(x))`` over the joint
    axis, for each person and frame. Clips ``(N, C_in, T, M*V) -> (N, C_out, T, M*V)``.

    Params: ``A`` (a constant buffer, the spatial partition ``(K, V, V)``), ``graph_attn`` (the
    edge importance, initialised to ones), ``g_conv.{k}`` (1x1 convs), ``gcn_residual.0`` /
    ``gcn_residual.1`` (1x1 conv and batch norm, when the channels change), ``bn``.
    """

    def __init__(self, in_channels: int, out_channels: int, A: Tensor):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.register_buffer("A", A.detach().clone().float())
        self.graph_attn = nn.Parameter(torch.ones_like(self.A))
        self.g_conv = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in range(A.shape[0]))
        for conv in self.g_conv:
            _init_conv(conv, branches=len(self.g_conv))
        self.gcn_residual = _gcn_residual(in_channels, out_channels)
        self.bn = nn.BatchNorm2d(out_channels)
        _init_bn(self.bn, 1e-6)  # the unit starts close to its residual
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        v = self.A.shape[-1]
        _check_joints(x, v, type(self).__name__)
        n, c, t, s = x.shape
        adj = self.A * self.graph_attn
        # The joint axis is last and persons sit before it, so every row of (N, C*T*M, V) is one
        # person's joints in one frame.
        rows = x.reshape(n, c * t * (s // v), v)
        y = None
        for k, conv in enumerate(self.g_conv):
            z = conv(torch.matmul(rows, adj[k]).reshape(n, c, t, s))
            y = z if y is None else y + z
        return self.relu(self.bn(y) + self.gcn_residual(x))


def _gcn_residual(in_channels: int, out_channels: int) -> nn.Module:
    if in_channels == out_channels:
        return nn.Identity()
    res = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
    _init_conv(res[0])
    _init_bn(res[1])
    return res


class AdaptiveGraphConvolution(FrameModule):
    """2s-AGCN's adaptive graph convolution (``unit_gcn``): per subset ``k`` the graph is
    ``A[k] + graph_attn[k]`` (fixed + learned) plus a data-dependent, embedded-Gaussian graph
    ``softmax(theta_k(x)^T phi_k(x) / (C_e T), dim=-2)``.

    ``attention="clip"`` (2s-AGCN, the regular AGCN): the data-dependent graph of a person is
    computed from all ``T`` frames of the clip (normalised by ``C_e * T``). A step sees one frame,
    so the step modes compute it per frame (``forward(x, per_frame=True)``, on chunks too), which
    is what ``attention="frame"`` computes on clips: a stepped clip equals the ``"frame"``
    network's ``forward``, not this one's (continual-skeletons' CoAGCN steps the same way).
    ``attention="frame"``: one data-dependent graph per person and frame; ``forward`` and stepping
    agree exactly.

    ``attention="frame_published"``: what continual-skeletons' AGCN* / CoAGCN* (``a_gcn_mod``)
    computes, a defect reproduced so that its checkpoints give its predictions. Per frame it
    takes the softmax of ``theta(x)^T phi(x) / C_e`` over the *output* joint ``w`` and then
    ``einsum("nctv,nvwt->nctv", x, graph)``, which sums the graph over the output joint instead
    of gathering the input joints: joint ``v`` is only scaled, by ``sum_w graph[v, w] =
    1 + sum_w (A + graph_attn)[k, v, w]`` (the softmax row sums to one), so joints never mix and
    the data-dependent term is constant. ``forward`` and stepping agree exactly.

    Clips ``(N, C_in, T, M*V) -> (N, C_out, T, M*V)``. Params: ``A`` (buffer), ``graph_attn``
    (initialised to ones, added to ``A``), ``g_conv.{k}``, ``a_conv.{k}``, ``b_conv.{k}`` (1x1
    convs, the embeddings have ``out_channels // coff_embedding`` channels), ``gcn_residual``,
    ``bn``.
    """

    def __init__(self, in_channels: int, out_channels: int, A: Tensor, attention: str = "clip",
                 coff_embedding: int = 4):
        super().__init__()
        _check_choice("attention", attention, ATTENTION_SCOPES)
        if out_channels // coff_embedding < 1:
            raise ConfigurationError(
                f"AdaptiveGraphConvolution: out_channels {out_channels} // coff_embedding {coff_embedding} must be >= 1"
            )
        self.in_channels, self.out_channels, self.attention = in_channels, out_channels, attention
        self.inter_channels = out_channels // coff_embedding
        self.register_buffer("A", A.detach().clone().float())
        self.graph_attn = nn.Parameter(torch.ones_like(self.A))
        k = A.shape[0]
        self.g_conv = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in range(k))
        self.a_conv = nn.ModuleList(nn.Conv2d(in_channels, self.inter_channels, 1) for _ in range(k))
        self.b_conv = nn.ModuleList(nn.Conv2d(in_channels, self.inter_channels, 1) for _ in range(k))
        for i in range(k):
            _init_conv(self.g_conv[i], branches=k)
            _init_conv(self.a_conv[i])
            _init_conv(self.b_conv[i])
        self.gcn_residual = _gcn_residual(in_channels, out_channels)
        self.bn = nn.BatchNorm2d(out_channels)
        _init_bn(self.bn, 1e-6)
        self.relu = nn.ReLU()
        self.soft = nn.Softmax(-2)

    _step_kwargs = {"per_frame": True}

    def extra_repr(self):
        return f"attention={self.attention!r}"

    def forward(self, x: Tensor, per_frame: bool = False) -> Tensor:
        """``(N, C_in, T, M*V) -> (N, C_out, T, M*V)``; ``per_frame=True`` computes the
        data-dependent graph per frame whatever ``attention`` says (the step modes)."""
        v = self.A.shape[-1]
        _check_joints(x, v, type(self).__name__)
        n, c, t, s = x.shape
        adj = self.A + self.graph_attn
        ic = self.inter_channels
        if self.attention == "frame_published":
            return self._forward_published(x)
        clip = self.attention == "clip" and not per_frame
        if clip:
            xp = _persons_to_batch(x, v)  # the graph of a person spans all of its frames
            nm = xp.shape[0]
            rows = xp.reshape(nm, c * t, v)
        else:
            # One graph per (frame, person): view the clip as (N, C, T*M, V), each row one of them.
            xp = x.reshape(n, c, t * (s // v), v)
            rows = xp.permute(0, 2, 1, 3)  # (N, T*M, C, V)
        y = None
        for k, conv in enumerate(self.g_conv):
            a, b = self.a_conv[k](xp), self.b_conv[k](xp)  # (N', C_e, L, V)
            if clip:
                a = a.permute(0, 3, 1, 2).reshape(nm, v, ic * t)
                b = b.reshape(nm, ic * t, v)
                graph = self.soft(torch.matmul(a, b) / a.shape[-1]) + adj[k]  # (N*M, V, V)
                z = torch.matmul(rows, graph).reshape(nm, c, t, v)
            else:
                a = a.permute(0, 2, 3, 1)  # (N, L, V, C_e)
                b = b.permute(0, 2, 1, 3)  # (N, L, C_e, V)
                graph = self.soft(torch.matmul(a, b) / ic) + adj[k]  # (N, L, V, V)
                z = torch.matmul(rows, graph).permute(0, 2, 1, 3)  # (N, C, L, V)
            z = conv(z)
            y = z if y is None else y + z
        y = self.relu(self.bn(y) + self.gcn_residual(xp))
        if clip:
            return _batch_to_persons(y, n)
        return y.reshape(n, -1, t, s)

    def _forward_published(self, x: Tensor) -> Tensor:
        """continual-skeletons' ``AdaptiveGraphConvolutionMod.forward``, term for term: per
        (person, frame) graphs ``softmax_w(a_v . b_w / C_e) + A[k]`` (N, V, W, L), applied with
        its ``einsum("nctv,nvwt->nctv")``."""
        v = self.A.shape[-1]
        n, c, t, s = x.shape
        xp = x.reshape(n, c, t * (s // v), v)  # (N, C, L, V): one row per (frame, person)
        adj = self.A + self.graph_attn
        y = None
        for k, conv in enumerate(self.g_conv):
            a = self.a_conv[k](xp).permute(0, 3, 1, 2)  # (N, V, C_e, L)
            b = self.b_conv[k](xp)  # (N, C_e, L, W)
            graph = torch.softmax(torch.einsum("nvcl,nclw->nvwl", a, b) / self.inter_channels, dim=-2)
            graph = graph + adj[k][None, :, :, None]
            z = conv(torch.einsum("nclv,nvwl->nclv", xp, graph))
            y = z if y is None else y + z
        y = self.relu(self.bn(y) + self.gcn_residual(xp))
        return y.reshape(n, -1, t, s)


class SpatialAttention(nn.Module):
    """Multi-head self-attention over the joints of each frame (S-TR's ``SpatialAttention``,
    without relative encodings or adjacency bias): queries, keys and values from one 1x1 conv
    (``qkv_conv``, ``2 * dk + dv`` channels), ``num_heads`` heads, output 1x1 conv ``attn_out``.

    Works on ``(N, C, L, V)``: each of the ``L`` rows is one frame of one person. With
    ``drop_connect`` and in training mode, each key joint is dropped with probability 0.5 per
    head (S-TR's regulariser; the inference path has no randomness).
    """

    def __init__(self, in_channels: int, dk: int, dv: int, num_heads: int, drop_connect: bool = True):
        super().__init__()
        if dk % num_heads or dv % num_heads:
            raise ConfigurationError(f"SpatialAttention: dk={dk} and dv={dv} must be divisible by num_heads={num_heads}")
        self.dk, self.dv, self.num_heads, self.drop_connect = dk, dv, num_heads, drop_connect
        self.qkv_conv = nn.Conv2d(in_channels, 2 * dk + dv, 1)
        self.attn_out = nn.Conv2d(dv, dv, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, _, length, v = x.shape
        h = self.num_heads
        q, k, val = torch.split(self.qkv_conv(x), [self.dk, self.dk, self.dv], dim=1)
        q = q.reshape(n, h, self.dk // h, length, v) * (self.dk // h) ** -0.5
        k = k.reshape(n, h, self.dk // h, length, v)
        val = val.reshape(n, h, self.dv // h, length, v)
        # (N, H, L, V, V): per row, query joint x key joint
        logits = torch.matmul(q.permute(0, 1, 3, 4, 2), k.permute(0, 1, 3, 2, 4))
        weights = F.softmax(logits, dim=-1)
        if self.drop_connect and self.training:
            keep = torch.bernoulli(torch.full((n, h, length, 1, v), 0.5, device=x.device, dtype=x.dtype))
            weights = weights * keep
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-8)
        out = torch.matmul(weights, val.permute(0, 1, 3, 4, 2))  # (N, H, L, V, dv/H)
        out = out.permute(0, 1, 4, 2, 3).reshape(n, self.dv, length, v)
        return self.attn_out(out)


class GcnUnitAttention(FrameModule):
    """S-TR's spatial self-attention unit (``GcnUnitAttention`` with ``only_attention``):
    ``relu(bn(attention(data_bn(x)) + x))`` (the skip ``+ x`` only when the channels agree),
    attention over the joints of each person and frame.

    Clips ``(N, C_in, T, M*V) -> (N, C_out, T, M*V)``. Params: ``data_bn`` (over ``C_in * V``),
    ``attention_conv.qkv_conv``, ``attention_conv.attn_out``, ``bn``, and ``A`` (a trainable
    parameter, as in S-TR's code, which the attention does not use).
    """

    def __init__(self, in_channels: int, out_channels: int, A: Tensor, num_heads: int = 8,
                 dk_factor: float = 0.25, drop_connect: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_joints = A.shape[-1]
        # A trainable parameter the attention never reads, as in S-TR's code: its checkpoints
        # (whose A weight decay has shrunk) load unchanged, and the count is the published one.
        self.A = nn.Parameter(A.detach().clone().float())
        self.data_bn = nn.BatchNorm1d(in_channels * self.num_joints)
        self.bn = nn.BatchNorm2d(out_channels)
        self.attention_conv = SpatialAttention(in_channels, int(out_channels * dk_factor), out_channels, num_heads,
                                               drop_connect)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        v = self.num_joints
        _check_joints(x, v, type(self).__name__)
        n, c, t, s = x.shape
        m = s // v
        # data_bn normalises every (channel, joint) pair over the batch, the persons and time.
        z = x.reshape(n, c, t, m, v).permute(0, 3, 1, 4, 2).reshape(n * m, c * v, t)
        z = self.data_bn(z).reshape(n, m, c, v, t).permute(0, 2, 4, 1, 3).reshape(n, c, t * m, v)
        y = self.attention_conv(z).reshape(n, self.out_channels, t, s)
        if self.in_channels == self.out_channels:
            y = y + x
        return self.relu(self.bn(y))


# --- the spatio-temporal block ------------------------------------------------------------------


class SpatioTemporalBlock(cn.ContinualModule):
    """``relu(tcn(gcn(x)) + residual(x))`` on clips ``(N, C_in, T, S) -> (N, C_out, T', S)``.

    ``gcn``: a per-frame spatial unit (a `FrameModule`). ``tcn``: ``t_conv`` (a continual
    ``Conv2d``, kernel ``(kernel_size, 1)``, stride ``(stride, 1)``, padding ``kernel_size // 2``
    with ``temporal_padding="keep"`` or 0 with ``"remove"``) and ``bn``. ``residual``: none
    (``residual=False``), the identity (same channels, stride 1), or ``t_conv`` (1x1, stride
    ``(stride, 1)``) and ``bn``. Without temporal padding the residual is cropped to the centre
    frame of each output's window; when stepping it is delayed to its output.
    """

    def __init__(self, gcn: FrameModule, in_channels: int, out_channels: int, stride: int = 1, residual: bool = True,
                 kernel_size: int = 9, temporal_padding: str = "keep"):
        super().__init__()
        _check_choice("temporal_padding", temporal_padding, ("keep", "remove"))
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigurationError(f"SpatioTemporalBlock: the temporal kernel size must be odd, got {kernel_size}")
        pad = kernel_size // 2 if temporal_padding == "keep" else 0
        self.gcn = gcn
        self.tcn = cn.Sequential(OrderedDict(
            t_conv=cn.Conv2d(out_channels, out_channels, (kernel_size, 1), padding=(pad, 0), stride=(stride, 1)),
            bn=nn.BatchNorm2d(out_channels),
        ))
        _init_conv(self.tcn.t_conv)
        _init_bn(self.tcn.bn)
        if not residual:
            self.residual_kind = "none"
        elif in_channels == out_channels and stride == 1:
            self.residual_kind = "identity"
        else:
            self.residual_kind = "conv"
            self.residual = cn.Sequential(OrderedDict(
                t_conv=cn.Conv2d(in_channels, out_channels, 1, stride=(stride, 1)),
                bn=nn.BatchNorm2d(out_channels),
            ))
            _init_conv(self.residual.t_conv)
            _init_bn(self.residual.bn)
        self.relu = cn.continual(nn.ReLU())
        self.temporal_padding = temporal_padding

    def extra_repr(self):
        return f"residual={self.residual_kind!r}, temporal_padding={self.temporal_padding!r}"

    def _main(self):
        return seq(OrderedDict(gcn=self.gcn.layer, tcn=self.tcn.layer))

    def _shrink(self, main) -> Optional[Delay]:
        """The residual's crop to the centre frame of each output's window (None: equal padding)."""
        return residual_alignment(main, "centered", delay_equal=False)

    def _build_layer(self):
        main = self._main()
        if self.residual_kind == "none":
            inner = main
            mapping = {"block.gcn": "gcn", "block.tcn": "tcn"}
        else:
            parts = []
            shrink = self._shrink(main)
            if shrink is not None:
                parts.append(("shrink", shrink))
            if self.residual_kind == "conv":
                parts += [("t_conv", self.residual.t_conv.layer), ("bn", self.residual.bn.layer)]
            branch = seq(OrderedDict(parts)) if parts else Delay(0, main.step_rank)
            # The branches share one clock: the residual (delay 0 or the crop's) is delayed to
            # the main branch's output, after a strided conv by whole output steps.
            inner = broadcast_reduce(OrderedDict(residual=branch, main=main), reduce="sum")
            mapping = {"block.residual": "residual", "block.main.gcn": "gcn", "block.main.tcn": "tcn"}

        layer = seq(OrderedDict(block=inner, relu=self.relu.layer.with_rank(main.out_rank)))
        return Remap(layer, mapping, "st_block")


    def forward(self, x: Tensor) -> Tensor:
        z = self.tcn(self.gcn(x))
        if self.residual_kind == "none":
            return self.relu(z)
        r = x
        shrink = self._shrink(self._main())
        if shrink is not None:
            r = shrink.forward({}, r)
        if self.residual_kind == "conv":
            r = self.residual(r)
        return self.relu(r + z)



# --- the networks ---------------------------------------------------------------------------------


class SkeletonNet(cn.Sequential):
    """A spatio-temporal graph network: children ``data_bn`` (`DataNorm`), ``layers``
    (``layer1`` ... ``layer10``, `SpatioTemporalBlock` s), ``spatial_pool`` (mean over persons and
    joints), ``pool`` (temporal average over ``pool.kernel_size`` outputs: the outputs of one
    clip of ``clip_length`` frames) and ``fc`` (linear over channels).

    ``forward``: clips ``(B, C, T, V, M)`` to scores ``(B, num_classes, T')`` (the regular
    network; ``T' = 1`` for ``T = clip_length``). ``forward_step``: frames ``(B, C, V, M)`` to
    ``(B, num_classes)``, or None while warming up and on strided steps. ``config`` records the
    builder's arguments.
    """

    def __init__(self, children: "OrderedDict[str, nn.Module]", config: dict):
        super().__init__(children)
        self.config = dict(config)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


def published_pool_padding(clip_length: int, strides: Sequence[int], kernel_size: int, padding: int) -> int:
    """The zero padding continual-skeletons gives its final temporal pool (``CoModelBase``):
    ``pool_size - ceil((T - rf + P + 1) / S)`` with the backbone's receptive field ``rf``, total
    start padding ``P`` and stride ``S``. 19 for the original variant on 300 frames, 0 for the
    star variant."""
    rf, total_pad, cum = 1, 0, 1
    for s in strides:
        rf += (kernel_size - 1) * cum
        total_pad += padding * cum
        cum *= s
    pool_size = backbone_length(clip_length, strides, kernel_size, padding)
    return max(0, pool_size - math.ceil((clip_length - rf + total_pad + 1) / cum))


def backbone_length(clip_length: int, strides: Sequence[int], kernel_size: int, padding: int) -> int:
    """The number of frames the blocks output for a clip of ``clip_length`` frames."""
    length = clip_length
    for s in strides:
        length = (length + 2 * padding - kernel_size) // s + 1
    return length


def _build(kind: str, num_classes: int, variant: str, clip_length: int, num_persons: int, in_channels: int,
           graph, channels: Sequence[int], strides: Optional[Sequence[int]], temporal_kernel_size: int,
           unit_kwargs: dict, attention_from: Optional[int] = None, zero_padded_pool: bool = False) -> SkeletonNet:
    _check_choice("variant", variant, VARIANTS)
    A = adjacency(graph)
    num_joints = A.shape[-1]
    channels = tuple(int(c) for c in channels)
    if strides is None:
        if variant == "star":
            strides = (1,) * len(channels)
        elif len(channels) == len(STRIDES):
            strides = STRIDES
        else:
            raise ConfigurationError(f"give `strides` for {len(channels)} blocks (the original strides are for 10)")
    strides = tuple(int(s) for s in strides)
    if len(strides) != len(channels) or not channels:
        raise ConfigurationError(f"`channels` and `strides` need one entry per block, got {channels} and {strides}")
    if variant == "star" and any(s != 1 for s in strides):
        raise ConfigurationError(f"the 'star' variant has temporal stride 1 in every block, got strides {strides}")
    temporal_padding = "keep" if variant == "original" else "remove"
    pad = temporal_kernel_size // 2 if temporal_padding == "keep" else 0
    pool_size = backbone_length(clip_length, strides, temporal_kernel_size, pad)
    if pool_size < 1:
        raise ConfigurationError(
            f"a clip of {clip_length} frames is shorter than the network's receptive field "
            f"(variant {variant!r}, temporal kernel {temporal_kernel_size}); use longer clips"
        )

    pool_padding = published_pool_padding(clip_length, strides, temporal_kernel_size, pad) if zero_padded_pool else 0

    blocks = OrderedDict()
    c_in = in_channels
    for i, (c_out, s) in enumerate(zip(channels, strides)):
        if kind == "st_gcn" or (kind == "s_tr" and i + 1 < attention_from):
            gcn = GraphConvolution(c_in, c_out, A)
        elif kind == "agcn":
            gcn = AdaptiveGraphConvolution(c_in, c_out, A, **unit_kwargs)
        else:
            gcn = GcnUnitAttention(c_in, c_out, A, **unit_kwargs)
        blocks[f"layer{i + 1}"] = SpatioTemporalBlock(gcn, c_in, c_out, stride=s, residual=i > 0,
                                                      kernel_size=temporal_kernel_size, temporal_padding=temporal_padding)
        c_in = c_out
    fc = cn.Linear(c_in, num_classes, channel_dim=1)
    nn.init.normal_(fc.weight, 0.0, math.sqrt(2.0 / num_classes))
    config = dict(model=kind, num_classes=num_classes, variant=variant, clip_length=clip_length, num_persons=num_persons,
                  in_channels=in_channels, channels=channels, strides=strides, temporal_kernel_size=temporal_kernel_size,
                  **unit_kwargs, zero_padded_pool=zero_padded_pool)
    if attention_from is not None:
        config["attention_from"] = attention_from
    return SkeletonNet(OrderedDict(
        data_bn=DataNorm(in_channels, num_joints, num_persons),
        layers=cn.Sequential(blocks),
        spatial_pool=SpatialMean(),
        pool=cn.AvgPool1d(pool_size, stride=1, padding=pool_padding),
        fc=fc,
    ), config)


_ARGS_DOC = """
    Args:
        num_classes: outputs of ``fc`` (60 for NTU RGB+D 60, 120 for NTU RGB+D 120).
        variant: ``"original"`` (temporal padding, strides 2 in blocks 5 and 8; one prediction
            every 4 frames when stepped) or ``"star"`` (no temporal padding, stride 1; one
            prediction per frame). ``"*"`` is accepted for ``"star"``.
        clip_length: the frames of one regular prediction (300 for NTU RGB+D); sets the
            temporal average pool, so that ``forward`` on ``clip_length`` frames returns one
            prediction and a stream predicts from the last ``clip_length`` frames.
        num_persons: ``M``, the persons per clip (2 in NTU RGB+D); clips are ``(B, C, T, V, M)``.
        in_channels: coordinates per joint (3).
        graph: ``"ntu"`` (25 joints) or a ``(K, V, V)`` adjacency partition.
        channels, strides: per block (defaults: 64, 64, 64, 64, 128, 128, 128, 256, 256, 256 and
            the variant's strides); smaller widths make quick test networks.
        temporal_kernel_size: the temporal conv's kernel (9).
        zero_padded_pool: pad the start of the final temporal average pool with zeros, as
            continual-skeletons' continual models do (`published_pool_padding`: 19 outputs for
            the original variant on 300 frames, none for the star variant). A stream then
            predicts from step 296 instead of 372, the early predictions averaging zeros for the
            missing outputs (divided by the whole pool), and ``forward`` on ``clip_length``
            frames returns ``1 + 2 * padding`` predictions, the first being the published
            model's clip prediction (continual-skeletons' ``CoModelBase`` returns that one).
            Steady-state predictions are unchanged.
"""


def _variant(variant: str) -> str:
    return "star" if variant == "*" else variant


def st_gcn(num_classes: int = 60, *, variant: str = "original", clip_length: int = 300, num_persons: int = 2,
           in_channels: int = 3, graph="ntu", channels: Sequence[int] = CHANNELS,
           strides: Optional[Sequence[int]] = None, temporal_kernel_size: int = 9,
           zero_padded_pool: bool = False) -> SkeletonNet:
    return _build("st_gcn", num_classes, _variant(variant), clip_length, num_persons, in_channels, graph, channels,
                  strides, temporal_kernel_size, {}, zero_padded_pool=zero_padded_pool)


def agcn(num_classes: int = 60, *, variant: str = "original", clip_length: int = 300, num_persons: int = 2,
         in_channels: int = 3, graph="ntu", channels: Sequence[int] = CHANNELS, strides: Optional[Sequence[int]] = None,
         temporal_kernel_size: int = 9, attention: Optional[str] = None, coff_embedding: int = 4,
         zero_padded_pool: bool = False) -> SkeletonNet:
    variant = _variant(variant)
    if attention is None:
        attention = "frame" if variant == "star" else "clip"
    _check_choice("attention", attention, ATTENTION_SCOPES)
    return _build("agcn", num_classes, variant, clip_length, num_persons, in_channels, graph, channels,
                  strides, temporal_kernel_size, dict(attention=attention, coff_embedding=coff_embedding),
                  zero_padded_pool=zero_padded_pool)


def s_tr(num_classes: int = 60, *, variant: str = "original", clip_length: int = 300, num_persons: int = 2,
         in_channels: int = 3, graph="ntu", channels: Sequence[int] = CHANNELS, strides: Optional[Sequence[int]] = None,
         temporal_kernel_size: int = 9, num_heads: int = 8, attention_from: int = 4,
         drop_connect: bool = True, zero_padded_pool: bool = False) -> SkeletonNet:
    if not 1 <= attention_from <= len(tuple(channels)):
        raise ConfigurationError(f"`attention_from` must name a block, 1 to {len(tuple(channels))}, got {attention_from}")
    return _build("s_tr", num_classes, _variant(variant), clip_length, num_persons, in_channels, graph, channels,
                  strides, temporal_kernel_size, dict(num_heads=num_heads, drop_connect=drop_connect),
                  attention_from=attention_from, zero_padded_pool=zero_padded_pool)


st_gcn.__doc__ = """ST-GCN / CoST-GCN: spatial graph convolutions (3 partitions, learnable edge
    importance) and temporal convolutions; ``forward`` is ST-GCN (ST-GCN* for
    ``variant="star"``), stepping is CoST-GCN (CoST-GCN*). 3.1 M parameters at full size.
""" + _ARGS_DOC

agcn.__doc__ = """AGCN / CoAGCN: `st_gcn` with 2s-AGCN's adaptive graph convolution.

    ``attention="clip"`` (the default of the original variant, the regular AGCN): the
    data-dependent graph spans the whole clip; stepping computes it per frame (as the published
    CoAGCN), so stepped outputs equal the ``forward`` of the same weights with
    ``attention="frame"``, not this ``forward``. ``attention="frame"`` (the default of the star
    variant, whose published model attends within each frame): one data-dependent graph per
    frame; ``forward`` and stepping agree. ``attention="frame_published"``: the published
    AGCN* / CoAGCN* computation, defect included (see `AdaptiveGraphConvolution`); use it to
    reproduce the predictions of continual-skeletons' ``agcnmod_*`` checkpoints.
    ``coff_embedding``: the embeddings have ``out_channels // coff_embedding`` channels.
    3.5 M parameters at full size.
""" + _ARGS_DOC

s_tr.__doc__ = """S-TR / CoS-TR: `st_gcn` with spatial self-attention over the joints of each
    frame (S-TR's ``GcnUnitAttention``) in blocks ``attention_from`` (4) to 10.

    ``num_heads`` (8): attention heads; keys have ``out_channels // 4`` channels, values
    ``out_channels``, both divisible by ``num_heads``. ``drop_connect``: S-TR's random key
    dropping in training mode. 3.1 M parameters at full size.
""" + _ARGS_DOC


__all__ = [
    "AdaptiveGraphConvolution",
    "DataNorm",
    "FrameModule",
    "GcnUnitAttention",
    "GraphConvolution",
    "SkeletonNet",
    "SpatialAttention",
    "SpatialMean",
    "SpatioTemporalBlock",
    "agcn",
    "backbone_length",
    "published_pool_padding",
    "s_tr",
    "st_gcn",
]
