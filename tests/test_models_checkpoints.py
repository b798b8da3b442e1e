"""The seed papers' published checkpoints and behaviours (`cofunc.models.checkpoints`, issue 17).

- SlowFast / co3d X3D: a state dict with SlowFast's key names and shapes (`_slowfast_x3d`),
  converted and loaded into `x3d`, gives the output of SlowFast's forward on those names
  (plain torch), the res2 shortcut batch norm folded exactly.
- continual-skeletons: state dicts with the regular models' names (the published transcriptions
  of test_models_skeleton) and with the continual models' co names (co 1.2.4 containers arranged
  as continual-skeletons' ``CoSpatioTemporalBlock``) load and give the reference's outputs;
  AGCN*'s published einsum is reproduced by ``attention="frame_published"``; the padded final
  pool predicts from step 296 like the published continual models.
- CoOadTR: state dicts with the CoOadTR names (b1, b2; learned and fixed positions) give the
  outputs of the published computation written directly on those names.
- co3d's CoX3D: clip forward with clip-scope SE, steps with frame-scope SE; replicate fill.
"""

from __future__ import annotations

from collections import OrderedDict

import continual as co
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _slowfast_x3d import slowfast_x3d_forward, slowfast_x3d_state_dict
from cofunc import CheckpointError, ConfigurationError
from cofunc.models import (
    agcn,
    from_continual_skeletons,
    from_cooadtr,
    from_slowfast_x3d,
    i3d_r50,
    oadtr,
    s_tr,
    slow_r50,
    st_gcn,
    x3d,
)
from cofunc.models.skeleton import AdaptiveGraphConvolution, published_pool_padding
from test_models_skeleton import SMALL_CHANNELS, RefNet, randomize, skeletons
from test_models_video import clip as video_clip
from test_models_video import randomize as randomize_video
from test_models_video import small_i3d, small_slow, small_x3d

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


# --- SlowFast / co3d X3D ----------------------------------------------------------------------

SMALL_SF = dict(num_classes=5, dim_c1=4, dim_c5=16, depth_factor=1.0)


def small_sf_x3d(**kw):
    kw.setdefault("se", "clip")  # SlowFast's X3D: squeeze-and-excitation over the clip
    return x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0, **kw).double().eval()


def test_slowfast_x3d_checkpoint_gives_slowfasts_output():
    sd = slowfast_x3d_state_dict(**SMALL_SF)
    net = small_sf_x3d()
    converted = from_slowfast_x3d({"model_state": sd, "epoch": 300}, net)
    net.load_state_dict(converted, strict=True)
    # res2 block 0 keeps 8 channels with stride 2: SlowFast normalises its shortcut, pytorchvideo
    # does not, and the converter folds that norm; later stages keep theirs.
    assert "blocks.1.res_blocks.0.branch1_norm.weight" not in converted
    assert "blocks.2.res_blocks.0.branch1_norm.weight" in converted
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        want = slowfast_x3d_forward(sd, x)
        got = net(x)[:, :, 0]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        # the fold matters: dropping the norm instead gives other scores
        dropped = dict(sd)
        for k in ("weight", "bias", "running_mean", "running_var"):
            dropped[f"s2.pathway0_res0.branch1_bn.{k}"] = {"weight": torch.ones, "bias": torch.zeros,
                                                         "running_mean": torch.zeros, "running_var": torch.ones}[k](8, dtype=F64)
        assert not torch.allclose(slowfast_x3d_forward(dropped, x, softmax=False),
                                  slowfast_x3d_forward(sd, x, softmax=False), rtol=1e-3)


def test_slowfast_x3d_full_size_keys_fit_every_size():
    for size, depth in (("S", 2.2), ("L", 5.0)):
        sd = slowfast_x3d_state_dict(depth_factor=depth, dtype=torch.float32)
        net = x3d(size)
        net.load_state_dict(from_slowfast_x3d(sd, net), strict=True)


def test_slowfast_x3d_checkpoint_errors():
    sd = slowfast_x3d_state_dict(**SMALL_SF)
    with pytest.raises(CheckpointError, match="another model, variant or size"):
        from_slowfast_x3d(sd, x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16))  # depth 2.2
    with pytest.raises(CheckpointError, match="shapes differ"):
        from_slowfast_x3d(sd, x3d("XS", num_classes=7, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0))
    with pytest.raises(CheckpointError, match="s1.pathway1_stem"):  # a SlowFast two-pathway model
        from_slowfast_x3d({**sd, "s1.pathway1_stem.conv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="lin_5_bn"):
        from_slowfast_x3d({**sd, "head.lin_5_bn.weight": torch.zeros(16)})
    with pytest.raises(CheckpointError, match="no tensors"):
        from_slowfast_x3d({"epoch": 3})


# --- co3d's CoX3D: clip forward with clip-scope SE, steps with frame-scope SE ------------------

def test_clip_forward_frame_steps_se_is_both_published_modes():
    mixed = randomize_video(small_x3d(se="clip_forward_frame_steps"))
    clip_net = randomize_video(small_x3d(se="clip"))
    frame_net = randomize_video(small_x3d(se="frame"))
    clip_net.load_state_dict(mixed.state_dict())
    frame_net.load_state_dict(mixed.state_dict())
    x = video_clip(12)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x[:, :, :4]), clip_net(x[:, :, :4]))
        torch.testing.assert_close(mixed.forward_steps(x, pad_end=True), frame_net.forward_steps(x, pad_end=True))
        assert mixed.delay == frame_net.delay
        assert not torch.allclose(mixed(x[:, :, :4]), frame_net(x[:, :, :4]))
    with pytest.raises(ConfigurationError, match="temporal_padding='keep'"):
        small_x3d(se="clip_forward_frame_steps", temporal_padding="remove")


# --- temporal fill ------------------------------------------------------------------------------

def _replicate_padded(conv: nn.Conv3d):
    """``conv``'s forward with its temporal padding made of copies of its own first and last
    input frames (what co's ``temporal_fill="replicate"`` state holds for each layer)."""
    p = conv.padding[0]

    def forward(x):
        x = torch.cat([x[:, :, :1].expand(-1, -1, p, -1, -1), x, x[:, :, -1:].expand(-1, -1, p, -1, -1)], dim=2)
        return F.conv3d(x, conv.weight, conv.bias, conv.stride, (0, *conv.padding[1:]), conv.dilation, conv.groups)

    return forward


@pytest.mark.parametrize("build", [small_x3d, small_slow, small_i3d], ids=["x3d", "slow", "i3d"])
def test_replicate_fill_pads_each_convolution_with_its_first_input_frame(build):
    """Stepped from a fresh state, ``temporal_fill="replicate"`` equals the regular network whose
    temporally padded convolutions pad their own input with copies of its first (and, with
    ``pad_end``, last) frame; ``forward`` keeps the zero padding."""
    kw = {"se": "frame"} if build is small_x3d else {}
    rep = randomize_video(build(temporal_fill="replicate", **kw))
    zero = randomize_video(build(**kw))
    zero.load_state_dict(rep.state_dict())
    patched = randomize_video(build(**kw))
    patched.load_state_dict(rep.state_dict())
    convs = [m for m in patched.modules() if isinstance(m, nn.Conv3d) and m.padding[0] > 0]
    assert convs
    for m in convs:
        m.forward = _replicate_padded(m)
    x = video_clip(14, batch=1)
    with torch.no_grad():
        want = patched(x)
        torch.testing.assert_close(rep.forward_steps(x, pad_end=True), want)
        torch.testing.assert_close(rep(x), zero(x))
        assert not torch.allclose(want[:, :, :1], zero(x)[:, :, :1], rtol=1e-4)
    assert rep.config["temporal_fill"] == "replicate"
    with pytest.raises(ConfigurationError, match="temporal_fill"):
        build(temporal_fill="reflect")


# --- continual-skeletons ------------------------------------------------------------------------


class RefAGcnMod(nn.Module):
    """continual-skeletons' ``AdaptiveGraphConvolutionMod`` (``models/a_gcn_mod``), term for term."""

    def __init__(self, unit):
        super().__init__()
        self.A, self.graph_attn = unit.A, unit.graph_attn
        self.g_conv, self.a_conv, self.b_conv = unit.g_conv, unit.a_conv, unit.b_conv
        self.gcn_residual, self.bn, self.inter_c = unit.gcn_residual, unit.bn, unit.inter_channels

    def forward(self, x):
        A = self.A + self.graph_attn
        hidden = None
        for i in range(3):
            A1 = self.a_conv[i](x).permute(0, 3, 1, 2).contiguous()
            A2 = self.b_conv[i](x)
            A1 = torch.softmax(torch.einsum("nvct,nctw->nvwt", A1, A2) / self.inter_c, dim=-2)
            A1 = A1 + A[i].unsqueeze(0).unsqueeze(-1)
            z = self.g_conv[i](torch.einsum("nctv,nvwt->nctv", x, A1))
            hidden = z + hidden if hidden is not None else z
        return F.relu(self.bn(hidden) + self.gcn_residual(x))


def star_agcn_published():
    return randomize(agcn(7, variant="star", channels=SMALL_CHANNELS, clip_length=82, attention="frame_published"))


def test_agcn_star_published_attention_is_the_published_computation():
    net = star_agcn_published()
    ref = RefNet("agcn", SMALL_CHANNELS, (1,) * 10, 9, 0, 2, 7, clip_attention=True).double()
    ref.load_state_dict(net.state_dict(), strict=True)
    for i, layer in enumerate(ref.layers.values()):
        layer.gcn = RefAGcnMod(getattr(net.layers, f"layer{i + 1}").gcn)
    ref.eval()
    x = skeletons(85)
    with torch.no_grad():
        want = torch.stack([ref(x[:, :, t:t + 82]) for t in range(4)], dim=2)
        torch.testing.assert_close(net(x), want)
        torch.testing.assert_close(net.forward_steps(x), want)  # stepping agrees exactly
        # the corrected per-frame attention on the same weights predicts otherwise
        fixed = randomize(agcn(7, variant="star", channels=SMALL_CHANNELS, clip_length=82))
        fixed.load_state_dict(net.state_dict())
        diff = (fixed(x) - want).norm() / want.norm()
        assert diff > 0.05


def test_published_einsum_never_mixes_joints():
    """The defect itself: each output joint only depends on the same input joint."""
    unit = AdaptiveGraphConvolution(4, 8, torch.rand(3, 25, 25), attention="frame_published").double().eval()
    x = torch.randn(1, 4, 3, 50, dtype=F64)
    y = unit(x)
    x2 = x.clone()
    x2[..., 7] += 1.0  # joint 7 of person 0
    changed = (unit(x2) - y).abs().amax(dim=(0, 1, 2)) > 0
    assert changed.nonzero().flatten().tolist() == [7]


def test_star_agcn_defaults_to_frame_attention():
    assert agcn(variant="star", channels=SMALL_CHANNELS).config["attention"] == "frame"
    assert agcn(channels=SMALL_CHANNELS).config["attention"] == "clip"


def co_long_state_dict(ref: RefNet) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of continual-skeletons' continual model (``CoModelBase`` with
    ``CoSpatioTemporalBlock`` s), built from co 1.2.4 containers arranged as that code arranges
    them, sharing ``ref``'s modules."""
    layers = OrderedDict()
    for name, block in ref.layers.items():
        gcn, tcn = co.forward_stepping(block.gcn), co.Sequential(OrderedDict(
            t_conv=co.Conv2d.build_from(block.tcn.t_conv), bn=block.tcn.bn))
        if block.kind == "none":
            layers[name] = co.Sequential(OrderedDict([("gcn", gcn), ("tcn", tcn), ("relu", nn.ReLU())]))
        elif block.kind == "identity":
            layers[name] = co.Sequential(co.Residual(co.Sequential(OrderedDict([("gcn", gcn), ("tcn", tcn)]))), nn.ReLU())
        else:
            residual = co.Sequential(OrderedDict(t_conv=co.Conv2d.build_from(block.residual.t_conv), bn=block.residual.bn))
            layers[name] = co.Sequential(co.BroadcastReduce(
                co.Sequential(OrderedDict([("residual", residual), ("align", co.Delay(0))])),
                co.Sequential(OrderedDict([("gcn", gcn), ("tcn", tcn)])), auto_delay=False), nn.ReLU())
    # CoModelBase's other children: reshape1, data_bn, reshape2, layers, spatial_pool, pool, fc, squeeze.
    out = OrderedDict((f"data_bn.{k}", v) for k, v in ref.data_bn.state_dict().items())
    out.update((f"layers.{k}", v) for k, v in co.Sequential(layers).state_dict().items())
    out.update((f"fc.{k}", v) for k, v in ref.fc.state_dict().items())
    return out


@pytest.mark.parametrize("kind", ["st_gcn", "agcn", "s_tr"])
def test_continual_skeletons_checkpoints_load_in_both_namings(kind):
    build = {"st_gcn": st_gcn, "agcn": agcn, "s_tr": s_tr}[kind]
    kw = {"num_heads": 2} if kind == "s_tr" else ({"attention": "clip"} if kind == "agcn" else {})
    source = randomize(build(7, channels=SMALL_CHANNELS, clip_length=20, **kw), seed=4)
    ref = RefNet(kind, SMALL_CHANNELS, source.config["strides"], 9, 4, 2, 7, clip_attention=True).double()
    ref.load_state_dict(source.state_dict(), strict=True)
    ref.eval()
    long = co_long_state_dict(ref)
    assert "layers.layer2.0.1.gcn.g_conv.0.weight" in long and "layers.layer5.0.0.residual.t_conv.weight" in long
    x = skeletons(20)
    with torch.no_grad():
        want = ref(x)
    for checkpoint in ({"state_dict": ref.state_dict(), "epoch": 1}, ref.state_dict(), long):
        net = build(7, channels=SMALL_CHANNELS, clip_length=20, **kw).double().eval()
        net.load_state_dict(from_continual_skeletons(checkpoint, net), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(net(x)[:, :, 0], want)


def test_continual_skeletons_checkpoint_errors():
    sd = agcn(7, channels=SMALL_CHANNELS).state_dict()
    with pytest.raises(CheckpointError, match="unexpected keys"):  # AGCN weights in an ST-GCN
        from_continual_skeletons(sd, st_gcn(7, channels=SMALL_CHANNELS))
    with pytest.raises(CheckpointError, match="shapes differ"):  # another width
        from_continual_skeletons(sd, agcn(7))
    with pytest.raises(CheckpointError, match="shapes differ"):  # NTU 120 weights in an NTU 60 model
        from_continual_skeletons(agcn(120, channels=SMALL_CHANNELS).state_dict(), agcn(60, channels=SMALL_CHANNELS))
    with pytest.raises(CheckpointError, match="head.projection"):
        from_continual_skeletons({"head.projection.weight": torch.zeros(2, 2)})


def test_s_tr_adjacency_is_a_trainable_parameter_and_trained_values_load():
    net = randomize(s_tr(7, channels=SMALL_CHANNELS, num_heads=2, clip_length=20))
    assert isinstance(net.layers.layer4.gcn.A, nn.Parameter) and net.layers.layer4.gcn.A.requires_grad
    sd = net.state_dict()
    x = skeletons(20)
    with torch.no_grad():
        want = net(x)
    sd["layers.layer4.gcn.A"] = sd["layers.layer4.gcn.A"] * 0.9  # weight decay moved the unused A
    other = s_tr(7, channels=SMALL_CHANNELS, num_heads=2, clip_length=20).double().eval()
    other.load_state_dict(from_continual_skeletons(sd, other), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(other(x), want)
        torch.testing.assert_close(other.forward_steps(x, pad_end=True), want)


def test_zero_padded_pool_predicts_from_step_296_like_the_published_models():
    assert published_pool_padding(300, (1, 1, 1, 1, 2, 1, 1, 2, 1, 1), 9, 4) == 19
    assert published_pool_padding(300, (1,) * 10, 9, 0) == 0
    net = randomize(st_gcn(7, channels=SMALL_CHANNELS, zero_padded_pool=True))
    plain = randomize(st_gcn(7, channels=SMALL_CHANNELS))
    plain.load_state_dict(net.state_dict())
    x = skeletons(300, batch=1)
    with torch.no_grad():
        outs = [net.forward_step(x[:, :, t]) for t in range(300)]
        first = next(t for t, o in enumerate(outs) if o is not None)
        assert first == net.delay == 296  # steps counted from 0, as delays
        assert plain.delay == 372
        # the published CoModelBase: AvgPool1d(75, padding=19) over the backbone's outputs, first one
        feats = plain.layers(plain.data_bn(x))
        feats = feats.mean(-1)  # persons and joints
        pooled = F.avg_pool1d(feats, 75, stride=1, padding=19)[:, :, 0]
        want = plain.fc.forward(pooled[:, :, None])[:, :, 0]
        torch.testing.assert_close(outs[first], want)
        torch.testing.assert_close(net(x)[:, :, 0], want)
        # steady state unchanged: the last prediction of the window is the regular one
        torch.testing.assert_close(net(x)[:, :, 19], plain(x)[:, :, 0])


# --- CoOadTR ----------------------------------------------------------------------------------

C_IN, E, HEADS, FF, N, K = 12, 32, 4, 48, 8, 5


def cooadtr_state_dict(num_layers, positional_encoding, seed=0):
    """A CoOadTR state dict: ``CoVisionTransformer``'s co names and shapes (no attention biases)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64) * (s[-1] ** -0.5)  # noqa: E731
    sd = {"0.weight": r(E, C_IN), "0.bias": r(E) * 0.1, "4.fn.weight": 1 + r(E) * 0.1, "4.fn.bias": r(E) * 0.1,
          "5.weight": r(K, E), "5.bias": r(K) * 0.1}
    if positional_encoding == "learned":
        sd["1.pe.weight"] = r(2 * N - 1, E)
    else:
        sd["1.pe.pattern"] = oadtr(K, in_features=C_IN, embed_dim=E, num_heads=HEADS, dim_feedforward=FF,
                                   sequence_len=N, positional_encoding="fixed").state_dict()["position_encoding.pe.pattern"]

    def layer(prefix, norm1, lin1, lin2, norm2):
        sd[f"{prefix}0.1.in_proj_weight"] = r(3 * E, E)
        sd[f"{prefix}0.1.out_proj.weight"] = r(E, E)
        for name, shape in ((norm1, E), (norm2, E)):
            sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"] = 1 + r(shape) * 0.1, r(shape) * 0.1
        sd[f"{prefix}{lin1}.weight"], sd[f"{prefix}{lin1}.bias"] = r(FF, E), r(FF) * 0.1
        sd[f"{prefix}{lin2}.weight"], sd[f"{prefix}{lin2}.bias"] = r(E, FF), r(E) * 0.1

    if num_layers == 1:  # CoSiTransformerEncoder
        layer("3.", "1.fn", "2.1.0", "2.1.3", "3.fn")
    else:  # CoReSiTransformerEncoder: CoReTransformerEncoder, RetroactiveLambda(CoSiTransformerEncoder)
        layer("3.0.", "1.fn.0", "1.fn.1.fn.0", "1.fn.1.fn.3", "1.fn.2")
        layer("3.1.fn.", "1.fn", "2.1.0", "2.1.3", "3.fn")
    return sd


def _post_norm_layer(sd, p, names, x):
    """One post-norm encoder layer over tokens ``x`` (B, L, E), bias-free attention, GELU."""
    norm1, lin1, lin2, norm2 = names
    q, k, v = F.linear(x, sd[f"{p}0.1.in_proj_weight"]).chunk(3, dim=-1)
    b, L, _ = x.shape
    heads = lambda t: t.reshape(b, L, HEADS, E // HEADS).transpose(1, 2)  # noqa: E731
    att = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / (E // HEADS) ** 0.5, dim=-1) @ heads(v)
    x = x + F.linear(att.transpose(1, 2).reshape(b, L, E), sd[f"{p}0.1.out_proj.weight"])
    x = F.layer_norm(x, (E,), sd[f"{p}{norm1}.weight"], sd[f"{p}{norm1}.bias"])
    h = F.linear(F.gelu(F.linear(x, sd[f"{p}{lin1}.weight"], sd[f"{p}{lin1}.bias"])), sd[f"{p}{lin2}.weight"], sd[f"{p}{lin2}.bias"])
    return F.layer_norm(x + h, (E,), sd[f"{p}{norm2}.weight"], sd[f"{p}{norm2}.bias"])


def cooadtr_reference(sd, num_layers, window):
    """CoOadTR's regular computation on one window ``(B, C_IN, N)`` (positions 0 .. N-1) from its
    own key names: the last token's scores."""
    x = F.linear(window.transpose(1, 2), sd["0.weight"], sd["0.bias"])
    pe = sd["1.pe.weight"] if "1.pe.weight" in sd else sd["1.pe.pattern"]
    x = x + pe[:N]
    if num_layers == 1:
        x = _post_norm_layer(sd, "3.", ("1.fn", "2.1.0", "2.1.3", "3.fn"), x)
    else:
        x = _post_norm_layer(sd, "3.0.", ("1.fn.0", "1.fn.1.fn.0", "1.fn.1.fn.3", "1.fn.2"), x)
        x = _post_norm_layer(sd, "3.1.fn.", ("1.fn", "2.1.0", "2.1.3", "3.fn"), x)
    x = F.layer_norm(x[:, -1], (E,), sd["4.fn.weight"], sd["4.fn.bias"])
    return F.linear(x, sd["5.weight"], sd["5.bias"])


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("positional_encoding", ["learned", "fixed"])
def test_cooadtr_checkpoint_gives_the_published_computation(num_layers, positional_encoding):
    sd = cooadtr_state_dict(num_layers, positional_encoding)
    net = oadtr(K, in_features=C_IN, num_layers=num_layers, embed_dim=E, num_heads=HEADS, dim_feedforward=FF,
                sequence_len=N, positional_encoding=positional_encoding).double().eval()
    net.load_state_dict(from_cooadtr({"model": sd, "epoch": 5}, net), strict=True)
    x = torch.randn(2, C_IN, N, generator=torch.Generator().manual_seed(2), dtype=F64)
    with torch.no_grad():
        want = cooadtr_reference(sd, num_layers, x)
        torch.testing.assert_close(net(x)[:, :, 0], want)
        outs = [net.forward_step(x[:, :, t]) for t in range(N)]
        torch.testing.assert_close(outs[-1], want)


def test_cooadtr_checkpoint_errors():
    sd = cooadtr_state_dict(2, "learned")
    b1 = oadtr(K, in_features=C_IN, embed_dim=E, num_heads=HEADS, dim_feedforward=FF, sequence_len=N)
    with pytest.raises(CheckpointError, match="missing|unexpected"):  # b2 weights in a b1 model
        from_cooadtr(sd, b1)
    with pytest.raises(CheckpointError, match="missing|unexpected"):  # fixed positions in a learned model
        from_cooadtr(cooadtr_state_dict(1, "fixed"), b1)
    with pytest.raises(CheckpointError, match="'6.weight'"):
        from_cooadtr({**sd, "6.weight": torch.zeros(1)})
