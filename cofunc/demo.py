"""``make demo``: stream a synthetic video through CoX3D-S, the continual X3D-S.

A video of coloured squares bouncing around (``moving_squares``) goes frame by frame through
`cofunc.models.x3d` ("S": 13-frame clips of 160x160). The networks are randomly initialised
(no weights are downloaded; pytorchvideo's X3D-S weights would load unchanged with
``load_state_dict``), with random batch-norm statistics so that every residual branch counts.
The demo

1. checks the exact mode (temporal padding kept, clip-scope squeeze-and-excitation): stepping a
   13-frame clip from a fresh state with ``pad_end=True`` returns the regular X3D-S output;
2. streams the video frame by frame through the published CoX3D-S (frame-scope
   squeeze-and-excitation) and checks that every step's output equals that network's own clip
   ``forward`` (nothing for the first ``delay`` steps, then one score vector per frame);
3. compares, per prediction, the continual step with the regular X3D-S recomputing its 13-frame
   window at every frame: MACs (`cofunc.profile`, `cofunc.count_macs`; FLOPs = 2 x MACs) and
   latency (median wall time, batch 1).

Run: ``python -m cofunc.demo [--frames 48] [--size 160] [--min-time 1.0] [--threads 1]``. The
default is the published frame size; with one thread it takes about 15-30 s on a small CPU.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils import benchmark

from cofunc import count_macs, profile
from cofunc.models import x3d

CLIP = 13  # X3D-S's clip length
CLASSES = 400
TOL = 1e-4  # max |diff| relative to the largest |score| (float32, ~100 layers deep)


def moving_squares(frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """A clip ``(1, 3, frames, size, size)`` of coloured squares bouncing around."""
    g = torch.Generator().manual_seed(seed)
    clip = torch.zeros(1, 3, frames, size, size)
    squares = []
    for _ in range(3):
        side = int(torch.randint(size // 8, size // 4, (1,), generator=g))
        pos = torch.rand(2, generator=g) * (size - side)
        vel = (torch.rand(2, generator=g) - 0.5) * 6
        colour = torch.rand(3, generator=g)
        squares.append([side, pos, vel, colour])
    for t in range(frames):
        for sq in squares:
            side, pos, vel, colour = sq
            y, x = int(pos[0]), int(pos[1])
            clip[0, :, t, y : y + side, x : x + side] = colour[:, None, None]
            pos += vel
            for i in range(2):
                if pos[i] < 0 or pos[i] > size - side:
                    vel[i] = -vel[i]
                    pos[i] = pos[i].clamp(0, size - side)
    return clip + 0.05 * torch.randn(clip.shape, generator=g)


def randomize_norms(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch- and instance-norm statistics and affine params (X3D zero-initialises the
    last norm of every residual branch, which would make the branches vanish), drawn in each
    tensor's dtype; norms without affine params or running statistics get what they have.
    Returns ``net`` in eval mode.

    Example:
        >>> import torch
        >>> from cofunc.demo import randomize_norms
        >>> bn = randomize_norms(torch.nn.BatchNorm1d(3))
        >>> bool((bn.weight != 1).all()), bn.training
        (True, False)
    """
    g = torch.Generator().manual_seed(seed)
    around_one = lambda t: torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5  # noqa: E731 (in [0.5, 1.5))
    around_zero = lambda t: torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.2  # noqa: E731
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                if m.weight is not None:
                    m.weight.copy_(around_one(m.weight))
                    m.bias.copy_(around_zero(m.bias))
                if m.running_mean is not None:
                    m.running_mean.copy_(around_zero(m.running_mean))
                    m.running_var.copy_(around_one(m.running_var))
    return net.eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


def _median_ms(fn, min_time: float) -> float:
    """The median wall time of ``fn()`` in ms (torch.utils.benchmark: blocks of calls for at
    least ``min_time`` seconds, with the current torch thread count)."""
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_time).median * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48, help="frames of the streamed video (more than the delay, 40)")
    parser.add_argument("--size", type=int, default=160, help="frame size (X3D-S: 160)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per candidate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (batch-1 steps are many small ops)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    size = args.size

    # The published CoX3D-S and the regular X3D-S (clip-scope SE: pytorchvideo's X3D-S), same weights.
    continual = randomize_norms(x3d("S", se="frame", crop_size=size, head_activation=None))
    regular = x3d("S", se="clip", crop_size=size, head_activation=None).eval()
    regular.load_state_dict(continual.state_dict())
    if args.frames <= continual.delay:
        parser.error(f"--frames must exceed CoX3D-S's delay ({continual.delay})")
    video = moving_squares(args.frames, size)
    print(f"CoX3D-S on {args.frames} frames of {size}x{size}, random weights, {args.threads} thread(s); "
          f"delay {continual.delay} steps, receptive field {continual.receptive_field} frames")

    ok = True
    with torch.no_grad():
        # 1. Exact mode: a regular 13-frame clip, stepped from a fresh state with pad_end.
        window = video[:, :, :CLIP]
        expected = regular(window)
        regular.clean_state()
        stepped = regular.forward_steps(window, pad_end=True)
        err = relative_error(stepped, expected)
        exact = stepped.shape == expected.shape == (1, CLASSES, 1) and err < TOL
        ok &= exact
        print(f"1. exact mode (clip-scope SE, delay {regular.delay}): stepping a {CLIP}-frame clip with pad_end "
              f"gives the regular X3D-S output: {'equal' if exact else 'MISMATCH'} (max rel. diff {err:.1e})")

        # 2. The published model, frame by frame: its steps emit its own clip forward.
        own = continual(video)  # (1, K, frames - CLIP + 1)
        continual.clean_state()
        start = time.perf_counter()
        outputs = [continual.forward_step(video[:, :, t]) for t in range(args.frames)]
        stream_s = time.perf_counter() - start
        silent = sum(o is None for o in outputs)
        emitted = torch.stack([o for o in outputs if o is not None], dim=2)
        err = relative_error(emitted, own[:, :, : emitted.shape[2]])
        streamed = silent == continual.delay and all(o is not None for o in outputs[silent:]) and err < TOL
        ok &= streamed
        labels = emitted[0].argmax(0).tolist()
        print(f"2. streaming (frame-scope SE): {silent} steps without output, then {emitted.shape[2]} score vectors "
              f"(one per frame, top classes {labels[:8]}{' ...' if len(labels) > 8 else ''}); equal to the "
              f"network's clip forward: {'yes' if streamed else 'MISMATCH'} (max rel. diff {err:.1e}); "
              f"{1e3 * stream_s / args.frames:.1f} ms per frame")

        # 3. Costs per prediction: one continual step vs the regular network on its 13-frame window.
        p = profile(continual.layer, continual.params, (1, 3, size, size), clip_length=CLIP)
        window = video[:, :, -CLIP:]
        regular_macs, _ = count_macs(regular, window)
        frame = video[:, :, -1]
        for _ in range(3):  # warm every shape (oneDNN's first calls are slow)
            continual.forward_step(frame)
            regular(window)
        step_ms = _median_ms(lambda: continual.forward_step(frame), args.min_time)
        window_ms = _median_ms(lambda: regular(window), args.min_time)
    print("3. per prediction (batch 1):")
    rows = [("continual CoX3D-S, one step", p.macs_per_prediction, step_ms),
            (f"regular X3D-S on its {CLIP}-frame window", regular_macs, window_ms)]
    width = max(len(name) for name, _, _ in rows)
    for name, macs, ms in rows:
        print(f"   {name:<{width}}  {macs / 1e9:6.3f} GMACs ({2 * macs / 1e9:6.3f} GFLOPs)  {ms:7.1f} ms")
    print(f"   continual saves {regular_macs / p.macs_per_prediction:.1f}x the MACs and runs "
          f"{window_ms / step_ms:.1f}x faster; its state holds {p.state_bytes / 2**20:.1f} MiB")
    print(f"done in {time.perf_counter() - started:.0f} s: {'all checks passed' if ok else 'CHECKS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
