"""Params trees: nested dicts of tensors keyed like a torch.nn ``state_dict``."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor

Params = Mapping[str, Any]


def params_shapes_of(params) -> dict:
    """The nested dict of shapes of a params tree (the template params are checked against)."""
    return {k: params_shapes_of(v) if isinstance(v, Mapping) else tuple(v.shape) for k, v in params.items()}


def _first_mismatch(template: Mapping, params, path: str) -> Optional[str]:
    """Where ``params`` first differs from ``template`` (missing entries, shapes), or None."""
    if not isinstance(params, Mapping):
        where = f"params[{path[:-1]!r}]" if path else "params"
        return f"{where} should be a dict (from `init_params` or `params_from`), got {type(params).__name__}"
    for key, want in template.items():
        name = path + str(key)
        if key not in params:
            what = f"a tensor of shape {want}" if isinstance(want, tuple) else "a dict of tensors"
            return f"params have no {name!r} ({what})"
        got = params[key]
        if isinstance(want, Mapping):
            problem = _first_mismatch(want, got, name + ".")
            if problem is not None:
                return problem
        elif not isinstance(got, Tensor):
            return f"params[{name!r}] should be a tensor of shape {want}, got {type(got).__name__}"
        elif tuple(got.shape) != want:
            return f"params[{name!r}] has shape {tuple(got.shape)}, expected {want}"
    return None


def module_params(module: torch.nn.Module) -> dict:
    """The tensors a module's computation reads, nested like its ``state_dict`` keys.

    Parameters and persistent buffers only, and the module's own tensor objects (no copies).
    """
    out = {}
    for name, p in module._parameters.items():
        if p is not None:
            out[name] = p
    non_persistent = module._non_persistent_buffers_set
    for name, b in module._buffers.items():
        if b is not None and name not in non_persistent:
            out[name] = b
    for name, child in module._modules.items():
        if child is None:
            continue
        sub = module_params(child)
        if sub:
            out[name] = sub
    return out


def flatten_params(params: Params, prefix: str = "") -> dict:
    """``{"0": {"weight": w}} -> {"0.weight": w}``, the keys of a torch.nn ``state_dict``."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = value
    return flat


def unflatten_params(flat: Mapping[str, Tensor]) -> dict:
    """The inverse of `flatten_params`: nest a ``state_dict`` by its ``.``-separated keys."""
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def detach_params(tree):
    """A nested params dict with every tensor detached (fresh params that own no graph)."""
    return {k: detach_params(v) if isinstance(v, dict) else v.detach() for k, v in tree.items()}
