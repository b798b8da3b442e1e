"""Benchmark: predictions per second of the continual model zoo's skeleton and transformer
networks at batch 1 on this CPU, continual (one step per prediction) against regular.

Models, full size, float32, eval, ``torch.no_grad()``, random weights (timing does not depend
on them), the same weights for every candidate of a model:

- CoST-GCN*, CoAGCN*, CoS-TR* (`cofunc.models.st_gcn` etc., ``variant="star"``, NTU RGB+D: a
  frame is ``(1, 3, 25, 2)``: 3 coordinates, 25 joints, 2 persons; 60 classes). Candidates:
  - regular, "300 frames": the original network (ST-GCN, ...) ``forward`` on a 300-frame clip,
    one prediction per clip: the regular model of the papers' tables;
  - regular, "receptive field": the "*" network's ``forward`` on its receptive field, 81
    frames: the cheapest regular computation of the prediction a continual "*" step makes
    (the step and this forward give the same scores, checked);
  - cofunc step: the functional ``layer.step`` (state carried from call to call);
  - cofunc.nn step: the module's ``forward_step``;
  - co step: co 1.2.4 built from co's modules with the same weights: ``co.forward_stepping`` of
    the per-frame units (data batch norm, graph convolution or spatial attention: co has no
    graph layers), ``co.Conv2d`` (9, 1) temporal convolutions, ``co.Delay`` centred residuals
    (``co.Residual(..., residual_shrink=True)``'s construction, written out to hold the 1x1
    convolution residuals), ``co.BroadcastReduce``, ``co.Linear``; checked against cofunc.
  The continual "*" networks here use ``clip_length=81`` (the prediction of the last 81 frames);
  with ``clip_length=300`` (an average of the last 220 block outputs) a step costs the same
  but for a 220-value average.
- CoOadTR-b1, CoOadTR-b2 (`cofunc.models.oadtr`, Kinetics features: a step is one
  ``(1, 4096)`` feature vector; 22 THUMOS14 classes; window 64). Candidates:
  - regular, torch.nn: ``nn.Linear``, positions, ``nn.TransformerEncoder`` over the 64-token
    window, ``nn.LayerNorm`` and ``nn.Linear`` on the last token (the regular OadTR-b1/-b2);
  - regular, cofunc: the model's ``forward`` on the window (the same computation);
  - cofunc step, cofunc.nn step;
  - co step: co 1.2.4's ``co.TransformerEncoder`` (``TransformerEncoderLayerFactory``, 1 or 2
    layers) between ``co.Linear``, ``co.RecyclingPositionalEncoding``, ``co.Lambda(LayerNorm)``
    and ``co.Linear`` (CoOadTR's construction); its attention has zero biases here. co's
    2-layer encoder is wrong after its first N - 1 = 63 outputs (its ``RetroactiveUnity``
    residual wraps modulo N - 1): it is timed all the same, its outputs are checked for the
    first 9 only.

Per prediction: a regular candidate's time is one ``forward`` (one prediction), a continual
candidate's one step (one prediction per step). Every row also shows the physical bound
(`_common.MachineRates`): the prediction's multiply-adds (``cofunc.count_macs``) at the measured
matrix-product rate or the bytes of weights and state (or input window) it must read at the
measured memory bandwidth, and "x of the bound" (median / bound). Writes ``results/skeleton_oadtr.md`` and
``results/skeleton_oadtr.png``.

Usage: ``python -m benchmarks.bench_skeleton_oadtr [--quick] [--threads N] [--rounds R]
[--inner K] [--max-other-cores CORES] [--clock wall|cpu] [--out-dir DIR]``. A full run discards
rounds during which other processes kept more than ``--max-other-cores`` (default 0.5) cores
busy.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

import continual as co
from benchmarks._common import (
    BenchResult,
    Panel,
    Ratio,
    bar_plot,
    bench_interleaved,
    environment,
    fmt_ms,
    measure_rates,
    tree_bytes,
    write_table,
)
from cofunc import count_macs
from cofunc.models.oadtr import oadtr
from cofunc.models.skeleton import agcn, s_tr, st_gcn

HERE = os.path.dirname(os.path.abspath(__file__))

FRAME = (1, 3, 25, 2)
STAR_RF = 81
OADTR_FEATURES, OADTR_N = 4096, 64
ATOL, RTOL = 1e-4, 1e-4  # float32; different summation orders between candidates

SKELETONS = {"ST-GCN": st_gcn, "AGCN": agcn, "S-TR": s_tr}


class Candidate:
    """A timed callable: ``kind`` is "regular" or "continual", ``macs`` per prediction (as the
    candidate computes it), ``nbytes`` the bytes of weights and state (or input) a prediction must
    read, ``bound_macs`` the multiply-adds its bound counts (default ``macs``; co's steps are
    bounded by cofunc's step, which makes the same prediction without multiplying zeros)."""

    def __init__(self, model: str, label: str, kind: str, fn: Callable[[], Any], macs: int, nbytes: int,
                 bound_macs: Optional[int] = None):
        self.model, self.label, self.kind, self.fn, self.macs = model, label, kind, fn, macs
        self.nbytes = nbytes
        self.bound_macs = macs if bound_macs is None else bound_macs

    @property
    def name(self) -> str:
        return f"{self.model}: {self.label}"


def _stepper(layer, params, state, x) -> Callable[[], None]:
    box = [state]

    def step():
        box[0] = layer.step(params, box[0], x)[1]

    return step


def _assert_close(got, want, what: str) -> float:
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")
    return float((got - want).abs().max())


# --- skeletons ---------------------------------------------------------------------------------


class _Frame(nn.Module):
    """Runs a cofunc per-frame unit's torch ``forward`` for co (co.forward_stepping adds a time
    axis of length 1 to each step)."""

    def __init__(self, unit: nn.Module):
        super().__init__()
        self.unit = unit

    def forward(self, x):
        return self.unit.forward(x)


def _co_conv(conv) -> co.Conv2d:
    new = co.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=(0, 0))
    new.load_state_dict(conv.state_dict())
    return new


def _bn(norm) -> nn.BatchNorm2d:
    """A plain ``nn.BatchNorm2d`` copy (co converts torch's classes, not cofunc's subclasses)."""
    new = nn.BatchNorm2d(norm.num_features, eps=norm.eps)
    new.load_state_dict(norm.state_dict())
    return new.eval()


def co_skeleton(net) -> co.Sequential:
    """co 1.2.4's continual "*" network with ``net``'s weights (modules shared where co takes
    torch modules)."""
    blocks = []
    for block in net.layers.children():
        tcn = block.tcn
        main = co.Sequential(co.forward_stepping(_Frame(block.gcn)), _co_conv(tcn.t_conv), _bn(tcn.bn))
        shift = (tcn.t_conv.kernel_size[0] - 1) // 2  # the centre of the unpadded window
        if block.residual_kind == "none":
            body = main
        else:
            if block.residual_kind == "identity":
                res = co.Delay(shift)
            else:
                res = co.Sequential(co.Delay(shift), _co_conv(block.residual.t_conv), _bn(block.residual.bn))
            body = co.BroadcastReduce(res, main, reduce="sum", auto_delay=False)
        blocks.append(co.Sequential(body, nn.ReLU()))
    fc = co.Linear(net.fc.in_features, net.fc.out_features, channel_dim=1)
    fc.load_state_dict(net.fc.state_dict())
    return co.Sequential(co.forward_stepping(_Frame(net.data_bn)), *blocks,
                         co.Lambda(lambda x: x.mean(dim=-1), takes_time=False), fc).eval()


def skeleton_candidates(name: str, builder, seed: int, with_co: bool, diffs: Dict[str, float]) -> List[Candidate]:
    torch.manual_seed(seed)
    star = builder(variant="star", clip_length=STAR_RF).eval()
    regular = builder().eval()  # the original network, its own random weights
    stream = torch.randn(FRAME[0], FRAME[1], STAR_RF + 3, *FRAME[2:])
    clip300 = torch.randn(FRAME[0], FRAME[1], 300, *FRAME[2:])
    window = stream[:, :, -STAR_RF:]
    layer, params = star.layer, star.params
    with torch.no_grad():
        want = star(stream)  # (1, 60, 4): one prediction per 81-frame window
        state = layer.init_state(params, FRAME)
        outs = []
        for t in range(stream.shape[2]):
            y, state = layer.step(params, state, stream[:, :, t])
            if bool(layer.valid(state).all()):
                outs.append(y)
        diffs[f"{name}* cofunc step"] = _assert_close(torch.stack(outs, 2), want, f"{name}* cofunc step")
        star.clean_state()
        nn_outs = [star.forward_step(stream[:, :, t]) for t in range(stream.shape[2])]
        diffs[f"{name}* cofunc.nn step"] = _assert_close(torch.stack(nn_outs[STAR_RF - 1:], 2), want,
                                                         f"{name}* cofunc.nn step")
        co_net = None
        if with_co:
            co_net = co_skeleton(star)
            co_outs = [co_net.forward_step(stream[:, :, t]) for t in range(stream.shape[2])]
            assert all(o is None for o in co_outs[:STAR_RF - 1]), "co emitted before its receptive field"
            diffs[f"{name}* co step"] = _assert_close(torch.stack(co_outs[STAR_RF - 1:], 2), want, f"{name}* co step")
        x = stream[:, :, -1]
        step_macs, _ = count_macs(layer.step, params, state, x)
        regular_macs, _ = count_macs(regular.layer.forward, regular.params, clip300)
        window_macs, _ = count_macs(layer.forward, params, window)
    step_bytes = tree_bytes(params, state, x)
    out = [
        Candidate(name, "regular, 300 frames", "regular", lambda: regular(clip300), regular_macs,
                  tree_bytes(regular.params, clip300)),
        Candidate(name, f"regular *, {STAR_RF} frames", "regular", lambda: star(window), window_macs,
                  tree_bytes(params, window)),
        Candidate(name, "cofunc step", "continual", _stepper(layer, params, state, x), step_macs, step_bytes),
        Candidate(name, "cofunc.nn step", "continual", lambda: star.forward_step(x), step_macs, step_bytes),
    ]
    if co_net is not None:
        out.append(Candidate(name, "co step", "continual", lambda: co_net.forward_step(x), co_step_macs(co_net, x),
                             step_bytes, bound_macs=step_macs))
    return out


def co_step_macs(co_net, x) -> int:
    """The MACs of one co step (its state left as it was)."""
    with torch.no_grad():
        return count_macs(co_net.forward_step, x, update_state=False)[0]


# --- OadTR ---------------------------------------------------------------------------------------


class TorchOadTR(nn.Module):
    """The regular OadTR on one window ``(1, N, C)`` in plain torch.nn, ``net``'s weights."""

    def __init__(self, net):
        super().__init__()
        cfg = net.config
        e, h = cfg["embed_dim"], cfg["num_heads"]
        self.linear_encoding = nn.Linear(cfg["in_features"], e)
        self.position_encoding = nn.Module()
        self.position_encoding.pe = nn.Embedding(cfg["num_embeds"], e)
        layer = nn.TransformerEncoderLayer(e, h, cfg["dim_feedforward"], dropout=0.0, activation="gelu",
                                           batch_first=True)
        layer.self_attn = nn.MultiheadAttention(e, h, bias=False, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg["num_layers"], enable_nested_tensor=False)
        self.pre_head_ln = nn.LayerNorm(e)
        self.mlp_head = nn.Linear(e, cfg["num_classes"])
        self.load_state_dict(net.state_dict(), strict=True)
        self.n = cfg["sequence_len"]

    def forward(self, window, start: int = 0):
        positions = (torch.arange(window.shape[1]) + start) % self.position_encoding.pe.num_embeddings
        x = self.linear_encoding(window) + self.position_encoding.pe.weight[positions]
        return self.mlp_head(self.pre_head_ln(self.encoder(x)[:, -1]))


def co_oadtr(net) -> co.Sequential:
    """co 1.2.4's CoOadTR with ``net``'s weights (zero attention biases: co always has them)."""
    cfg = net.config
    e, layers = cfg["embed_dim"], cfg["num_layers"]
    # nn.GELU(): co's factory maps the string "gelu" to relu and cannot convert the builtin F.gelu.
    layer = nn.TransformerEncoderLayer(e, cfg["num_heads"], cfg["dim_feedforward"], dropout=0.0, activation=nn.GELU(),
                                       batch_first=True)
    torch_enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    sd = {k[len("encoder."):]: v for k, v in net.state_dict().items() if k.startswith("encoder.")}
    for i in range(layers):
        sd[f"layers.{i}.self_attn.in_proj_bias"] = torch.zeros(3 * e)
        sd[f"layers.{i}.self_attn.out_proj.bias"] = torch.zeros(e)
    torch_enc.load_state_dict(sd, strict=True)
    lin = co.Linear(cfg["in_features"], e, channel_dim=1)
    lin.load_state_dict(net.linear_encoding.state_dict())
    pe = co.RecyclingPositionalEncoding(e, cfg["num_embeds"], learned=True)
    pe.pe.load_state_dict(net.position_encoding.pe.state_dict())
    ln = nn.LayerNorm(e)
    ln.load_state_dict(net.pre_head_ln.state_dict())
    head = co.Linear(e, cfg["num_classes"], channel_dim=1)
    head.load_state_dict(net.mlp_head.state_dict())
    return co.Sequential(lin, pe, co.TransformerEncoder.build_from(torch_enc, sequence_len=cfg["sequence_len"]),
                         co.Lambda(ln, takes_time=False), head).eval()


def oadtr_candidates(num_layers: int, seed: int, with_co: bool, diffs: Dict[str, float]) -> List[Candidate]:
    torch.manual_seed(seed)
    name = f"OadTR-b{num_layers}"
    net = oadtr(in_features=OADTR_FEATURES, num_layers=num_layers).eval()
    ref = TorchOadTR(net).eval()
    n = OADTR_N
    stream = torch.randn(1, OADTR_FEATURES, n + 8)
    layer, params = net.layer, net.params
    with torch.no_grad():
        seq = stream.transpose(1, 2)
        want = torch.stack([ref(seq[:, w:w + n], start=w) for w in range(stream.shape[2] - n + 1)], dim=2)
        diffs[f"{name} cofunc forward"] = _assert_close(net(stream), want, f"{name} cofunc forward")
        state = layer.init_state(params, (1, OADTR_FEATURES))
        outs = []
        for t in range(stream.shape[2]):
            y, state = layer.step(params, state, stream[:, :, t])
            if bool(layer.valid(state).all()):
                outs.append(y)
        diffs[f"{name} cofunc step"] = _assert_close(torch.stack(outs, 2), want, f"{name} cofunc step")
        nn_outs = [net.forward_step(stream[:, :, t]) for t in range(stream.shape[2])]
        diffs[f"{name} cofunc.nn step"] = _assert_close(torch.stack(nn_outs[n - 1:], 2), want, f"{name} cofunc.nn step")
        co_net = None
        if with_co:
            co_net = co_oadtr(net)
            co_outs = [co_net.forward_step(stream[:, :, t]) for t in range(stream.shape[2])]
            diffs[f"{name} co step"] = _assert_close(torch.stack(co_outs[n - 1:], 2), want, f"{name} co step")
        x = stream[:, :, -1]
        window = stream[:, :, -n:]
        window_t = window.transpose(1, 2).contiguous()
        step_macs, _ = count_macs(layer.step, params, state, x)
        regular_macs, _ = count_macs(layer.forward, params, window)
    step_bytes, window_bytes = tree_bytes(params, state, x), tree_bytes(params, window)
    out = [
        Candidate(name, "regular, torch.nn", "regular", lambda: ref(window_t), regular_macs, window_bytes),
        Candidate(name, "regular, cofunc forward", "regular", lambda: net(window), regular_macs, window_bytes),
        Candidate(name, "cofunc step", "continual", _stepper(layer, params, state, x), step_macs, step_bytes),
        Candidate(name, "cofunc.nn step", "continual", lambda: net.forward_step(x), step_macs, step_bytes),
    ]
    if co_net is not None:
        out.append(Candidate(name, "co step", "continual", lambda: co_net.forward_step(x), co_step_macs(co_net, x),
                             step_bytes, bound_macs=step_macs))
    return out


# --- report --------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (few rounds) to check that it works")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15; quick: 3)")
    parser.add_argument("--inner", type=int, default=1, help="calls per candidate per round (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-co", action="store_true", help="leave co 1.2.4 out")
    parser.add_argument("--max-other-cores", type=float, default=None, metavar="CORES",
                        help="discard and repeat rounds during which other processes kept more than CORES cores "
                        "busy (default 0.5; quick: keep all)")
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or process CPU time (contention-proof with --threads 1)")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.rounds = args.rounds or (3 if args.quick else 15)
    if args.max_other_cores is None:
        args.max_other_cores = float("inf") if args.quick else 0.5
    return args


def _color(c: Candidate) -> str:
    if c.kind == "regular":
        return "#9e9e9e"
    return "#ff7f0e" if c.label.startswith("co ") else "#1f77b4"


def report(args, cands: List[Candidate], timings: BenchResult, diffs: Dict[str, float], rates) -> str:
    by_model: Dict[str, List[Candidate]] = OrderedDict()
    for c in cands:
        by_model.setdefault(c.model, []).append(c)
    rows = []
    for model, group in by_model.items():
        base = timings[group[0].name]  # the first regular candidate
        for c in group:
            t = timings[c.name]
            shown = c.model + ("*" if c.kind == "continual" and c.model in SKELETONS else "")
            prefix = "Co" if c.kind == "continual" else ""
            rows.append([f"{prefix}{shown}", c.label, fmt_ms(t.median), f"{fmt_ms(t.p25)} - {fmt_ms(t.p75)}",
                         f"{1.0 / t.median:,.1f}", f"{c.macs / 1e6:,.1f}", f"{c.nbytes / 1e6:.1f}",
                         *rates.cells(c.bound_macs, c.nbytes, t), str(Ratio.of(base, t))])
    header = ["model", "candidate", "ms per prediction (median)", "p25 - p75 (ms)", "predictions/s",
              "MMACs per prediction", "MB touched", "bound (ms)", "x of the bound", "first row / this"]
    clock = "wall" if args.clock == "wall" else "process CPU"
    notes = [
        "Per prediction: a regular candidate's time is one forward (one prediction); a continual candidate's is one "
        "step (one prediction per step). `first row / this` is the speed-up over the model's first regular row "
        "(skeletons: the original network on 300 frames; OadTR: torch.nn on the 64-token window).",
        f"Skeletons: NTU RGB+D frames (1, 3, 25, 2), 60 classes; continual = the \"*\" network (no temporal padding, "
        f"stride 1) with clip_length={STAR_RF}, whose step equals the \"*\" forward on the last {STAR_RF} frames "
        f"(`regular *, {STAR_RF} frames`); the original network on 300 frames is the papers' regular model. "
        "MACs from FlopCounterMode (FLOPs / 2) of one call: convolutions and the graph products.",
        f"OadTR: Kinetics features ({OADTR_FEATURES}-d), 22 classes, window {OADTR_N}, embed 1024, 8 heads, "
        "feed-forward 1024, GELU, post-norm, bias-free attention, learned recycling positions (127). b1: one "
        "single-output layer; b2: a retroactive layer, then the newest token's query over the 64 updated tokens.",
        "co 1.2.4: skeletons built from co.forward_stepping (per-frame units), co.Conv2d, co.Delay (centred "
        "residuals), co.BroadcastReduce, co.Linear; CoOadTR from co.TransformerEncoder (TransformerEncoderLayerFactory). "
        "co's 2-layer encoder is wrong after its first 63 outputs (RetroactiveUnity wraps modulo N - 1); its timing "
        "does not depend on that.",
        "co's MACs, counted the same way, differ: its conv step convolves the new frame with the whole kernel over "
        "k - 1 frames of temporal zero padding (k partial outputs, kept for later steps), k = 9 times the "
        "multiply-adds of one output frame as counted (the extra ones multiply zeros); its 2-layer encoder's second "
        "layer projects the keys and values of the 64 updated tokens, where cofunc attends from the newest token's "
        "query without projecting them.",
        "A CoOadTR step at batch 1 reads every weight once for one token (b1: 42 MB in float32, b2: 68 MB): "
        "matrix-vector products bound by memory bandwidth, while the regular window's 64-token products are "
        "compute-bound; so the measured speed-ups stay far below the MAC ratios (b1: 64x, b2: 4.9x). The skeleton "
        "steps (a few MB of weights, 25 x 2 joints per frame) come closer to theirs.",
        "Bound: MB touched is the weights and what a prediction must read besides: a step's state and frame, a "
        "regular forward's input clip or window, each read once. co's steps are bounded by cofunc's step (the same "
        "prediction; co's extra MACs are not needed for it: see the note on co's MACs). " + rates.note(),
        f"Method: batch 1, float32, eval, torch.no_grad(), {args.threads} torch thread(s); every candidate warmed up, "
        f"then {args.rounds} rounds x {args.inner} call(s) each, round-robin with the order rotated every round; a "
        f"sample is the mean {clock} time per call in one round; medians and p25-p75 over rounds; ratios are of "
        "medians with p25-p75 of the round-by-round ratios.",
        "Outputs checked before timing against the regular network on each window (atol 1e-4, rtol 1e-4); largest "
        "|diff|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ".",
        "Command: `python -m benchmarks.bench_skeleton_oadtr " + " ".join(args.argv) + "`.",
    ]
    notes += environment(args.threads)
    notes.append(f"Shared machine: in the kept rounds other processes kept {timings.other_cores:.2f} of the "
                 f"{os.cpu_count()} cores busy on average ({timings.rounds_kept} rounds kept, "
                 f"{timings.rounds_discarded} discarded, {timings.rounds_disturbed} kept over the limit).")
    if any(timings[c.name].median < rates.bound(c.bound_macs, c.nbytes) for c in cands):
        notes.append("Rows under 1.0x of the bound ran faster than the matrix-product rate measured before the timing: "
                     "the rate is one measurement on a shared machine whose load varies during the run (other "
                     "processes slow a matrix product down even when they leave this one its core), and oneDNN's kernels "
                     "can beat a 1024^3 `mm`. Compare rows by their ratios.")
    if args.quick:
        notes.insert(0, "QUICK RUN (few rounds, no load filter): indicative only.")
    text = write_table(
        os.path.join(args.out_dir, "skeleton_oadtr.md"), rows, header, notes,
        title="Continual model zoo, predictions per second at batch 1: CoST-GCN*, CoAGCN*, CoS-TR*, CoOadTR"
        + (" (quick run)" if args.quick else ""),
    )
    panels = [Panel(model, [c.label for c in group], [timings[c.name] for c in group], [_color(c) for c in group])
              for model, group in by_model.items()]
    bar_plot(os.path.join(args.out_dir, "skeleton_oadtr.png"), panels,
             title=f"Time per prediction, batch 1, float32, {args.threads} thread(s) (median, p25-p75)",
             ylabel="ms per prediction" if args.clock == "wall" else "process CPU ms per prediction")
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rates = measure_rates(args.threads)
    diffs: Dict[str, float] = OrderedDict()
    cands: List[Candidate] = []
    with torch.no_grad():
        for name, builder in SKELETONS.items():
            cands += skeleton_candidates(name, builder, args.seed, not args.no_co, diffs)
        for num_layers in (1, 2):
            cands += oadtr_candidates(num_layers, args.seed, not args.no_co, diffs)
        fns: Dict[str, Callable[[], Any]] = OrderedDict((c.name, c.fn) for c in cands)
        timings = bench_interleaved(fns, rounds=args.rounds, inner=args.inner, warmup=1 if args.quick else 3,
                                    max_other_cores=args.max_other_cores, max_seconds=args.max_seconds,
                                    clock=args.clock, progress_every=60.0)
    print(report(args, cands, timings, diffs, rates))
    print(f"wrote skeleton_oadtr.md and skeleton_oadtr.png to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
