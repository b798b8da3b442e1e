"""Skeleton graphs and their spatial partitions (the adjacency of the graph convolutions).

The NTU RGB+D skeleton has 25 joints (Kinect v2), numbered here from 0; its 24 bones form a tree
rooted at joint 20 (the spine at the shoulders, "joint 21" in NTU's 1-based numbering). The
spatial partition of ST-GCN and 2s-AGCN splits each joint's neighbourhood in three subsets:

- ``A[0]``, root: the joint itself (identity);
- ``A[1]``, centripetal: the neighbours nearer the root (``inward`` bones), column-normalised;
- ``A[2]``, centrifugal: the neighbours farther from the root (``outward`` bones), column-normalised.

A graph convolution computes ``sum_k W_k (x @ A[k])`` over the joint axis, so column ``j`` of
``A[k]`` holds the weights with which joint ``j`` gathers its neighbours in subset ``k``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from cofunc import ConfigurationError

NTU_NUM_JOINTS = 25

# (child, parent) pairs, 1-based as in NTU RGB+D's joint list: every bone points towards the
# root, joint 21 (the spine at the shoulders).
_NTU_INWARD_1BASED = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
    (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
    (22, 23), (23, 8), (24, 25), (25, 12),
)
NTU_INWARD: Tuple[Tuple[int, int], ...] = tuple((i - 1, j - 1) for i, j in _NTU_INWARD_1BASED)


def edge_matrix(edges: Sequence[Tuple[int, int]], num_joints: int) -> Tensor:
    """``M[j, i] = 1`` for every edge ``(i, j)``: column ``i`` marks where joint ``i`` points."""
    m = torch.zeros(num_joints, num_joints, dtype=torch.float64)
    for i, j in edges:
        m[j, i] = 1.0
    return m


def normalize_columns(a: Tensor) -> Tensor:
    """``a @ diag(1 / column sums)`` (columns that sum to zero stay zero)."""
    sums = a.sum(0)
    inv = torch.where(sums > 0, 1.0 / sums.clamp(min=1e-12), torch.zeros_like(sums))
    return a * inv


def spatial_partition(inward: Sequence[Tuple[int, int]], num_joints: int) -> Tensor:
    """The three-subset spatial partition ``(3, V, V)`` (root, centripetal, centrifugal), float32."""
    outward = [(j, i) for i, j in inward]
    root = edge_matrix([(i, i) for i in range(num_joints)], num_joints)
    centripetal = normalize_columns(edge_matrix(inward, num_joints))
    centrifugal = normalize_columns(edge_matrix(outward, num_joints))
    return torch.stack([root, centripetal, centrifugal]).float()


def ntu_adjacency() -> Tensor:
    """The NTU RGB+D skeleton's spatial partition, shape ``(3, 25, 25)``."""
    return spatial_partition(NTU_INWARD, NTU_NUM_JOINTS)


def adjacency(graph="ntu") -> Tensor:
    """``"ntu"`` (the NTU RGB+D skeleton), or a given ``(K, V, V)`` tensor (copied, float32)."""
    if isinstance(graph, str):
        if graph != "ntu":
            raise ConfigurationError(f"graph must be 'ntu' or a (K, V, V) adjacency tensor, got {graph!r}")
        return ntu_adjacency()
    a = torch.as_tensor(graph, dtype=torch.float32).clone()
    if a.dim() != 3 or a.shape[1] != a.shape[2]:
        raise ConfigurationError(f"an adjacency must have shape (K, V, V), got {tuple(a.shape)}")
    return a
