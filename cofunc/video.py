"""Video files in: lazy decoding with PyAV, a model's preprocessing, several files as streams.

- `VideoFrames(path, preprocessing)`: the frames of one file, decoded one at a time, sampled to
  the model's frame rate and preprocessed (`cofunc.models.VideoPreprocessing`): iterating
  yields ``(C, H, W)`` tensors, so a long video never sits in memory.
- `VideoFeed(runner, videos, starts=...)`: several sources (files or any iterables of frames) as
  concurrent streams of a `cofunc.StreamRunner`; each tick opens the sources whose start has
  come, pushes one frame of each open source, steps, and closes the finished ones.
- `write_video` and `moving_shapes`: synthetic test videos.

PyAV is an optional dependency (``pip install 'cofunc[video]'``); it is imported on first use.

Example:
    >>> import tempfile, os, cofunc
    >>> from cofunc.models import x3d
    >>> from cofunc.video import VideoFeed, moving_shapes, write_video
    >>> net = x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0, se="frame").eval()
    >>> path = os.path.join(tempfile.mkdtemp(), "a.mp4")
    >>> write_video(path, moving_shapes(60, 48, 64), fps=5)
    >>> runner = cofunc.StreamRunner(net)
    >>> feed = VideoFeed(runner, [path], preprocessing=net.preprocessing)
    >>> outputs = feed.run()
    >>> len(outputs) == feed.frames - net.delay  # frames sampled at 2.5 fps, minus the warm-up
    True
"""

from __future__ import annotations

import math
import os
import time
from fractions import Fraction
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ._errors import ConfigurationError, VideoError
from ._runner import StreamOutput, StreamRunner
from .models._preprocessing import VideoPreprocessing

PathLike = Union[str, os.PathLike]


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigurationError("cofunc.video needs PyAV: pip install 'cofunc[video]' (or pip install av)") from e
    return av


class VideoFrames:
    """The frames of one video file, decoded lazily, sampled to a frame rate and preprocessed.

    Args:
        path: a video file PyAV (FFmpeg) can read.
        preprocessing: a `VideoPreprocessing` (a zoo model's ``.preprocessing``); None yields
            the raw frames ``(H, W, 3)`` uint8 at the file's own rate.
        frame_rate: override the preprocessing's frame rate (None: the preprocessing's, or
            every frame).
        dtype: of the preprocessed frames.

    Iterating decodes from the start each time and yields ``(C, H, W)`` tensors. Frames are
    sampled by timestamp: the first frame, then the first frame at or after each multiple of
    ``1 / frame_rate`` seconds (a 30 fps file at 5 fps keeps every 6th frame).
    ``decode_seconds`` accumulates the time spent decoding and preprocessing.
    """

    def __init__(self, path: PathLike, preprocessing: Optional[VideoPreprocessing] = None, *,
                 frame_rate: Optional[float] = None, dtype: torch.dtype = torch.float32):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"VideoFrames: no such file {self.path!r}")
        self.preprocessing = preprocessing
        self.frame_rate = frame_rate if frame_rate is not None else getattr(preprocessing, "frame_rate", None)
        self.dtype = dtype
        self.decode_seconds = 0.0
        av = _av()
        try:
            container = av.open(self.path)
        except av.error.FFmpegError as error:
            raise VideoError(f"VideoFrames: FFmpeg cannot read {self.path!r} as a video: {error}") from error
        with container:
            if not container.streams.video:
                raise VideoError(f"VideoFrames: {self.path!r} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            self.source_fps = float(rate) if rate else float("nan")
            self.source_frames = int(stream.frames or 0)
            if stream.duration is not None and stream.time_base is not None:
                self.duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                self.duration = container.duration / 1e6
            else:
                self.duration = float("nan")
            self.width, self.height = stream.codec_context.width, stream.codec_context.height

    def __repr__(self) -> str:
        return (f"VideoFrames({self.path!r}, {self.width}x{self.height}, {self.source_fps:.3g} fps, "
                f"{self.duration:.3g} s, sampled at {self.frame_rate or self.source_fps:.3g} fps, "
                f"about {self.expected_frames} frames)")

    @property
    def expected_frames(self) -> int:
        """About how many frames iterating yields (from the container's metadata)."""
        n = self.source_frames
        if not n and math.isfinite(self.duration) and math.isfinite(self.source_fps):
            n = int(round(self.duration * self.source_fps))
        if self.frame_rate is None or not self.frame_rate < self.source_fps:
            return n
        return int(math.ceil(n * self.frame_rate / self.source_fps - 1e-6))

    def __iter__(self) -> Iterator[Tensor]:
        av = _av()
        start = time.perf_counter()
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            period = None if self.frame_rate is None else 1.0 / self.frame_rate
            next_time = None
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / self.source_fps
                if period is not None:
                    if next_time is not None and t < next_time - 1e-6:
                        continue
                    next_time = (t if next_time is None else next_time) + period
                    while next_time <= t + 1e-6:
                        next_time += period
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                out = rgb if self.preprocessing is None else self.preprocessing(rgb, self.dtype)
                self.decode_seconds += time.perf_counter() - start
                yield out
                start = time.perf_counter()
        self.decode_seconds += time.perf_counter() - start


class VideoFeed:
    """Several frame sources as concurrent streams of ``runner``.

    Args:
        runner: a `StreamRunner` whose frames the sources yield.
        videos: paths (wrapped in `VideoFrames` with ``preprocessing``; the id is the path as
            given) or a mapping ``{id: path or iterable of frames}``.
        starts: per source, the tick at which its stream opens (default: all at tick 0), so
            that streams come and go at different times.
        preprocessing: for sources given as paths.

    Iterating yields, per tick, the list of valid `StreamOutput` s. ``frames`` (pushed),
    ``ticks``, ``decode_seconds`` (getting frames from the sources) and ``tick_seconds``
    (stepping) accumulate.
    """

    def __init__(self, runner: StreamRunner, videos: Union[Sequence[PathLike], Mapping[object, object]], *,
                 starts: Optional[Union[Sequence[int], Mapping[object, int]]] = None,
                 preprocessing: Optional[VideoPreprocessing] = None):
        self.runner = runner
        if not isinstance(videos, Mapping):
            videos = {os.fspath(v): v for v in videos}
        self.sources = {k: VideoFrames(v, preprocessing, dtype=runner.dtype) if isinstance(v, (str, os.PathLike)) else v
                        for k, v in videos.items()}
        if starts is None:
            starts = {k: 0 for k in self.sources}
        elif not isinstance(starts, Mapping):
            starts = dict(zip(self.sources, starts))
        self.starts = {k: int(starts.get(k, 0)) for k in self.sources}
        self.frames = 0
        self.ticks = 0
        self.decode_seconds = 0.0
        self.tick_seconds = 0.0

    def __repr__(self) -> str:
        return (f"VideoFeed({len(self.sources)} sources, {self.frames} frames in {self.ticks} ticks, "
                f"decode {self.decode_seconds:.3g} s, step {self.tick_seconds:.3g} s)")

    def __iter__(self) -> Iterator[List[StreamOutput]]:
        waiting = dict(sorted(self.starts.items(), key=lambda kv: kv[1]))
        live: Dict[object, Iterator[Tensor]] = {}
        tick = 0
        try:
            while waiting or live:
                for key in [k for k, s in waiting.items() if s <= tick]:
                    del waiting[key]
                    self.runner.open(key)
                    live[key] = iter(self.sources[key])
                start = time.perf_counter()
                ids, frames = [], []
                for key, it in list(live.items()):
                    frame = next(it, None)
                    if frame is None:
                        del live[key]
                        self.runner.close(key)
                    else:
                        ids.append(key)
                        frames.append(frame)
                self.decode_seconds += time.perf_counter() - start
                if ids:
                    self.runner.push_many(ids, frames)
                    start = time.perf_counter()
                    outputs = self.runner.tick()
                    self.tick_seconds += time.perf_counter() - start
                    self.frames += len(ids)
                    self.ticks += 1
                    yield outputs
                tick += 1
        finally:
            for key in live:  # stopped early: free the slots
                if key in self.runner:
                    self.runner.close(key)

    def run(self) -> List[StreamOutput]:
        """Feed every source to its end; all valid outputs in tick order."""
        return [o for outputs in self for o in outputs]


# --- synthetic videos ---------------------------------------------------------------------------


def moving_shapes(frames: int, height: int, width: int, *, shapes: int = 3, seed: int = 0) -> np.ndarray:
    """``(frames, height, width, 3)`` uint8: coloured squares and discs bouncing on a dark
    background (a test video with motion)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    objs = []
    for k in range(shapes):
        r = rng.uniform(0.08, 0.2) * min(height, width)
        pos = rng.uniform([r, r], [height - r, width - r])
        vel = rng.uniform(-0.06, 0.06, 2) * min(height, width)
        colour = rng.integers(64, 256, 3)
        objs.append([r, pos, vel, colour, k % 2 == 0])
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        img = np.full((height, width, 3), 16, dtype=np.uint8)
        for obj in objs:
            r, pos, vel, colour, square = obj
            if square:
                mask = (np.abs(yy - pos[0]) < r) & (np.abs(xx - pos[1]) < r)
            else:
                mask = (yy - pos[0]) ** 2 + (xx - pos[1]) ** 2 < r * r
            img[mask] = colour
            pos += vel
            for i, size in enumerate((height, width)):
                if pos[i] < r or pos[i] > size - r:
                    vel[i] = -vel[i]
                    pos[i] = min(max(pos[i], r), size - r)
        video[t] = img
    return video


def write_video(path: PathLike, video: np.ndarray, fps: float = 30, codec: str = "mpeg4") -> None:
    """Encode ``video: (T, H, W, 3)`` uint8 (even H and W) to ``path`` with PyAV."""
    av = _av()
    video = np.asarray(video, dtype=np.uint8)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[1] % 2 or video.shape[2] % 2:
        raise ConfigurationError(f"write_video: expected (T, H, W, 3) uint8 with even H and W, got {video.shape}")
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for img in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


__all__ = ["VideoFeed", "VideoFrames", "moving_shapes", "write_video"]
