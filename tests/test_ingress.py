"""The Ray Serve ingress over HTTP and WebSocket, with the Python client, on localhost: outputs
equal the embedded runner's, bad requests get 4xx answers with a message and disturb no
stream, and a client that reconnects continues exactly where it left off."""

from __future__ import annotations

import io
import socket
import time

import numpy as np
import pytest
import torch

import cofunc

pytest.importorskip("ray")
from test_distributed import FRAME, small_cnn  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ingress(cluster, tmp_path_factory):
    from ray import serve

    from cofunc.distributed.ingress import deploy

    layer, params = small_cnn()
    url = deploy(layer, params, frame_shape=FRAME, shards=2, store=str(tmp_path_factory.mktemp("ckpt")),
                 checkpoint_every=4, max_body_bytes=4096, port=free_port())
    yield url, layer, params
    serve.shutdown()


def expected_outputs(layer, params, frames):
    runner = cofunc.StreamRunner(layer, params, frame_shape=FRAME)
    runner.open(0)
    runner.push_many([0] * len(frames), frames)
    return runner.run()


def assert_same(got, want, stream):
    assert [(o.stream, o.frame, o.index) for o in got] == [(stream, o.frame, o.index) for o in want]
    assert all(torch.equal(a.value, b.value) for a, b in zip(got, want))


def poll(client, stream, n, timeout=60.0):
    outputs = []
    deadline = time.monotonic() + timeout
    while len(outputs) < n and time.monotonic() < deadline:
        outputs += client.outputs(stream)
        time.sleep(0.05)
    return outputs


def test_http_frames_in_outputs_out_and_bad_requests(ingress):
    from cofunc.distributed.ingress import IngressClient, IngressError

    url, layer, params = ingress
    client = IngressClient(url)
    print(client)
    info = client.open("cam-a")
    assert info["frame_shape"] == list(FRAME) and info["dtype"] == "float64"
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(9, *FRAME, generator=g, dtype=torch.float64)
    client.push("cam-a", frames[:5])  # five frames in one request
    for f in frames[5:]:
        client.push("cam-a", f)

    def rejected(status, match, call):
        with pytest.raises(IngressError, match=match) as e:
            call()
        assert e.value.status == status

    rejected(409, "already open", lambda: client.open("cam-a"))
    rejected(422, "", lambda: client.open("bad id/with spaces"))
    rejected(404, "no open stream 'nobody'", lambda: client.push("nobody", frames[0]))
    rejected(422, r"shape \(C, \*S\) = \[2, 4, 4\]", lambda: client.push("cam-a", torch.zeros(2, 4, dtype=torch.float64)))
    rejected(422, "dtype float64, got float32", lambda: client.push("cam-a", frames[0].float()))
    rejected(400, "not a .npy array", lambda: client.push_bytes("cam-a", b"\x93NUMPY garbage", "application/x-npy"))
    rejected(415, "unsupported content type 'text/plain'", lambda: client.push_bytes("cam-a", b"1,2,3", "text/plain"))
    rejected(413, "at most 4096 bytes", lambda: client.push("cam-a", torch.zeros(40, *FRAME, dtype=torch.float64)))
    rejected(400, "not a readable image/png", lambda: client.push_bytes("cam-a", b"not a png", "image/png"))
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(png, format="PNG")
    rejected(422, r"got \[3, 4, 4\]", lambda: client.push_bytes("cam-a", png.getvalue(), "image/png"))
    rejected(404, "no open stream", lambda: client.outputs("nobody"))

    want = expected_outputs(layer, params, frames)
    got = poll(client, "cam-a", len(want))
    assert_same(got, want, "cam-a")
    assert client.outputs("cam-a") == []  # acknowledged: nothing twice
    assert [o.index for o in client.outputs("cam-a", after=len(want) - 1)] == []  # dropped once acknowledged
    status = client.status()
    assert status["shards"] == 2 and status["streams"] >= 1 and status["recoveries"] == 0
    assert set(status["per_shard"]["shard-0"]) >= {"fps", "tick_ms_p99", "checkpoint_age_s", "streams"}
    assert client.close("cam-a") == 0
    rejected(404, "no open stream", lambda: client.close("cam-a"))


def test_websocket_stream_and_a_client_that_reconnects(ingress):
    from cofunc.distributed.ingress import IngressClient, IngressError

    url, layer, params = ingress
    g = torch.Generator().manual_seed(2)
    frames = torch.randn(14, *FRAME, generator=g, dtype=torch.float64)
    want = expected_outputs(layer, params, frames)
    first = IngressClient(url)
    first.open("cam-b")
    with first.connect("cam-b") as ws:
        ws.send(frames[:6])
        got = ws.receive(2)
        ws.send(torch.zeros(3, dtype=torch.float64))  # a bad frame: an error message, the stream goes on
        with pytest.raises(IngressError, match="422"):
            ws.receive(1)
        ws.send(frames[6:10])
    # The connection dropped with outputs in flight; a new client picks up from the next index.
    second = IngressClient(url)
    with second.connect("cam-b", after=got[-1].index + 1) as ws:
        ws.send(frames[10:])
        got += ws.receive(len(want) - len(got))
    assert_same(got, want, "cam-b")
    with pytest.raises(Exception):
        with second.connect("nobody") as ws:
            ws.receive(1, timeout=10)
    second.close("cam-b")
