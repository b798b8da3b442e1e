"""Benchmark: the cost of `cofunc.StreamRunner` over the bare batched step, and video in.

1. Runner overhead: 64 streams through the network of ``bench_streams.py`` (a 10-block residual
   3D CNN, 32 channels, 14x14 frames), every stream past its warm-up. Per tick:

   - bare batched step: ``layer.step(params, state, frames)`` on the stacked frames (64, 3, 14, 14);
   - runner: ``runner.push_many(ids, frames)`` (64 checked frames queued) and ``runner.tick()``
     (stacking the queued frames, the same batched step, outputs matched back to 64 ids).

   Goal: the runner's time per tick at most 1.10x the bare step's (overhead <= 10%).

2. CoX3D-XS (``x3d("XS", se="frame")``, the published continual X3D-XS, random weights) on 16
   synthetic video files (320x240, 30 fps, moving shapes, written with PyAV) as 16 concurrent
   streams (`cofunc.video.VideoFeed`): decoded lazily, sampled to 2.5 fps, preprocessed to
   182x182. Reported: frames stepped per second of wall time and the share of the time spent
   decoding and preprocessing.

Both tables show the physical bound of a tick (`_common.MachineRates`): its multiply-adds
(``cofunc.count_macs``) at the measured matrix-product rate, or the bytes of weights, state and
frames it must read at the measured memory bandwidth, and "x of the bound" (time / bound).

Writes ``results/runner.md`` and ``results/runner.png`` (to ``--out-dir``).

Usage: ``python -m benchmarks.bench_runner [--quick] [--threads N] [--out-dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

import cofunc
import cofunc.nn as cn
from benchmarks._common import (
    GOAL_HEADER,
    Goal,
    Panel,
    Ratio,
    Timing,
    bar_plot,
    bench_interleaved,
    environment,
    fmt_ms,
    measure_rates,
    tree_bytes,
    write_table,
)
from benchmarks.bench_streams import SIZE, build
from cofunc.models import x3d
from cofunc.video import VideoFeed, moving_shapes, write_video

HERE = os.path.dirname(os.path.abspath(__file__))


def runner_overhead(streams: int, rounds: int, clock: str):
    module = build(cn)
    layer = module.layer
    params = cofunc.tree_map(torch.Tensor.detach, module.params)
    frames = torch.randn(streams, 3, SIZE, SIZE)
    frame_list = list(frames.unbind(0))
    ids = [f"camera-{i}" for i in range(streams)]
    runner = cofunc.StreamRunner(module, frame_shape=(3, SIZE, SIZE), min_capacity=streams)
    for i in ids:
        runner.open(i)
    state = {"s": layer.init_state(params, (streams, 3, SIZE, SIZE))}

    def bare():
        y, state["s"] = layer.step(params, state["s"], frames)
        return y

    def through_runner():
        runner.push_many(ids, frame_list)
        return runner.tick()

    with torch.no_grad():
        for _ in range(layer.delay + 2):  # past the warm-up: every tick emits
            bare()
            outputs = through_runner()
        assert len(outputs) == streams
        y = bare()
        outputs = through_runner()
        # Same state, same frames: the runner's outputs are the bare step's, stream by stream.
        for k, o in enumerate(outputs):
            assert torch.equal(o.value, y[k]), "runner and bare step disagree"
        tick_macs, _ = cofunc.count_macs(layer.step, params, state["s"], frames)
        tick_bytes = tree_bytes(params, state["s"], frames)
        result = bench_interleaved({"bare batched step": bare, "runner (push_many + tick)": through_runner},
                                   rounds=rounds, inner=3, warmup=2, clock=clock)
    return result, runner.metrics(), layer.delay, tick_macs, tick_bytes


def stream_work(net, frame_shape):
    """``(MACs, state bytes)`` of one warm stream's step of ``net`` (batch 1; the state warmed up
    with ``steps`` over ``delay + 1`` frames, so every layer runs), and the weights' bytes."""
    layer, params = net.layer, cofunc.tree_map(torch.Tensor.detach, net.params)
    with torch.no_grad():
        state = layer.init_state(params, (1, *frame_shape))
        _, state = layer.steps(params, state, torch.randn(1, frame_shape[0], net.delay + 1, *frame_shape[1:]))
        frame = torch.randn(1, *frame_shape)
        macs, _ = cofunc.count_macs(layer.step, params, state, frame)
    return macs, tree_bytes(state, frame), tree_bytes(params)


def video_throughput(videos: int, seconds: float, threads: int):
    net = x3d("XS", se="frame").eval()
    pre = net.preprocessing
    with tempfile.TemporaryDirectory() as d:
        paths = []
        start = time.perf_counter()
        for i in range(videos):
            path = os.path.join(d, f"video{i:02d}.mp4")
            write_video(path, moving_shapes(int(seconds * 30), 240, 320, seed=i), fps=30)
            paths.append(path)
        written = time.perf_counter() - start
        runner = cofunc.StreamRunner(net)
        feed = VideoFeed(runner, paths, preprocessing=pre)
        start = time.perf_counter()
        predictions = 0
        for outputs in feed:
            predictions += len(outputs)
        wall = time.perf_counter() - start
    return dict(
        videos=videos, seconds=seconds, wall=wall, frames=feed.frames, ticks=feed.ticks, predictions=predictions,
        decode=feed.decode_seconds, step=feed.tick_seconds, written=written, delay=net.delay, metrics=runner.metrics(),
        frame_shape=pre.frame_shape, frame_rate=pre.frame_rate, work=stream_work(net, pre.frame_shape),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds and short videos, for a smoke test")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--video-seconds", type=float, default=None, help="length of each video (default 20 s)")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"), help="where runner.md and runner.png go")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rates = measure_rates(args.threads)
    torch.manual_seed(0)
    rounds = 3 if args.quick else 15
    seconds = args.video_seconds or (14.0 if args.quick else 20.0)

    # With one thread, CPU time is the cost of the work, immune to being descheduled by other
    # processes (a shared machine); with more threads it would add the threads' spin-waiting.
    clock = "cpu" if args.threads == 1 else "wall"
    result, metrics, delay, tick_macs, tick_bytes = runner_overhead(args.streams, rounds, clock)
    bare, run = result["bare batched step"], result["runner (push_many + tick)"]
    n = args.streams
    rows = [[name, fmt_ms(t.median), f"{fmt_ms(t.p25)} - {fmt_ms(t.p75)}", f"{n / t.median:.0f}",
             *rates.cells(tick_macs, tick_bytes, t)] for name, t in result.items()]
    goals = [Goal("runner / bare batched step, time per tick", Ratio.of(run, bare), 1.10)]

    video = video_throughput(args.videos, seconds, args.threads)
    # The bound of the video run's mean tick: its frames' steps (MACs and states) and the weights once.
    frame_macs, frame_bytes, weight_bytes = video["work"]
    per_tick = video["frames"] / max(video["ticks"], 1)
    video_tick = Timing(np.asarray([video["step"] / max(video["ticks"], 1)]))
    vrows = [[
        f"CoX3D-XS, {video['videos']} files x {video['seconds']:g} s (320x240, 30 fps)",
        f"{video['frames']}", f"{video['frames'] / video['wall']:.1f}", f"{video['predictions'] / video['wall']:.1f}",
        f"{100 * video['decode'] / video['wall']:.1f}%", f"{100 * video['step'] / video['wall']:.1f}%",
        f"{video['metrics']['tick_ms_p50']:.0f} / {video['metrics']['tick_ms_p99']:.0f}",
        fmt_ms(video_tick.median), *rates.cells(frame_macs * per_tick, weight_bytes + frame_bytes * per_tick, video_tick),
    ]]
    notes = [
        f"Runner overhead: {n} streams, all past their warm-up (delay {delay}); network: bench_streams.py's "
        f"10-block residual 3D CNN on {SIZE}x{SIZE} frames; float32, eager, torch.no_grad(). The runner's outputs were "
        f"checked equal (bit for bit) to the bare step's before timing.",
        f"Clock: {'CPU time of this process (1 thread)' if clock == 'cpu' else 'wall time'}. "
        f"Interleaved rounds: {result.rounds_kept} (3 ticks per candidate per round); other processes kept "
        f"{result.other_cores:.2f} cores busy on average.",
        f"Video: {video['videos']} files decoded with PyAV, sampled to {video['frame_rate']:g} fps (every 12th frame) "
        f"and preprocessed to {video['frame_shape']}; stepped as {video['videos']} concurrent streams in "
        f"{video['ticks']} ticks; delay {video['delay']} frames, so {video['predictions']} predictions. Decode share = "
        f"time in decoding + preprocessing (all 30 fps frames are decoded) / wall time. Random weights.",
        f"Bound of a runner-overhead tick: {tick_macs / 1e9:.3f} GMACs and {tick_bytes / 1e6:.1f} MB of weights, "
        f"state and frames (the bare step's; the runner does the same step, its checking, stacking and matching "
        f"have no arithmetic bound). Bound of a video tick: {per_tick:.1f} frames of {frame_macs / 1e9:.3f} GMACs "
        f"each, {weight_bytes / 1e6:.1f} MB of weights and {frame_bytes / 1e6:.2f} MB of state and frame per "
        f"stream; measured = the wall time stepping (decode excluded) / {video['ticks']} ticks. " + rates.note(),
    ] + environment(args.threads)
    text = write_table(
        os.path.join(args.out_dir, "runner.md"), rows,
        ["candidate", "median per tick (ms)", "p25 - p75 (ms)", "frames per second", "bound (ms)", "x of the bound"],
        notes,
        title=f"StreamRunner: overhead on {n} streams, and video files in",
        extra_tables=[("Goals", GOAL_HEADER, [g.row() for g in goals]),
                      ("Video files as streams", ["run", "frames stepped", "frames per second", "predictions per second",
                                                  "decode share", "step share", "tick p50 / p99 (ms)",
                                                  "step time per tick (ms)", "bound (ms)", "x of the bound"], vrows)])
    bar_plot(os.path.join(args.out_dir, "runner.png"),
             [Panel(f"time per tick, {n} streams", list(result), list(result.values()))],
             title="StreamRunner against the bare batched step")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
