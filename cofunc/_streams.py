"""Tree operations along the stream axis, for serving many independent streams.

A state's leaves all start with the stream dims ``*B``; these functions work on the first stream
dim. All are out of place, so the input state stays a valid snapshot.
"""

from __future__ import annotations

from typing import List, Sequence, Union

import optree
import torch
from torch import Tensor

from ._errors import StateError
from ._layer import TREE_NAMESPACE, Layer, tree_map, tree_where, values_are_concrete

Streams = Union[Tensor, Sequence[int], slice]


def _index(streams: Streams, n: int, device) -> Tensor:
    if isinstance(streams, slice):
        return torch.arange(n, device=device)[streams]
    index = torch.as_tensor(streams, device=device)
    if index.dtype == torch.bool:
        return index.nonzero().flatten()
    return index.long()


def _mask(streams: Streams, n: int, device) -> Tensor:
    index = torch.as_tensor(streams, device=device) if not isinstance(streams, slice) else None
    if index is not None and index.dtype == torch.bool:
        return index
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    return mask.index_fill(0, _index(streams, n, device), True)


def _stream_count(state) -> int:
    leaves = optree.tree_leaves(state, namespace=TREE_NAMESPACE)
    if not leaves:
        raise StateError("stream operations need a state with tensors (a stateless layer has none)")
    return leaves[0].shape[0]


def step_streams(layer: Layer, params, state, x: Tensor, active: Tensor):
    """One step in which only the ``active`` streams ``(B,)`` receive a frame.

    Paused streams keep their state exactly and report no output. Returns
    ``(y, valid, state)`` where ``valid`` is per stream.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.conv1d(1, 1, 2)
        >>> params = layer.init_params()
        >>> state = layer.init_state(params, (2, 1))
        >>> y, valid, state = cofunc.step_streams(layer, params, state, torch.ones(2, 1), torch.tensor([True, False]))
        >>> state.count
        tensor([1, 0])
    """
    y, new_state = layer.step(params, state, x)
    if not (values_are_concrete(active) and bool(active.all())):  # all active: nothing to keep
        new_state = tree_where(active, new_state, state)
    return y, layer.valid(new_state) & active, new_state


def reset_streams(state, streams: Streams, fresh):
    """The state with the selected streams (a bool mask or indices) replaced by ``fresh``'s.

    ``fresh`` is a fresh state of the same batch (``layer.init_state``), so a new stream can
    start in a slot while the others run on.
    """
    n = _stream_count(state)
    mask = _mask(streams, n, optree.tree_leaves(state, namespace=TREE_NAMESPACE)[0].device)
    return tree_where(mask, fresh, state)


def take_streams(state, streams: Streams):
    """The sub-batch of the selected streams (indices, a mask or a slice)."""
    n = _stream_count(state)

    def take(leaf):
        return leaf.index_select(0, _index(streams, n, leaf.device))

    return tree_map(take, state)


def put_streams(state, streams: Streams, sub_state):
    """The state with the selected streams overwritten by ``sub_state`` (from `take_streams`)."""
    n = _stream_count(state)

    def put(leaf, sub):
        return leaf.index_copy(0, _index(streams, n, leaf.device), sub)

    return tree_map(put, state, sub_state)


def stack_streams(states: Sequence) -> object:
    """Stack single-stream states (no stream dim) into one batched state, stream dim first."""
    return tree_map(lambda *leaves: torch.stack(leaves), *states)


def unstack_streams(state) -> List:
    """Split a batched state into one state per stream (the inverse of `stack_streams`)."""
    n = _stream_count(state)
    return [tree_map(lambda leaf, i=i: leaf[i], state) for i in range(n)]


def clone_state(state):
    """A deep copy (states are never mutated, so keeping a reference is already a snapshot)."""
    return tree_map(torch.clone, state)

