"""Per-step latency of the video zoo (CoX3D-S, CoX3D-M, CoSlow): cofunc vs co 1.2.4 vs clip inference.

Candidates, per model, batch 1, float32, under ``torch.no_grad()``, timed side by side in one
process (`_common.bench_interleaved`):

- **cofunc eager**: ``net.layer.step(params, state, frame)``, the model's functional layer, the
  state carried from call to call;
- **cofunc compiled**: ``cofunc.compile_step(net.layer, options={"layout_optimization": False})``
  (``torch.compile(fullgraph=True)``) with detached params. Inductor's layout optimisation
  (channels-last convolutions) slows batch-1 steps down: with it, CoSlow's compiled step took
  1.5x the eager step's time (250 vs 170 ms, one thread), without it 0.75x; CoX3D-S 0.92x vs
  0.77x;
- **co 1.2.4**: the same network built from ``continual`` modules by `co_network` (``co.Conv3d``,
  ``co.BroadcastReduce``, ``co.Residual``, ``co.AdaptiveAvgPool3d``, ``co.AvgPool3d``,
  ``co.MaxPool3d``, ``co.Linear``, ``co.Lambda``, ``co.forward_stepping``: co3d's building
  blocks), with the same weights, ``forward_step``;
- **regular clip**: the regular network's ``forward`` on the clip it predicts from (X3D-S 13
  frames, X3D-M 16, Slow 8): one prediction of sliding-window inference, which one continual
  step replaces (all three models predict at every step).

Models, as the seed's table (co3d) profiles them: the published CoX3D (frame-scope
squeeze-and-excitation, the regular X3D's temporal padding kept) on 160x160 (S) and 224x224 (M)
frames, CoSlow (Slow-8x8-R50) on 256x256 frames. The regular X3D is the clip-scope twin with the
same weights (pytorchvideo's X3D); the regular Slow is the same network's ``forward``. Heads
return raw scores (no softmax), so the output checks see every difference. Batch-norm
statistics and affine params are random (seeded), so no residual branch vanishes.

Checks before timing: stepping every continual candidate from a fresh state through
``delay + 3`` frames emits, at the same steps, the first 3 outputs of the continual network's
clip ``forward`` over those frames (max |diff| within 1e-4 of the largest score); co's clip
``forward`` (the regular computation, clip-scope SE) equals the regular network's.

Goals: cofunc at least 2x faster than co per step (CoX3D-S, -M, CoSlow; eager and compiled);
a continual step faster than recomputing the clip per prediction by at least 8x for CoX3D-S
(13 frames; MACs ratio 12.9x) and 10x for CoX3D-M and -L (16 frames; 15.9x, 16.0x). Every row
also shows the physical bound (`_common.MachineRates`): its MACs at the measured matrix-product
rate or its bytes at the measured memory bandwidth.

``--fold-batch-norms`` folds every batch norm into the convolution before it
(`cofunc.nn.fold_batch_norms`) in all candidates alike, as a deployment would, and writes
``results/video_zoo_folded.*`` instead.

Writes ``results/video_zoo.md`` and ``results/video_zoo.png`` and prints the tables.

Usage: ``python -m benchmarks.bench_video_zoo [--quick] [--models x3d_s,x3d_m,slow] [--no-compile]
[--threads N] [--rounds R] [--inner K] [--max-other-cores CORES] [--clock wall|cpu]
[--fold-batch-norms] [--out-dir DIR]``. Full-size models are heavy on 2 cores: a full run takes several minutes per
model (``torch.compile`` of a CoX3D step alone takes one to two minutes); ``--quick`` runs 3
rounds of one call each and keeps every round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

import continual as co
import cofunc
import cofunc.nn as cn
from cofunc.models import slow_r50, x3d
from cofunc.models._blocks import ResBlock, SpatialMean, SqueezeExcitation, Swish, VideoNet
from benchmarks._common import (
    GOAL_HEADER,
    BenchResult,
    Goal,
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

HERE = os.path.dirname(os.path.abspath(__file__))

EAGER, COMPILED, CO, CLIP = "cofunc eager step", "cofunc compiled step", "co 1.2.4 step", "regular clip"
COLORS = {EAGER: "#1f77b4", COMPILED: "#17456b", CO: "#ff7f0e", CLIP: "#9e9e9e"}
# Inductor options of the compiled step (see the module docstring).
COMPILE_OPTIONS = {"layout_optimization": False}
CHECK_RTOL = 1e-4  # max |diff| relative to the largest |score| (float32, 50+ layers deep)


# --- the same network from co 1.2.4 modules -------------------------------------------------


def _copy_state(dst: nn.Module, src: nn.Module) -> nn.Module:
    dst.load_state_dict(src.state_dict())
    return dst


def co_network(module: nn.Module) -> nn.Module:
    """The co 1.2.4 network that computes what ``module`` (a `cofunc.models` network or one of
    its blocks) computes, with copies of its weights: convolutions, pools and linear layers
    become co's, sequences ``co.Sequential`` (same child names), residual blocks
    ``co.Sequential(co.BroadcastReduce(shortcut, branch2, reduce="sum"), activation)`` (co
    delays the shortcut to match), frame-scope squeeze-and-excitation ``co.Residual(pool, conv,
    ReLU, conv, Sigmoid; reduce="mul")`` (as co3d builds CoX3D), temporally local torch modules
    ``co.forward_stepping`` copies.

    Supports the models' default temporal padding ("keep") and frame-scope SE; raises
    NotImplementedError otherwise.
    """
    if isinstance(module, ResBlock):
        if module._shrink() is not None:
            raise NotImplementedError("co_network: residual blocks without temporal padding")
        parts = [(n, co_network(getattr(module, n))) for n in ("branch1_conv", "branch1_norm") if getattr(module, n) is not None]
        shortcut = co.Sequential(OrderedDict(parts)) if parts else co.Delay(0)
        children = [("0", co.BroadcastReduce(shortcut, co_network(module.branch2), reduce="sum"))]
        if module.activation is not None:
            children.append(("1", co_network(module.activation)))
        return co.Sequential(OrderedDict(children))
    if isinstance(module, SqueezeExcitation):
        if module.scope != "frame":
            raise NotImplementedError("co_network: clip-scope squeeze-and-excitation")
        block = module.block
        return co.Residual(co.Sequential(OrderedDict([
            ("pool", co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=1)),
            ("fc1", co_network(block[0])), ("act", nn.ReLU()), ("fc2", co_network(block[2])), ("gate", nn.Sigmoid()),
        ])), reduce="mul")
    if isinstance(module, nn.Conv3d):
        conv = co.Conv3d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                         padding=module.padding, dilation=module.dilation, groups=module.groups,
                         bias=module.bias is not None, padding_mode=module.padding_mode)
        return _copy_state(conv, module)
    if isinstance(module, nn.BatchNorm3d):
        norm = nn.BatchNorm3d(module.num_features, module.eps, module.momentum)
        return co.forward_stepping(_copy_state(norm, module).train(module.training))
    if isinstance(module, nn.AvgPool3d):
        return co.AvgPool3d(module.kernel_size, module.stride, module.padding, module.ceil_mode, module.count_include_pad)
    if isinstance(module, nn.MaxPool3d):
        return co.MaxPool3d(module.kernel_size, module.stride, module.padding, module.dilation, ceil_mode=module.ceil_mode)
    if isinstance(module, cn.Linear):
        linear = co.Linear(module.in_features, module.out_features, bias=module.bias is not None, channel_dim=module.channel_dim)
        return _copy_state(linear, module)
    if isinstance(module, SpatialMean):
        return co.Lambda(lambda x: x.mean(dim=(-2, -1)))
    if isinstance(module, Swish):
        return co.forward_stepping(Swish())
    if isinstance(module, nn.Softmax):
        return co.forward_stepping(nn.Softmax(dim=module.dim))
    for cls in (nn.ReLU, nn.Sigmoid):
        if isinstance(module, cls):
            return co.forward_stepping(cls())
    if isinstance(module, nn.Dropout):
        return co.forward_stepping(nn.Dropout(module.p))
    if isinstance(module, nn.Identity):  # a batch norm folded away (`cofunc.nn.fold_batch_norms`)
        return co.Identity()
    if isinstance(module, cn.LayerModule) and module.layer.label == "identity":
        return co.Identity()
    if isinstance(module, cn.Lambda) and getattr(module.fn, "__name__", "") == "_unity":  # cn.Identity(), as co's
        return co.Identity()
    if isinstance(module, cn.Sequential):
        return co.Sequential(OrderedDict((name, co_network(child)) for name, child in module.named_children()))
    raise NotImplementedError(f"co_network: no co counterpart for {type(module).__name__}")


# --- models -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    title: str
    build: Callable[[], VideoNet]  # the continual network
    regular: Optional[Callable[[], VideoNet]]  # its regular twin (None: the network's own forward)


MODELS: Dict[str, ModelSpec] = {
    "x3d_s": ModelSpec("CoX3D-S", lambda: x3d("S", se="frame", head_activation=None),
                       lambda: x3d("S", se="clip", head_activation=None)),
    "x3d_m": ModelSpec("CoX3D-M", lambda: x3d("M", se="frame", head_activation=None),
                       lambda: x3d("M", se="clip", head_activation=None)),
    "x3d_l": ModelSpec("CoX3D-L", lambda: x3d("L", se="frame", head_activation=None),
                       lambda: x3d("L", se="clip", head_activation=None)),
    "slow": ModelSpec("CoSlow", lambda: slow_r50(crop_size=256), None),
}
# Issue 15: a continual step at least this much faster than recomputing the clip per prediction.
CLIP_GOALS = {"x3d_s": 8.0, "x3d_m": 10.0, "x3d_l": 10.0}


def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Random batch-norm statistics and affine params (the builders zero the last norm of each
    residual branch, which would hide that branch from the checks); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


@dataclass
class Setup:
    """One model's candidates' ingredients (same weights everywhere) and what the checks found."""

    key: str
    spec: ModelSpec
    net: VideoNet
    regular: nn.Module
    co_net: nn.Module
    params: dict  # detached functional params
    frame: torch.Tensor  # (1, 3, S, S): the step input
    clip: torch.Tensor  # (1, 3, T, S, S): the regular network's clip
    compiled: Optional[Callable] = None
    compile_seconds: float = float("nan")
    eager_state: object = None
    compiled_state: object = None
    diffs: Optional[Dict[str, float]] = None
    step_macs: int = 0
    clip_macs: int = 0
    step_bytes: int = 0  # weights + state: what a step must read
    clip_bytes: int = 0  # weights + the clip


def build(key: str, seed: int, compile_step: bool, fold: bool = False) -> Setup:
    spec = MODELS[key]
    torch.manual_seed(seed)
    net = randomize(spec.build(), seed)
    if spec.regular is None:
        regular = net
    else:
        regular = spec.regular().eval()
        regular.load_state_dict(net.state_dict())
    if fold:  # every candidate alike: co's network is built from the folded one
        net = cn.fold_batch_norms(net)
        regular = net if spec.regular is None else cn.fold_batch_norms(regular)
    crop, length = net.config["crop_size"], net.config["clip_length"]
    g = torch.Generator().manual_seed(seed + 1)
    s = Setup(
        key=key, spec=spec, net=net, regular=regular, co_net=co_network(net).eval(),
        params=cofunc.tree_map(torch.Tensor.detach, net.params),
        frame=torch.randn(1, 3, crop, crop, generator=g),
        clip=torch.randn(1, 3, length, crop, crop, generator=g),
    )
    if compile_step:
        s.compiled = cofunc.compile_step(net.layer, options=COMPILE_OPTIONS)
    return s


def _close(out: torch.Tensor, want: torch.Tensor, what: str) -> float:
    diff = float((out - want).abs().max())
    scale = float(want.abs().max())
    if not diff <= CHECK_RTOL * scale + 1e-5:
        raise AssertionError(f"{what}: max |diff| {diff:.3g} exceeds {CHECK_RTOL:g} x max |score| {scale:.3g}")
    return diff / scale


def check_outputs(s: Setup) -> None:
    """Step each continual candidate from a fresh state through ``delay + 3`` frames: the steps
    that emit must be the same, and their outputs the first 3 of the clip ``forward``. Then co's
    clip forward against the regular network's. Leaves every candidate's state warmed up and
    records the largest relative differences and the MACs of a step and of a clip."""
    net, layer, params = s.net, s.net.layer, s.params
    crop = net.config["crop_size"]
    g = torch.Generator().manual_seed(7)
    frames = torch.randn(1, 3, net.delay + 3, crop, crop, generator=g)
    expected = net(frames)[:, :, :3]  # (1, K, 3): the k-th emitted output is forward's k-th
    step_shape = tuple(s.frame.shape)
    eager_state = layer.init_state(params, step_shape)
    compiled_state = layer.init_state(params, step_shape)
    s.co_net.clean_state()
    emitted: Dict[str, List[torch.Tensor]] = {EAGER: [], COMPILED: [], CO: []}
    for t in range(frames.shape[2]):
        x = frames[:, :, t]
        y, eager_state = layer.step(params, eager_state, x)
        flags = {EAGER: bool(layer.valid(eager_state).all())}
        outs = {EAGER: y}
        if s.compiled is not None:
            start = time.perf_counter()
            y_c, valid, compiled_state = s.compiled(params, compiled_state, x)
            if t == 0:
                s.compile_seconds = time.perf_counter() - start
            flags[COMPILED], outs[COMPILED] = bool(valid.all()), y_c
        y_co = s.co_net.forward_step(x)
        flags[CO], outs[CO] = y_co is not None, y_co
        should = t >= net.delay
        for name, flag in flags.items():
            if flag != should:
                raise AssertionError(f"{s.spec.title} {name}: step {t} emitted={flag}, expected {should} (delay {net.delay})")
            if flag:
                emitted[name].append(outs[name])
    s.diffs = {}
    for name, outs in emitted.items():
        if outs:
            s.diffs[name] = _close(torch.stack(outs, dim=2), expected, f"{s.spec.title} {name}")
    s.diffs["co clip forward vs regular"] = _close(s.co_net(s.clip), s.regular(s.clip), f"{s.spec.title} co forward")
    s.eager_state, s.compiled_state = eager_state, compiled_state
    s.step_macs, _ = cofunc.count_macs(layer.step, params, eager_state, s.frame)
    s.clip_macs, _ = cofunc.count_macs(s.regular, s.clip)
    s.step_bytes = tree_bytes(params, eager_state)
    s.clip_bytes = tree_bytes(params, s.clip)


def candidates(s: Setup) -> Dict[str, Callable[[], object]]:
    """Zero-argument callables in table order; the continual ones carry their state."""
    layer, params, frame = s.net.layer, s.params, s.frame
    eager_box, compiled_box = [s.eager_state], [s.compiled_state]

    def eager():
        eager_box[0] = layer.step(params, eager_box[0], frame)[1]

    def compiled():
        compiled_box[0] = s.compiled(params, compiled_box[0], frame)[2]

    fns = {EAGER: eager}
    if s.compiled is not None:
        fns[COMPILED] = compiled
    fns[CO] = lambda: s.co_net.forward_step(frame)
    fns[CLIP] = lambda: s.regular(s.clip)
    return fns


# --- report -------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (3 rounds of 1 call) to check that it works")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled step")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 20; quick: 3)")
    parser.add_argument("--inner", type=int, default=None, help="calls per candidate per round (default 2; quick: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-other-cores", type=float, default=None, metavar="CORES",
                        help="discard and repeat rounds during which other processes kept more than CORES cores "
                        "busy (default 0.3; quick: inf, i.e. keep all)")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="per model: after this long, keep disturbed rounds too (default 900)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or process CPU time (a contention-proof cost with --threads 1)")
    parser.add_argument("--fold-batch-norms", dest="fold", action="store_true",
                        help="fold the batch norms into the convolutions before them (cofunc.nn.fold_batch_norms) "
                        "in every candidate; writes video_zoo_folded.md and .png")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"), help="where video_zoo.md and .png go")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    args.stem = "video_zoo_folded" if args.fold else "video_zoo"  # the results' file names
    args.rounds = args.rounds or (3 if args.quick else 20)
    args.inner = args.inner or (1 if args.quick else 2)
    if args.max_other_cores is None:
        args.max_other_cores = float("inf") if args.quick else 0.3
    return args


def _noise_note(args, results: Dict[str, BenchResult]) -> str:
    if args.max_other_cores == float("inf"):
        kept = ", ".join(f"{MODELS[k].title} {r.other_cores:.2f}" for k, r in results.items())
        return f"Shared machine: no rounds discarded; other processes kept this many cores busy on average: {kept}."
    parts = []
    for key, r in results.items():
        part = f"{MODELS[key].title}: {r.rounds_discarded} discarded, {r.rounds_kept} kept"
        if r.rounds_disturbed:
            part += f" ({r.rounds_disturbed} disturbed all the same: the time limit ran out)"
        parts.append(part + f", other processes {r.other_cores:.2f} cores on average")
    return (f"Shared machine: rounds during which other processes kept more than {args.max_other_cores:g} cores "
            "busy were discarded and repeated; " + "; ".join(parts) + ".")


def report(args: argparse.Namespace, setups: Dict[str, Setup], results: Dict[str, BenchResult], rates) -> str:
    rows, goals, prediction_rows, panels = [], [], [], []
    for key, r in results.items():
        s = setups[key]
        eager = r[EAGER]
        macs = {EAGER: s.step_macs, COMPILED: s.step_macs, CO: s.step_macs, CLIP: s.clip_macs}
        nbytes = {EAGER: s.step_bytes, COMPILED: s.step_bytes, CO: s.step_bytes, CLIP: s.clip_bytes}
        for name, t in r.items():
            rows.append([s.spec.title, name, fmt_ms(t.median), f"{fmt_ms(t.p25)} - {fmt_ms(t.p75)}",
                         f"{macs[name] / 1e9:.3f}", f"{nbytes[name] / 1e6:.1f}",
                         *rates.cells(macs[name], nbytes[name], t), str(Ratio.of(t, eager))])
        for name in (EAGER, COMPILED):
            if name in r and key in ("x3d_s", "x3d_m", "slow"):
                goals.append(Goal(f"{s.spec.title}: co step / {name}", Ratio.of(r[CO], r[name]), 2.0, at_most=False))
        if key in CLIP_GOALS:
            for name in (EAGER, COMPILED):
                if name in r:
                    goals.append(Goal(f"{s.spec.title}: regular {s.clip.shape[2]}-frame clip / {name}",
                                      Ratio.of(r[CLIP], r[name]), CLIP_GOALS[key], at_most=False))
        prediction_rows.append([
            s.spec.title, f"{s.clip.shape[2]} x {s.clip.shape[-1]}x{s.clip.shape[-1]}",
            f"{s.clip_macs / s.step_macs:.1f}x", str(Ratio.of(r[CLIP], eager)),
            str(Ratio.of(r[CLIP], r[COMPILED])) if COMPILED in r else "not run",
            str(Ratio.of(r[CO], eager)),
        ])
        names = list(r)
        panels.append(Panel(f"{s.spec.title} ({s.clip.shape[-1]}x{s.clip.shape[-1]})", names, [r[n] for n in names],
                            [COLORS[n] for n in names]))
    header = ["model", "candidate", "median (ms)", "p25 - p75 (ms)", "GMACs per call", "MB touched", "bound (ms)",
              "x of the bound", "time / cofunc eager step"]
    prediction_header = ["model", "clip (frames x pixels)", "MACs: clip / step", "latency: clip / eager step",
                         "latency: clip / compiled step", "latency: co step / eager step"]
    clock = "wall" if args.clock == "wall" else "process CPU"
    compile_note = (f"Compiled step: cofunc.compile_step(layer, options={COMPILE_OPTIONS}) (inductor's "
                    "layout optimisation slows batch-1 steps). torch.compile first-call time (compilation; "
                    "cached by inductor across runs): "
                    + ", ".join(f"{setups[k].spec.title} {setups[k].compile_seconds:.0f} s" for k in results) + "."
                    if args.compile else "The compiled step was not run (--no-compile).")
    notes = [
        "Batch 1, float32, torch.no_grad(); one step = one frame in, one score vector out (every model "
        "predicts at every step); the regular clip is one prediction of sliding-window inference.",
        "Models: CoX3D-S (13 frames of 160x160), CoX3D-M (16 of 224) and CoX3D-L (16 of 312) with frame-scope SE, regular X3D = the "
        "clip-scope twin (pytorchvideo's X3D) with the same weights; CoSlow = Slow-8x8-R50 on 256x256 frames "
        "(the seed table's convention), regular = its clip forward. Raw scores (no softmax); random batch-norm "
        "statistics.",
        "GMACs per call: cofunc.count_macs (convolutions and matrix products; co's step does the same MACs). "
        "MB touched: the weights and the state a step reads (the clip: the weights and the clip).",
        rates.note(),
        f"Method: every candidate warmed up first, then {args.rounds} rounds x {args.inner} call(s) each, round-robin "
        f"with the order rotated every round; a sample is the mean {clock} time per call over one round. Ratios "
        "are of medians; their p25-p75 is over the ratios paired round by round.",
        "Outputs checked before timing: the continual candidates emit at the same steps, and their outputs equal "
        "the continual network's clip forward (largest max|diff| / max|score|: "
        + "; ".join(f"{setups[k].spec.title} " + ", ".join(f"{n} {v:.1e}" for n, v in setups[k].diffs.items())
                    for k in results) + ").",
        compile_note,
        *environment(args.threads),
        _noise_note(args, results),
    ]
    if args.fold:
        notes.insert(0, "Batch norms folded into the convolutions before them (cofunc.nn.fold_batch_norms) in every "
                     "candidate: the continual network, co's network (built from the folded one) and the regular clip "
                     "network.")
    if args.quick:
        notes.insert(0, "QUICK RUN (3 rounds of 1 call on a shared machine): indicative only.")
    text = write_table(
        os.path.join(args.out_dir, f"{args.stem}.md"), rows, header, notes,
        title="Video zoo: per-step latency of CoX3D-S/M/L, CoSlow (cofunc vs co 1.2.4 vs clip inference)"
        + (", batch norms folded" if args.fold else "") + (" (quick run)" if args.quick else ""),
        extra_tables=[
            ("Per prediction", prediction_header, prediction_rows),
            ("Goals", GOAL_HEADER, [g.row() for g in goals]),
        ],
    )
    bar_plot(
        os.path.join(args.out_dir, f"{args.stem}.png"), panels,
        title=f"Video zoo, batch 1, float32, {args.threads} thread(s) (median, p25-p75)"
        + (" - quick run" if args.quick else ""),
        ylabel="time per call (ms)" if args.clock == "wall" else "process CPU time per call (ms)",
    )
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    setups: Dict[str, Setup] = {}
    results: Dict[str, BenchResult] = {}
    rates = measure_rates(args.threads)
    with torch.no_grad():
        for key in args.models:
            print(f"{MODELS[key].title}: building, compiling and checking ...", file=sys.stderr, flush=True)
            s = build(key, args.seed, args.compile, args.fold)
            check_outputs(s)
            setups[key] = s
            print(f"{MODELS[key].title}: timing ...", file=sys.stderr, flush=True)
            results[key] = bench_interleaved(
                candidates(s), rounds=args.rounds, inner=args.inner, warmup=2 if args.quick else 5,
                max_other_cores=args.max_other_cores, max_seconds=args.max_seconds, clock=args.clock,
                progress_every=None if args.quick else 60.0,
            )
    print(report(args, setups, results, rates))
    print(f"wrote {args.stem}.md and {args.stem}.png to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
