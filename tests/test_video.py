"""Video in: PyAV decoding, frame-rate sampling, preprocessing, files as streams, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cofunc
from cofunc import stream as cli
from cofunc.demo import randomize_norms
from cofunc.models import VideoPreprocessing, i3d_r50, slow_r50, x3d
from cofunc.video import VideoFeed, VideoFrames, moving_shapes, write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_x3d():
    net = x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0, se="frame")
    return randomize_norms(net)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    paths = {}
    paths["fast"] = d / "fast.mp4"  # 30 fps, 3 s
    write_video(paths["fast"], moving_shapes(90, 48, 64, seed=1), fps=30)
    paths["slow"] = d / "slow.avi"  # 2.5 fps: every frame kept by X3D-XS's sampling
    write_video(paths["slow"], moving_shapes(24, 64, 48, seed=2), fps=2.5)
    return paths


def test_published_preprocessing_of_the_zoo_models():
    assert x3d("S").preprocessing == VideoPreprocessing(5.0, 182, 182)
    assert x3d("XS").preprocessing.frame_rate == 2.5
    assert x3d("M").preprocessing.frame_shape == (3, 256, 256)
    assert x3d("L").preprocessing.crop_size == 320
    assert slow_r50(crop_size=32, stem_dim_out=4, stage_depths=(1, 1, 1, 1)).preprocessing.frame_rate == 30 / 8
    assert i3d_r50(crop_size=224, stem_dim_out=4, stage_depths=(1, 1, 1, 1)).preprocessing.crop_size == 256
    assert tiny_x3d().preprocessing.crop_size == 36  # 182 / 160 of the model's crop_size 32


def test_preprocessing_is_pytorchvideos_transform():
    pre = VideoPreprocessing(frame_rate=None, side_size=30, crop_size=24, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    frame = torch.randint(0, 256, (40, 70, 3), dtype=torch.uint8)
    # Div255, Normalize, ShortSideScale (short side 30: 40x70 -> 30x52), CenterCrop 24.
    x = frame.permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(pre.mean).view(3, 1, 1)) / torch.tensor(pre.std).view(3, 1, 1)
    x = F.interpolate(x[None], size=(30, int(math.floor(70 / 40 * 30))), mode="bilinear", align_corners=False)[0]
    expected = x[:, 3:27, 14:38]
    torch.testing.assert_close(pre(frame), expected)
    with pytest.raises(cofunc.InputShapeError):
        pre(torch.zeros(3, 40, 70, dtype=torch.uint8))


def test_frames_are_decoded_lazily_and_sampled_by_time(videos):
    raw = list(VideoFrames(videos["fast"]))
    assert len(raw) == 90 and raw[0].shape == (48, 64, 3) and raw[0].dtype == torch.uint8
    original = torch.from_numpy(moving_shapes(90, 48, 64, seed=1))
    assert (raw[10].float() - original[10].float()).abs().mean() < 8  # lossy codec, same picture
    five = VideoFrames(videos["fast"], frame_rate=5.0)
    sampled = list(five)
    assert len(sampled) == five.expected_frames == 15
    for k, frame in enumerate(sampled):  # every 6th frame
        assert torch.equal(frame, raw[6 * k])
    it = iter(VideoFrames(videos["fast"], frame_rate=5.0))
    first = next(it)  # a generator: nothing beyond what was asked is decoded
    assert torch.equal(first, raw[0])
    it.close()
    assert "30 fps" in repr(five) and "sampled at 5 fps" in repr(five)
    with pytest.raises(FileNotFoundError):
        VideoFrames(videos["fast"].parent / "missing.mp4")


def test_a_file_that_is_not_a_video_raises_video_error(tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(cofunc.VideoError, match="notes.mp4"):
        VideoFrames(bad)
    with pytest.raises(SystemExit):  # the command line says so in one line, no traceback
        cli.main(["--no-progress", str(bad)])
    assert "cannot read" in capsys.readouterr().err


def test_files_as_concurrent_streams_equal_each_files_clip_forward(videos):
    net = tiny_x3d()
    pre = net.preprocessing
    runner = cofunc.StreamRunner(net)
    feed = VideoFeed(runner, {"a": videos["slow"], "b": videos["slow"], "c": videos["fast"]}, starts=[0, 5, 2],
                     preprocessing=pre)
    outputs = feed.run()
    assert len(runner) == 0  # every stream closed at its end
    assert feed.frames == 24 + 24 + 8 and feed.decode_seconds > 0 and feed.tick_seconds > 0
    clip = torch.stack(list(VideoFrames(videos["slow"], pre)), 1)[None]
    with torch.no_grad():
        expected = net(clip)[0]
    for name in ("a", "b"):
        mine = [o for o in outputs if o.stream == name]
        assert [o.frame for o in mine] == list(range(net.delay, 24))
        for o in mine:
            torch.testing.assert_close(o.value, expected[:, o.index], atol=1e-5, rtol=1e-4)
    assert not [o for o in outputs if o.stream == "c"]  # 8 frames at 2.5 fps: still warming up


def test_cli_with_random_weights(videos, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(cli.MODELS, "x3d_xs", tiny_x3d)
    out, plot = tmp_path / "p.jsonl", tmp_path / "p.png"
    assert cli.main([str(videos["slow"]), str(videos["fast"]), "--model", "x3d_xs", "--top", "3",
                     "--out", str(out), "--plot", str(plot), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    net = tiny_x3d()
    assert len(lines) == 24 - net.delay  # the fast video (8 sampled frames) never leaves its warm-up
    assert {line["video"] for line in lines} == {str(videos["slow"])}
    assert lines[0]["frame"] == net.delay and lines[0]["time"] == net.delay / 2.5
    top = lines[-1]["top"]
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
    assert plot.stat().st_size > 1000
    assert "no prediction" in captured.out


@pytest.mark.slow
@pytest.mark.parametrize("fold", [False, True], ids=["as_trained", "folded"])
def test_cli_command_line_with_weights(videos, tmp_path, fold):
    """The real command: X3D-XS with weights from a file; predictions equal the clip forward's
    (with the batch norms folded too, up to rounding)."""
    torch.manual_seed(1)
    net = randomize_norms(x3d("XS", se="frame"))
    torch.save({"model_state": net.state_dict()}, tmp_path / "w.pyth")
    video = tmp_path / "v.mp4"
    frames = net.delay + 3
    write_video(video, moving_shapes(frames, 96, 128, seed=3), fps=2.5)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "cofunc.stream", str(video), "--model", "x3d_xs", "--weights",
                             str(tmp_path / "w.pyth"), "--top", "2", "--out", str(tmp_path / "p.jsonl")]
                            + (["--fold-batch-norms"] if fold else []),
                            env=env, capture_output=True, text=True, check=True)
    assert "weights from" in result.stderr and "RANDOM" not in result.stderr
    assert "frame/s" in result.stderr  # the progress bar
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(net.delay, frames))
    clip = torch.stack(list(VideoFrames(video, net.preprocessing)), 1)[None]
    with torch.no_grad():
        expected = net(clip)[0]
    for line in lines:
        p, k = expected[:, line["frame"] - net.delay].topk(2)
        assert [int(c) for c, _ in line["top"]] == k.tolist()
        np.testing.assert_allclose([q for _, q in line["top"]], p.tolist(), rtol=1e-3)
