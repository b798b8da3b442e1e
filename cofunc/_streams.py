"""Tree operations along the stream axis, for serving many independent streams.

A state's leaves all start with the stream dims ``*B``; these functions work on the first stream
dim (``B`` streams). All are out of place, so the input state stays a valid snapshot.

Streams are selected in one of these forms: a bool mask tensor of shape ``(B,)``, a list of
``B`` Python bools, a list, tuple or 1-d integer tensor of distinct indices in ``[0, B)``, or a
slice. Anything else raises `StateError` (naming ``B``) before anything is computed.
"""

from __future__ import annotations

import numbers
from typing import List, Optional, Sequence, Union

import optree
import torch
from torch import Tensor

from ._errors import StateError
from ._layer import Layer
from ._values import TREE_NAMESPACE, first_tensor, tree_map, tree_where, values_are_concrete, zero_invalid

Streams = Union[Tensor, Sequence[int], Sequence[bool], slice]

_FORMS = ("a bool mask of shape ({n},), a list or 1-d tensor of distinct stream indices in "
          "[0, {n}), a list of {n} bools, or a slice")


def _describe(streams) -> str:
    if isinstance(streams, Tensor):
        return f"a {streams.dtype} tensor of shape {tuple(streams.shape)}"
    if isinstance(streams, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in streams})
        return f"a {type(streams).__name__} of {len(streams)} ({', '.join(kinds) or 'empty'})"
    return f"{type(streams).__name__} {streams!r}"


def _refuse(what: str, n: int, streams, why: str = "") -> StateError:
    return StateError(f"{what}: cannot select streams by {_describe(streams)}{why}; expected {_FORMS.format(n=n)} "
                      f"(the state holds {n} streams)")


def _selection(streams: Streams, n: int, device, what: str):
    """Check a stream selection and convert it: ``("mask", bool (n,))`` or ``("index", int64 (k,))``.

    Accepted: a bool tensor of shape ``(n,)``; a 1-d integer tensor, list or tuple of distinct
    indices in ``[0, n)`` (negative indices are refused: a -1 is more often a "no stream"
    sentinel than a wish for the last slot); a list or tuple of ``n`` Python bools; a slice.
    Values are checked when they can be read (not while compiling or vmapping).
    """
    if isinstance(streams, slice):
        try:
            return "index", torch.arange(n, device=device)[streams]
        except ValueError as e:  # a zero step
            raise _refuse(what, n, streams, f" ({e})") from None
    if isinstance(streams, (list, tuple)):
        values = list(streams)
        if values and all(isinstance(v, bool) for v in values):
            if len(values) != n:
                raise _refuse(what, n, streams, f": a bool list needs one entry per stream")
            return "mask", torch.tensor(values, dtype=torch.bool, device=device)
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
            raise _refuse(what, n, streams)
        index = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    elif isinstance(streams, Tensor):
        if streams.dtype == torch.bool:
            if tuple(streams.shape) != (n,):
                raise _refuse(what, n, streams, f": a bool mask needs shape ({n},)")
            return "mask", streams.to(device)
        if streams.is_floating_point() or streams.is_complex() or streams.dim() != 1:
            raise _refuse(what, n, streams)
        index = streams.to(device=device, dtype=torch.int64)
    else:
        raise _refuse(what, n, streams)
    if index.numel() and values_are_concrete(index):
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= n:
            raise _refuse(what, n, streams, f": index {lo if lo < 0 else hi} is out of range")
        if torch.unique(index).numel() != index.numel():
            raise _refuse(what, n, streams, ": an index repeats")
    return "index", index


def _as_index(streams: Streams, n: int, device, what: str) -> Tensor:
    kind, value = _selection(streams, n, device, what)
    return value.nonzero().flatten() if kind == "mask" else value


def _as_mask(streams: Streams, n: int, device, what: str) -> Tensor:
    kind, value = _selection(streams, n, device, what)
    if kind == "mask":
        return value
    return torch.zeros(n, dtype=torch.bool, device=device).index_fill(0, value, True)


def _leaves(state):
    return optree.tree_leaves(state, namespace=TREE_NAMESPACE)


def _stream_count(state, what: str) -> int:
    leaves = _leaves(state)
    if not leaves:
        raise StateError(f"{what}: stream operations need a state with tensors (a stateless layer has none)")
    if leaves[0].dim() == 0:
        raise StateError(f"{what}: the state has no stream dim (its first leaf is a scalar); stack it with `stack_streams`")
    return leaves[0].shape[0]


def _check_alike(what: str, state, other, other_name: str, streams: Optional[int]) -> None:
    """``other`` must have ``state``'s structure and leaf shapes (with ``streams`` streams) and dtypes."""
    want = optree.tree_structure(state, namespace=TREE_NAMESPACE)
    got = optree.tree_structure(other, namespace=TREE_NAMESPACE)
    if want != got:
        raise StateError(f"{what}: {other_name} is structured as {got}, the state as {want}; it belongs to another layer")
    for i, (a, b) in enumerate(zip(_leaves(state), _leaves(other))):
        shape = tuple(a.shape) if streams is None else (streams,) + tuple(a.shape[1:])
        if not isinstance(b, Tensor) or tuple(b.shape) != shape or b.dtype != a.dtype:
            found = f"{tuple(b.shape)} {b.dtype}" if isinstance(b, Tensor) else type(b).__name__
            raise StateError(f"{what}: leaf {i} of {other_name} should be {shape} {a.dtype}, got {found}")


def step_streams(layer: Layer, params, state, x: Tensor, active: Streams):
    """One step in which only the ``active`` streams receive a frame.

    ``active`` selects streams like `take_streams` does (usually a bool mask ``(B,)``). Paused
    streams keep their state exactly and output zeros. Returns ``(y, valid, state)`` where
    ``valid`` is per stream. A selection that is not one of the accepted forms raises
    `StateError` before anything is computed.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.conv1d(1, 1, 2)
        >>> params = layer.init_params()
        >>> state = layer.init_state(params, (2, 1))
        >>> y, valid, state = cofunc.step_streams(layer, params, state, torch.ones(2, 1), torch.tensor([True, False]))
        >>> state.count
        tensor([1, 0])
    """
    what = f"step_streams({layer.label})"
    leaves = _leaves(state)
    if leaves:
        n, device = _stream_count(state, what), leaves[0].device
    else:  # a stateless layer: the streams are the input's first dim
        frame = first_tensor(x)
        if not isinstance(frame, Tensor) or frame.dim() == 0:
            raise StateError(f"{what}: a stateless layer takes its streams from the input's first dim, got {_describe(frame)}")
        n, device = frame.shape[0], frame.device
    active = _as_mask(active, n, device, what)
    y, new_state = layer.step(params, state, x)
    if values_are_concrete(active) and bool(active.all()):  # all active: nothing to keep
        return y, layer.valid(new_state) & active, new_state
    new_state = tree_where(active, new_state, state)
    valid = layer.valid(new_state) & active
    return zero_invalid(y, valid), valid, new_state


def reset_streams(state, streams: Streams, fresh):
    """The state with the selected streams replaced by ``fresh``'s.

    ``streams`` is a bool mask ``(B,)`` (or a list of ``B`` bools), distinct indices in
    ``[0, B)``, or a slice; ``fresh`` is a fresh state of the same batch (``layer.init_state``),
    so a new stream can start in a slot while the others run on.
    """
    n = _stream_count(state, "reset_streams")
    _check_alike("reset_streams", state, fresh, "the fresh state", None)
    mask = _as_mask(streams, n, _leaves(state)[0].device, "reset_streams")
    return tree_where(mask, fresh, state)


def take_streams(state, streams: Streams):
    """The sub-batch of the selected streams (a mask, distinct indices or a slice), in order."""
    n = _stream_count(state, "take_streams")
    index = _as_index(streams, n, _leaves(state)[0].device, "take_streams")
    return tree_map(lambda leaf: leaf.index_select(0, index.to(leaf.device)), state)


def put_streams(state, streams: Streams, sub_state):
    """The state with the selected streams overwritten by ``sub_state`` (from `take_streams`)."""
    n = _stream_count(state, "put_streams")
    index = _as_index(streams, n, _leaves(state)[0].device, "put_streams")
    _check_alike("put_streams", state, sub_state, "the sub-state", index.shape[0])
    return tree_map(lambda leaf, sub: leaf.index_copy(0, index.to(leaf.device), sub), state, sub_state)


def stack_streams(states: Sequence) -> object:
    """Stack single-stream states (no stream dim) into one batched state, stream dim first.

    The states must come from one layer and one step shape (same structure, leaf shapes and
    dtypes), else `StateError`.
    """
    states = list(states) if not isinstance(states, (list, tuple)) else states
    if len(states) == 0:
        raise StateError("stack_streams: expected at least one state, got none")
    for i, other in enumerate(states[1:], 1):
        _check_alike("stack_streams", states[0], other, f"state {i}", None)
    return tree_map(lambda *leaves: torch.stack(leaves), *states)


def unstack_streams(state) -> List:
    """Split a batched state into one state per stream (the inverse of `stack_streams`)."""
    n = _stream_count(state, "unstack_streams")
    return [tree_map(lambda leaf, i=i: leaf[i], state) for i in range(n)]


def clone_state(state):
    """A deep copy (states are never mutated, so keeping a reference is already a snapshot)."""
    return tree_map(torch.clone, state)


def detach_state(state):
    """The state without autograd history: carry this from step to step when stepping outside
    ``torch.no_grad()`` with params that require grad (``layer.params_from(module)``).

    A state is a function of the params, so a state stepped with trainable params holds the
    autograd graph of every earlier step: memory grows with the stream. Detaching the carried
    state (what the nn adapters do) keeps each step's output differentiable with respect to the
    params through that step only, as in truncated backpropagation through time. For pure
    inference, ``torch.inference_mode()`` (or ``no_grad``) around the loop is cheaper still.

    Example:
        >>> import torch, cofunc
        >>> conv = torch.nn.Conv1d(2, 2, 3)
        >>> layer = cofunc.conv1d(2, 2, 3)
        >>> params = layer.params_from(conv)  # conv's own parameters: they require grad
        >>> state = layer.init_state(params, (1, 2))
        >>> for _ in range(4):
        ...     y, state = layer.step(params, state, torch.randn(1, 2))
        ...     state = cofunc.detach_state(state)
        >>> y.requires_grad, state.buffer.requires_grad
        (True, False)
    """
    return tree_map(lambda t: t.detach(), state)
