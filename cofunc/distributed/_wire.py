"""How frames and outputs travel over HTTP and WebSocket (shared by the server and the client).

Frames: a ``.npy`` file (``numpy.save``; ``(C, *S)`` for one frame, ``(N, C, *S)`` for N),
read without pickle, or a PNG/JPEG image decoded to ``(3, H, W)`` in ``[0, 1]``. Outputs: JSON
``{"stream", "frame", "index", "shape", "dtype", "value"}`` with the value as nested lists
(floats are written with all their digits, so they read back bit-exactly).
"""

from __future__ import annotations

import io
from typing import Any, Dict

import numpy as np
import torch
from torch import Tensor

from .._runner import StreamOutput

NPY = "application/x-npy"
IMAGE_TYPES = ("image/png", "image/jpeg")


class WireError(ValueError):
    """A body that is not a frame (the server answers 400 with the message)."""


def encode_frames(frames: Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, frames.detach().cpu().numpy(), allow_pickle=False)
    return buffer.getvalue()


def decode_frames(body: bytes, content_type: str) -> Tensor:
    content_type = (content_type or "").split(";")[0].strip().lower()
    if content_type in (NPY, "application/octet-stream"):
        try:
            array = np.load(io.BytesIO(body), allow_pickle=False)
        except Exception as e:  # numpy raises ValueError, OSError, EOFError, ... on bad files
            raise WireError(f"the body is not a .npy array ({type(e).__name__}: {e})") from None
        if array.dtype.kind not in "fiub":
            raise WireError(f"frames must be numbers, got dtype {array.dtype}")
        return torch.from_numpy(array.copy())
    if content_type in IMAGE_TYPES:
        try:
            from PIL import Image

            image = Image.open(io.BytesIO(body)).convert("RGB")
        except Exception as e:
            raise WireError(f"the body is not a readable {content_type} image ({type(e).__name__})") from None
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255)
    raise WireError(f"unsupported content type {content_type!r}: send {NPY} frames or a PNG/JPEG image")


def encode_output(o: StreamOutput) -> Dict[str, Any]:
    return {"stream": o.stream, "frame": o.frame, "index": o.index, "shape": list(o.value.shape),
            "dtype": str(o.value.dtype).replace("torch.", ""), "value": o.value.tolist()}


def decode_output(d: Dict[str, Any]) -> StreamOutput:
    value = torch.tensor(d["value"], dtype=getattr(torch, d["dtype"])).reshape(d["shape"])
    return StreamOutput(d["stream"], d["frame"], d["index"], value)
