"""Checkpoint files that load without executing code: safetensors with a JSON header, or a
``torch.save`` dict of tensors and one JSON string (read back with ``weights_only=True``).

The format is chosen on save (``.pt`` and ``.pth`` paths are torch files, anything else
safetensors) and recognised from the content on load, so either kind restores the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ._errors import ConfigurationError, StateError
from ._params import flatten_params

_HEADER_KEY = "cofunc"


def _is_torch_path(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).endswith((".pt", ".pth"))


def write_checkpoint(path, header: dict, tensors: Dict[str, Tensor], format: Optional[str] = None) -> None:
    """Write ``tensors`` and the JSON-serialisable ``header`` to a path or binary file."""
    format = format or ("torch" if _is_torch_path(path) else "safetensors")
    text = json.dumps(header)
    # Every tensor gets its own contiguous CPU memory: safetensors refuses views of one storage.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    if format == "torch":
        torch.save({_HEADER_KEY: text, "tensors": tensors}, path)
        return
    if format != "safetensors":
        raise ConfigurationError(f"checkpoint: format must be 'safetensors' or 'torch', got {format!r}")
    try:
        from safetensors.torch import save
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigurationError("checkpoint: saving safetensors needs the `safetensors` package "
                                 "(pip install 'cofunc[video]'), or save to a .pt path") from e
    data = save(tensors, metadata={_HEADER_KEY: text})
    if isinstance(path, (str, os.PathLike)):
        with open(path, "wb") as f:
            f.write(data)
    else:
        path.write(data)


def read_checkpoint(path) -> Tuple[dict, Dict[str, Tensor]]:
    """``(header, tensors)`` of a file written by `write_checkpoint` (no code is executed)."""
    if isinstance(path, (str, os.PathLike)):
        with open(path, "rb") as f:
            data = f.read()
    else:
        data = path.read()
    if data[:2] == b"PK":  # torch.save's zip container
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        if not isinstance(obj, dict) or _HEADER_KEY not in obj:
            raise StateError("checkpoint: a torch file without a cofunc header")
        return json.loads(obj[_HEADER_KEY]), obj["tensors"]
    if len(data) < 8:
        raise StateError("checkpoint: the file is neither a safetensors nor a torch file")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        meta = json.loads(data[8: 8 + n]).get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError):
        raise StateError("checkpoint: the file is neither a safetensors nor a torch file") from None
    if _HEADER_KEY not in meta:
        raise StateError("checkpoint: a safetensors file without a cofunc header")
    from safetensors.torch import load

    return json.loads(meta[_HEADER_KEY]), load(data)


def params_digest(params) -> str:
    """SHA-256 of the params' names, dtypes, shapes and bytes: equal digests, equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(flatten_params(params).items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
