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
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tabulate
import torch
from tqdm import tqdm


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


class BenchResult(Dict[str, Timing]):
    """``{name: Timing}`` in the candidates' order, plus how noisy the machine was.

    ``rounds_kept``, ``rounds_discarded``: rounds used and rounds thrown away because other
    processes were too busy (see `bench_interleaved`); ``rounds_disturbed``: kept rounds that
    were over that limit all the same (kept once the time limit had passed); ``other_cores``: the
    mean number of cores other processes kept busy during the kept rounds (NaN where unknown).
    """

    rounds_kept: int = 0
    rounds_discarded: int = 0
    rounds_disturbed: int = 0
    other_cores: float = float("nan")


def bench_interleaved(
    fns: Mapping[str, Callable[[], object]],
    rounds: int = 30,
    inner: int = 5,
    warmup: int = 5,
    max_other_cores: Optional[float] = None,
    max_seconds: float = 900.0,
    clock: str = "wall",
    progress_every: Optional[float] = None,
) -> BenchResult:
    """Time zero-argument callables side by side.

    Each round calls every candidate ``inner`` times in a row and records the mean time per call,
    so each candidate gets one sample per round, ``rounds`` in all. The candidate order rotates by
    one every round, so no candidate always runs right after the same neighbour. ``warmup`` calls
    of each candidate come first and are not recorded.

    On a shared machine, ``max_other_cores`` discards (and repeats) every round during which other
    processes kept more than that many cores busy: such a round disturbs all candidates, but
    multi-threaded ones much more (a descheduled worker thread stalls every parallel region).
    Discarding whole rounds keeps the samples paired and treats every candidate alike. After
    ``max_seconds`` the disturbed rounds are kept too, so the run always ends.

    ``clock="cpu"`` measures this process's CPU time instead of wall time: with one torch thread
    it is the compute cost, immune to being descheduled (with more threads it adds up the
    threads' CPU time, spin-waiting included, so it is not a latency).

    ``progress_every`` (seconds): show a progress bar of kept (and discarded) rounds on stderr,
    refreshed at most that often (tqdm; None: no bar).

    Returns a `BenchResult`: ``{name: Timing}`` with ``Timing.samples`` of shape ``(rounds,)``.
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"bench_interleaved: clock must be 'wall' or 'cpu', got {clock!r}")
    if rounds < 1 or inner < 1:
        raise ValueError(f"bench_interleaved: rounds and inner must be positive, got {rounds} and {inner}")
    names = list(fns)
    result = BenchResult()
    if not names:
        return result
    warm_up(fns, warmup)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    now = time.perf_counter if clock == "wall" else time.process_time
    deadline = time.monotonic() + max_seconds
    other: List[float] = []
    r = 0
    progress = tqdm(total=rounds, desc="rounds kept", unit="round", file=sys.stderr, leave=False,
                    disable=progress_every is None, mininterval=progress_every or 0.1)
    while result.rounds_kept < rounds:
        shift = r % len(names)
        r += 1
        this_round = {}
        with OtherLoad() as load:
            for name in names[shift:] + names[:shift]:
                fn = fns[name]
                start = now()
                for _ in range(inner):
                    fn()
                this_round[name] = (now() - start) / inner
        if max_other_cores is not None and load.cores > max_other_cores:
            if time.monotonic() < deadline:
                result.rounds_discarded += 1
                progress.set_postfix(discarded=result.rounds_discarded, refresh=False)
                continue
            result.rounds_disturbed += 1
        result.rounds_kept += 1
        progress.update(1)
        other.append(load.cores)
        for name in names:
            samples[name].append(this_round[name])
    progress.close()
    result.update((name, Timing(np.asarray(samples[name]))) for name in names)
    result.other_cores = float(np.mean(other))
    return result


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


def render_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> List[str]:
    """The lines of a markdown table (tabulate's GitHub format: columns padded to align, so the
    file reads as a table in a terminal too). Cells are printed as given (no number parsing)."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells but the header has {len(header)}: {list(row)}")
    text = tabulate.tabulate([[str(c) for c in row] for row in rows], [str(h) for h in header],
                             tablefmt="github", disable_numparse=True)
    return text.splitlines()


def _busy_cpu_seconds() -> Optional[float]:
    """CPU seconds all processes have spent busy since boot (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy.
    ticks = [int(v) for v in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Measures how many cores *other* processes kept busy while a block ran (a noise gauge).

    Use as a context manager; afterwards ``cores`` is the machine's busy CPU time minus this
    process's own, divided by the wall time (NaN where ``/proc/stat`` is unavailable).
    """

    def __enter__(self) -> "OtherLoad":
        self._busy = _busy_cpu_seconds()
        self._own = sum(os.times()[:2])
        self._wall = time.perf_counter()
        self.cores = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        busy = _busy_cpu_seconds()
        wall = time.perf_counter() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return
        own = sum(os.times()[:2]) - self._own
        self.cores = max(0.0, (busy - self._busy - own) / wall)


def wait_for_quiet(max_other_cores: float, timeout: float, probe: float = 2.0) -> float:
    """Wait (up to ``timeout`` seconds) until other processes use at most ``max_other_cores``
    cores over a ``probe``-second window. Returns the last measured value (NaN if unknown)."""
    deadline = time.monotonic() + timeout
    while True:
        with OtherLoad() as load:
            time.sleep(probe)
        if not load.cores > max_other_cores or time.monotonic() >= deadline:
            return load.cores


def write_table(
    path: str,
    rows: Sequence[Sequence[object]],
    header: Sequence[str],
    notes: Sequence[str] = (),
    title: Optional[str] = None,
    extra_tables: Sequence[Tuple[str, Sequence[str], Sequence[Sequence[object]]]] = (),
) -> str:
    """Write a markdown file to ``path``: optional title, the table, then each of
    ``extra_tables`` (``(subtitle, header, rows)``), then ``notes`` as a bullet list.

    Returns the markdown text, so the caller can also print it.
    """
    lines: List[str] = []
    if title:
        lines += [f"# {title}", ""]
    lines += render_table(rows, header)
    for subtitle, sub_header, sub_rows in extra_tables:
        lines += ["", f"## {subtitle}", ""] + render_table(sub_rows, sub_header)
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


@dataclass(frozen=True)
class Ratio:
    """How ``num`` compares with ``den``: the ratio of medians, and the spread (p25, p75) of the
    ratios paired round by round (both were timed in the same rounds)."""

    value: float
    p25: float
    p75: float

    @classmethod
    def of(cls, num: Timing, den: Timing) -> "Ratio":
        paired = num.samples / den.samples
        return cls(num.median / den.median, float(np.percentile(paired, 25)), float(np.percentile(paired, 75)))

    def __str__(self) -> str:
        return f"{self.value:.2f}x (p25-p75 {self.p25:.2f}-{self.p75:.2f})"


@dataclass(frozen=True)
class Goal:
    """A target on a ratio of medians: ``ratio <= limit`` (``at_most``) or ``ratio >= limit``."""

    description: str
    ratio: Ratio
    limit: float
    at_most: bool = True

    @property
    def met(self) -> bool:
        return self.ratio.value <= self.limit if self.at_most else self.ratio.value >= self.limit

    def row(self) -> List[str]:
        target = f"{'<=' if self.at_most else '>='} {self.limit:g}x"
        return [self.description, target, str(self.ratio), "met" if self.met else "**not met**"]


GOAL_HEADER = ["goal", "target", "measured (ratio of medians)", "status"]


@dataclass(frozen=True)
class Panel:
    """One subplot of `bar_plot`: bars with labels, timings and optional colours."""

    title: str
    labels: Sequence[str]
    timings: Sequence[Timing]
    colors: Optional[Sequence[str]] = None


def bar_plot(path: str, panels: Sequence[Panel], title: str = "", ylabel: str = "time per call (ms)") -> None:
    """Bar charts of medians with p25-p75 whiskers, one subplot per panel (each with its own
    y scale), saved to ``path`` as PNG with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [max(2.5, 1.0 * len(p.labels) + 1.0) for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 0.5, 4.5), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, panel in zip(axes[0], panels):
        if len(panel.labels) != len(panel.timings):
            raise ValueError(f"bar_plot: panel {panel.title!r} has {len(panel.labels)} labels but {len(panel.timings)} timings")
        xs = np.arange(len(panel.labels))
        medians = np.array([t.median for t in panel.timings]) * 1e3
        p25 = np.array([t.p25 for t in panel.timings]) * 1e3
        p75 = np.array([t.p75 for t in panel.timings]) * 1e3
        ax.bar(xs, medians, yerr=[medians - p25, p75 - medians], capsize=4, color=panel.colors,
               edgecolor="black", linewidth=0.6)
        for x, m, top in zip(xs, medians, p75):
            ax.annotate(f"{m:.2f}", (x, top), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=8)
        ax.set_xticks(xs)
        ax.set_xticklabels(panel.labels, rotation=25, ha="right", fontsize=8)
        ax.set_title(panel.title, fontsize=9)
        ax.set_ylim(0, max(p75.max(), medians.max()) * 1.15)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the physical bound: what the arithmetic and the memory traffic allow --------------------


@dataclass(frozen=True)
class MachineRates:
    """This machine's measured peak rates at ``threads`` torch threads: ``macs_per_s``, the
    multiply-adds per second of a large float32 matrix product (1024 x 1024 x 1024), and
    ``bytes_per_s``, the bytes per second a large copy moves (read + written, 64 MB each way,
    far beyond the caches). Best of several tries: on a shared machine the best is the
    closest to what the hardware allows."""

    macs_per_s: float
    bytes_per_s: float
    threads: int

    def bound(self, macs: float, nbytes: float) -> float:
        """Seconds a call needs at least: its multiply-adds at the matrix-product rate or its
        bytes at the memory bandwidth, whichever takes longer (a roofline)."""
        return max(macs / self.macs_per_s, nbytes / self.bytes_per_s)

    def cells(self, macs: float, nbytes: float, measured: Timing) -> List[str]:
        """``[bound (ms), "x of the bound"]`` for a table row."""
        bound = self.bound(macs, nbytes)
        which = "MACs" if macs / self.macs_per_s >= nbytes / self.bytes_per_s else "bytes"
        return [f"{fmt_ms(bound)} ({which})", f"{measured.median / bound:.1f}x"]

    def note(self) -> str:
        return (f"Physical bound: a call's multiply-adds at the measured matrix-product rate "
                f"({self.macs_per_s / 1e9:.1f} GMAC/s, float32 1024x1024x1024 mm, {self.threads} thread(s)) or "
                f"the bytes it must touch (weights and state, each read once) at the measured memory "
                f"bandwidth ({self.bytes_per_s / 1e9:.1f} GB/s, a 64 MB copy, read + write), whichever is "
                f"longer; 'x of the bound' = median / bound (1.0x: the hardware's limit).")


def measure_rates(threads: int, tries: int = 15) -> MachineRates:
    """Measure `MachineRates` at ``threads`` torch threads (a few seconds; restores the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 1024
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        src, dst = torch.randn(16 * 2 ** 20), torch.empty(16 * 2 ** 20)  # 64 MB each
        best_mm = best_copy = float("inf")
        # One thread: CPU time, which other processes cannot inflate by descheduling this one.
        now = time.process_time if threads == 1 else time.perf_counter
        for i in range(tries + 2):
            start = now()
            torch.mm(a, b, out=out)
            t_mm = now() - start
            start = now()
            dst.copy_(src)
            t_copy = now() - start
            if i >= 2:  # the first calls page the buffers in
                best_mm, best_copy = min(best_mm, t_mm), min(best_copy, t_copy)
        return MachineRates(n ** 3 / best_mm, 2 * src.numel() * src.element_size() / best_copy, threads)
    finally:
        torch.set_num_threads(before)


def tree_bytes(*trees) -> int:
    """Bytes of the distinct tensors in nested dicts / tuples / lists (shared storage counted once)."""
    seen, total = set(), 0
    stack = list(trees)
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            key = (item.data_ptr(), item.numel(), item.element_size())
            if key not in seen:
                seen.add(key)
                total += item.numel() * item.element_size()
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
    return total
