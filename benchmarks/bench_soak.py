"""Soak: two networks stepped 100,000 times, checked against the clip forward as they go.

- a conv network: ``Conv3d(3, 16, 3, padding=(0, 1, 1))``, ReLU,
  ``Conv3d(16, 16, 3, stride=(2, 1, 1), padding=(0, 1, 1))``, ReLU, ``Conv3d(16, 8, (2, 1, 1))``
  on 8x8 frames (receptive field 9, stride 2);
- a 2-layer encoder: ``transformer_encoder`` of ``nn.TransformerEncoderLayer(64, 4, 128)``,
  sequence length 16 (a retroactive layer, then a single-output one).

Both use the functional core (``layer.step``) under ``torch.inference_mode()``, one stream of
random frames. Every ``--check-every`` steps on which the network emits, the step's output is
compared with the clip forward of the last ``receptive_field`` frames (one output: the same
window), and the largest absolute difference so far is kept. At every ``--report-every`` steps
the table gets a row: steps taken, the largest error so far, and the process's resident memory
(``VmRSS``). A drift in the numbers or a leak would show as a growing error or memory.

A second table sets the steps' time (the ``layer.step`` calls only, per report interval; process
CPU time with one thread) against the physical bound of a step (`_common.MachineRates`): its
multiply-adds (``cofunc.count_macs``) at the measured matrix-product rate or the bytes of weights,
state and frame at the measured memory bandwidth. These networks are tiny on purpose (a soak
checks drift and leaks, not speed): their steps are bound by per-op overhead, far above both.

Writes ``results/soak.md`` and ``results/soak.png`` (to ``--out-dir``).

Usage: ``python -m benchmarks.bench_soak [--steps N] [--check-every N] [--report-every N] [--threads N]
[--out-dir DIR]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import time

import numpy as np
import torch
from torch import nn

import cofunc
from benchmarks._common import Timing, environment, fmt_ms, measure_rates, tree_bytes, write_table

HERE = os.path.dirname(os.path.abspath(__file__))


def conv_network():
    layer = cofunc.seq(
        cofunc.conv3d(3, 16, 3, padding=(0, 1, 1)),
        cofunc.lift(torch.relu),
        cofunc.conv3d(16, 16, 3, stride=(2, 1, 1), padding=(0, 1, 1)),
        cofunc.lift(torch.relu),
        cofunc.conv3d(16, 8, (2, 1, 1)),
    )
    return "conv network", layer, (1, 3, 8, 8)


def encoder_network():
    torch_layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0)
    layer = cofunc.transformer_encoder(torch_layer, 2, sequence_len=16)
    return "2-layer encoder", layer, (1, 64)


def rss_mb() -> float:
    """The resident memory of this process, in MB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(name, layer, step_shape, steps: int, check_every: int, report_every: int, seed: int = 0,
         clock=time.perf_counter):
    """Step ``layer`` ``steps`` times. Returns the report rows ``(steps, max error, checks, RSS MB,
    s)``, the ``clock`` time per step of each report interval (the step calls only), and the MACs
    and bytes (weights, state, frame) of one warm step."""
    torch.manual_seed(seed)
    params = layer.init_params()
    state = layer.init_state(params, step_shape)
    rf, axis = layer.receptive_field, layer.time_axis()
    recent = collections.deque(maxlen=rf)
    rows, worst, checks, start = [], 0.0, 0, time.perf_counter()
    step_times, stepping, since = [], 0.0, 0
    with torch.inference_mode():
        rows.append((0, float("nan"), 0, rss_mb(), 0.0))
        for t in range(1, steps + 1):
            x = torch.randn(step_shape)
            recent.append(x)
            tick = clock()
            y, state = layer.step(params, state, x)
            stepping += clock() - tick
            since += 1
            if t % check_every < layer.stride and t >= rf and bool(layer.valid(state).all()):
                clip = torch.stack(list(recent), dim=axis)
                want = layer.forward(params, clip).select(layer.out_time_axis(), -1)
                worst = max(worst, float((y - want).abs().max()))
                checks += 1
            if t % report_every == 0:
                step_times.append(stepping / since)
                stepping, since = 0.0, 0
                rows.append((t, worst, checks, rss_mb(), time.perf_counter() - start))
                print(f"{name}: {t} steps, max error {worst:.2e} over {checks} checks, RSS {rows[-1][3]:.1f} MB", flush=True)
        macs, _ = cofunc.count_macs(layer.step, params, state, x)
    return rows, step_times, macs, tree_bytes(params, state, x)


def plot(path, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in results.items():
        steps = [r[0] for r in rows]
        ax_mem.plot(steps, [r[3] for r in rows], marker="o", label=name)
        ax_err.plot(steps[1:], [max(r[1], 1e-12) for r in rows[1:]], marker="o", label=name)
    ax_mem.set_xlabel("steps")
    ax_mem.set_ylabel("resident memory (MB)")
    ax_mem.set_title("process memory (both networks run in turn)", fontsize=9)
    ax_err.set_xlabel("steps")
    ax_err.set_ylabel("max |step - clip forward| so far")
    ax_err.set_yscale("log")
    ax_err.set_title("largest error against the clip forward", fontsize=9)
    for ax in (ax_mem, ax_err):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--check-every", type=int, default=500)
    parser.add_argument("--report-every", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"), help="where soak.md and soak.png go")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rates = measure_rates(args.threads)
    # One thread: CPU time, the steps' cost whatever other processes do (as measure_rates).
    clock = time.process_time if args.threads == 1 else time.perf_counter
    results, bound_rows = {}, []
    for make in (conv_network, encoder_network):
        name, layer, step_shape = make()
        results[name], step_times, macs, nbytes = soak(name, layer, step_shape, args.steps, args.check_every,
                                                       args.report_every, clock=clock)
        t = Timing(np.asarray(step_times))
        bound_rows.append([name, fmt_ms(t.median), f"{fmt_ms(t.p25)} - {fmt_ms(t.p75)}", f"{macs / 1e6:.3f}",
                           f"{nbytes / 1e6:.3f}", *rates.cells(macs, nbytes, t)])
    header = ["steps"]
    for name in results:
        header += [f"{name}: max error", f"{name}: RSS (MB)"]
    rows = []
    for i in range(len(results["conv network"])):
        row = [f"{results['conv network'][i][0]:,}"]
        for name, r in results.items():
            err = "" if i == 0 else f"{r[i][1]:.1e}"
            row += [err, f"{r[i][3]:.1f}"]
        rows.append(row)
    conv, enc = results["conv network"][-1], results["2-layer encoder"][-1]
    notes = [
        f"{args.steps:,} steps per network, one stream, float32, `torch.inference_mode()`; checked every "
        f"{args.check_every} steps against the clip forward of the last receptive field "
        f"({conv[2]} and {enc[2]} checks); the error column is the largest absolute difference so far.",
        "RSS is the whole process (torch, Python and both networks; the networks run one after the other, "
        "so the encoder starts from the conv network's final memory).",
        f"Wall time: conv network {conv[4]:.0f} s, encoder {enc[4]:.0f} s.",
        f"Step time: the {'process CPU' if clock is time.process_time else 'wall'} time of the `layer.step` calls "
        f"alone, per step, one sample per {args.report_every:,}-step interval (median and p25-p75 over the "
        "intervals); MB touched: the weights, the state and the frame of a warm step. These networks are tiny (the "
        "steps are under a million multiply-adds and a few hundred kB): their steps are bound by the per-op "
        "overhead of eager PyTorch, hence the large multiples of the bound. " + rates.note(),
    ] + environment(args.threads)
    text = write_table(os.path.join(args.out_dir, "soak.md"), rows, header, notes,
                       title=f"Soak: {args.steps:,} steps against the clip forward",
                       extra_tables=[("Step time against the physical bound",
                                      ["network", "median per step (ms)", "p25 - p75 (ms)", "MMACs per step",
                                       "MB touched", "bound (ms)", "x of the bound"], bound_rows)])
    plot(os.path.join(args.out_dir, "soak.png"), results)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
