"""Saving and loading stream states with ``torch.save``, checked against the layer on load."""

from __future__ import annotations

from typing import Any, Sequence

import optree
import torch

from ._errors import StateError
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

    Raises `StateError` if the file holds no cofunc state, or a state of another layer, or leaves
    of other shapes or dtypes than ``layer.init_state`` makes for the saved step shape.
    """
    data = torch.load(f, map_location=map_location, weights_only=True)
    return state_from_dict(layer, params, data)


def state_from_dict(layer: Layer, params, data: dict) -> Any:
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise StateError(f"{layer.label}: expected a cofunc state (format {_FORMAT!r}), got {type(data).__name__}")
    if data["layer"] != layer.label:
        raise StateError(f"{layer.label}: the saved state belongs to another layer, {data['layer']}")
    step_shape = tuple(tuple(s) if isinstance(s, list) else s for s in data["step_shape"])
    leaves = data["leaves"]
    template = layer.init_state(params, list(step_shape) if isinstance(step_shape[0], tuple) else step_shape,
                                device=leaves[0].device if leaves else None,
                                dtype=_float_dtype(leaves))
    want, spec = optree.tree_flatten(template, namespace=TREE_NAMESPACE)
    if len(want) != len(leaves) or str(spec) != data["structure"]:
        raise StateError(f"{layer.label}: the saved state is structured as {data['structure']}, expected {spec}")
    for i, (w, got) in enumerate(zip(want, leaves)):
        if w.shape != got.shape or w.dtype != got.dtype:
            raise StateError(
                f"{layer.label}: state leaf {i} should have shape {tuple(w.shape)} and dtype {w.dtype}, "
                f"the saved one has {tuple(got.shape)} and {got.dtype}"
            )
    return optree.tree_unflatten(spec, leaves)


def _float_dtype(leaves):
    for leaf in leaves:
        if leaf.is_floating_point():
            return leaf.dtype
    return None
