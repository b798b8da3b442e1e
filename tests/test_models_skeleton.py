"""Skeleton-based action recognition (`cofunc.models.skeleton`): ST-GCN, AGCN, S-TR and their
continual forms CoST-GCN, CoAGCN, CoS-TR, in the original and the "*" (star) variants.

- ``forward`` equals an independent plain-torch transcription of the published regular networks
  (persons folded into the batch, as continual-skeletons and 2s-AGCN do), whose modules carry the
  published parameter names: the state dict loads with ``strict=True``.
- Stepping a clip from a fresh state equals ``forward`` in the exact modes (chunked with
  ``pad_end``, and frame by frame: the first output after ``delay`` steps, then one every
  ``stride`` steps).
- AGCN's clip-wide attention is stepped per frame: stepped outputs equal the frame-attention
  network's ``forward``.
- Full-size parameter counts and MACs against the papers' table (Hedegaard et al., Table II).

Small networks (8-32 channels, float64) for the equivalences; full-size ones for counts (the
regular MACs on the meta device). Shapes: clips ``(B, 3, T, 25, M)``, frames ``(B, 3, 25, M)``,
scores ``(B, K, T')``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cofunc import ConfigurationError, InputShapeError
from cofunc._profile import profile
from cofunc.demo import randomize_norms
from cofunc.models._graph import NTU_INWARD, ntu_adjacency
from cofunc.models.skeleton import agcn, backbone_length, s_tr, st_gcn

F64 = torch.float64
K = 7  # classes of the small networks
SMALL_CHANNELS = (8, 8, 8, 8, 16, 16, 16, 32, 32, 32)
BUILDERS = {
    "st_gcn": lambda **kw: st_gcn(K, channels=SMALL_CHANNELS, **kw),
    "agcn": lambda **kw: agcn(K, channels=SMALL_CHANNELS, attention="frame", **kw),
    "s_tr": lambda **kw: s_tr(K, channels=SMALL_CHANNELS, num_heads=2, **kw),
}
MODELS = tuple(BUILDERS)
VARIANTS = ("original", "star")
# (clip_length, frames of the test clip): the star variant's blocks see 81 frames (10 x 8 + 1).
CLIPS = {"original": (20, 27), "star": (82, 85)}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """float64, eval mode, random batch-norm statistics and affine params (the builders start the
    graph units' norms at 1e-6), random edge importances (ST-GCN: factors around 1) and learned
    graphs (AGCN: small, added to the partition; its initial ones would make every graph dense
    and the features grow by orders of magnitude per block)."""
    g = torch.Generator().manual_seed(seed)
    net = net.double().eval()
    additive = net.config["model"] == "agcn"
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("graph_attn"):
                noise = torch.rand(p.shape, generator=g, dtype=F64)
                p.copy_((noise - 0.5) * 0.2 if additive else noise + 0.5)
    return randomize_norms(net, seed)


def skeletons(frames: int, batch: int = 2, persons: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, 25, persons, generator=g, dtype=F64)


# --- the published regular networks, transcribed in plain torch ----------------------------------
# continual-skeletons' StGcn / AGcn / STr (and 2s-AGCN, ST-TR): persons folded into the batch,
# one module per subset, the attention of S-TR run on frames reshaped to (N*T, C, 1, V).


class RefGraphConv(nn.Module):
    def __init__(self, c_in, c_out, A, adaptive=False, clip_attention=True):
        super().__init__()
        self.register_buffer("A", A.clone())
        self.graph_attn = nn.Parameter(torch.ones_like(A))
        self.g_conv = nn.ModuleList(nn.Conv2d(c_in, c_out, 1) for _ in range(3))
        self.adaptive, self.clip_attention, self.inter_c = adaptive, clip_attention, c_out // 4
        if adaptive:
            self.a_conv = nn.ModuleList(nn.Conv2d(c_in, self.inter_c, 1) for _ in range(3))
            self.b_conv = nn.ModuleList(nn.Conv2d(c_in, self.inter_c, 1) for _ in range(3))
        self.gcn_residual = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out)) if c_in != c_out else (lambda x: x)
        )
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        if self.adaptive and not self.clip_attention:
            # one graph per frame: the frames become batch entries
            n, c, t, v = x.shape
            y = self.forward_clip(x.permute(0, 2, 1, 3).reshape(n * t, c, 1, v))
            return y.reshape(n, t, -1, v).permute(0, 2, 1, 3)
        return self.forward_clip(x)

    def forward_clip(self, x):
        N, C, T, V = x.size()
        A = (self.A + self.graph_attn) if self.adaptive else (self.A * self.graph_attn)
        hidden = None
        for i in range(3):
            graph = A[i]
            if self.adaptive:
                A1 = self.a_conv[i](x).permute(0, 3, 1, 2).contiguous().view(N, V, self.inter_c * T)
                A2 = self.b_conv[i](x).view(N, self.inter_c * T, V)
                graph = torch.softmax(torch.matmul(A1, A2) / A1.size(-1), dim=-2) + A[i]
            z = self.g_conv[i](torch.matmul(x.view(N, C * T, V), graph).view(N, C, T, V))
            hidden = z if hidden is None else hidden + z
        return F.relu(self.bn(hidden) + self.gcn_residual(x))


class RefSpatialAttention(nn.Module):
    def __init__(self, c_in, dk, dv, Nh):
        super().__init__()
        self.dk, self.dv, self.Nh = dk, dv, Nh
        self.qkv_conv = nn.Conv2d(c_in, 2 * dk + dv, 1)
        self.attn_out = nn.Conv2d(dv, dv, 1)

    def forward(self, x):  # (B, C, 1, V): one frame of one person per batch entry
        B, _, T, V = x.size()
        q, k, v = torch.split(self.qkv_conv(x), [self.dk, self.dk, self.dv], dim=1)
        dkh, dvh = self.dk // self.Nh, self.dv // self.Nh
        q = q.reshape(B, self.Nh, dkh, T, V) * dkh**-0.5
        flat_q = q.reshape(B, self.Nh, dkh, T * V)
        flat_k = k.reshape(B, self.Nh, dkh, T * V)
        flat_v = v.reshape(B, self.Nh, dvh, T * V)
        weights = F.softmax(torch.matmul(flat_q.transpose(2, 3), flat_k), dim=-1)
        out = torch.matmul(weights, flat_v.transpose(2, 3))
        out = out.reshape(B, self.Nh, T, V, dvh).permute(0, 1, 4, 2, 3).reshape(B, self.Nh * dvh, T, V)
        return self.attn_out(out)


class RefGcnUnitAttention(nn.Module):
    def __init__(self, c_in, c_out, A, Nh):
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.register_buffer("A", A.clone())
        self.data_bn = nn.BatchNorm1d(c_in * A.shape[-1])
        self.bn = nn.BatchNorm2d(c_out)
        self.attention_conv = RefSpatialAttention(c_in, c_out // 4, c_out, Nh)

    def forward(self, x):
        N, C, T, V = x.size()
        x_sum = x
        x = self.data_bn(x.permute(0, 1, 3, 2).reshape(N, C * V, T)).reshape(N, C, V, T).permute(0, 1, 3, 2)
        xa = x.permute(0, 2, 1, 3).reshape(-1, C, 1, V)
        attn = self.attention_conv(xa).reshape(N, T, -1, V).permute(0, 2, 1, 3)
        y = attn + x_sum if self.c_in == self.c_out else attn
        return F.relu(self.bn(y))


class RefTemporal(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, pad):
        super().__init__()
        self.t_conv = nn.Conv2d(c_in, c_out, (kernel, 1), padding=(pad, 0), stride=(stride, 1))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.t_conv(x))


class RefBlock(nn.Module):
    def __init__(self, gcn, c_in, c_out, stride, residual, kernel, pad):
        super().__init__()
        self.gcn = gcn
        self.tcn = RefTemporal(c_out, c_out, kernel, stride, pad)
        self.shrink = (kernel - 1) // 2 - pad
        self.kind = "none" if not residual else ("identity" if c_in == c_out and stride == 1 else "conv")
        if self.kind == "conv":
            self.residual = RefTemporal(c_in, c_out, 1, stride, 0)

    def forward(self, x):
        z = self.tcn(self.gcn(x))
        if self.kind == "none":
            return F.relu(z)
        if self.shrink:  # centred residual of an unpadded block
            x = x[:, :, self.shrink:-self.shrink]
        return F.relu(z + (self.residual(x) if self.kind == "conv" else x))


class RefNet(nn.Module):
    def __init__(self, kind, channels, strides, kernel, pad, persons, num_classes, clip_attention=True, Nh=2):
        super().__init__()
        A = ntu_adjacency()
        self.data_bn = nn.BatchNorm1d(persons * 3 * 25)
        layers, c_in = OrderedDict(), 3
        for i, (c_out, s) in enumerate(zip(channels, strides)):
            if kind == "agcn":
                gcn = RefGraphConv(c_in, c_out, A, adaptive=True, clip_attention=clip_attention)
            elif kind == "s_tr" and i >= 3:
                gcn = RefGcnUnitAttention(c_in, c_out, A, Nh)
            else:
                gcn = RefGraphConv(c_in, c_out, A)
            layers[f"layer{i + 1}"] = RefBlock(gcn, c_in, c_out, s, i > 0, kernel, pad)
            c_in = c_out
        self.layers = nn.ModuleDict(layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        N, C, T, V, M = x.size()
        x = self.data_bn(x.permute(0, 4, 3, 1, 2).contiguous().view(N, M * V * C, T))
        x = x.view(N, M, V, C, T).permute(0, 1, 3, 4, 2).contiguous().view(N * M, C, T, V)
        for layer in self.layers.values():
            x = layer(x)
        x = x.view(N, M, x.size(1), -1).mean(3).mean(1)
        return self.fc(x)


def reference_of(net, kind, variant, persons=2, kernel=9):
    cfg = net.config
    clip_attention = cfg.get("attention") == "clip"
    pad = kernel // 2 if variant == "original" else 0
    ref = RefNet(kind, cfg["channels"], cfg["strides"], kernel, pad, persons, cfg["num_classes"], clip_attention,
                 cfg.get("num_heads", 2)).double()
    ref.load_state_dict(net.state_dict(), strict=True)
    return ref.eval()


# --- the graph --------------------------------------------------------------------------------


def test_ntu_graph_is_the_spatial_partition_of_a_tree_rooted_at_the_spine():
    A = ntu_adjacency()
    assert A.shape == (3, 25, 25) and A.dtype == torch.float32
    assert torch.equal(A[0], torch.eye(25))
    assert len(NTU_INWARD) == 24 and len({child for child, _ in NTU_INWARD}) == 24
    # centripetal: every joint but the root (joint 21, index 20) gathers its one parent
    parents = (A[1] > 0).sum(0)
    assert parents[20] == 0 and bool((parents[torch.arange(25) != 20] == 1).all())
    assert torch.equal(A[1].sum(0)[torch.arange(25) != 20], torch.ones(24))
    # centrifugal: the same bones reversed, each joint's children weighted 1 / #children
    assert torch.equal(A[2] > 0, (A[1] > 0).T)
    children = (A[2] > 0).sum(0)
    assert children[20] == 4  # the spine at the shoulders: spine, neck, both shoulders
    assert torch.allclose(A[2].sum(0), (children > 0).float())


# --- equivalences on small networks -----------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", MODELS)
def test_forward_is_the_published_regular_network(kind, variant):
    clip_length, _ = CLIPS[variant]
    net = randomize(BUILDERS[kind](variant=variant, clip_length=clip_length))
    ref = reference_of(net, kind, variant)
    x = skeletons(clip_length)
    y = net(x)
    assert y.shape == (2, K, 1)
    torch.testing.assert_close(y[:, :, 0], ref(x))


def test_forward_with_one_person():
    net = randomize(st_gcn(K, channels=SMALL_CHANNELS, clip_length=20, num_persons=1))
    x = skeletons(20, persons=1)
    torch.testing.assert_close(net(x)[:, :, 0], reference_of(net, "st_gcn", "original", persons=1)(x))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", MODELS)
def test_chunked_steps_with_pad_end_equal_forward(kind, variant):
    """From a fresh state, three chunks (the last with ``pad_end``) give ``forward``'s outputs."""
    clip_length, frames = CLIPS[variant]
    net = randomize(BUILDERS[kind](variant=variant, clip_length=clip_length))
    x = skeletons(frames)
    y = net(x)
    # one prediction per window of clip_length frames (every 4 frames in the original variant)
    strides, pad = net.config["strides"], 4 if variant == "original" else 0
    assert y.shape[-1] == backbone_length(frames, strides, 9, pad) - backbone_length(clip_length, strides, 9, pad) + 1
    cuts = (0, 11, frames - 3, frames)
    outs = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        out = net.forward_steps(x[:, :, a:b], pad_end=i == 2)
        if out is not None:
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=-1), y)


# Frame-by-frame: a temporal kernel of 3 keeps the receptive fields (and the step counts) short.
# (clip_length, frames, delay, stride): original: blocks 1+1+1+1+1 + 2*(1+1+1) + 4*(1+1) = 19, the
# pool averages 4 outputs 4 frames apart: +12; star: 10 blocks x 2 frames, pool of 4 outputs: +3.
STEPPED = {"original": (16, 41, 31, 4), "star": (24, 29, 23, 1)}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", MODELS)
def test_frame_by_frame_outputs_follow_delay_and_stride(kind, variant):
    clip_length, frames, delay, stride = STEPPED[variant]
    net = randomize(BUILDERS[kind](variant=variant, clip_length=clip_length, temporal_kernel_size=3))
    assert (net.delay, net.stride) == (delay, (stride,))
    x = skeletons(frames)
    y = net(x)
    emitted, outs = [], []
    for t in range(frames):
        out = net.forward_step(x[:, :, t])
        if out is not None:
            emitted.append(t)
            outs.append(out)
    assert emitted == list(range(delay, frames, stride))
    torch.testing.assert_close(torch.stack(outs, dim=-1), y[:, :, : len(outs)])
    # the outputs that need end padding come with pad_end; the stream can go on afterwards
    rest = net.forward_steps(x[:, :, :0], pad_end=True)
    if variant == "original":
        torch.testing.assert_close(rest, y[:, :, len(outs):])
    else:
        assert rest is None and len(outs) == y.shape[-1]


@pytest.mark.parametrize("kind", MODELS)
def test_vmapped_steps_of_the_functional_layer(kind):
    """The network's `Layer` stepped under ``torch.func.vmap`` over three streams (no stream
    dims inside) equals the adapter's batched stepping."""
    net = randomize(BUILDERS[kind](variant="star", clip_length=24, temporal_kernel_size=3))
    layer, params = net.layer, net.params
    x = skeletons(26, batch=3)
    expected = net.forward_steps(x)
    one = layer.init_state(params, (3, 25, 2), dtype=F64)
    states = torch.utils._pytree.tree_map(lambda t: torch.stack([t] * 3), one)
    step = torch.func.vmap(lambda s, frame: layer.step(params, s, frame))
    outs = []
    for t in range(26):
        y, states = step(states, x[:, :, t])
        outs.append(y)
    assert net.delay == 23
    torch.testing.assert_close(torch.stack(outs[23:], dim=-1), expected)


def test_adaptive_graph_of_the_clip_is_stepped_per_frame():
    """AGCN (clip-wide data-dependent graph): ``forward`` is the regular AGCN; stepping computes
    the graph per frame, as the same weights with ``attention="frame"`` compute on clips."""
    kw = dict(variant="star", clip_length=82, channels=SMALL_CHANNELS)
    clip_net = randomize(agcn(K, attention="clip", **kw))
    frame_net = randomize(agcn(K, attention="frame", **kw))
    frame_net.load_state_dict(clip_net.state_dict())
    x = skeletons(85)
    first = x[:, :, :82]  # one clip of clip_length frames
    y_clip = clip_net(first)
    torch.testing.assert_close(y_clip[:, :, 0], reference_of(clip_net, "agcn", "star")(first))
    y_frame = frame_net(first)
    torch.testing.assert_close(y_frame[:, :, 0], reference_of(frame_net, "agcn", "star")(first))
    assert (y_clip - y_frame).abs().max() > 1e-3  # the two attentions differ
    torch.testing.assert_close(clip_net.forward_steps(x, pad_end=True), frame_net(x))


def test_a_deep_copy_steps_its_own_modules():
    """The copy's cached layers run the copy's modules (its tensors and its train/eval flags)."""
    net = randomize(BUILDERS["s_tr"](variant="star", clip_length=24, temporal_kernel_size=3))
    x = skeletons(26)
    net.forward_steps(x)  # builds and caches the layers
    net.clean_state()
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.1)
    net.train()  # the original's norms would now use batch statistics
    torch.testing.assert_close(twin.forward_steps(x, pad_end=True), twin(x))
    assert (twin(x) - net.eval()(x)).abs().max() > 1e-3


def test_steps_in_training_mode_warn():
    net = BUILDERS["st_gcn"](variant="star", clip_length=82).double()
    with pytest.warns(UserWarning, match="eval"):
        net.forward_step(skeletons(1)[:, :, 0])


def test_input_shape_errors():
    net = BUILDERS["st_gcn"](variant="original", clip_length=20).double().eval()
    with pytest.raises(InputShapeError, match=r"\(C, V, M\)"):
        net(skeletons(20, persons=3))  # built for 2 persons
    with pytest.raises(InputShapeError, match="joints"):
        net.layers.layer2.gcn(torch.zeros(1, 8, 4, 30, dtype=F64))  # 30 is not M * 25


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match="variant"):
        st_gcn(variant="padded")
    with pytest.raises(ConfigurationError, match="receptive field"):
        st_gcn(variant="star", clip_length=80)  # the blocks need 81 frames
    with pytest.raises(ConfigurationError, match="stride 1"):
        st_gcn(variant="star", strides=STRIDES_ORIGINAL)
    with pytest.raises(ConfigurationError, match="attention"):
        agcn(attention="global")
    with pytest.raises(ConfigurationError, match="num_heads"):
        s_tr(channels=SMALL_CHANNELS, num_heads=8)  # 8-channel blocks: 2 key channels for 8 heads
    assert st_gcn(variant="*").config["variant"] == "star"


STRIDES_ORIGINAL = (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)


# --- full size: parameters and MACs against the papers' table ------------------------------------

# Table II of "Continual Spatio-Temporal Graph Convolutional Networks" (NTU RGB+D 60): params (M),
# GFLOPs of the regular network on a 300-frame clip, and per prediction of the "*" continual one.
SEED = {"st_gcn": (3.14, 16.73, 0.16), "agcn": (3.47, 18.69, 0.17), "s_tr": (3.09, 16.14, 0.15)}
FULL = {"st_gcn": st_gcn, "agcn": agcn, "s_tr": s_tr}
# Trainable parameters at full size (2 persons: data_bn has 2 * 150 params). S-TR: the published
# count (3.09 M) holds S-TR's unused trainable adjacency (7 blocks x 3x25x25 = 13,125), a
# parameter here too.
PARAMS = {"st_gcn": 3_141_478, "agcn": 3_469_510, "s_tr": 3_086_470}


@pytest.mark.parametrize("kind", MODELS)
def test_full_size_parameter_names_and_counts(kind):
    net = FULL[kind]()
    n = sum(p.numel() for p in net.parameters())
    assert n == PARAMS[kind]
    assert abs(n / 1e6 - SEED[kind][0]) / SEED[kind][0] < 0.01
    # the published module tree: the regular network's state dict keys, shapes included
    ref = RefNet(kind, net.config["channels"], net.config["strides"], 9, 4, 2, 60, Nh=8)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    sd = net.state_dict()
    assert sd["data_bn.weight"].shape == (150,)
    assert sd["layers.layer5.residual.t_conv.weight"].shape == (128, 64, 1, 1)
    assert sd["layers.layer10.tcn.t_conv.weight"].shape == (256, 256, 9, 1)
    assert sd["fc.weight"].shape == (60, 256)
    assert "layers.layer2.residual.t_conv.weight" not in sd  # identity residual
    assert "layers.layer1.residual.t_conv.weight" not in sd  # no residual in block 1


def regular_macs(net, frames=300):
    """(all MACs, convolution MACs) of ``forward`` on a 2-person clip, on the meta device."""
    net = net.eval().to("meta")
    with FlopCounterMode(display=False) as counter:
        y = net(torch.empty(1, 3, frames, 25, 2, device="meta"))
    assert y.shape[:2] == (1, 60)
    per_op = counter.get_flop_counts()["Global"]
    return counter.get_total_flops() // 2, per_op[torch.ops.aten.convolution] // 2


@pytest.mark.parametrize("kind", MODELS)
def test_full_size_macs_against_the_table(kind):
    """MACs (FlopCounterMode's FLOPs / 2, the profiler's convention) for NTU's two persons.

    The table's "GFLOPs" are the multiply-accumulates of the 2-person input (equivalently, FLOPs
    of one person) of the convolutions and of a few per-element modules (ptflops' count): the
    convolutions alone come 0.5-1 % below its figures. The profiler also counts the graph
    products (``x @ A``, AGCN's and S-TR's attention), which add 2-4 %.
    """
    _, regular, continual = SEED[kind]
    macs, conv_macs = regular_macs(FULL[kind]())
    assert -0.02 < conv_macs / 1e9 / regular - 1 < 0
    assert 0 < macs / 1e9 / regular - 1 < 0.05
    if kind == "st_gcn":  # ST-GCN*: the regular star network on 300 frames (220 outputs)
        star_macs, star_conv_macs = regular_macs(FULL[kind](variant="star"))
        assert -0.02 < star_conv_macs / 1e9 / 36.90 - 1 < 0
        assert 0 < star_macs / 1e9 / 36.90 - 1 < 0.05
    # CoX*: one step per prediction. Its cost does not depend on the pool's window, so the
    # shortest clip (81 frames: 80 warm-up steps) measures it.
    co = FULL[kind](variant="star", clip_length=81).eval()
    p = profile(co.layer, co.params, (1, 3, 25, 2), clip_length=81)
    assert (p.stride, p.delay, p.clip_outputs) == (1, 80, 1)
    assert abs(p.macs_per_prediction / 1e9 / continual - 1) < 0.05
    assert macs / p.macs_per_prediction > 100  # ~108x in the table


def test_backbone_length():
    assert backbone_length(300, STRIDES_ORIGINAL, 9, 4) == 75
    assert backbone_length(300, (1,) * 10, 9, 0) == 220
