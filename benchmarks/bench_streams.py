"""Benchmark: 64 independent streams with staggered starts through a 10-block residual 3D CNN.

Frames per second (frames of all streams processed per second of wall time) of:

- cofunc batched: one eager step over all 64 streams (`cofunc.step_streams`);
- cofunc vmapped: ``torch.func.vmap(layer.step)`` over the streams;
- cofunc compiled: ``torch.compile`` of the batched step (`cofunc.compile_step`, fullgraph):
  two graphs, one masking every state update per stream, one (picked once every stream is
  past its warm-up) without masks; paused streams are restored afterwards, and not at all
  when every stream is active (as `cofunc.step_streams` does);
- co 1.2.4: one module instance per stream (co's state holds one batch at one position, so
  streams that start at different times need separate instances), ``forward_step`` each.

The network: a stem ``Conv3d(3, 32, (1, 3, 3))``, then 10 residual blocks
``x + relu(Conv3d(32, 32, 3, padding=1)(x))``, on 14x14 frames. Stream ``i`` starts at tick
``i % 16``, so the streams are at different positions of their warm-up and stride grid.

Goals: batched cofunc at least 10x co's frames per second; compiled at least 1.5x eager. The
table shows the physical bound of a tick (its MACs at the measured matrix-product rate, or the
bytes of weights and state at the measured bandwidth).
Writes ``results/streams.md`` and ``results/streams.png``.

Usage: ``python -m benchmarks.bench_streams [--quick] [--threads N] [--streams N] [--rounds R]
[--clock wall|cpu]``.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

import continual as co
import cofunc
import cofunc.nn as cn
from benchmarks._common import GOAL_HEADER, Goal, Panel, Ratio, bar_plot, bench_interleaved, environment, fmt_ms, measure_rates, tree_bytes, write_table

HERE = os.path.dirname(os.path.abspath(__file__))

CHANNELS, SIZE, BLOCKS = 32, 14, 10


def build(lib):
    """The network from `lib` (``cofunc.nn`` or ``continual``): the same module tree and keys."""
    blocks = [lib.Conv3d(3, CHANNELS, (1, 3, 3), padding=(0, 1, 1))]
    for _ in range(BLOCKS):
        blocks.append(lib.Residual(lib.Sequential(lib.Conv3d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU())))
    return lib.Sequential(*blocks).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or process CPU time (a contention-proof cost with --threads 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.streams
    rounds = args.rounds or (3 if args.quick else 12)

    module = build(cn)
    layer = module.layer
    params = cofunc.tree_map(torch.Tensor.detach, module.params)
    co_modules = [build(co) for _ in range(n)]
    for m in co_modules:
        m.load_state_dict(module.state_dict())

    starts = torch.tensor([i % 16 for i in range(n)])
    frames = torch.randn(n, 3, SIZE, SIZE)

    def active_at(tick):
        return starts <= tick

    vstep = torch.func.vmap(layer.step, in_dims=(None, 0, 0))
    compiled = cofunc.compile_step(layer)

    def gated(fn):
        def run(state, tick):
            active = active_at(tick)
            y, valid, new = fn(params, state, frames)
            if bool(active.all()):  # nothing paused: nothing to restore
                return y, valid, new
            new = cofunc.tree_map(lambda a, b: torch.where(active.view((-1,) + (1,) * (a.dim() - 1)), a, b), new, state)
            return y, valid & active, new
        return run

    candidates = {
        "cofunc batched": lambda state, tick: cofunc.step_streams(layer, params, state, frames, active_at(tick)),
        "cofunc vmapped": gated(lambda p, s, x: _vstep(vstep, layer, p, s, x)),
        "cofunc compiled": gated(compiled),
    }

    # Check: every candidate's valid outputs equal co's (one instance per stream), tick by tick.
    with torch.no_grad():
        states = {name: layer.init_state(params, (n, 3, SIZE, SIZE)) for name in candidates}
        for tick in range(32):  # past every warm-up: both compiled graphs are checked
            active = active_at(tick)
            co_out = [m.forward_step(frames[i: i + 1]) if active[i] else None for i, m in enumerate(co_modules)]
            for name, fn in candidates.items():
                y, valid, states[name] = fn(states[name], tick)
                for i in range(n):
                    if bool(valid[i]) != (co_out[i] is not None):
                        raise SystemExit(f"{name}: stream {i} at tick {tick} valid={bool(valid[i])}, co {co_out[i] is not None}")
                    if co_out[i] is not None and not torch.allclose(y[i], co_out[i][0], atol=1e-4, rtol=1e-4):
                        raise SystemExit(f"{name}: stream {i} at tick {tick} differs from co by {(y[i] - co_out[i][0]).abs().max():.2e}")

    ticks = {"t": 32}

    def tick_of(name):
        def run():
            t = ticks["t"]
            _, _, states[name] = candidates[name](states[name], t)
        return run

    def co_tick():
        for i, m in enumerate(co_modules):
            m.forward_step(frames[i: i + 1])

    fns = {name: tick_of(name) for name in candidates}
    fns["co, one instance per stream"] = co_tick
    rates = measure_rates(args.threads)
    with torch.no_grad():
        tick_macs, _ = cofunc.count_macs(layer.step, params, states["cofunc batched"], frames)
    tick_bytes = tree_bytes(params, states["cofunc batched"])
    with torch.no_grad():
        result = bench_interleaved(fns, rounds=rounds, inner=1, warmup=2, clock=args.clock)

    names = list(fns)
    fps = {name: n / result[name].median for name in names}
    rows = [[name, fmt_ms(result[name].median), f"{fmt_ms(result[name].p25)} - {fmt_ms(result[name].p75)}", f"{fps[name]:.0f}",
             *rates.cells(tick_macs, tick_bytes, result[name])] for name in names]
    goals = [
        Goal("co time per tick / cofunc batched (fps ratio)", Ratio.of(result["co, one instance per stream"], result["cofunc batched"]), 10, at_most=False),
        Goal("cofunc batched / compiled time per tick", Ratio.of(result["cofunc batched"], result["cofunc compiled"]), 1.5, at_most=False),
    ]
    notes = [
        f"{n} streams, stream i starts at tick i % 16; network: stem Conv3d(3, {CHANNELS}, (1, 3, 3)) and {BLOCKS} residual "
        f"blocks x + relu(Conv3d({CHANNELS}, {CHANNELS}, 3, padding=1)(x)); {SIZE}x{SIZE} frames; float32, torch.no_grad().",
        "A tick gives one frame to every stream that has started; frames per second = streams / time per tick.",
        f"A tick (all {n} streams) does {tick_macs / 1e9:.3f} GMACs and reads {tick_bytes / 1e6:.1f} MB of weights and state. "
        + rates.note(),
        "Before timing, every candidate's outputs and empty steps were checked against co's per-stream modules over 32 ticks (the compiled step switches to its warm graph at tick 25).",
        f"Interleaved rounds: {result.rounds_kept} (one tick per candidate per round, {args.clock} clock); other processes kept "
        f"{result.other_cores:.2f} cores busy on average.",
    ] + environment(args.threads)
    text = write_table(os.path.join(HERE, "results", "streams.md"), rows,
                       ["candidate", "median per tick (ms)", "p25 - p75 (ms)", "frames per second", "bound (ms)", "x of the bound"], notes,
                       title=f"{n} independent streams, staggered starts",
                       extra_tables=[("Goals", GOAL_HEADER, [g.row() for g in goals])])
    bar_plot(os.path.join(HERE, "results", "streams.png"),
             [Panel("time per tick, all streams", names, [result[k] for k in names])],
             title=f"{n} streams through a {BLOCKS}-block residual 3D CNN")
    print(text)
    return 0


def _vstep(vstep, layer, params, state, x):
    y, new = vstep(params, state, x)
    return y, layer.valid(new), new


if __name__ == "__main__":
    raise SystemExit(main())
