"""The temporal arithmetic of a stream: which steps emit an output, and the hint that every
stream of a step has passed its warm-up (docs/design.md, section 3)."""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import Tensor


# Set while the outermost `step` knows that every stream has passed the layer's warm-up (and
# nothing in it is strided), so every sublayer gets a real input in every stream: the children
# then skip their per-stream masks and host reads. Thread-local (not a ContextVar) because
# dynamo traces reads of it and guards compiled graphs on its value.
class _Hints(threading.local):
    def __init__(self):
        # Set in every thread from the start: a guard on an attribute that appears later
        # would make dynamo recompile every compiled step once.
        self.all_emit = False
        self.inputs_fit = False


# Read as attributes on the hottest paths (`STEP_HINTS.inputs_fit`): a function call per
# sublayer and step costs more than the read.
STEP_HINTS = _Hints()


def all_streams_emitting() -> bool:
    """True inside a step in which every stream of every sublayer gets a real input."""
    return STEP_HINTS.all_emit


@contextlib.contextmanager
def assume_all_streams_emitting():
    """Run the steps inside as if every stream had finished its warm-up (see
    `Layer.all_streams_warm`): no per-stream masks. Only correct when that holds; `step` sets
    it itself after checking, and the compiled all-streams graph is traced under it."""
    before = all_streams_emitting()
    STEP_HINTS.all_emit = True
    try:
        yield
    finally:
        STEP_HINTS.all_emit = before


def inputs_fit() -> bool:
    """True inside a step whose state is the one the same layer's previous step returned, for an
    input of the same shape, dtype and device: every sublayer's state and input then fit as
    they did, and the sublayers skip their checks (`Layer.step`)."""
    return STEP_HINTS.inputs_fit


@contextlib.contextmanager
def inputs_fit_as(value: bool):
    """Run the steps inside with the `inputs_fit` hint set to ``value`` (a nested `step` sets it
    for its own state, so a hint never reaches a state it was not established for)."""
    before = STEP_HINTS.inputs_fit
    STEP_HINTS.inputs_fit = value
    try:
        yield
    finally:
        STEP_HINTS.inputs_fit = before


def emitted(n_inputs: int, delay: int, stride: int) -> int:
    """How many outputs a layer has emitted after ``n_inputs`` steps from a fresh state."""
    if n_inputs <= delay:
        return 0
    return (n_inputs - 1 - delay) // stride + 1


def emits_after(count: Tensor, delay: int, stride: int) -> Tensor:
    """Per stream: did the step that brought the input counter to ``count`` emit an output?"""
    last = count - 1 - delay
    if stride == 1:
        return last >= 0
    return (last >= 0) & (torch.remainder(last, stride) == 0)


def first_emitting_step(clock: int, delay: int, stride: int) -> int:
    """The first step index ``>= clock`` (0-based) whose step emits an output."""
    if clock <= delay:
        return delay
    return delay + -(-(clock - delay) // stride) * stride
