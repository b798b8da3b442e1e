"""``make demo``: stream a synthetic video through a small continual 3D CNN.

A regular torch.nn 3D CNN is converted with ``cofunc.nn.continual`` (same weights). The demo
checks that the continual step outputs equal the regular network's clip outputs, then compares
the latency of one continual step with recomputing the network's window at every step, which is
what online inference with a regular network costs.

Run: ``python -m cofunc.demo [--frames 48] [--size 64]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import cofunc.nn as cn


class SpatialMean(nn.Module):
    """Average over the two trailing (spatial) axes: ``(B, C, T, H, W) -> (B, C, T)``."""

    def forward(self, x):
        return x.mean(dim=(-2, -1))


# A per-frame module: registering it is all `continual` needs.
cn.register(SpatialMean, cn.lift_nn_module)


def small_3d_cnn(classes: int = 10) -> nn.Sequential:
    """A stem and three residual-free conv blocks, as a regular torch.nn clip network."""

    def block(c_in, c_out, spatial_stride):
        return [
            nn.Conv3d(c_in, c_out, 3, stride=(1, spatial_stride, spatial_stride), padding=1, bias=False),
            nn.BatchNorm3d(c_out),
            nn.ReLU(),
        ]

    return nn.Sequential(
        nn.Conv3d(3, 24, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
        nn.Conv3d(24, 24, (5, 1, 1), padding=(2, 0, 0), groups=24, bias=False),
        nn.BatchNorm3d(24),
        nn.ReLU(),
        *block(24, 48, 2),
        *block(48, 48, 1),
        *block(48, 96, 2),
        SpatialMean(),
        nn.Conv1d(96, classes, 1),
    )


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


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    regular = small_3d_cnn().eval()
    with torch.no_grad():  # give the batch norms non-trivial statistics
        for m in regular.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    net = cn.continual(regular).eval()
    clip = moving_squares(args.frames, args.size)

    print(f"continual 3D CNN: receptive field {net.receptive_field} frames, delay {net.delay}, "
          f"padding {net.padding[0]}, stride {net.stride[0]}")
    with torch.no_grad():
        expected = regular(clip)
        outputs = [net.forward_step(clip[:, :, t]) for t in range(args.frames)]
        empty = sum(o is None for o in outputs)
        stepped = torch.stack([o for o in outputs if o is not None], dim=2)
        flushed = net.forward_steps(torch.zeros(1, 3, 0, args.size, args.size), pad_end=True)
        stepped_all = torch.cat([stepped, flushed], dim=2)
    error = (stepped_all - expected).abs().max().item()
    ok = stepped_all.shape == expected.shape and error < 1e-4
    print(f"{args.frames} steps: {empty} empty while warming up, {stepped.shape[2]} outputs, "
          f"{flushed.shape[2]} more from end padding; max |step - clip| = {error:.2e} "
          f"({'equal' if ok else 'MISMATCH'})")

    window = clip[:, :, -net.receptive_field:]
    frame = clip[:, :, -1]
    with torch.no_grad():
        for _ in range(5):  # warm every shape (oneDNN's first calls are slow)
            net.forward_step(frame)
            regular(window)
        step_ms = _median_ms(lambda: net.forward_step(frame), args.repeats)
        window_ms = _median_ms(lambda: regular(window), args.repeats)
    print(f"per-step latency: continual {step_ms:.2f} ms, regular network on its "
          f"{net.receptive_field}-frame window {window_ms:.2f} ms ({window_ms / step_ms:.1f}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
