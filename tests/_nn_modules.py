"""Helpers and the modules under test shared by the ``test_nn_*`` files (the nn adapters of
`cofunc.nn`). Shapes: clips are ``(B, C, T, *S)``, steps ``(B, C, *S)``."""

from __future__ import annotations

import optree
import torch
from torch import nn

import cofunc.nn as cn

F64 = torch.float64

# --- helpers ---------------------------------------------------------------------------------


def leaves(state):
    return optree.tree_leaves(state, namespace="cofunc")


def snapshot(state):
    """A deep copy of a state pytree (clones every leaf)."""
    return optree.tree_map(torch.clone, state, namespace="cofunc")


def assert_same_state(a, b):
    """Two states have the same structure and bit-identical leaves."""
    assert optree.tree_structure(a, namespace="cofunc") == optree.tree_structure(b, namespace="cofunc")
    for x, y in zip(leaves(a), leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert torch.equal(x, y)


def assert_close_state(a, b):
    """Two states have the same structure and leaves equal up to rounding (different code paths)."""
    assert optree.tree_structure(a, namespace="cofunc") == optree.tree_structure(b, namespace="cofunc")
    for x, y in zip(leaves(a), leaves(b)):
        torch.testing.assert_close(x, y)


def step_through(module, xs):
    """``forward_step`` on each frame of ``xs: (B, C, T, *S)``; a list of T outputs (or None)."""
    return [module.forward_step(xs[:, :, t]) for t in range(xs.shape[2])]


def stack_emitted(outs):
    """Stack the non-None step outputs ``(B, C, *S)`` on dim 2, or None if there are none."""
    real = [o for o in outs if o is not None]
    return torch.stack(real, dim=2) if real else None


def expected_none(n_steps, delay, stride):
    """co's timing from a fresh state: nothing for ``delay`` steps, then one output per ``stride``."""
    return [t < delay or (t - delay) % stride != 0 for t in range(n_steps)]


def n_emitted(n_steps, delay, stride):
    return sum(not none for none in expected_none(n_steps, delay, stride))


def temporal_stride(module) -> int:
    return module.stride[0]


def randomise_batch_norms(module: nn.Module, seed: int = 0):
    """Give every batch norm non-trivial affine params and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


# --- the modules under test --------------------------------------------------------------------

# (dims, kwargs) for Conv{dims}d; the first entry of every tuple option is time.
CONV_CONFIGS = {
    "1d_k3_p1": (1, dict(in_channels=2, out_channels=4, kernel_size=3, padding=1)),
    "1d_k3_s2_p2_d2": (1, dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=2, dilation=2)),
    "1d_replicate": (1, dict(in_channels=2, out_channels=2, kernel_size=3, padding=1, padding_mode="replicate")),
    "2d_groups_s2": (2, dict(in_channels=4, out_channels=6, kernel_size=(3, 3), stride=(2, 1), padding=(1, 1), groups=2)),
    "2d_replicate_spatial": (2, dict(in_channels=2, out_channels=3, kernel_size=(2, 3), padding=(1, 1), padding_mode="replicate")),
    "2d_reflect_spatial": (2, dict(in_channels=2, out_channels=3, kernel_size=(3, 3), padding=(0, 1), padding_mode="reflect")),
    "2d_same_even": (2, dict(in_channels=2, out_channels=2, kernel_size=(4, 3), padding="same", dilation=(1, 2))),
    "3d_s122_p2": (3, dict(in_channels=2, out_channels=3, kernel_size=3, stride=(1, 2, 2), padding=(2, 1, 1))),
    "3d_s3": (3, dict(in_channels=2, out_channels=2, kernel_size=(3, 1, 1), stride=(3, 1, 1), padding=(1, 0, 0), bias=False)),
    "3d_stateless": (3, dict(in_channels=2, out_channels=3, kernel_size=(1, 3, 3), padding=(0, 1, 1))),
}
CN_CONV = {1: cn.Conv1d, 2: cn.Conv2d, 3: cn.Conv3d}
NN_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SPATIAL = {1: (), 2: (5,), 3: (5, 4)}


def make_conv(name, dtype=F64):
    dims, kwargs = CONV_CONFIGS[name]
    torch.manual_seed(1)
    return CN_CONV[dims](**kwargs, dtype=dtype), (2, kwargs["in_channels"]) + SPATIAL[dims]


def make_cnn3d(dtype=F64):
    """conv, BN (eval), ReLU, dropout, strided conv: converted from torch.nn with `continual`."""
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv3d(4, 3, (3, 1, 1), stride=(2, 1, 1)),
    )
    randomise_batch_norms(net)
    return cn.continual(net.to(dtype)).eval(), (2, 2, 4, 4)


def make_paper_seq(dtype=F64):
    """The paper's example (conv k3 p2 s2, then conv k3): rf 7, padding 2, delay 4, stride 2."""
    torch.manual_seed(3)
    net = cn.Sequential(cn.Conv1d(1, 2, 3, padding=2, stride=2), nn.ReLU(), cn.Conv1d(2, 1, 3))
    return net.to(dtype), (2, 1)


def make_seq_with_delay(dtype=F64):
    torch.manual_seed(4)
    net = cn.Sequential(
        cn.Conv2d(2, 3, (3, 1), padding=(1, 0)), cn.Delay(2), nn.Tanh(), cn.Conv2d(3, 2, (2, 3), stride=(3, 1)),
    )
    return net.to(dtype), (1, 2, 5)


def make_two_strides(dtype=F64):
    torch.manual_seed(5)
    net = cn.Sequential(cn.Conv1d(2, 3, 3, stride=2, padding=1), cn.Conv1d(3, 2, 3, stride=2, padding=1))
    return net.to(dtype), (3, 2)


def make_delay(dtype=F64):
    return cn.Delay(3), (2, 3, 4)


MODULES = {f"conv_{name}": (lambda name=name: make_conv(name)) for name in CONV_CONFIGS}
MODULES.update(
    cnn3d=make_cnn3d, paper_seq=make_paper_seq, seq_with_delay=make_seq_with_delay,
    two_strides=make_two_strides, delay=make_delay,
)


def clip_for(step_shape, n_steps, seed=0, dtype=F64):
    """A random clip ``(B, C, T, *S)`` whose frames have shape ``step_shape``."""
    g = torch.Generator().manual_seed(seed)
    shape = list(step_shape)
    shape.insert(2, n_steps)
    return torch.randn(shape, generator=g, dtype=dtype)


def torch_cnn3d(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout(0.3),
        nn.Conv3d(4, 3, (3, 1, 1), stride=(2, 1, 1)),
    )
