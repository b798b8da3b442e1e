"""Benchmark: one continual Conv3d(64, 64, 3, padding=1) step on 28x28 frames, cofunc vs co 1.2.4.

Candidates, all batch 1, float32, under ``torch.no_grad()``, timed side by side in one process:

- step (input one frame ``(1, 64, 28, 28)``, output one frame ``(1, 64, 28, 28)``):
  - ideal: one output frame of ``nn.Conv3d``, i.e. ``F.conv3d`` on a ``(1, 64, 3, 28, 28)``
    window with padding ``(0, 1, 1)``: the least work a step can do;
  - cofunc's functional ``conv3d(...).step`` (the state is carried from call to call);
  - the nn adapter ``cofunc.nn.Conv3d(...).forward_step``;
  - co's ``continual.Conv3d(...).forward_step`` (same weights);
- 16 frames (input ``(1, 64, 16, 28, 28)``, output 16 frames):
  - the clip forward of ``nn.Conv3d`` (padding 1);
  - cofunc's functional ``steps`` from a warmed-up state (the same state every call: it is pure);
  - the nn adapter's ``forward_steps`` (its stored state advances, as in a real stream).

Goals: step within 1.5x of the ideal; step at least 2x faster than co's; steps within 1.3x of the
clip forward. Every row also shows the physical bound (`_common.MachineRates`): the call's
multiply-adds (``cofunc.count_macs``) at the measured matrix-product rate or the bytes of weights
and state (and input clip) it must read at the measured memory bandwidth, and "x of the bound"
(median / bound). Writes ``results/conv3d.md`` (tables) and ``results/conv3d.png`` (plot) and prints
the tables.

Usage: ``python -m benchmarks.bench_conv [--quick] [--threads N] [--rounds R] [--inner K]
[--max-other-cores CORES] [--clock wall|cpu] [--out-dir DIR]``. On a shared machine the default
full run discards rounds disturbed by other processes (see ``_common.bench_interleaved``), so it
can take minutes; the notes under the table say how many rounds were discarded.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import continual as co
import cofunc
import cofunc.nn as cn
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

CHANNELS = 64
KERNEL = 3
SIZE = 28
CLIP_FRAMES = 16
# Multiply-adds of one output frame, counted as 2 FLOPs each (bias ignored).
FRAME_FLOP = 2 * CHANNELS * CHANNELS * KERNEL**3 * SIZE * SIZE
# Tolerance for step vs clip outputs: different conv algorithms round differently (float32).
ATOL, RTOL = 1e-5, 1e-4


@dataclass
class Setup:
    """The modules and inputs shared by every candidate (same weights everywhere)."""

    ref: nn.Conv3d  # the torch.nn reference, padding 1
    layer: cofunc.Conv
    params: Dict[str, torch.Tensor]
    adapter: cn.Conv3d
    co_conv: Any  # continual.Conv3d
    frame: torch.Tensor  # (1, C, H, W): the step input
    window: torch.Tensor  # (1, C, 3, H, W): the ideal step's input
    clip: torch.Tensor  # (1, C, 16, H, W)
    warm_state: Optional[cofunc.ConvState]  # functional state after a few steps (set by check_outputs)
    work: Optional[Dict[str, Tuple[int, int]]] = None  # candidate -> (MACs, bytes touched) (set by count_work)
    co_macs: int = 0  # what co's step multiplies, zero padding included (set by count_work)


def build(seed: int) -> Setup:
    torch.manual_seed(seed)
    ref = nn.Conv3d(CHANNELS, CHANNELS, KERNEL, padding=1).eval()
    layer = cofunc.conv3d(CHANNELS, CHANNELS, KERNEL, padding=1)
    adapter = cn.Conv3d(CHANNELS, CHANNELS, KERNEL, padding=1).eval()
    adapter.load_state_dict(ref.state_dict())
    co_conv = co.Conv3d(CHANNELS, CHANNELS, KERNEL, padding=1).eval()
    co_conv.load_state_dict(ref.state_dict())
    frame = torch.randn(1, CHANNELS, SIZE, SIZE)
    return Setup(
        ref=ref,
        layer=layer,
        params=layer.params_from(ref),
        adapter=adapter,
        co_conv=co_conv,
        frame=frame,
        window=torch.randn(1, CHANNELS, KERNEL, SIZE, SIZE),
        clip=torch.randn(1, CHANNELS, CLIP_FRAMES, SIZE, SIZE),
        warm_state=None,
    )


def check_outputs(s: Setup, n_frames: int = 6) -> Dict[str, float]:
    """Step every implementation through ``n_frames`` random frames from a fresh state and check
    each emitted output against the clip forward (and, at the last step, against the ideal
    one-frame conv); then check ``steps`` over a 16-frame clip from the warmed-up state.

    Leaves ``s.warm_state`` (functional) and the adapters' stored states warmed up. Returns the
    largest absolute differences seen, by comparison.
    """
    layer, params = s.layer, s.params
    frames = torch.randn(1, CHANNELS, n_frames, SIZE, SIZE)
    expected = s.ref(frames)  # (1, C, n_frames, H, W)
    state = layer.init_state(params, s.frame.shape)
    s.adapter.clean_state()
    s.co_conv.clean_state()
    diffs = {"cofunc step": 0.0, "cofunc.nn step": 0.0, "co step": 0.0}
    delay = layer.delay
    for t in range(n_frames):
        x = frames[:, :, t]
        y, state = layer.step(params, state, x)
        outs = {"cofunc step": y, "cofunc.nn step": s.adapter.forward_step(x), "co step": s.co_conv.forward_step(x)}
        if t < delay:
            if outs["cofunc.nn step"] is not None or outs["co step"] is not None or bool(layer.valid(state).all()):
                raise AssertionError(f"step {t} emitted an output while warming up (delay {delay})")
            continue
        want = expected[:, :, t - delay]
        for name, out in outs.items():
            torch.testing.assert_close(out, want, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name} at step {t}: {m}")
            diffs[name] = max(diffs[name], float((out - want).abs().max()))
    # The ideal candidate's computation, on the last window, is what the last step returned.
    ideal = F.conv3d(frames[:, :, -KERNEL:], s.ref.weight, s.ref.bias, 1, (0, 1, 1)).squeeze(2)
    torch.testing.assert_close(ideal, expected[:, :, -1 - delay], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(y, ideal, atol=ATOL, rtol=RTOL)
    diffs["cofunc step vs ideal"] = float((y - ideal).abs().max())
    # steps over the 16-frame clip from the warmed-up state: the outputs that follow the stream.
    ys, _ = layer.steps(params, state, s.clip)
    full = s.ref(torch.cat([frames, s.clip], dim=2))
    want = full[:, :, n_frames - delay: n_frames - delay + CLIP_FRAMES]
    torch.testing.assert_close(ys, want, atol=ATOL, rtol=RTOL)
    diffs["cofunc steps"] = float((ys - want).abs().max())
    s.warm_state = state
    return diffs


def count_work(s: Setup) -> None:
    """Set ``s.work``: each candidate's multiply-adds per call (``cofunc.count_macs``) and the bytes
    it must read at least (weights, state, input). Every step candidate computes the same output
    frame, so they share the cofunc step's count (co's step convolves the new frame with the
    whole kernel over zero padding: extra multiply-adds that a step does not need)."""
    layer, params, state = s.layer, s.params, s.warm_state
    step_macs, _ = cofunc.count_macs(layer.step, params, state, s.frame)
    clip_macs, _ = cofunc.count_macs(s.ref, s.clip)
    steps_macs, _ = cofunc.count_macs(layer.steps, params, state, s.clip)
    step_bytes = tree_bytes(params, state, s.frame)
    s.work = {name: (step_macs, step_bytes) for name in STEP_NAMES}
    s.work[CLIP] = (clip_macs, tree_bytes(params, s.clip))
    s.work[STEPS] = s.work[NN_STEPS] = (steps_macs, tree_bytes(params, state, s.clip))
    s.co_macs, _ = cofunc.count_macs(s.co_conv.forward_step, s.frame, update_state=False)


def candidates(s: Setup) -> Dict[str, Any]:
    """Zero-argument callables, in table order (steps first, then 16-frame clips)."""
    layer, params, weight, bias = s.layer, s.params, s.ref.weight, s.ref.bias
    box = [s.warm_state]

    def cofunc_step():
        box[0] = layer.step(params, box[0], s.frame)[1]

    warm = s.warm_state
    return {
        IDEAL: lambda: F.conv3d(s.window, weight, bias, 1, (0, 1, 1)),
        STEP: cofunc_step,
        NN_STEP: lambda: s.adapter.forward_step(s.frame),
        CO_STEP: lambda: s.co_conv.forward_step(s.frame),
        CLIP: lambda: s.ref(s.clip),
        STEPS: lambda: layer.steps(params, warm, s.clip),
        NN_STEPS: lambda: s.adapter.forward_steps(s.clip),
    }


IDEAL, STEP, NN_STEP, CO_STEP = "ideal: nn.Conv3d, 1 frame", "cofunc step", "cofunc.nn forward_step", "co forward_step"
CLIP, STEPS, NN_STEPS = "nn.Conv3d clip, 16 frames", "cofunc steps, 16 frames", "cofunc.nn forward_steps, 16 frames"
STEP_NAMES = [IDEAL, STEP, NN_STEP, CO_STEP]
CLIP_NAMES = [CLIP, STEPS, NN_STEPS]
COLORS = {"ideal": "#9e9e9e", "nn.Conv3d": "#9e9e9e", "cofunc": "#1f77b4", "co ": "#ff7f0e"}


def color(name: str) -> str:
    for prefix, c in COLORS.items():
        if name.startswith(prefix):
            return c
    return "#2ca02c"


def conv_backends(s: Setup) -> str:
    """Which backend torch's heuristic picks for each conv3d call timed here (private torch API,
    so best effort): it explains most of the differences in GFLOP/s."""
    w = s.ref.weight
    calls = {
        "one-frame window (ideal, cofunc step)": (s.window, (0, 1, 1)),
        "co's step (1 frame, temporal padding 2)": (s.frame.unsqueeze(2), (2, 1, 1)),
        "16-frame clip": (s.clip, (1, 1, 1)),
        f"cofunc steps window ({CLIP_FRAMES + KERNEL - 1} frames)": (torch.cat([s.window[:, :, 1:], s.clip], 2), (0, 1, 1)),
    }
    try:
        picked = {
            k: str(torch._C._select_conv_backend(x, w, None, (1, 1, 1), pad, (1, 1, 1), False, (0, 0, 0), 1, None)).split(".")[-1]
            for k, (x, pad) in calls.items()
        }
    except Exception as e:  # noqa: BLE001 (a private API may change; the note is optional)
        return f"conv backends: unknown ({type(e).__name__})"
    return "torch's conv backend per call: " + "; ".join(f"{k}: {v}" for k, v in picked.items()) + "."


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (few rounds) to check that it works")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 40; quick: 6)")
    parser.add_argument("--inner", type=int, default=None, help="calls per candidate per round (default 5; quick: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-other-cores", type=float, default=None, metavar="CORES",
                        help="discard and repeat rounds during which other processes kept more than CORES cores "
                        "busy (default 0.3; quick: inf, i.e. keep all)")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="after this long, keep disturbed rounds too (default 900)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or process CPU time (a contention-proof cost with --threads 1)")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"), help="where conv3d.md and conv3d.png go")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (6 if args.quick else 40)
    args.inner = args.inner or (2 if args.quick else 5)
    if args.max_other_cores is None:
        args.max_other_cores = float("inf") if args.quick else 0.3
    return args


def report(args: argparse.Namespace, s: Setup, timings: BenchResult, diffs: Dict[str, float], backends: str,
           rates) -> str:
    """Write ``conv3d.md`` and ``conv3d.png`` to ``args.out_dir``; return the markdown."""
    ideal, clip = timings[IDEAL], timings[CLIP]
    rows = []
    for name, t in timings.items():
        in_step = name in STEP_NAMES
        frames = 1 if in_step else CLIP_FRAMES
        macs, nbytes = s.work[name]
        rows.append([
            name, fmt_ms(t.median), f"{fmt_ms(t.p25)} - {fmt_ms(t.p75)}",
            f"{FRAME_FLOP * frames / t.median / 1e9:.0f}", f"{macs / 1e6:.1f}", f"{nbytes / 1e6:.2f}",
            *rates.cells(macs, nbytes, t), str(Ratio.of(t, ideal if in_step else clip)),
        ])
    header = ["candidate", "median (ms)", "p25 - p75 (ms)", "useful GFLOP/s", "MMACs per call", "MB touched",
              "bound (ms)", "x of the bound", "vs first row of its group"]
    goals = [
        Goal("cofunc step vs ideal one-frame conv", Ratio.of(timings[STEP], ideal), 1.5),
        Goal("co step vs cofunc step (speed-up)", Ratio.of(timings[CO_STEP], timings[STEP]), 2.0, at_most=False),
        Goal("cofunc steps (16 frames) vs nn.Conv3d clip forward", Ratio.of(timings[STEPS], clip), 1.3),
    ]
    clock = "wall" if args.clock == "wall" else "process CPU"
    if args.max_other_cores == float("inf"):
        noise = "Shared machine: no rounds discarded"
    else:
        noise = (f"Shared machine: rounds during which other processes kept more than {args.max_other_cores:g} "
                 f"cores busy were discarded and repeated ({timings.rounds_discarded} discarded, "
                 f"{timings.rounds_kept} kept"
                 + (f", {timings.rounds_disturbed} of them disturbed all the same: the time limit ran out)"
                    if timings.rounds_disturbed else ")"))
    notes = [
        f"Conv3d({CHANNELS}, {CHANNELS}, {KERNEL}, padding=1), batch 1, float32, {SIZE}x{SIZE} frames, "
        f"torch.no_grad(); one output frame is {FRAME_FLOP / 1e6:.1f} MFLOP (2 per multiply-add).",
        "MMACs per call: cofunc.count_macs (bias additions not counted). Every step row is bounded by the "
        "cofunc step's count and bytes (the least a step must do; co's step also multiplies the zero padding: "
        f"{s.co_macs / 1e6:.1f} MMACs by the same count); MB touched: the weights, the state (the 2 buffered "
        "frames) and the input frame or clip, each read once. " + rates.note(),
        f"Method: every candidate warmed up first, then {args.rounds} rounds x {args.inner} calls each, "
        f"round-robin with the order rotated every round; a sample is the mean {clock} time per call over one "
        "round. Ratios are of medians; their p25-p75 is over the ratios paired round by round.",
        "Outputs checked before timing: every cofunc, cofunc.nn and co step output and the 16-frame `steps` "
        f"agree with nn.Conv3d's clip forward (atol {ATOL:g}, rtol {RTOL:g}); largest |diff|: "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ".",
        "The functional step carries its state from call to call; `steps` starts every call from the same "
        "warmed-up state (it is pure); the adapters' stored states advance.",
        backends,
        *environment(args.threads),
        noise + f"; in the kept rounds other processes used {timings.other_cores:.2f} of the "
        f"{os.cpu_count()} cores on average (each tenth of a core inflates the medians, of multi-threaded "
        "candidates most).",
    ]
    if any(t.median < rates.bound(*s.work[name]) for name, t in timings.items()):
        notes.append("Rows under 1.0x of the bound ran faster than the matrix-product rate measured before the timing: "
                     "the rate is one measurement on a shared machine whose load varies during the run (other "
                     "processes slow a matrix product down even when they leave this one its core), and oneDNN's kernels "
                     "can beat a 1024^3 `mm`. Compare rows by their ratios.")
    if args.quick:
        notes.insert(0, "QUICK RUN (few rounds): indicative only.")
    text = write_table(
        os.path.join(args.out_dir, "conv3d.md"), rows, header, notes,
        title="Continual Conv3d step: cofunc vs co 1.2.4 vs torch.nn" + (" (quick run)" if args.quick else ""),
        extra_tables=[("Goals", GOAL_HEADER, [g.row() for g in goals])],
    )
    bar_plot(
        os.path.join(args.out_dir, "conv3d.png"),
        [
            Panel("one step (one output frame)", STEP_NAMES, [timings[n] for n in STEP_NAMES], [color(n) for n in STEP_NAMES]),
            Panel(f"{CLIP_FRAMES} frames", CLIP_NAMES, [timings[n] for n in CLIP_NAMES], [color(n) for n in CLIP_NAMES]),
        ],
        title=f"Conv3d({CHANNELS}, {CHANNELS}, {KERNEL}, padding=1) on {SIZE}x{SIZE}, batch 1, float32, "
        f"{args.threads} threads (median, p25-p75)",
        ylabel="time per call (ms)" if args.clock == "wall" else "process CPU time per call (ms)",
    )
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rates = measure_rates(args.threads)
    with torch.no_grad():
        s = build(args.seed)
        diffs = check_outputs(s)
        count_work(s)
        backends = conv_backends(s)
        timings = bench_interleaved(
            candidates(s), rounds=args.rounds, inner=args.inner, warmup=3 if args.quick else 10,
            max_other_cores=args.max_other_cores, max_seconds=args.max_seconds, clock=args.clock,
            progress_every=None if args.quick else 30.0,
        )
    print(report(args, s, timings, diffs, backends, rates))
    print(f"wrote conv3d.md and conv3d.png to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
