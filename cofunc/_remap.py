"""``Remap``: a layer that reads its params from another nesting.

A block whose torch children are named like its source (pytorchvideo's ``branch1_conv``,
``branch2``) can run a combinator tree that nests params by branch: the mapping says where each
inner params subtree comes from in the outer params, and the inverse (for `init_params`) is
derived from the same mapping.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Optional, Tuple

from ._errors import ConfigurationError
from ._layer import Layer, Wrapper
from ._params import Params


@functools.lru_cache(maxsize=None)
def _keys(path: str) -> Tuple[str, ...]:
    return tuple(path.split(".")) if path else ()


def _get(tree, path: str):
    for key in _keys(path):
        # `dict` first: an ABC check costs microseconds, and a step views params hundreds of times.
        tree = tree.get(key, {}) if isinstance(tree, dict) or isinstance(tree, Mapping) else {}
    return tree


def _set(tree: dict, path: str, value) -> None:
    keys = _keys(path)
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


@dataclasses.dataclass(frozen=True, eq=False)
class Remap(Wrapper):
    """``inner`` with params taken from another layout: ``mapping`` pairs each inner params path
    with the outer path it is read from (dotted; ``""`` is the whole outer params).

    Example:
        >>> import torch, cofunc
        >>> inner = cofunc.seq(cofunc.conv1d(2, 2, 1), cofunc.conv1d(2, 2, 1))
        >>> layer = cofunc.Remap(inner, {"0": "first", "1": "second"})
        >>> sorted(layer.init_params())
        ['first', 'second']
        >>> y, _ = layer.step(layer.init_params(), layer.init_state(layer.init_params(), (1, 2)), torch.ones(1, 2))
        >>> y.shape
        torch.Size([1, 2])
    """

    mapping: Tuple[Tuple[str, str], ...]
    name: str = "remap"
    out_rank: Optional[int] = None  # the output rank, when ``inner`` cannot tell it

    def __post_init__(self):
        pairs = tuple(self.mapping.items()) if isinstance(self.mapping, Mapping) else tuple(self.mapping)
        if not pairs or any(not isinstance(a, str) or not a or not isinstance(b, str) for a, b in pairs):
            raise ConfigurationError(f"remap: `mapping` pairs non-empty inner paths with outer paths, got {self.mapping!r}")
        object.__setattr__(self, "mapping", pairs)
        if self.out_rank is None:
            object.__setattr__(self, "out_rank", self.inner.out_rank)

    label = property(lambda self: f"{self.name}({self.inner.label})")

    def with_rank(self, rank):
        inner = self.inner.with_rank(rank)
        if inner is self.inner:
            return self
        # An output rank the inner layer told follows it; one given explicitly stays.
        told = self.out_rank == self.inner.out_rank
        return dataclasses.replace(self, inner=inner, out_rank=inner.out_rank if told else self.out_rank)

    def view(self, params: Params) -> dict:
        """The inner params, read from the outer ``params``."""
        inner: dict = {}
        for inner_path, outer_path in self.mapping:
            _set(inner, inner_path, _get(params, outer_path))
        return inner

    def unview(self, inner_params: Params) -> dict:
        """The outer params holding ``inner_params`` (the inverse of `view`)."""
        outer: dict = {}
        for inner_path, outer_path in self.mapping:
            value = _get(inner_params, inner_path)
            if isinstance(value, Mapping) and not value:
                continue  # a param-free part: no entry, as torch's state_dict has none
            if outer_path:
                _set(outer, outer_path, value)
            else:
                outer.update(value)
        return outer

    def init_params(self, *, device=None, dtype=None):
        return self.unview(self.inner.init_params(device=device, dtype=dtype))

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        return self.inner.init_state(self.view(params), input_shape, device=device, dtype=dtype)

    def step_unmasked(self, params, state, x):
        return self.inner.step_unmasked(self.view(params), state, x)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        return self.inner.steps_at_clock(self.view(params), state, xs, clock, pad_end)

    def forward(self, params, xs):
        return self.inner.forward(self.view(params), xs)


def remap(inner: Layer, mapping: Mapping[str, str], name: str = "remap") -> Remap:
    """`Remap` of ``inner`` with ``mapping`` (inner params path -> outer params path)."""
    return Remap(inner, mapping, name)
