"""Saving and loading stream states with ``torch.save``, checked against the layer on load."""

from __future__ import annotations

from typing import Any, Sequence

import optree
import torch

from ._errors import CofuncError, StateError
from ._layer import TREE_NAMESPACE, Layer

_FORMAT = "cofunc-state-1"


def state_dict_of(layer: Layer, state, step_shape: Sequence[int]) -> dict:
    """A plain dict (tensors, strings, ints) describing ``state``; loads with ``weights_only``."""
    leaves, spec = optree.tree_flatten(state, namespace=TREE_NAMESPACE)
    return {
        "format": _FORMAT,
        "layer": layer.label,
        "step_shape": [int(s) if not isinstance(s, (list, tuple)) else list(s) for s in step_shape],
        "structure": str(spec),
        "leaves": leaves,
    }


def save_state(f, layer: Layer, state, step_shape: Sequence[int]) -> None:
    """Save a stream state to a file or buffer; ``step_shape`` is the step input's shape.

    Example:
        >>> import io, torch, cofunc
        >>> layer = cofunc.conv1d(1, 1, 3)
        >>> params = layer.init_params()
        >>> state = layer.init_state(params, (2, 1))
        >>> buffer = io.BytesIO()
        >>> cofunc.save_state(buffer, layer, state, (2, 1))
        >>> _ = buffer.seek(0)
        >>> restored = cofunc.load_state(buffer, layer, params)
        >>> torch.equal(restored.buffer, state.buffer)
        True
    """
    torch.save(state_dict_of(layer, state, step_shape), f)


def load_state(f, layer: Layer, params, *, map_location=None) -> Any:
    """Load a state saved by `save_state` and check that it fits ``layer``.

    Raises `StateError` if the file cannot be read as a cofunc state (truncated, empty, random
    bytes, a pickle with code in it, another format), holds a state of another layer, leaves of
    other shapes or dtypes than ``layer.init_state`` makes for the saved step shape, or step
    counters that are negative or absurdly large (>= 2**62). A missing file raises the usual
    `OSError`.
    """
    try:
        data = torch.load(f, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.load raises whatever its unpickler meets
        raise StateError(f"{layer.label}: could not read a saved state ({type(e).__name__}: {_short(e)})") from e
    return state_from_dict(layer, params, data)


# Counters beyond this are corrupt rather than long streams (2**62 steps at 1 GHz take 146 years),
# and would overflow the int64 arithmetic of later steps.
MAX_COUNT = 2 ** 62


def state_from_dict(layer: Layer, params, data: dict) -> Any:
    """The state described by ``data`` (from `state_dict_of`), checked against ``layer``."""
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise StateError(f"{layer.label}: expected a cofunc state (format {_FORMAT!r}), got {_kind(data)}")
    fields = {"layer": str, "step_shape": list, "structure": str, "leaves": list}
    for key, kind in fields.items():
        if not isinstance(data.get(key), kind):
            raise StateError(
                f"{layer.label}: a saved state needs {key!r} as a {kind.__name__}, got {_kind(data.get(key))}"
            )
    if data["layer"] != layer.label:
        raise StateError(f"{layer.label}: the saved state belongs to another layer, {data['layer']}")
    step_shape = _step_shape(layer, data["step_shape"])
    leaves = data["leaves"]
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise StateError(f"{layer.label}: saved state leaf {i} should be a tensor, got {_kind(leaf)}")
    try:
        template = layer.init_state(params, step_shape, device=leaves[0].device if leaves else None,
                                    dtype=_float_dtype(leaves))
    except CofuncError as e:
        raise StateError(f"{layer.label}: the saved step shape {data['step_shape']} does not fit this layer ({e})") from e
    want, spec = optree.tree_flatten(template, namespace=TREE_NAMESPACE)
    if len(want) != len(leaves) or str(spec) != data["structure"]:
        raise StateError(f"{layer.label}: the saved state is structured as {data['structure']}, expected {spec}")
    for i, (w, got) in enumerate(zip(want, leaves)):
        if w.shape != got.shape or w.dtype != got.dtype:
            raise StateError(
                f"{layer.label}: state leaf {i} should have shape {tuple(w.shape)} and dtype {w.dtype}, "
                f"the saved one has {tuple(got.shape)} and {got.dtype}"
            )
        if got.dtype == torch.int64 and got.numel():  # step counters (and positions)
            lo, hi = int(got.min()), int(got.max())
            if lo < 0 or hi >= MAX_COUNT:
                raise StateError(
                    f"{layer.label}: state leaf {i} holds step counters from {lo} to {hi}; counters are "
                    f"in [0, 2**62): the file is corrupt"
                )
    return optree.tree_unflatten(spec, leaves)


def _step_shape(layer: Layer, saved: list):
    """The saved step shape: non-negative ints, or a list of such shapes (multi-stream values)."""

    def dims(shape) -> bool:
        return isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 31 for d in shape)

    if dims(saved) and saved:
        return tuple(saved)
    if saved and all(dims(s) and s for s in saved):
        return [tuple(s) for s in saved]
    raise StateError(f"{layer.label}: the saved step shape should be a list of non-negative ints, got {saved!r}")


def _kind(value) -> str:
    return type(value).__name__ if not isinstance(value, str) else repr(value[:40])


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else "no details"


def _float_dtype(leaves):
    for leaf in leaves:
        if leaf.is_floating_point():
            return leaf.dtype
    return None
