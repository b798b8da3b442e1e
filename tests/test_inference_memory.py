"""Stepping with a module's own parameters outside ``no_grad`` keeps memory flat when the carried
state is detached (`cofunc.detach_state`, what the nn adapters store), and grows without it.

Memory held by autograd is measured as the bytes of the tensors saved for backward that are
still alive (``saved_tensors_hooks`` + weak references), after ``n`` steps of frames ``(1, C)``.
"""

from __future__ import annotations

import gc
import weakref

import optree
import torch
from torch import nn

import cofunc
import cofunc.nn as cn


class SavedBytes:
    """Weak references to every tensor autograd saves while active; ``alive()`` sums the bytes
    of those still reachable (held by a graph that is still alive)."""

    def __init__(self):
        self.refs = []

    def pack(self, t):
        # A detached alias: saving ``t`` itself would tie a saved output to its own grad_fn in a
        # cycle through C++ that Python's gc cannot see (nothing would ever look freed).
        alias = t.detach()
        self.refs.append(weakref.ref(alias))
        return alias

    def alive(self) -> int:
        gc.collect()
        seen, total = set(), 0
        for ref in self.refs:
            t = ref()
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


def _torch_net():
    return nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 4, 3, padding=1))


def _functional(detach: bool, steps_between=(20, 60)):
    module = _torch_net()
    layer = cofunc.seq(cofunc.conv1d(3, 8, 3, padding=1), cofunc.lift(torch.relu), cofunc.conv1d(8, 4, 3, padding=1))
    params = layer.params_from(module)  # the module's own parameters: they require grad
    assert all(p.requires_grad for p in cofunc.flatten_params(params).values())
    state = layer.init_state(params, (1, 3))
    held = []
    with SavedBytes() as saved:
        for n in range(max(steps_between)):
            y, state = layer.step(params, state, torch.randn(1, 3))
            if detach:
                state = cofunc.detach_state(state)
            if n + 1 in steps_between:
                del y
                held.append(saved.alive())
    return held, state


def test_the_carried_state_holds_every_earlier_graph_unless_detached():
    grows, state = _functional(detach=False)
    assert grows[1] > 2 * grows[0], grows  # the problem the issue describes (and that this measure sees it)
    assert any(t.grad_fn is not None for t in optree_leaves(state))
    flat, state = _functional(detach=True)
    assert flat[1] == flat[0], flat
    assert all(t.grad_fn is None for t in optree_leaves(state))


def optree_leaves(state):
    return optree.tree_leaves(state, namespace="cofunc")


def test_detached_steps_keep_gradients_within_the_step():
    module = _torch_net()
    layer = cofunc.seq(cofunc.conv1d(3, 8, 3, padding=1), cofunc.lift(torch.relu), cofunc.conv1d(8, 4, 3, padding=1))
    params = layer.params_from(module)
    state = layer.init_state(params, (1, 3))
    for _ in range(4):
        y, state = layer.step(params, state, torch.randn(1, 3))
        state = cofunc.detach_state(state)
    y.sum().backward()
    assert module[2].weight.grad is not None and module[2].weight.grad.abs().sum() > 0


def test_the_nn_adapters_keep_memory_flat():
    net = cn.continual(_torch_net())
    held = []
    with SavedBytes() as saved:
        for n in range(60):
            y = net.forward_step(torch.randn(1, 3))
            if n + 1 in (20, 60):
                del y
                held.append(saved.alive())
    assert held[1] == held[0], held
