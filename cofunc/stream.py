"""Stream video files through a continual zoo model: per-frame top-k predictions and a plot.

Usage::

    python -m cofunc.stream VIDEO [VIDEO ...] --model x3d_s [--weights FILE] [--top 5]
        [--out predictions.jsonl] [--plot probabilities.png] [--labels FILE] [--fold-batch-norms]

Every file becomes one stream of a `cofunc.StreamRunner`; its frames are decoded lazily with
PyAV, sampled to the model's frame rate and preprocessed as the published model was (see
`cofunc.models.VideoPreprocessing`), and the streams are stepped together, one batched step per
tick. A continual model emits nothing while it warms up (``delay`` frames), then one score
vector per frame. ``--out`` writes one JSON line per prediction: ``video``, ``frame`` (index of
the sampled frame), ``time`` (seconds into the video), ``top`` (``[[class, probability], ...]``;
class names with ``--labels``, a file of one name per line). ``--plot`` draws the probabilities
of each video's most likely classes over time.

Models: x3d_xs, x3d_s, x3d_m, x3d_l (CoX3D: frame-scope squeeze-and-excitation, the published
continual X3D), slow_r50 (CoSlow), i3d_r50 (CoI3D), all with a softmax head. ``--weights``
takes pytorchvideo's checkpoint of the same model (``torch.load``-able with ``weights_only``,
a ``model_state`` dict inside is used) or a safetensors file; without it the weights are random
and the command says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

import torch

import cofunc
from cofunc import models
from cofunc.nn import fold_batch_norms
from cofunc.video import VideoFeed, VideoFrames

MODELS = {
    "x3d_xs": lambda: models.x3d("XS", se="frame"),
    "x3d_s": lambda: models.x3d("S", se="frame"),
    "x3d_m": lambda: models.x3d("M", se="frame"),
    "x3d_l": lambda: models.x3d("L", se="frame"),
    "slow_r50": lambda: models.slow_r50(head_activation="softmax"),
    "i3d_r50": lambda: models.i3d_r50(head_activation="softmax"),
}


def load_weights(net: torch.nn.Module, path: str) -> None:
    """Load a state dict from ``path`` (safetensors, or torch with ``weights_only=True``)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model_state", "state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
    net.load_state_dict(state)


def _labels(path: Optional[str], n: int) -> List[str]:
    if path is None:
        return [str(i) for i in range(n)]
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != n:
        raise SystemExit(f"--labels: {path} has {len(names)} names, the model has {n} classes")
    return names


def plot_probabilities(path: str, series: Dict[str, List], frame_rate: float, labels: List[str], top: int) -> None:
    """One panel per video: the probabilities of its ``top`` most likely classes over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(series)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.2 * n + 0.6), squeeze=False, sharex=True)
    for ax, (video, (frames, probs)) in zip(axes[:, 0], series.items()):
        ax.set_title(os.path.basename(video), fontsize=9)
        if not frames:
            ax.text(0.5, 0.5, "no prediction (shorter than the warm-up)", ha="center", va="center", transform=ax.transAxes)
            continue
        p = torch.stack(probs)  # (T, K)
        t = [f / frame_rate for f in frames]
        for k in p.mean(0).topk(min(top, p.shape[1])).indices.tolist():
            ax.plot(t, p[:, k].tolist(), label=labels[k])
        ax.set_ylabel("probability")
        ax.legend(fontsize=7, loc="upper right", ncol=min(top, 5))
    axes[-1, 0].set_xlabel("time in the video (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cofunc.stream", description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (any format FFmpeg reads)")
    parser.add_argument("--model", default="x3d_s", choices=sorted(MODELS))
    parser.add_argument("--weights", help="a state dict for the model (pytorchvideo's checkpoint or safetensors)")
    parser.add_argument("--top", type=int, default=5, help="classes per prediction (and per plot panel)")
    parser.add_argument("--out", help="write predictions as JSON lines here")
    parser.add_argument("--plot", help="plot class probabilities over time to this image")
    parser.add_argument("--labels", help="class names, one per line")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--compile", action="store_true", help="compile the batched step (torch.compile)")
    parser.add_argument("--fold-batch-norms", action="store_true",
                        help="fold the batch norms into the convolutions before them (cofunc.nn.fold_batch_norms): "
                        "faster steps, the same predictions up to float rounding")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for video in args.videos:
        if not os.path.exists(video):
            parser.error(f"no such file: {video}")

    net = MODELS[args.model]().eval()
    if args.weights:
        load_weights(net, args.weights)
        print(f"{args.model}: weights from {args.weights}", file=sys.stderr)
    else:
        print(f"{args.model}: no --weights given, running RANDOM weights (the predictions mean nothing)", file=sys.stderr)
    if args.fold_batch_norms:
        net = fold_batch_norms(net)
    pre = net.preprocessing
    num_classes = net.config["num_classes"]
    labels = _labels(args.labels, num_classes)
    runner = cofunc.StreamRunner(net, compile=args.compile)
    try:
        sources = {v: VideoFrames(v, pre) for v in args.videos}
    except (cofunc.CofuncError, FileNotFoundError) as error:
        parser.error(str(error))
    print(f"{args.model}: {len(sources)} stream(s), frames {pre.frame_shape} at {pre.frame_rate:g} fps, "
          f"{net.delay} frames of warm-up", file=sys.stderr)
    feed = VideoFeed(runner, sources)

    total = sum(s.expected_frames for s in sources.values()) or None
    bar = None
    if not args.no_progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="frame", desc=args.model, file=sys.stderr)
        except ImportError:  # pragma: no cover - tqdm is in the video extra
            bar = None
    out = open(args.out, "w") if args.out else None
    series: Dict[str, List] = {v: ([], []) for v in args.videos}
    start = time.perf_counter()
    try:
        before = 0
        for outputs in feed:
            for o in outputs:
                probs = o.value.float()
                series[o.stream][0].append(o.frame)
                series[o.stream][1].append(probs)
                if out is not None:
                    p, k = probs.topk(min(args.top, num_classes))
                    out.write(json.dumps({"video": o.stream, "frame": o.frame, "time": round(o.frame / pre.frame_rate, 4),
                                          "top": [[labels[c], round(float(q), 6)] for c, q in zip(k.tolist(), p.tolist())]})
                              + "\n")
            if bar is not None:
                bar.update(feed.frames - before)
                bar.set_postfix(streams=len(runner), refresh=False)
            before = feed.frames
    finally:
        if bar is not None:
            bar.close()
        if out is not None:
            out.close()
    seconds = time.perf_counter() - start
    m = runner.metrics()
    print(f"{feed.frames} frames in {seconds:.1f} s ({feed.frames / max(seconds, 1e-9):.1f} fps; decoding "
          f"{100 * feed.decode_seconds / max(seconds, 1e-9):.0f}% of the time); tick p50 {m['tick_ms_p50']:.1f} ms, "
          f"p99 {m['tick_ms_p99']:.1f} ms; {sum(len(f) for f, _ in series.values())} predictions", file=sys.stderr)
    for video, (frames, probs) in series.items():
        if probs:
            p, k = probs[-1].topk(min(args.top, num_classes))
            best = ", ".join(f"{labels[c]} {q:.3f}" for c, q in zip(k.tolist(), p.tolist()))
            print(f"{video}: last prediction (frame {frames[-1]}): {best}")
        else:
            print(f"{video}: no prediction (fewer sampled frames than the {net.delay} of warm-up)")
    if args.plot:
        plot_probabilities(args.plot, series, pre.frame_rate, labels, args.top)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
