"""Throughput and latency of a stream runner, as a dict and as periodic log lines."""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable, Dict, Optional

import numpy as np

logger = logging.getLogger("cofunc.runner")


class RunnerMetrics:
    """Per-tick timings of the last ``window`` ticks and totals since the start (or `reset`).

    ``snapshot(extra)`` returns ``frames``, ``ticks`` (totals), ``fps`` (frames per second of
    tick time over the window), ``tick_ms_p50`` and ``tick_ms_p99`` (per-tick latency over the
    window) and whatever ``extra`` adds (the runner adds streams open, capacity, pending frames
    and state bytes). With ``log_interval`` (seconds), `record` logs the snapshot to the
    ``cofunc.runner`` logger at INFO at most that often.
    """

    def __init__(self, window: int = 1024, log_interval: Optional[float] = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.window = int(window)
        self.log_interval = log_interval
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.ticks = 0
        self._latency = collections.deque(maxlen=self.window)
        self._frames = collections.deque(maxlen=self.window)
        self._last_log = self.clock()

    def record(self, seconds: float, frames: int, extra: Callable[[], Dict] = dict) -> None:
        """Record one tick that took ``seconds`` and consumed ``frames`` frames."""
        self.ticks += 1
        self.frames += frames
        self._latency.append(seconds)
        self._frames.append(frames)
        if self.log_interval is not None and self.clock() - self._last_log >= self.log_interval:
            self._last_log = self.clock()
            logger.info("%s", _format(self.snapshot(extra())))

    def snapshot(self, extra: Optional[Dict] = None) -> Dict[str, float]:
        latency = np.asarray(self._latency, dtype=np.float64)
        busy = float(latency.sum())
        out = {
            "frames": self.frames,
            "ticks": self.ticks,
            "fps": (sum(self._frames) / busy) if busy > 0 else 0.0,
            "tick_ms_p50": float(np.percentile(latency, 50) * 1e3) if latency.size else 0.0,
            "tick_ms_p99": float(np.percentile(latency, 99) * 1e3) if latency.size else 0.0,
        }
        out.update(extra or {})
        return out


def _format(metrics: Dict) -> str:
    parts = []
    for key, value in metrics.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
