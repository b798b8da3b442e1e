"""Shared helpers for cofunc's benchmarks: interleaved timing, markdown tables, bar plots.

The machines these run on are shared and noisy, so every benchmark times its candidates side by
side in one process: `bench_interleaved` runs them round-robin (each round a few calls of each,
the order rotated every round), so a burst of load from elsewhere hits every candidate alike,
and reports robust statistics (median, p25, p75) instead of means.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Timing:
    """Per-call times of one candidate, in seconds: one sample per round (``(rounds,)``)."""

    samples: np.ndarray

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def p25(self) -> float:
        return float(np.percentile(self.samples, 25))

    @property
    def p75(self) -> float:
        return float(np.percentile(self.samples, 75))


def warm_up(fns: Mapping[str, Callable[[], object]], calls: int = 5) -> None:
    """Call every candidate ``calls`` times (oneDNN's first calls on a new shape are slow)."""
    for fn in fns.values():
        for _ in range(calls):
            fn()


def bench_interleaved(
    fns: Mapping[str, Callable[[], object]], rounds: int = 30, inner: int = 5, warmup: int = 5
) -> Dict[str, Timing]:
    """Time zero-argument callables side by side.

    Each of ``rounds`` rounds calls every candidate ``inner`` times in a row and records the mean
    time per call, so each candidate gets ``rounds`` samples. The candidate order rotates by one
    every round, so no candidate always runs right after the same neighbour. ``warmup`` calls of
    each candidate come first and are not recorded.

    Returns ``{name: Timing}`` in the order of ``fns``.
    """
    names = list(fns)
    if not names:
        return {}
    warm_up(fns, warmup)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            start = clock()
            for _ in range(inner):
                fn()
            samples[name].append((clock() - start) / inner)
    return {name: Timing(np.asarray(samples[name])) for name in names}


def fmt_ms(seconds: float) -> str:
    """A duration in milliseconds with three significant-ish decimals."""
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}"


def environment(threads: int) -> List[str]:
    """One-line facts about the machine and the libraries, for the notes under a table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import continual

        co_version = continual.__version__
    except Exception:  # noqa: BLE001 (co is optional for benchmarks that do not use it)
        co_version = "not installed"
    return [
        f"Date: {datetime.date.today().isoformat()}; torch {torch.__version__}; continual-inference {co_version}; "
        f"Python {platform.python_version()}.",
        f"CPU: {cpu}, {os.cpu_count()} logical cores; torch threads: {threads}.",
    ]


def write_table(
    path: str,
    rows: Sequence[Sequence[object]],
    header: Sequence[str],
    notes: Sequence[str] = (),
    title: Optional[str] = None,
) -> str:
    """Write a markdown table (and optional title and notes, one paragraph line each) to ``path``.

    Returns the markdown text, so the caller can also print it.
    """
    lines = []
    if title:
        lines += [f"# {title}", ""]
    lines.append("| " + " | ".join(str(h) for h in header) + " |")
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"write_table: a row has {len(row)} cells but the header has {len(header)}: {row}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    if notes:
        lines.append("")
        for note in notes:
            lines.append(f"- {note}")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def bar_plot(
    path: str,
    labels: Sequence[str],
    timings: Sequence[Timing],
    title: str = "",
    ylabel: str = "time per call (ms)",
    colors: Optional[Sequence[str]] = None,
    groups: Optional[Sequence[int]] = None,
) -> None:
    """A bar chart of medians with p25-p75 whiskers, saved to ``path`` (PNG, Agg backend).

    ``groups`` (one int per bar) puts bars that belong together side by side and leaves a gap
    between groups; ``colors`` gives one matplotlib colour per bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    if len(timings) != n:
        raise ValueError(f"bar_plot: {n} labels but {len(timings)} timings")
    groups = list(groups) if groups is not None else [0] * n
    xs, x = [], 0.0
    for i, g in enumerate(groups):
        if i and g != groups[i - 1]:
            x += 0.6  # gap between groups
        xs.append(x)
        x += 1.0
    medians = np.array([t.median for t in timings]) * 1e3
    lo = medians - np.array([t.p25 for t in timings]) * 1e3
    hi = np.array([t.p75 for t in timings]) * 1e3 - medians
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * n + 1.5), 4.2))
    bars = ax.bar(xs, medians, yerr=[lo, hi], capsize=4, color=colors, edgecolor="black", linewidth=0.6)
    for bar, m in zip(bars, medians):
        ax.annotate(f"{m:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
