"""Pytree and value helpers every layer uses: tree maps in cofunc's optree namespace, per-stream
masks, multi-stream values (tuples of tensors) and the frame buffers stored in states."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import optree
import torch
from torch import Tensor

Shape = Tuple[int, ...]


# optree namespace for the library's own containers (docs/design.md, section 4).
TREE_NAMESPACE = "cofunc"


def tree_map(fn: Callable, tree, *rest):
    return optree.tree_map(fn, tree, *rest, namespace=TREE_NAMESPACE)


def tree_leaves(tree):
    return optree.tree_leaves(tree, namespace=TREE_NAMESPACE)


def values_are_concrete(t: Tensor) -> bool:
    """True when reading ``t``'s values on the host is allowed and cheap.

    Under torch.compile, export, fx tracing or a torch.func transform, reading values would break
    the graph or fail, so callers fall back to branch-free masking.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch._C._functorch.maybe_current_level() is not None:
        return False
    return not torch.fx._symbolic_trace.is_fx_symbolic_tracing()


def push_frames(buffer: Tensor, frames: Tensor, axis: int,
                memory_format: Optional[torch.memory_format] = None) -> Tuple[Tensor, Tensor]:
    """The frame shift register every buffering layer uses (windows, delays, attention).

    ``buffer`` holds the last ``K`` frames along ``axis``; ``frames`` are the new ones. Returns
    the window (``buffer`` followed by ``frames``, ``K + T`` frames) and the next buffer (the
    window's last ``K`` frames). ``memory_format`` lays a 5-d window out for the op that reads
    it (channels-last for depthwise convolutions); the buffer, a view, keeps that layout.

    The one rule for the buffers a state stores: while compiling or exporting they are
    contiguous, so every state has the fresh state's strides and the graph compiled for the
    first step serves every later one (dynamo guards on strides). So are the buffers a chunk
    of frames leaves (a view would keep the whole chunk alive, and a compiled step that follows
    eager chunks would recompile). Only an eager single step stores a view of its window,
    which saves a copy per step.
    """
    keep = buffer.shape[axis]
    compiling = torch.compiler.is_compiling()
    if memory_format is None or buffer.dim() != 5 or not values_are_concrete(buffer):
        window = torch.cat([buffer, frames], dim=axis)
    else:
        shape = list(buffer.shape)
        shape[axis] += frames.shape[axis]
        window = torch.empty(shape, dtype=buffer.dtype, device=buffer.device, memory_format=memory_format)
        window.narrow(axis, 0, keep).copy_(buffer)
        window.narrow(axis, keep, frames.shape[axis]).copy_(frames)
    if keep == 0:  # an empty buffer stays the fresh one (an empty view has odd strides)
        return window, buffer
    tail = window.narrow(axis, window.shape[axis] - keep, keep)
    if compiling or frames.shape[axis] != 1:
        tail = tail.contiguous()
    return window, tail


def expand_mask(mask: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-stream mask ``(*B,)`` so that it broadcasts against ``(*B, ...)``."""
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


def tree_where(mask: Tensor, new, old):
    """Per stream, take ``new`` where ``mask`` holds and ``old`` elsewhere (out of place)."""
    return tree_map(lambda n, o: torch.where(expand_mask(mask, n), n, o), new, old)


def zero_invalid(value, valid: Tensor):
    """``value`` (a tensor ``(*B, ...)`` or a tuple of them) with zeros where ``valid`` ``(*B,)`` is False.

    In eager mode the mask is read once: all valid costs nothing, none valid makes zeros without
    a select. Under compile, export and vmap the select always runs (branch-free).
    """
    if values_are_concrete(valid):
        if bool(valid.all()):
            return value
        if not bool(valid.any()):
            return map_values(torch.zeros_like, value)
    return map_values(lambda t: torch.where(expand_mask(valid, t), t, torch.zeros((), dtype=t.dtype, device=t.device)), value)


def map_values(fn: Callable, *values):
    """Apply ``fn`` to a tensor value, or element-wise to tuples of tensors (multi-stream values)."""
    if isinstance(values[0], tuple):
        return tuple(map_values(fn, *parts) for parts in zip(*values))
    return fn(*values)


def first_tensor(value) -> Tensor:
    return first_tensor(value[0]) if isinstance(value, tuple) else value


def shape_of(value):
    """The step shape of a value: a tuple of ints, or a list of shapes for multi-stream values."""
    if isinstance(value, tuple):
        return [shape_of(v) for v in value]
    return tuple(value.shape)


def zeros_of_shape(like: Tensor, shape):
    """Zeros of a step shape; a list of shapes (multi-stream values) gives a tuple of tensors."""
    if isinstance(shape, list):
        return tuple(zeros_of_shape(like, s) for s in shape)
    return like.new_zeros(shape)


def empty_clip(like: Tensor, step_shape: Shape, time_axis: int) -> Tensor:
    """A clip of zero length whose step shape is ``step_shape``."""
    shape = list(step_shape)
    shape.insert(len(shape) + 1 + time_axis if time_axis < 0 else time_axis, 0)
    return like.new_zeros(shape)
