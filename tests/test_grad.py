"""Gradients through continual steps equal gradients through the clip forward.

A Python loop of ``layer.step`` from a fresh state over a clip emits exactly the first
``emitted(T, delay, stride)`` frames of ``forward`` on that clip, so any loss of the emitted
outputs has the same gradients, with respect to the params and to the input clip, as the same
loss of those frames of ``forward``. Checked with ``torch.func.grad`` and ``torch.func.vjp`` in
float64 (where the step and clip conv algorithms agree to ~1e-15). Under torch.func transforms
the steps take their branch-free path (no host reads of counters), which is what is tested.
"""

from __future__ import annotations

import pytest
import torch

import cofunc
from _networks import STEP, network
from cofunc._clock import emitted
from cofunc._params import flatten_params, unflatten_params
from conftest import expected_flags, step_through

F64 = torch.float64


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def split_params(params):
    """``(trainable params by state_dict name, the buffers)``: batch norm's running statistics
    are buffers in torch.nn too (its kernel has no derivative for them)."""
    flat = flatten_params(params)
    diff = {k: v for k, v in flat.items() if not k.endswith(BUFFERS)}
    fixed = {k: v for k, v in flat.items() if k.endswith(BUFFERS)}
    return diff, fixed


def stepped(layer, fixed):
    """``(diff_params, xs) -> ys``: a loop of steps from a fresh state, emitted outputs stacked."""
    axis, out_axis = layer.time_axis(), layer.out_time_axis()

    def run(diff, xs):
        params = unflatten_params({**diff, **fixed})
        step_shape = list(xs.shape)
        del step_shape[axis]
        state = layer.init_state(params, tuple(step_shape), dtype=xs.dtype)
        n = xs.shape[axis]
        emits = expected_flags(layer.delay, layer.stride, n)  # static: no host read of `valid`
        ys = []
        for t in range(n):
            y, state = layer.step(params, state, xs.select(axis, t))
            if emits[t]:
                ys.append(y)
        return torch.stack(ys, dim=out_axis)

    return run


def clipped(layer, fixed):
    """``(diff_params, xs) -> ys``: the same frames of the clip forward."""
    axis, out_axis = layer.time_axis(), layer.out_time_axis()

    def run(diff, xs):
        params = unflatten_params({**diff, **fixed})
        k = emitted(xs.shape[axis], layer.delay, layer.stride)
        return layer.forward(params, xs).narrow(out_axis, 0, k)

    return run


def small_layers():
    return {
        "strided_replicate_conv2d": cofunc.conv2d(2, 3, (3, 2), stride=(2, 1), padding=(2, 0), padding_mode="replicate"),
        "avg_pool_excluding_pad_then_conv": cofunc.seq(
            cofunc.avg_pool1d(3, stride=2, padding=1, count_include_pad=False), cofunc.conv1d(2, 2, 2, dilation=2)
        ),
        "centered_residual": cofunc.residual(cofunc.conv1d(2, 2, 3), residual_shrink="centered"),
    }


def cases():
    """``(name, layer, params, clip)``: the test network and a few small layers, float64."""
    layer, params = network(F64)
    yield "network", layer, params, torch.randn((2, STEP[0], 16) + STEP[1:], dtype=F64)
    for name, layer in small_layers().items():
        spatial = (4,) if layer.step_rank == 2 else ()
        yield name, layer, layer.init_params(dtype=F64), torch.randn((2, 2, 11) + spatial, dtype=F64)


CASES = {name: (layer, params, xs) for name, layer, params, xs in cases()}


def check_emits(layer, params, xs, ys_forward):
    """The eager steps emit where the static schedule says, and some outputs exist at all."""
    run = step_through(layer, params, xs)
    assert run.flags == expected_flags(layer.delay, layer.stride, xs.shape[layer.time_axis()])
    assert ys_forward.shape[layer.out_time_axis()] >= 2


@pytest.mark.parametrize("name", list(CASES))
def test_grad_of_steps_equals_grad_of_forward(name):
    layer, params, xs = CASES[name]
    diff, fixed = split_params(params)
    steps_fn, forward_fn = stepped(layer, fixed), clipped(layer, fixed)
    ys = forward_fn(diff, xs)
    check_emits(layer, params, xs, ys)
    torch.testing.assert_close(steps_fn(diff, xs), ys)

    def loss(fn):
        return lambda d, x: fn(d, x).sum()

    g_params, g_xs = torch.func.grad(loss(steps_fn), argnums=(0, 1))(diff, xs)
    e_params, e_xs = torch.func.grad(loss(forward_fn), argnums=(0, 1))(diff, xs)
    assert set(g_params) == set(diff)
    for key in diff:
        torch.testing.assert_close(g_params[key], e_params[key], msg=lambda m, key=key: f"d/d{key}: {m}")
        assert e_params[key].abs().sum() > 0, f"d/d{key} is zero: the comparison would be vacuous"
    torch.testing.assert_close(g_xs, e_xs)
    assert e_xs.abs().sum() > 0


@pytest.mark.parametrize("name", list(CASES))
def test_vjp_of_steps_equals_vjp_of_forward(name):
    """A random cotangent on the emitted outputs pulls back to the same params and input."""
    layer, params, xs = CASES[name]
    diff, fixed = split_params(params)
    ys, steps_vjp = torch.func.vjp(stepped(layer, fixed), diff, xs)
    ys_forward, forward_vjp = torch.func.vjp(clipped(layer, fixed), diff, xs)
    torch.testing.assert_close(ys, ys_forward)
    cotangent = torch.randn_like(ys)
    (g_params, g_xs), (e_params, e_xs) = steps_vjp(cotangent), forward_vjp(cotangent)
    for key in diff:
        torch.testing.assert_close(g_params[key], e_params[key], msg=lambda m, key=key: f"d/d{key}: {m}")
    torch.testing.assert_close(g_xs, e_xs)

