"""A Ray Serve application for streams over HTTP and WebSocket, and a Python client for it.

Endpoints (JSON unless said otherwise):

- ``POST /streams`` ``{"id": "cam0"}``: open a stream (201; 409 if open, 422 for a bad id).
- ``DELETE /streams/{id}``: close it (``{"dropped": frames not stepped}``; 404 if unknown).
- ``POST /streams/{id}/frames``: one frame ``(C, *S)`` or N frames ``(N, C, *S)`` as a
  ``.npy`` body (``application/x-npy``), or a PNG/JPEG image (``(3, H, W)`` in [0, 1]). 202;
  400 for an unreadable body, 413 above ``max_body_bytes``, 415 for another content type, 422
  for a wrong shape or dtype, 429 when the stream's unread outputs or queued frames are full.
- ``GET /streams/{id}/outputs?after=K``: the stream's outputs with index >= K (those below K
  are dropped: the client has them). Outputs are kept until acknowledged this way, so a client
  that reconnects continues where it left off.
- ``WS /streams/{id}/ws?after=K``: send frames as binary ``.npy`` messages, receive outputs as
  JSON text messages, acknowledge with ``{"ack": K}``.
- ``GET /status``: `RayStreamRunner.status`.

A bad request changes nothing: every frame of a request is checked before any is queued.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations as objects.
import asyncio
import collections
import json
import threading
from typing import Any, Deque, Dict, List, Optional

from torch import Tensor

from .._errors import CofuncError, StreamIdError
from .._runner import StreamOutput
from ._client import RayStreamRunner
from ._wire import NPY, WireError, decode_frames, decode_output, encode_frames, encode_output

try:
    from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
    from pydantic import BaseModel, Field
    from ray import serve
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("cofunc.distributed.ingress needs Ray Serve: pip install 'cofunc-torch[ray]'") from e

app = FastAPI(title="cofunc streams")


class OpenRequest(BaseModel):
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")


@serve.deployment(num_replicas=1, max_ongoing_requests=256)
@serve.ingress(app)
class StreamIngress:
    """One replica holding a `RayStreamRunner` (the shards are its actors) and ticking it in a
    background thread whenever frames are queued."""

    def __init__(self, model, params=None, *, max_body_bytes: int = 8 << 20, max_outputs: int = 4096,
                 max_pending: int = 256, **runner_kwargs):
        self.runner = RayStreamRunner(model, params, **runner_kwargs)
        self.max_body_bytes = int(max_body_bytes)
        self.max_outputs = int(max_outputs)
        self.max_pending = int(max_pending)
        self.outbox: Dict[str, Deque[StreamOutput]] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.listeners: Dict[str, List[asyncio.Queue]] = collections.defaultdict(list)
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        threading.Thread(target=self._ticker, daemon=True, name="cofunc-ticker").start()

    # --- ticking -------------------------------------------------------------------------------
    def _ticker(self) -> None:
        while True:
            self.wake.wait(0.5)
            self.wake.clear()
            while True:
                with self.lock:
                    if not self.runner.pending():
                        break
                    outputs = self.runner.tick()
                    for o in outputs:
                        if o.stream in self.outbox:
                            self.outbox[o.stream].append(o)
                if self.loop is not None:
                    for o in outputs:
                        for q in self.listeners.get(o.stream, ()):
                            self.loop.call_soon_threadsafe(q.put_nowait, o)

    def _known(self, stream_id: str) -> None:
        if stream_id not in self.outbox:
            raise HTTPException(404, f"no open stream {stream_id!r} (POST /streams first)")

    def _queue(self, stream_id: str, frames: Tensor) -> int:
        """Check and queue frames: 422 for a wrong shape or dtype, 429 when full; nothing queued then."""
        shape, dtype = self.runner.frame_shape, self.runner.dtype
        if tuple(frames.shape) == shape:
            frames = frames[None]
        if frames.dim() != len(shape) + 1 or tuple(frames.shape[1:]) != shape:
            raise HTTPException(422, f"stream {stream_id!r} takes frames of shape (C, *S) = {list(shape)} or "
                                     f"(N, C, *S), got {list(frames.shape)}")
        if frames.dtype != dtype:
            raise HTTPException(422, f"stream {stream_id!r} takes frames of dtype {str(dtype).replace('torch.', '')}, "
                                     f"got {str(frames.dtype).replace('torch.', '')}")
        with self.lock:
            self._known(stream_id)
            if len(self.outbox[stream_id]) >= self.max_outputs:
                raise HTTPException(429, f"stream {stream_id!r} has {len(self.outbox[stream_id])} unread outputs: "
                                         f"fetch them (GET .../outputs?after=K) first")
            if self.runner.pending(stream_id) + len(frames) > self.max_pending:
                raise HTTPException(429, f"stream {stream_id!r} has {self.runner.pending(stream_id)} frames queued "
                                         f"(at most {self.max_pending}): retry later")
            self.runner.push_many([stream_id] * len(frames), frames)
            pending = self.runner.pending(stream_id)
        self.wake.set()
        return pending

    def _outputs(self, stream_id: str, after: int) -> List[dict]:
        with self.lock:
            self._known(stream_id)
            box = self.outbox[stream_id]
            while box and box[0].index < after:
                box.popleft()
            return [encode_output(o) for o in box]

    # --- HTTP ----------------------------------------------------------------------------------
    @app.post("/streams", status_code=201)
    def open(self, request: OpenRequest) -> Dict[str, Any]:
        with self.lock:
            try:
                self.runner.open(request.id)
            except StreamIdError as e:
                raise HTTPException(409, str(e)) from None
            self.outbox[request.id] = collections.deque()
            return {"id": request.id, "shard": self.runner.shard_of(request.id),
                    "frame_shape": list(self.runner.frame_shape), "dtype": str(self.runner.dtype).replace("torch.", "")}

    @app.delete("/streams/{stream_id}")
    def close(self, stream_id: str) -> Dict[str, Any]:
        with self.lock:
            self._known(stream_id)
            dropped = self.runner.close(stream_id)
            del self.outbox[stream_id]
        return {"id": stream_id, "dropped": dropped}

    @app.post("/streams/{stream_id}/frames", status_code=202)
    async def frames(self, stream_id: str, request: Request) -> Dict[str, Any]:
        self.loop = asyncio.get_running_loop()
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > self.max_body_bytes:
            raise HTTPException(413, f"a request body may have at most {self.max_body_bytes} bytes, got {size}")
        body = await request.body()
        if len(body) > self.max_body_bytes:
            raise HTTPException(413, f"a request body may have at most {self.max_body_bytes} bytes, got {len(body)}")
        with self.lock:
            self._known(stream_id)
        content_type = request.headers.get("content-type", "")
        try:
            frames = decode_frames(body, content_type)
        except WireError as e:
            raise HTTPException(415 if "unsupported content type" in str(e) else 400, str(e)) from None
        if content_type.startswith("image/"):
            frames = frames.to(self.runner.dtype)
        return {"id": stream_id, "pending": self._queue(stream_id, frames)}

    @app.get("/streams/{stream_id}/outputs")
    def outputs(self, stream_id: str, after: int = 0) -> Dict[str, Any]:
        return {"id": stream_id, "outputs": self._outputs(stream_id, after)}

    @app.get("/status")
    def status(self) -> Dict[str, Any]:
        with self.lock:
            return self.runner.status()

    # --- WebSocket -----------------------------------------------------------------------------
    @app.websocket("/streams/{stream_id}/ws")
    async def websocket(self, ws: WebSocket, stream_id: str, after: int = 0) -> None:
        self.loop = asyncio.get_running_loop()
        await ws.accept()
        try:
            backlog = self._outputs(stream_id, after)
        except HTTPException as e:
            await ws.close(code=4404, reason=e.detail[:120])
            return
        queue: asyncio.Queue = asyncio.Queue()
        self.listeners[stream_id].append(queue)
        sent = max([o["index"] + 1 for o in backlog], default=after)

        async def send_outputs():
            nonlocal sent
            for o in backlog:
                await ws.send_text(json.dumps(o))
            while True:
                o = await queue.get()
                if o.index >= sent:
                    sent = o.index + 1
                    await ws.send_text(json.dumps(encode_output(o)))

        sender = asyncio.create_task(send_outputs())
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    if message.get("bytes") is not None:
                        self._queue(stream_id, decode_frames(message["bytes"], NPY))
                    else:
                        self._outputs(stream_id, int(json.loads(message["text"])["ack"]))
                except (WireError, HTTPException, ValueError, KeyError, TypeError) as e:
                    detail = e.detail if isinstance(e, HTTPException) else f"{type(e).__name__}: {e}"
                    code = e.status_code if isinstance(e, HTTPException) else 400
                    await ws.send_text(json.dumps({"error": detail, "status": code}))
        except WebSocketDisconnect:
            pass
        finally:
            sender.cancel()
            self.listeners[stream_id].remove(queue)


def deploy(model, params=None, *, host: str = "127.0.0.1", port: int = 8000, name: str = "cofunc", **kwargs):
    """Start Serve's HTTP proxy on ``host:port`` and run the ingress (``kwargs``: `StreamIngress`'s
    and `RayStreamRunner`'s arguments, ``shards`` and ``store`` among them). Returns the URL.

    Example:
        >>> url = deploy(layer, params, frame_shape=(2,), shards=2, store="/tmp/ckpt")  # doctest: +SKIP
        >>> client = IngressClient(url)  # doctest: +SKIP
    """
    serve.start(http_options={"host": host, "port": int(port)})
    serve.run(StreamIngress.bind(model, params, **kwargs), name=name, route_prefix="/")
    return f"http://{host}:{int(port)}"


class IngressError(CofuncError, RuntimeError):
    """The ingress answered an error; ``status`` is the HTTP status, the message the server's."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


class IngressClient:
    """A Python client for the ingress: open streams, send frames, read outputs (HTTP), or stream
    both ways over a WebSocket (`connect`). It remembers each stream's next output index, so a
    new client given ``after`` (or the same one after a dropped connection) continues exactly.

    Example:
        >>> client = IngressClient("http://127.0.0.1:8000")  # doctest: +SKIP
        >>> client.open("cam0"); client.push("cam0", torch.randn(3, 8, 8))  # doctest: +SKIP
        >>> client.outputs("cam0")  # doctest: +SKIP
    """

    def __init__(self, url: str, timeout: float = 30.0):
        import requests

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.next_index: Dict[str, int] = {}

    def __repr__(self) -> str:
        return f"IngressClient({self.url!r}, streams={sorted(self.next_index)})"

    def _check(self, response):
        if response.status_code >= 400:
            try:
                message = response.json().get("detail", response.text)
            except ValueError:
                message = response.text
            raise IngressError(response.status_code, str(message))
        return response.json()

    def open(self, stream_id: str) -> Dict[str, Any]:
        out = self._check(self.session.post(f"{self.url}/streams", json={"id": stream_id}, timeout=self.timeout))
        self.next_index[stream_id] = 0
        return out

    def close(self, stream_id: str) -> int:
        out = self._check(self.session.delete(f"{self.url}/streams/{stream_id}", timeout=self.timeout))
        self.next_index.pop(stream_id, None)
        return out["dropped"]

    def push(self, stream_id: str, frames: Tensor) -> int:
        """Send one frame ``(C, *S)`` or frames ``(N, C, *S)``; returns the frames queued."""
        return self.push_bytes(stream_id, encode_frames(frames), NPY)

    def push_bytes(self, stream_id: str, body: bytes, content_type: str) -> int:
        """Send an encoded body (a ``.npy`` file, a PNG or JPEG image)."""
        out = self._check(self.session.post(f"{self.url}/streams/{stream_id}/frames", data=body,
                                            headers={"content-type": content_type}, timeout=self.timeout))
        return out["pending"]

    def outputs(self, stream_id: str, after: Optional[int] = None) -> List[StreamOutput]:
        """The outputs not read yet (or from index ``after``); acknowledges the earlier ones."""
        after = self.next_index.get(stream_id, 0) if after is None else after
        out = self._check(self.session.get(f"{self.url}/streams/{stream_id}/outputs", params={"after": after},
                                           timeout=self.timeout))
        outputs = [decode_output(d) for d in out["outputs"]]
        if outputs:
            self.next_index[stream_id] = outputs[-1].index + 1
        return outputs

    def status(self) -> Dict[str, Any]:
        return self._check(self.session.get(f"{self.url}/status", timeout=self.timeout))

    def connect(self, stream_id: str, after: Optional[int] = None) -> "StreamSocket":
        """A WebSocket for one stream, starting at output ``after`` (default: the next unread)."""
        after = self.next_index.get(stream_id, 0) if after is None else after
        return StreamSocket(self, stream_id, after)


class StreamSocket:
    """One stream's WebSocket: `send` frames, `receive` outputs (acknowledged as they come)."""

    def __init__(self, client: IngressClient, stream_id: str, after: int):
        from websockets.sync.client import connect

        self.client = client
        self.stream_id = stream_id
        url = client.url.replace("http://", "ws://").replace("https://", "wss://")
        self.ws = connect(f"{url}/streams/{stream_id}/ws?after={after}", open_timeout=client.timeout)
        client.next_index.setdefault(stream_id, after)

    def __enter__(self) -> "StreamSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.ws.close()

    def send(self, frames: Tensor) -> None:
        self.ws.send(encode_frames(frames))

    def receive(self, n: int, timeout: float = 30.0) -> List[StreamOutput]:
        """The next ``n`` outputs (raises `IngressError` for an error message, TimeoutError)."""
        outputs: List[StreamOutput] = []
        while len(outputs) < n:
            message = json.loads(self.ws.recv(timeout=timeout))
            if "error" in message:
                raise IngressError(message["status"], message["error"])
            o = decode_output(message)
            if o.index < self.client.next_index[self.stream_id]:
                continue  # sent again after a reconnect: already received
            outputs.append(o)
            self.client.next_index[self.stream_id] = o.index + 1
        self.ws.send(json.dumps({"ack": self.client.next_index[self.stream_id]}))
        return outputs
