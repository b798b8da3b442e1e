"""Saving and loading stream states with ``torch.save``, checked against the layer on load."""

from __future__ import annotations

import hashlib
from typing import Any, Optional, Sequence, Tuple

import optree
import torch

from ._errors import CofuncError, StateError
from ._layer import Layer, resolve_layer
from ._values import TREE_NAMESPACE
from ._state_names import state_names

_FORMAT = "cofunc-state-2"
_OLD_FORMATS = ("cofunc-state-1",)  # still read: the whole layer label as the identity


def layer_fingerprint(layer: Layer) -> str:
    """A short identity of ``layer``'s structure and options: the SHA-256 of its label (which
    spells out every child and its options), 16 hex digits."""
    return hashlib.sha256(layer.label.encode()).hexdigest()[:16]


def _short_label(layer: Layer) -> str:
    label = layer.label
    return label if len(label) <= 80 else label[:77] + "..."


def _meta_template(layer: Layer, params, step_shape, dtype):
    """The fresh state for ``step_shape`` on the meta device (shapes and dtypes only)."""
    if params is None:
        params = layer.init_params(device="meta")
    with torch.no_grad():
        return layer.init_state(params, step_shape, device="meta", dtype=dtype)


def infer_step_shape(layer: Layer, state) -> Optional[Tuple[int, ...]]:
    """The step shape ``(*B, C, *S)`` whose fresh state has exactly ``state``'s structure, leaf
    shapes and dtypes, when ``state`` shows it: the stream dims ``*B`` from its step counters,
    ``(C, *S)`` from a leaf that buffers input frames (``(*B, C, t, *S)``, as the first
    temporal convolution, pool or delay of a network keeps). None when no leaf does (a network
    that reduces its frames before its first temporal layer, such as X3D's spatial stem)."""
    leaves, spec = optree.tree_flatten(state, namespace=TREE_NAMESPACE)
    counters = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor) and leaf.dtype == torch.int64]
    if not counters:
        return None
    batch = tuple(counters[0].shape)
    rank = layer.step_rank
    dtype = _float_dtype([leaf for leaf in leaves if isinstance(leaf, torch.Tensor)])
    tried = set()
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point() or tuple(leaf.shape[:len(batch)]) != batch:
            continue
        frame = tuple(leaf.shape[len(batch):])
        for candidate in (frame[:1] + frame[2:], frame):  # a buffer of frames, or one frame
            if not candidate or candidate in tried or (rank is not None and len(candidate) != rank):
                continue
            tried.add(candidate)
            try:
                template = _meta_template(layer, None, batch + candidate, dtype)
            except Exception:  # noqa: BLE001 - a candidate the layer rejects is simply not it
                continue
            want, want_spec = optree.tree_flatten(template, namespace=TREE_NAMESPACE)
            if want_spec == spec and all(w.shape == g.shape and w.dtype == g.dtype for w, g in zip(want, leaves)):
                return batch + candidate
    return None


def state_dict_of(layer: Layer, state, step_shape: Optional[Sequence[int]] = None) -> dict:
    """A plain dict (tensors, strings, ints) describing ``state``, after checking that it is a
    state of ``layer`` (for ``step_shape``, given or inferred); loads with ``weights_only``."""
    leaves, spec = optree.tree_flatten(state, namespace=TREE_NAMESPACE)
    if step_shape is None:
        step_shape = infer_step_shape(layer, state)
    if step_shape is None:
        raise StateError(
            f"{_short_label(layer)}: save_state cannot read the step shape from this state (no leaf "
            f"buffers the input frames); pass step_shape=(*B, C, *S)"
        )
    data = {
        "format": _FORMAT,
        "layer": _short_label(layer),
        "fingerprint": layer_fingerprint(layer),
        "step_shape": [int(s) if not isinstance(s, (list, tuple)) else list(s) for s in step_shape],
        "structure": str(spec),
        "names": state_names(layer, state),
        "leaves": [_own_frames(t) for t in leaves],
    }
    _check(layer, None, data, "the state to save")  # what is saved loads: fail now, not at load
    return data


def _own_frames(t):
    """``t`` with a storage of its own size: torch.save writes a view's whole storage, and an
    eagerly stepped buffer is a view of its last window (`push_frames`)."""
    if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return t.clone()
    return t


def save_state(f, layer: Layer, state=None, step_shape: Optional[Sequence[int]] = None) -> None:
    """Save a stream state to a file or buffer, after checking that it is a state of ``layer``.

    ``layer`` may be a ``cofunc.nn`` module (its own stream's state by default).
    ``step_shape``, the step input's shape ``(*B, C, *S)``, is needed only when the state does
    not show it: it is read from a leaf that buffers input frames (`infer_step_shape`), or, for
    a module, from the stream it stepped. The state is checked against the fresh state for the
    step shape (structure, every leaf's shape and dtype, counters) before anything is written,
    and again on load. The file names the layer by a fingerprint of its structure
    (`layer_fingerprint`, with its label cut to 80 characters for messages) and each leaf by
    its `cofunc.state_names` path; it holds tensors, strings and ints only (``torch.load`` with
    ``weights_only=True`` reads it, no code runs).

    Raises:
        StateError: ``state`` is not a state of ``layer`` (another structure, leaf shapes or
            dtypes, counters out of range), or its step shape is unknown.

    Example:
        >>> import io, torch, cofunc
        >>> layer = cofunc.conv1d(1, 1, 3)
        >>> params = layer.init_params()
        >>> state = layer.init_state(params, (2, 1))
        >>> buffer = io.BytesIO()
        >>> cofunc.save_state(buffer, layer, state)  # the step shape (2, 1) is read from the state
        >>> _ = buffer.seek(0)
        >>> restored = cofunc.load_state(buffer, layer, params)
        >>> torch.equal(restored.buffer, state.buffer)
        True
    """
    stepped_shape = None
    if not isinstance(layer, Layer) and hasattr(layer, "get_state") and state is None:
        state = layer.get_state()
        if state is None:
            raise StateError(f"save_state: {type(layer).__name__} has no stream yet (step it first)")
        stepped_shape = getattr(layer, "_co_step_shape", None)  # the step shape of its stream
    if isinstance(state, (tuple, list)) and step_shape is None and state and all(isinstance(d, int) for d in state):
        raise StateError("save_state: expected a state, got a shape; the order is (f, layer, state, step_shape)")
    layer, _, step_shape = resolve_layer("save_state", layer, None, step_shape or stepped_shape, need_params=False)
    if state is None and layer.stateful:
        raise StateError(f"{_short_label(layer)}: save_state needs a state")
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
    leaves, template = _check(layer, params, data, "the saved state")
    return optree.tree_unflatten(optree.tree_structure(template, namespace=TREE_NAMESPACE), leaves)


def _check(layer: Layer, params, data: dict, what: str):
    """Check ``data`` (a saved-state dict) against ``layer``; returns its leaves and the fresh
    state it was checked against (whose structure the loader rebuilds the state with)."""
    label = _short_label(layer)
    if not isinstance(data, dict) or data.get("format") not in (_FORMAT,) + _OLD_FORMATS:
        raise StateError(f"{label}: expected a cofunc state (format {_FORMAT!r}), got {_kind(data)}")
    old = data["format"] in _OLD_FORMATS
    fields = {"layer": str, "step_shape": list, "structure": str, "leaves": list}
    if not old:
        fields.update(fingerprint=str, names=list)
    for key, kind in fields.items():
        value = data.get(key)
        if not isinstance(value, kind):
            raise StateError(f"{label}: a saved state needs {key!r} as a {kind.__name__}, got {_kind(value)}")
    if old and data["layer"] != layer.label:
        raise StateError(f"{label}: the saved state belongs to another layer, {data['layer']}")
    if not old and data["fingerprint"] != layer_fingerprint(layer):
        raise StateError(
            f"{label}: the saved state belongs to another layer, {data['layer']} (fingerprint "
            f"{data['fingerprint']}, this layer's is {layer_fingerprint(layer)})"
        )
    leaves = data["leaves"]
    names = data.get("names") or [f"leaf {i}" for i in range(len(leaves))]
    if len(names) != len(leaves) or not all(isinstance(n, str) for n in names):
        raise StateError(f"{label}: the saved state names {len(names)} leaves but holds {len(leaves)}")
    for name, leaf in zip(names, leaves):
        if not isinstance(leaf, torch.Tensor):
            raise StateError(f"{label}: state leaf {name} should be a tensor, got {_kind(leaf)}")
    dtype = _float_dtype(leaves)
    if data["step_shape"] is not None:
        step_shape = _step_shape(layer, data["step_shape"])
        try:
            if params is None:
                template = _meta_template(layer, None, step_shape, dtype)
            else:
                template = layer.init_state(params, step_shape, device=leaves[0].device if leaves else None, dtype=dtype)
        except CofuncError as e:
            raise StateError(f"{label}: the step shape {data['step_shape']} of {what} does not fit this layer ({e})") from e
        except Exception as e:  # noqa: BLE001 - torch's own shape errors for a step shape of another size
            raise StateError(f"{label}: the step shape {data['step_shape']} of {what} does not fit this layer "
                             f"({type(e).__name__}: {_short(e)})") from e
        want, spec = optree.tree_flatten(template, namespace=TREE_NAMESPACE)
        if len(want) != len(leaves) or str(spec) != data["structure"]:
            raise StateError(f"{label}: {what} is structured as {data['structure']}, expected {spec}")
        for name, w, got in zip(names, want, leaves):
            if w.shape != got.shape or w.dtype != got.dtype:
                raise StateError(
                    f"{label}: state leaf {name} should have shape {tuple(w.shape)} and dtype {w.dtype}, "
                    f"{what} has {tuple(got.shape)} and {got.dtype}"
                )
    else:
        raise StateError(f"{label}: {what} has no step shape")
    counters = [leaf for leaf in leaves if leaf.dtype == torch.int64]
    batch = tuple(counters[0].shape) if counters else None
    for name, got in zip(names, leaves):
        if batch is not None and tuple(got.shape[:len(batch)]) != batch:
            raise StateError(f"{label}: state leaf {name} has shape {tuple(got.shape)}, not the streams' {batch}")
        if got.dtype == torch.int64 and got.numel():  # step counters (and positions)
            lo, hi = int(got.min()), int(got.max())
            if lo < 0 or hi >= MAX_COUNT:
                raise StateError(
                    f"{label}: state leaf {name} holds step counters from {lo} to {hi}; counters are "
                    f"in [0, 2**62): {what} is corrupt"
                )
    return leaves, template


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
