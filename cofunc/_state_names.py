"""``state_names(layer, state)``: a name for every leaf of a state, by its path in the layer.

A state is a pytree whose nesting follows the layer's: a `Seq` keeps one entry per child, a
`Parallel` one per branch, and leaf layers keep named tuples (``buffer``, ``count``, ...). The
name of a leaf joins the layers' names on its way down with the field names of the leaf layer's
state, so the leaf that holds the input frames of the convolution ``conv_b`` in block 0 of stage
1 of a zoo model is ``blocks.1.res_blocks.0.branch2.conv_b.buffer``: the convolution's
``state_dict`` name plus the field. Leaves are listed in `flatten_state` order (the order of an
exported step's state inputs).
"""

from __future__ import annotations

from typing import Any, List

import optree

from ._combinators import BroadcastReduce, Conditional, Parallel, _Aligned
from ._layer import Layer
from ._values import TREE_NAMESPACE
from ._remap import Remap
from ._seq import Seq


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _fallback(state, prefix: str) -> List[str]:
    """Names from the state's own structure: named-tuple fields and dict keys by name, sequence
    entries by index."""
    accessors = optree.tree_flatten_with_accessor(state, namespace=TREE_NAMESPACE)[0]
    names = []
    for accessor in accessors:
        parts = []
        for entry in accessor:
            for attribute in ("field", "name", "key", "index"):
                value = getattr(entry, attribute, None)
                if value is not None:
                    parts.append(str(value))
                    break
        names.append(_join(prefix, ".".join(parts)))
    return names


def _names(layer: Layer, state: Any, prefix: str) -> List[str]:
    if isinstance(layer, _Aligned):  # an alignment delay around a branch: no naming level
        out = []
        for (name, child), sub in zip(layer.children, state):
            out += _names(child, sub, prefix if name == "branch" else _join(prefix, name))
        return out
    if isinstance(layer, Seq) and isinstance(state, tuple) and len(state) == len(layer.children):
        out = []
        for (name, child), sub in zip(layer.children, state):
            out += _names(child, sub, _join(prefix, name))
        return out
    if isinstance(layer, Parallel) and isinstance(state, tuple) and len(state) == len(layer.branches):
        out = []
        for (name, _), aligned, sub in zip(layer.branches, layer._aligned, state):
            out += _names(aligned, sub, _join(prefix, name))
        return out
    if isinstance(layer, BroadcastReduce):
        return _names(layer.inner, state, prefix)
    if isinstance(layer, Remap):
        inner = _names(layer.inner, state, "")
        return [_join(prefix, _remap_path(layer, name)) for name in inner]
    if isinstance(layer, Conditional):
        return (_names(layer._true, state.on_true, _join(prefix, "0"))
                + _names(layer._false, state.on_false, _join(prefix, "1"))
                + [_join(prefix, "took_true")])
    inner = getattr(layer, "inner", None)
    if isinstance(inner, Layer) and layer.stateful == inner.stateful:  # wrappers (hooks) step the inner state
        return _names(inner, state, prefix)
    return _fallback(state, prefix)


def _remap_path(layer: Remap, name: str) -> str:
    """``name`` (an inner path) with its longest mapped prefix replaced by the outer path the
    params come from, so state names follow the params' (``state_dict``) names."""
    best = None
    for inner_path, outer_path in layer.mapping:
        if (name == inner_path or name.startswith(inner_path + ".")) and (best is None or len(inner_path) > len(best[0])):
            best = (inner_path, outer_path)
    if best is None:
        return name
    return _join(best[1], name[len(best[0]) + 1:])


def state_names(layer: Layer, state: Any) -> List[str]:
    """One name per leaf of ``state`` (a state of ``layer``), in `flatten_state` order, from the
    leaf's path: the names of the layers it lies in (their params' names) and its field in the
    leaf layer's state. Unique: repeated names get a ``#i`` suffix.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.seq({"conv": cofunc.conv1d(2, 2, 3), "pool": cofunc.max_pool1d(2)})
        >>> state = layer.init_state(layer.init_params(), (1, 2))
        >>> cofunc.state_names(layer, state)
        ['conv.buffer', 'conv.count', 'pool.buffer', 'pool.count']
    """
    names = _names(layer, state, "")
    n_leaves = len(optree.tree_leaves(state, namespace=TREE_NAMESPACE))
    if len(names) != n_leaves:  # a layer whose state does not follow its structure: paths alone
        names = _fallback(state, "")
    seen: dict = {}
    unique = []
    for name in names:
        name = name or "state"  # a state that is one tensor
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}#{count}")
    return unique
