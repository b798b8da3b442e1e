"""co's module utilities: flattened state dicts, temporary attributes, function names.

Example:
    >>> import torch, cofunc.nn as cn
    >>> net = cn.Sequential(torch.nn.Conv1d(1, 1, 3))
    >>> sorted(net.state_dict(flatten=True))
    ['bias', 'weight']
"""

from __future__ import annotations

import logging
from collections import OrderedDict, abc
from contextlib import contextmanager
from functools import partial, reduce
from inspect import getsource
from numbers import Number
from typing import Any, List, Sequence, Union

from torch import Tensor, nn

__all__ = [
    "rsetattr",
    "rgetattr",
    "temporary_parameter",
    "flat_state_dict",
    "state_dict",
    "load_state_dict",
    "flatten",
    "num_from",
    "function_repr",
]

logger = logging.getLogger(__name__)


def rsetattr(obj, attr: str, val) -> None:
    """``setattr`` along a dotted path: ``rsetattr(m, "conv.stride", 2)``."""
    pre, _, post = attr.rpartition(".")
    setattr(rgetattr(obj, pre) if pre else obj, post, val)


def rgetattr(obj, attr: str, *default):
    """``getattr`` along a dotted path: ``rgetattr(m, "conv.stride")``."""
    return reduce(lambda o, a: getattr(o, a, *default), [obj] + attr.split("."))


@contextmanager
def temporary_parameter(obj, attr: str, val):
    """Set ``obj.attr = val`` inside a ``with`` block; restore (or delete) it on leaving.

    Example:
        >>> import types
        >>> from cofunc.nn.utils import temporary_parameter
        >>> obj = types.SimpleNamespace(x=0)
        >>> with temporary_parameter(obj, "x", 42):
        ...     obj.x
        42
        >>> obj.x
        0
    """
    missing = object()
    previous = rgetattr(obj, attr, missing)
    if previous is missing and "." in attr:
        raise AttributeError(f"temporary_parameter: {attr!r} does not exist; new attributes can only be set one level deep")
    rsetattr(obj, attr, val)
    try:
        yield obj
    finally:
        if previous is missing:
            delattr(obj, attr)
        else:
            rsetattr(obj, attr, previous)


class _FlatStateDict:
    """``with flat_state_dict:`` makes every ``state_dict`` / ``load_state_dict`` of continual
    modules use flattened keys (numeric container names dropped: ``"0.weight"`` -> ``"weight"``)."""

    def __init__(self):
        self.flatten = False

    def __enter__(self):
        self.flatten = True

    def __exit__(self, *exc):
        self.flatten = False


flat_state_dict = _FlatStateDict()


def _flat_key(key: str) -> str:
    return ".".join(part for part in key.split(".") if not part.isdigit())


def state_dict(module: nn.Module, destination=None, prefix: str = "", keep_vars: bool = False,
               flatten: bool = False) -> "OrderedDict[str, Tensor]":
    """``module.state_dict()``, with the numeric names of unnamed children dropped when
    ``flatten`` (or inside ``with flat_state_dict``) and the result stays unambiguous."""
    d = nn.Module.state_dict(module, destination=destination, prefix=prefix, keep_vars=keep_vars)
    if flatten or flat_state_dict.flatten:
        flat = [_flat_key(k) for k in d]
        if len(set(flat)) == len(d):
            d = OrderedDict(zip(flat, d.values()))
        else:
            logger.warning("state_dict: the keys cannot be flattened without clashes; returning them unflattened")
    return d


def load_state_dict(module: nn.Module, state_dict: "OrderedDict[str, Tensor]", strict: bool = True,
                    flatten: bool = False):
    """``module.load_state_dict(state_dict, strict)``, accepting the flattened keys of
    `state_dict` when ``flatten`` (or inside ``with flat_state_dict``)."""
    if flatten or flat_state_dict.flatten:
        long_keys = nn.Module.state_dict(module, keep_vars=True).keys()
        short_to_long = {_flat_key(k): k for k in long_keys}
        if len(short_to_long) == len(long_keys):
            state_dict = OrderedDict((short_to_long.get(k, k), v) for k, v in state_dict.items())
        else:
            logger.warning("load_state_dict: the module's keys cannot be flattened without clashes; loading as given")
    return nn.Module.load_state_dict(module, state_dict, strict)


def flatten(lst: Union[Sequence[Any], Any], remove_none: bool = True) -> List[Any]:
    """The leaves of nested sequences, in order (``None`` dropped unless ``remove_none=False``).

    Example:
        >>> from cofunc.nn.utils import flatten
        >>> flatten([1, [2, None, [3]]])
        [1, 2, 3]
    """
    out = _flatten(lst)
    return [v for v in out if v is not None] if remove_none else out


def _flatten(value) -> List[Any]:
    if isinstance(value, abc.Sequence) and not isinstance(value, (str, bytes)):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


def num_from(tuple_or_num, dim: int = 0):
    """A number, or the entry ``dim`` of a tuple (co's helper for time-first tuples)."""
    return tuple_or_num if isinstance(tuple_or_num, Number) else tuple_or_num[dim]


def function_repr(fn) -> str:
    """How co prints a function: its name, or the source text of a lambda.

    Example:
        >>> from cofunc.nn.utils import function_repr
        >>> function_repr(lambda x: x + 1)
        'lambda x: x + 1'
    """
    if fn is None:
        return ""
    if isinstance(fn, nn.Module):
        return repr(fn)
    if isinstance(fn, partial):
        fn = fn.func
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name != "<lambda>":
        return name
    try:
        source = getsource(fn)
    except (OSError, TypeError):  # defined in a REPL without source
        return name
    source = source[source.find("lambda"):]
    i = source.find(":")
    depth = 0
    for c in source[i + 1:]:
        i += 1
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if (depth == 0 and c == ",") or depth == -1:
            break
    else:
        i += 1
    return source[:i].strip()
