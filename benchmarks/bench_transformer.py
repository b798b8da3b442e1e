"""Benchmark: continual transformer encoder steps, cofunc vs co 1.2.4 vs torch.nn's clip forward.

Model (as CoOadTR-b2): d_model 512, 8 heads, dim_feedforward 2048, window N = 64 tokens, batch
1, float32, post-norm, relu, eval, ``torch.no_grad()``, the same weights everywhere.

Candidates, timed side by side in one process:

- 2-layer encoder (first layer retroactive, second single-output):
  - the clip forward of ``nn.TransformerEncoder`` on the 64-token window (what a regular
    network recomputes for every new token; the step's output is its last token);
  - lower bound: cofunc's step arithmetic written as bare torch calls (one-token in-projection,
    attention over the window, out-projection and feed-forward over the 64 tokens of layer 1;
    for layer 2 the one-token query attends to the 64 tokens without projecting their keys and
    values, then one-token out-projection and feed-forward), no state update, no checks;
  - cofunc's functional ``transformer_encoder(...).step`` (eager; the state carried from call to
    call), the nn adapter ``cofunc.nn.TransformerEncoder.forward_step``, and (``--compile``)
    ``torch.compile(step, fullgraph=True)``;
  - co's ``continual.TransformerEncoder`` (2 layers, built via ``TransformerEncoderLayerFactory``).
- 1-layer single-output encoder: the clip forward of a 1-layer ``nn.TransformerEncoder``, the
  lower bound (one-token in-projection, attention over the window, one-token out-projection and
  feed-forward), cofunc's step, the nn adapter's step (and the compiled step).

- 1-layer, throughput: one step of 64 independent streams at once (a tick), per stream.

Goals: 2-layer step >= 2x cheaper than the clip forward and >= 4x faster than co's step;
1-layer step >= 20x cheaper than its clip forward, at batch 1 and per stream at 64 streams.
Every row shows the physical bound (`_common.MachineRates`). Writes ``results/transformer.md`` and
``results/transformer.png`` and prints the tables.

Usage: ``python -m benchmarks.bench_transformer [--quick] [--threads N] [--clock cpu] [--compile]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

import continual as co
from benchmarks._common import (
    GOAL_HEADER,
    BenchResult,
    Goal,
    Panel,
    Ratio,
    bar_plot,
    bench_interleaved,
    environment,
    Timing,
    fmt_ms,
    measure_rates,
    tree_bytes,
    write_table,
)
from cofunc import unflatten_params
from cofunc import transformer_encoder
from cofunc.nn.transformer import TransformerEncoder as CnTransformerEncoder

HERE = os.path.dirname(os.path.abspath(__file__))

D, HEADS, FF, N = 512, 8, 2048, 64
STREAMS = 64  # the throughput candidate: one tick steps this many independent streams
HEAD_DIM = D // HEADS
ATOL, RTOL = 1e-4, 1e-4  # float32, d=512: different summation orders than torch's fused kernels


def _flop_layer_clip() -> int:
    """FLOPs (2 per multiply-add) of one encoder layer on N tokens."""
    return 2 * (N * 3 * D * D + 2 * N * N * D + N * D * D + 2 * N * D * FF)


FLOP = {
    "clip2": 2 * _flop_layer_clip(),
    "clip1": _flop_layer_clip(),
    # retroactive layer: one-token in-projection, window attention, out-projection and FF on N tokens;
    # last layer: one-token query, W_k^T q and W_v (sum_j a_j h_j) per head (the N keys and values
    # are never projected), scores and weighted sum over the N tokens, out-projection, FF.
    "step2": 2 * (3 * D * D + 2 * N * N * D + N * D * D + 2 * N * D * FF)
    + 2 * (D * D + D * D + 2 * HEADS * N * D + D * D + D * D + 2 * D * FF),
    "step1": 2 * (3 * D * D + 2 * N * D + D * D + 2 * D * FF),
}


class Model:
    """One encoder depth: the torch.nn reference and every implementation, same weights."""

    def __init__(self, num_layers: int, seed: int):
        torch.manual_seed(seed)
        self.num_layers = num_layers
        self.ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True),
                                         num_layers, enable_nested_tensor=False).eval()
        self.enc = transformer_encoder(self.ref.layers[0], num_layers, sequence_len=N)
        self.params = unflatten_params({k: v.detach() for k, v in self.ref.state_dict().items()})
        self.adapter = CnTransformerEncoder.build_from(self.ref, sequence_len=N).eval()
        self.co = None
        if num_layers == 2:
            factory = co.TransformerEncoderLayerFactory(D, HEADS, FF, dropout=0.0, sequence_len=N)
            self.co = co.TransformerEncoder(factory, num_layers=2).eval()
            _load_co(self.co, self.ref)
        self.stream = torch.randn(1, D, N + 8)
        self.token = self.stream[:, :, -1]
        self.window = self.stream[:, :, -N:].transpose(1, 2).contiguous()  # (1, N, D) for torch
        self.state = None
        self.compiled = None

    def check(self) -> Dict[str, float]:
        """Step every implementation through the stream from a fresh state; check each emitted
        output against the torch clip forward on its window. Leaves every state warmed up."""
        expected = torch.stack([self.ref(self.stream[:, :, w:w + N].transpose(1, 2))[:, -1]
                                for w in range(self.stream.shape[-1] - N + 1)], dim=2)
        state = self.enc.init_state(self.params, (1, D))
        self.adapter.clean_state()
        if self.co is not None:
            self.co.clean_state()
        diffs: Dict[str, float] = {}
        outs: Dict[str, List[torch.Tensor]] = {"cofunc step": [], "cofunc.nn step": [], "co step": []}
        for t in range(self.stream.shape[-1]):
            x = self.stream[:, :, t]
            before = state
            y, state = self.enc.step(self.params, state, x)
            if bool(self.enc.valid(state).all()):
                outs["cofunc step"].append(y)
            y = self.adapter.forward_step(x)
            if y is not None:
                outs["cofunc.nn step"].append(y)
            if self.co is not None:
                y = self.co.forward_step(x)
                if y is not None:
                    outs["co step"].append(y)
        for name, ys in outs.items():
            if name == "co step" and self.co is None:
                continue
            got = torch.stack(ys, dim=2)
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")
            diffs[name] = float((got - expected).abs().max())
        lower = self.lower_bound(before)  # the last token's step, from the state before it
        torch.testing.assert_close(lower, expected[:, :, -1], atol=ATOL, rtol=RTOL)
        diffs["lower bound"] = float((lower - expected[:, :, -1]).abs().max())
        self.state = state
        return diffs

    def lower_bound(self, state) -> torch.Tensor:
        """The exact step's arithmetic as bare torch calls, from the cofunc state's buffers
        (the state is read, not updated)."""
        if self.num_layers == 1:
            attn = state[0][0].attn
            return _one_token_layer(self.ref.layers[0], self.token, attn.keys, attn.values)
        l0 = self.ref.layers[0]
        retro = state[0][0]
        a = l0.self_attn
        qkv = F.linear(self.token, a.in_proj_weight, a.in_proj_bias).view(1, 3, HEADS, 1, HEAD_DIM)
        q = torch.cat([retro.attn.queries, qkv[:, 0]], 2)
        k = torch.cat([retro.attn.keys, qkv[:, 1]], 2)
        v = torch.cat([retro.attn.values, qkv[:, 2]], 2)
        o = torch.softmax((q / math.sqrt(HEAD_DIM)) @ k.transpose(-1, -2), -1) @ v  # (1, H, N, d)
        o = F.linear(o.transpose(1, 2).reshape(1, N, D), a.out_proj.weight, a.out_proj.bias)
        window = torch.cat([retro.inputs, self.token.unsqueeze(1)], 1)
        h = F.layer_norm(window + o, (D,), l0.norm1.weight, l0.norm1.bias)
        ff = F.linear(F.relu(F.linear(h, l0.linear1.weight, l0.linear1.bias)), l0.linear2.weight, l0.linear2.bias)
        h = F.layer_norm(h + ff, (D,), l0.norm2.weight, l0.norm2.bias)  # (1, N, D): layer 1's window
        l1 = self.ref.layers[1]
        return _one_token_layer(l1, h[:, -1], h, None, full_window=True)

    def candidates(self, compile_step: bool) -> Dict[str, Callable[[], Any]]:
        enc, params, box = self.enc, self.params, [self.state]

        def step():
            box[0] = enc.step(params, box[0], self.token)[1]

        fns = {
            "clip": lambda: self.ref(self.window),
            "lower bound": lambda: self.lower_bound(self.state),
            "cofunc step": step,
            "cofunc.nn step": lambda: self.adapter.forward_step(self.token),
        }
        if compile_step:
            compiled = torch.compile(enc.step, fullgraph=True)
            cbox = [self.state]
            start = time.perf_counter()
            y, _ = compiled(params, cbox[0], self.token)
            self.compile_seconds = time.perf_counter() - start
            want, _ = enc.step(params, cbox[0], self.token)
            torch.testing.assert_close(y, want, atol=ATOL, rtol=RTOL)

            def compiled_step():
                cbox[0] = compiled(params, cbox[0], self.token)[1]

            fns["cofunc step, compiled"] = compiled_step
        if self.co is not None:
            fns["co step"] = lambda: self.co.forward_step(self.token)
        if self.num_layers == 1:
            fns["cofunc step, 64 streams"] = self.streams_candidate()
        return fns

    def streams_candidate(self) -> Callable[[], Any]:
        """One tick of `STREAMS` independent streams (one batched step), checked first: after
        N + 8 tokens each stream's output equals the clip forward on its own window."""
        g = torch.Generator().manual_seed(11)
        streams = torch.randn(STREAMS, D, N + 8, generator=g)
        state = self.enc.init_state(self.params, (STREAMS, D))
        for t in range(streams.shape[-1]):
            y, state = self.enc.step(self.params, state, streams[:, :, t])
        want = self.ref(streams[:, :, -N:].transpose(1, 2))[:, -1]
        torch.testing.assert_close(y, want, atol=ATOL, rtol=RTOL)
        self.streams_diff = float((y - want).abs().max())
        self.streams_state = state
        tokens, box = streams[:, :, -1], [state]

        def tick():
            box[0] = self.enc.step(self.params, box[0], tokens)[1]

        return tick


def _one_token_layer(layer, token, keys, values, full_window: bool = False):
    """One encoder layer for one query token. ``full_window=False``: ``keys``/``values`` are the
    N - 1 buffered projected keys/values ``(1, H, N - 1, d)`` and the token's own are appended;
    ``full_window=True``: ``keys`` is the window of N (unprojected) tokens ``(1, N, D)``, attended
    without projecting them (u = W_k^T q per head, W_v applied to the weighted token sum)."""
    a = layer.self_attn
    if full_window:
        w, bias = a.in_proj_weight, a.in_proj_bias
        q = F.linear(token, w[:D], bias[:D]).view(1, HEADS, HEAD_DIM)
        u = torch.einsum("bhd,hdc->bhc", q, w[D:2 * D].view(HEADS, HEAD_DIM, D))
        scores = (keys @ u.transpose(-1, -2) + (q * bias[D:2 * D].view(HEADS, HEAD_DIM)).sum(-1).unsqueeze(-2))
        weights = torch.softmax(scores / math.sqrt(HEAD_DIM), dim=-2)  # (1, N, H)
        mixed = weights.transpose(-1, -2) @ keys  # (1, H, D)
        o = torch.einsum("bhc,hdc->bhd", mixed, w[2 * D:].view(HEADS, HEAD_DIM, D)) + bias[2 * D:].view(HEADS, HEAD_DIM)
    else:
        qkv = F.linear(token, a.in_proj_weight, a.in_proj_bias).view(1, 3, HEADS, 1, HEAD_DIM)
        q = qkv[:, 0]
        k, v = torch.cat([keys, qkv[:, 1]], 2), torch.cat([values, qkv[:, 2]], 2)
        o = torch.softmax((q / math.sqrt(HEAD_DIM)) @ k.transpose(-1, -2), -1) @ v
    o = F.linear(o.reshape(1, D), a.out_proj.weight, a.out_proj.bias)
    h = F.layer_norm(token + o, (D,), layer.norm1.weight, layer.norm1.bias)
    ff = F.linear(F.relu(F.linear(h, layer.linear1.weight, layer.linear1.bias)), layer.linear2.weight, layer.linear2.bias)
    return F.layer_norm(h + ff, (D,), layer.norm2.weight, layer.norm2.bias)


def _load_co(co_encoder, ref: nn.TransformerEncoder) -> None:
    """Copy the torch weights into co's encoder, matching keys by their torch suffix (co nests
    its modules differently; its own ``build_from`` does the same by sorted suffixes)."""
    theirs = co.TransformerEncoder.build_from(ref, sequence_len=N)
    co_encoder.load_state_dict(theirs.state_dict())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (few rounds) to check that it works")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 25; quick: 4)")
    parser.add_argument("--inner", type=int, default=None, help="calls per candidate per round (default 3; quick: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(step, fullgraph=True)")
    parser.add_argument("--max-other-cores", type=float, default=None, metavar="CORES",
                        help="discard and repeat rounds during which other processes kept more than CORES cores "
                        "busy (default: keep all)")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or process CPU time (contention-proof with --threads 1)")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.rounds = args.rounds or (4 if args.quick else 25)
    args.inner = args.inner or (1 if args.quick else 3)
    if args.max_other_cores is None:
        args.max_other_cores = float("inf")
    return args


NAMES = {
    2: {"clip": "nn.TransformerEncoder clip, 64 tokens (2 layers)", "lower bound": "lower bound: bare torch ops (2 layers)",
        "cofunc step": "cofunc step (2 layers)", "cofunc.nn step": "cofunc.nn forward_step (2 layers)",
        "cofunc step, compiled": "cofunc step, compiled (2 layers)", "co step": "co forward_step (2 layers)"},
    1: {"clip": "nn.TransformerEncoder clip, 64 tokens (1 layer)", "lower bound": "lower bound: bare torch ops (1 layer)",
        "cofunc step": "cofunc step (1 layer)", "cofunc.nn step": "cofunc.nn forward_step (1 layer)",
        "cofunc step, compiled": "cofunc step, compiled (1 layer)",
        "cofunc step, 64 streams": f"cofunc step, {STREAMS} streams, per tick (1 layer)"},
}


def color(key: str) -> str:
    if key in ("clip", "lower bound"):
        return "#9e9e9e"
    return "#ff7f0e" if key == "co step" else "#1f77b4"


def report(args, timings: BenchResult, keys: Dict[str, tuple], diffs: Dict[int, Dict[str, float]],
           compile_seconds: Dict[int, float], rates, nbytes: Dict[str, int]) -> str:
    rows = []
    for name, t in timings.items():
        depth, key = keys[name]
        flop = FLOP[f"clip{depth}"] if key == "clip" else FLOP[f"step{depth}"] if key != "co step" else None
        touched = nbytes[f"clip{depth}"] if key == "clip" else nbytes[f"step{depth}"]
        if key == "cofunc step, 64 streams":
            flop, touched = flop * STREAMS, nbytes["streams"]
        clip = timings[NAMES[depth]["clip"]]
        rows.append([name, fmt_ms(t.median), f"{fmt_ms(t.p25)} - {fmt_ms(t.p75)}",
                     f"{flop / 1e6:.0f}" if flop else "-", f"{flop / t.median / 1e9:.1f}" if flop else "-",
                     f"{touched / 1e6:.1f}", *(rates.cells(flop / 2, touched, t) if flop else ["-", "-"]),
                     str(Ratio.of(clip, t))])
    header = ["candidate", "median (ms)", "p25 - p75 (ms)", "MFLOP per call", "GFLOP/s", "MB touched", "bound (ms)",
              "x of the bound", "clip forward / this"]
    n2, n1 = NAMES[2], NAMES[1]
    tick = timings[n1["cofunc step, 64 streams"]]
    per_stream = Timing(tick.samples / STREAMS)
    goals = [
        Goal("2 layers: clip forward / cofunc step", Ratio.of(timings[n2["clip"]], timings[n2["cofunc step"]]), 2.0, at_most=False),
        Goal("2 layers: co step / cofunc step", Ratio.of(timings[n2["co step"]], timings[n2["cofunc step"]]), 4.0, at_most=False),
        Goal("1 layer: clip forward / cofunc step", Ratio.of(timings[n1["clip"]], timings[n1["cofunc step"]]), 20.0, at_most=False),
        Goal(f"1 layer, {STREAMS} streams: clip forward per prediction / step per stream (tick / {STREAMS})",
             Ratio.of(timings[n1["clip"]], per_stream), 20.0, at_most=False),
    ]
    context = [
        Goal("2 layers: clip forward / lower bound (cofunc's arithmetic in bare ops)", Ratio.of(timings[n2["clip"]], timings[n2["lower bound"]]), 2.0, at_most=False),
        Goal("1 layer: clip forward / lower bound (the one-token products any exact step needs)", Ratio.of(timings[n1["clip"]], timings[n1["lower bound"]]), 20.0, at_most=False),
        Goal("2 layers: cofunc step / lower bound (framework overhead)", Ratio.of(timings[n2["cofunc step"]], timings[n2["lower bound"]]), 1.1),
        Goal("1 layer: cofunc step / lower bound (framework overhead)", Ratio.of(timings[n1["cofunc step"]], timings[n1["lower bound"]]), 1.1),
    ]
    if args.compile:
        goals += [
            Goal("2 layers: clip forward / compiled cofunc step", Ratio.of(timings[n2["clip"]], timings[n2["cofunc step, compiled"]]), 2.0, at_most=False),
            Goal("1 layer: clip forward / compiled cofunc step", Ratio.of(timings[n1["clip"]], timings[n1["cofunc step, compiled"]]), 20.0, at_most=False),
        ]
    clock = "wall" if args.clock == "wall" else "process CPU"
    weight_mb = 4 * (4 * D * D + 2 * D * FF) / 1e6
    notes = [
        f"d_model {D}, {HEADS} heads, dim_feedforward {FF}, window {N} tokens, batch 1, float32, post-norm relu, "
        "eval, torch.no_grad(). FLOPs count 2 per multiply-add (projections, attention, feed-forward; norms and "
        f"softmax ignored): the 2-layer step does {FLOP['step2'] / 1e6:.0f} MFLOP against the clip's "
        f"{FLOP['clip2'] / 1e6:.0f} ({FLOP['clip2'] / FLOP['step2']:.2f}x), the 1-layer step {FLOP['step1'] / 1e6:.1f} "
        f"against {FLOP['clip1'] / 1e6:.0f} ({FLOP['clip1'] / FLOP['step1']:.0f}x).",
        f"A step at batch 1 reads every weight of a layer once for a single token ({weight_mb:.1f} MB per layer in "
        "float32): those one-token products are matrix-vector products, bound by memory bandwidth, while the "
        "clip's are matrix-matrix products bound by compute. The `lower bound` rows time the step's arithmetic "
        "in bare torch calls (no state update, no checks): `cofunc step / lower bound` is cofunc's overhead, and "
        "for one layer (every weight times the new token, nothing else) `clip / lower bound` is the best ratio any "
        "exact continual step can reach on this machine.",
        f"Method: every candidate warmed up first, then {args.rounds} rounds x {args.inner} calls each, round-robin "
        f"with the order rotated every round; a sample is the mean {clock} time per call over one round. Ratios are "
        "of medians; their p25-p75 is over the ratios paired round by round.",
        "Outputs checked before timing, from a fresh state over 72 tokens, every emitted step output against "
        f"nn.TransformerEncoder on its window (atol {ATOL:g}, rtol {RTOL:g}); largest |diff|: "
        + "; ".join(f"{d} layer(s): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs[d].items()) for d in sorted(diffs))
        + ". co's 2-layer encoder is correct only for its first N - 1 emitted steps (its `RetroactiveUnity` "
        "residual wraps its index modulo N - 1 instead of N); its timing does not depend on that.",
        "The functional step carries its state from call to call; the adapters' and co's stored states advance.",
        f"Throughput: `cofunc step, {STREAMS} streams` is one batched step of {STREAMS} independent streams (a tick); "
        f"per stream it costs {fmt_ms(per_stream.median)} ms. Checked first: after {N + 8} tokens every stream's "
        f"output equals the clip forward on its own window (largest |diff| {diffs[1].get('streams', float('nan')):.1e}). "
        "With many streams the weights are read once per tick, so the one-token products become matrix products.",
        "MB touched: the weights and the state a call reads (the clip: the weights and the window). " + rates.note(),
    ]
    if compile_seconds:
        notes.append("torch.compile(step, fullgraph=True) first-call time: "
                     + ", ".join(f"{d} layer(s) {s:.1f} s" for d, s in sorted(compile_seconds.items())) + ".")
    notes.append("Command: `python -m benchmarks.bench_transformer " + " ".join(args.argv) + "`.")
    notes += environment(args.threads)
    notes.append(f"Shared machine: in the timed rounds other processes kept {timings.other_cores:.2f} of the "
                 f"{os.cpu_count()} cores busy on average ({timings.rounds_discarded} rounds discarded); load "
                 "inflates medians, and memory-bound candidates (the steps) suffer from other processes' cache and "
                 "memory traffic.")
    if args.quick:
        notes.insert(0, "QUICK RUN (few rounds): indicative only.")
    text = write_table(
        os.path.join(args.out_dir, "transformer.md"), rows, header, notes,
        title="Continual transformer encoder step: cofunc vs co 1.2.4 vs torch.nn" + (" (quick run)" if args.quick else ""),
        extra_tables=[("Goals", GOAL_HEADER, [g.row() for g in goals]),
                      ("Context: what the hardware allows", GOAL_HEADER, [g.row() for g in context])],
    )
    panels = []
    for depth, title in ((2, "2 layers (retroactive + single-output)"), (1, "1 layer (single-output)")):
        names = [n for n in timings if keys[n][0] == depth]
        panels.append(Panel(title, names, [timings[n] for n in names], [color(keys[n][1]) for n in names]))
    bar_plot(os.path.join(args.out_dir, "transformer.png"), panels,
             title=f"Transformer encoder, d={D}, {HEADS} heads, window {N}, batch 1, float32, {args.threads} thread(s) "
             "(median, p25-p75)",
             ylabel="time per call (ms)" if args.clock == "wall" else "process CPU time per call (ms)")
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    fns: Dict[str, Callable[[], Any]] = {}
    keys: Dict[str, tuple] = {}
    diffs: Dict[int, Dict[str, float]] = {}
    compile_seconds: Dict[int, float] = {}
    nbytes: Dict[str, int] = {}
    rates = measure_rates(args.threads)
    with torch.no_grad():
        for depth in (2, 1):
            model = Model(depth, args.seed)
            diffs[depth] = model.check()
            nbytes[f"step{depth}"] = tree_bytes(model.params, model.state)
            nbytes[f"clip{depth}"] = tree_bytes(model.params, model.window)
            for key, fn in model.candidates(args.compile).items():
                fns[NAMES[depth][key]] = fn
                keys[NAMES[depth][key]] = (depth, key)
            if args.compile:
                compile_seconds[depth] = model.compile_seconds
            if depth == 1:
                nbytes["streams"] = tree_bytes(model.params, model.streams_state)
                diffs[1]["streams"] = model.streams_diff
        timings = bench_interleaved(fns, rounds=args.rounds, inner=args.inner, warmup=2 if args.quick else 5,
                                    max_other_cores=args.max_other_cores, max_seconds=args.max_seconds,
                                    clock=args.clock)
    print(report(args, timings, keys, diffs, compile_seconds, rates, nbytes))
    print(f"wrote transformer.md and transformer.png to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
