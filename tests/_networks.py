"""A small continual 3D CNN that exercises every kind of layer the production paths must carry:
conv3d, lifted batch norm, relu, max pooling (temporal stride 2), a residual block, a
broadcast-reduce with delay alignment, a strided conv and a linear head.

Step input ``(B, 2, 6, 6)``, step output ``(B, 3, 1, 1)``; delay 6, stride 4, receptive field 14:
from a fresh state, steps 6, 10, 14, ... emit.
"""

from __future__ import annotations

import torch
from torch import nn

import cofunc

STEP = (2, 6, 6)  # (C, H, W) of one frame


def network(dtype=torch.float32, seed: int = 0):
    """``(layer, params)``; params detached (inference), batch norm with non-trivial statistics."""
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm3d(4).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(4, generator=gen) - 0.5)
        bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
        bn.weight.copy_(torch.rand(4, generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(4, generator=gen) - 0.5)
    layer = cofunc.seq(
        cofunc.conv3d(2, 4, 3, padding=1),
        cofunc.lift_module(bn),
        cofunc.lift(torch.relu),
        cofunc.max_pool3d(2),
        cofunc.residual(cofunc.conv3d(4, 4, 3, padding=1)),
        cofunc.broadcast_reduce(cofunc.conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0)), cofunc.conv3d(4, 4, 1)),
        cofunc.conv3d(4, 6, (2, 3, 3), stride=(2, 1, 1), padding=(1, 0, 0)),
        cofunc.linear(6, 3),
    )
    torch.manual_seed(seed)
    params = layer.init_params(dtype=dtype)
    params["1"] = {k: v.detach().to(dtype) if v.is_floating_point() else v.detach().clone()
                   for k, v in layer.layers[1].params_from(bn).items()}
    return layer, params


def small_network(dtype=torch.float32, seed: int = 0):
    """conv3d -> relu -> max pool (temporal stride 2) -> linear: quick to compile."""
    layer = cofunc.seq(
        cofunc.conv3d(2, 3, 3, padding=(1, 0, 0)),
        cofunc.lift(torch.relu),
        cofunc.max_pool3d((2, 2, 2)),
        cofunc.linear(3, 2),
    )
    torch.manual_seed(seed)
    return layer, layer.init_params(dtype=dtype)
