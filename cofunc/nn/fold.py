"""Fold inference batch norms into the convolutions before them: one op per pair, not two.

In eval mode a batch norm is an affine map per channel, ``y = (x - mean) * w / sqrt(var + eps)
+ b``, and a convolution is linear in its input, so ``norm(conv(x))`` is a convolution with
scaled weights and a shifted bias. The fold is exact in real arithmetic for every padding mode
and temporal fill (padding pads the convolution's input, which the fold does not touch); in
float32 the outputs differ from the unfolded model's by rounding (about 1e-6 relative).

A continual step spends a fixed cost on every op whatever its size, so on small frames a batch
norm costs nearly as much as the convolution before it: CoX3D-S steps through 83 of them.
"""

from __future__ import annotations

import copy
from typing import Iterator, List, Optional, Tuple

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .._errors import ConfigurationError
from .container import Sequential
from .module import ContinualModule

__all__ = ["fold_batch_norms"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SEQUENTIAL_FORWARDS = (nn.Sequential.forward, Sequential.forward)


def fold_batch_norms(module: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``module`` with each eval-mode batch norm that directly follows a convolution folded into it.

    A pair is folded where the data flow is certain: consecutive children of an ``nn.Sequential``
    (cofunc's included; a subclass that overrides ``forward`` only if it sets
    ``_sequential_children = True``), looking through nested Sequentials (the last module of one,
    the first of the next), and the pairs a module names in ``_sequential_pairs`` (attribute names, as
    pytorchvideo's ``ResBlock`` names its shortcut ``branch1_conv`` then ``branch1_norm``). The
    convolution gets the folded weight and a bias (it may have had none); the batch norm is
    replaced by ``nn.Identity`` (a ``_sequential_pairs`` norm by None), as
    ``torch.ao.quantization.fuse_modules`` does. Convolutions keep their type: cofunc's continual
    convolutions stay continual (``temporal_fill`` included), torch's stay torch's. A batch norm
    without running statistics (``track_running_stats=False`` normalises by the batch even in
    eval mode) is left as it is, as are transposed convolutions.

    The module must be in eval mode (a training-mode batch norm normalises by the batch). Hooks
    on a folded pair see the folded outputs. Returns a copy unless ``inplace=True``; a stream
    state made by the unfolded module does not fit the folded one's layers: start new streams.

    Example:
        >>> import torch, cofunc.nn as co
        >>> net = co.Sequential(co.Conv3d(3, 8, 3, padding=(0, 1, 1), bias=False), torch.nn.BatchNorm3d(8),
        ...                     torch.nn.ReLU()).eval()
        >>> folded = co.fold_batch_norms(net)
        >>> folded
        Sequential(
          (0): Conv3d(3, 8, kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=(0, 1, 1))
          (1): Identity()
          (2): ReLU()
        )
        >>> x = torch.randn(1, 3, 6, 8, 8)
        >>> torch.allclose(folded(x), net(x), atol=1e-6)
        True
    """
    if not isinstance(module, nn.Module):
        raise ConfigurationError(f"fold_batch_norms: expected an nn.Module, got {type(module).__name__}")
    training = [name or "the module" for name, m in module.named_modules() if m.training]
    if training:
        raise ConfigurationError(
            f"fold_batch_norms: the module must be in eval mode (a training-mode batch norm normalises by "
            f"the batch, which no folded weight can do), but {training[0]} is in training mode; call .eval() first"
        )
    target = module if inplace else copy.deepcopy(module)
    # Every fold is computed before any is applied: a pair that cannot fold raises with the
    # module (inplace=True) untouched. Only leaves are replaced, so the paths stay valid.
    folds = []
    for prefix, parent in target.named_modules():
        for conv_path, norm_path in _candidate_pairs(parent):
            conv, norm = _resolve(parent, conv_path), _resolve(parent, norm_path)
            if not (_foldable_conv(conv) and _foldable_norm(norm)):
                continue
            where = " then ".join(".".join(([prefix] if prefix else []) + p) for p in (conv_path, norm_path))
            folds.append((parent, conv_path, norm_path, _folded_conv(conv, norm, where)))
    for parent, conv_path, norm_path, folded in folds:
        _assign(parent, conv_path, folded)
        _assign(parent, norm_path, _norm_replacement(parent, norm_path))
    for m in target.modules():
        if isinstance(m, ContinualModule):
            for key in ContinualModule._REBUILT_ON_DEMAND:
                m.__dict__.pop(key, None)
    return target


def _is_sequential(module: nn.Module) -> bool:
    """Whether ``module`` passes each child's output to the next child: an ``nn.Sequential`` that
    keeps the Sequential forward, or one that says so (``_sequential_children = True``)."""
    if not isinstance(module, nn.Sequential):
        return False
    return type(module).forward in _SEQUENTIAL_FORWARDS or getattr(module, "_sequential_children", False)


def _candidate_pairs(parent: nn.Module) -> Iterator[Tuple[List[str], List[str]]]:
    """(conv path, norm path) of module pairs in data-flow order, as attribute paths from ``parent``."""
    if _is_sequential(parent):
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            yield _edge_path(parent, [first], last=True), _edge_path(parent, [second], last=False)
    for conv_name, norm_name in getattr(parent, "_sequential_pairs", ()):
        yield [conv_name], [norm_name]


def _edge_path(parent: nn.Module, path: List[str], last: bool) -> List[str]:
    """The path to the last (or first) module of nested Sequentials starting at ``path``."""
    module = _resolve(parent, path)
    while _is_sequential(module) and len(module._modules):
        name = list(module._modules)[-1 if last else 0]
        path, module = path + [name], module._modules[name]
    return path


def _resolve(parent: nn.Module, path: List[str]) -> Optional[nn.Module]:
    for name in path:
        if parent is None:
            return None
        parent = parent._modules.get(name) if name in parent._modules else getattr(parent, name, None)
    return parent


def _assign(parent: nn.Module, path: List[str], value: Optional[nn.Module]) -> None:
    owner = _resolve(parent, path[:-1])
    setattr(owner, path[-1], value)


def _foldable_conv(module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def _foldable_norm(module) -> bool:
    return isinstance(module, _BATCH_NORMS) and module.track_running_stats and module.running_mean is not None


def _folded_conv(conv: nn.modules.conv._ConvNd, norm: nn.modules.batchnorm._BatchNorm, where: str) -> nn.Module:
    if conv.out_channels != norm.num_features:
        raise ConfigurationError(
            f"fold_batch_norms: {where}: {type(norm).__name__}({norm.num_features}) follows a convolution with "
            f"{conv.out_channels} output channels; expected {conv.out_channels} features"
        )
    weight, bias = fuse_conv_bn_weights(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(),
                                        norm.running_mean, norm.running_var, norm.eps,
                                        None if norm.weight is None else norm.weight.detach(),
                                        None if norm.bias is None else norm.bias.detach())
    folded = copy.deepcopy(conv)
    # A conv built without a bias gets one (continual convs build their layer from ``bias is
    # not None``); the folded tensors train if the conv's weight did.
    trains = conv.weight.requires_grad
    folded.bias = nn.Parameter(bias.detach(), requires_grad=trains)
    folded.weight = nn.Parameter(weight.detach(), requires_grad=trains)
    return folded


def _norm_replacement(parent: nn.Module, path: List[str]) -> Optional[nn.Module]:
    owner = _resolve(parent, path[:-1])
    if isinstance(owner, nn.Sequential):
        return nn.Identity()
    return None
