"""Stateless per-frame layers: closures (add, multiply, constants), reshape and linear."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import ConfigurationError, InputShapeError
from ._layer import Stateless, StatelessAnyRank, check_dtype_device
from ._lift import Lift


def identity() -> Lift:
    """The identity; ``forward``, ``step`` and ``steps`` return their input.

    Example:
        >>> import torch, cofunc
        >>> cofunc.identity().step({}, (), torch.ones(1))[0]
        tensor([1.])
    """
    return Lift(lambda params, x: x, "identity")


def _add(params, x, constant):
    return x + constant


def _multiply(params, x, factor):
    return x * factor


def add(constant: Union[float, Tensor]) -> Lift:
    """``x + constant``. A tensor constant broadcasts against each frame and clip as torch
    broadcasts (trailing axes aligned), so a constant over the non-time axes (``(*S,)`` or
    ``(C, 1, ..., 1)``) acts alike on steps and clips; `cofunc.nn.Add` is co's variant, whose
    constant is shaped for clips ``(B, C, T, *S)``.

    Example:
        >>> import torch, cofunc
        >>> cofunc.add(torch.tensor([2.0, 3.0])).step({}, (), torch.ones(1, 1, 2))[0]
        tensor([[[3., 4.]]])
    """
    return Lift(functools.partial(_add, constant=constant), f"add({_short(constant)})")


def multiply(factor: Union[float, Tensor]) -> Lift:
    """``x * factor`` (a tensor factor broadcasts as in `add`)."""
    return Lift(functools.partial(_multiply, factor=factor), f"multiply({_short(factor)})")


def constant(value: float) -> Lift:
    """``value * ones_like(x)``."""
    return Lift(lambda params, x: torch.full_like(x, value), f"constant({value})")


def zero() -> Lift:
    """``zeros_like(x)``."""
    return Lift(lambda params, x: torch.zeros_like(x), "zero")


def one() -> Lift:
    """``ones_like(x)``."""
    return Lift(lambda params, x: torch.ones_like(x), "one")


def _short(value) -> str:
    return f"tensor{tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)


@dataclasses.dataclass(frozen=True, eq=False)
class Reshape(Stateless):
    """Reshape the non-batch, non-time axes: a step ``(*B, *in) -> (*B, *shape)``, a clip
    ``(*B, C, T, *S) -> (*B, shape[0], T, *shape[1:])`` (co's shapes include the batch size;
    cofunc's do not, so one layer serves any batch)."""

    shape: Tuple[int, ...]
    contiguous: bool = False
    step_rank: Optional[int] = None

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if not shape or sum(s == -1 for s in shape) > 1 or any(s < -1 or s == 0 for s in shape):
            raise ConfigurationError(f"reshape: `shape` needs positive sizes and at most one -1, got {self.shape}")
        object.__setattr__(self, "shape", shape)

    @property
    def label(self):
        return f"reshape{self.shape}"

    @property
    def out_rank(self):
        return len(self.shape)

    def with_rank(self, rank):
        return dataclasses.replace(self, step_rank=rank)

    def _lead(self, x: Tensor, clip: bool) -> int:
        rank = self.step_rank
        if rank is None:
            return 1  # one batch dim, like torch and co
        return x.dim() - rank - clip

    def step_unmasked(self, params, state, x):
        n = self._lead(x, False)
        y = x.reshape(tuple(x.shape[:n]) + self.shape)
        return (y.contiguous() if self.contiguous else y), state

    def forward(self, params, xs):
        n = self._lead(xs, True)
        moved = xs.movedim(n + 1, n)  # (*B, T, C, *S)
        # The -1 from one frame's size: a chunk of no frames (nothing emitted) has none to infer from.
        y = moved.reshape(tuple(moved.shape[: n + 1]) + self._frame_shape(moved.shape[n + 1:])).movedim(n, n + 1)
        return y.contiguous() if self.contiguous else y

    def _frame_shape(self, frame_shape) -> Tuple[int, ...]:
        if -1 not in self.shape:
            return self.shape
        known = math.prod(s for s in self.shape if s != -1)
        return tuple(math.prod(frame_shape) // known if s == -1 else s for s in self.shape)

    def step_output_shape(self, input_shape):
        n = 1 if self.step_rank is None else len(input_shape) - self.step_rank
        numel = math.prod(input_shape[n:])
        known = math.prod(s for s in self.shape if s != -1)
        shape = tuple(numel // known if s == -1 else s for s in self.shape)
        if math.prod(shape) != numel:
            raise InputShapeError(f"{self.label}: cannot reshape a step of shape {tuple(input_shape)} to {self.shape}")
        return tuple(input_shape[:n]) + shape


def reshape(*shape: int, contiguous: bool = False) -> Reshape:
    """Reshape each frame to ``shape`` (batch and time axes excluded).

    Example:
        >>> import torch, cofunc
        >>> cofunc.reshape(2, 3).forward({}, torch.zeros(4, 6, 5)).shape
        torch.Size([4, 2, 5, 3])
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape(shape, contiguous)


@dataclasses.dataclass(frozen=True, eq=False)
class Linear(StatelessAnyRank):
    """``torch.nn.Linear`` applied to the channel axis of clips ``(*B, C, T, *S)`` and steps
    ``(*B, C, *S)``; or, with ``channel_dim`` set, to that axis of both (co's convention)."""

    in_features: int
    out_features: int
    bias: bool = True
    channel_dim: Optional[int] = None
    step_rank: Optional[int] = None

    @property
    def label(self):
        return f"linear({self.in_features}->{self.out_features})"

    def init_params(self, *, device=None, dtype=None):
        module = nn.Linear(self.in_features, self.out_features, self.bias, device=device, dtype=dtype)
        return {name: p.detach() for name, p in module.named_parameters()}

    def _dim(self, x: Tensor, clip: bool) -> int:
        if self.channel_dim is not None:
            return self.channel_dim
        return 1 if self.step_rank is None else x.dim() - self.step_rank - clip

    def _apply(self, params, x: Tensor, clip: bool) -> Tensor:
        dim = self._dim(x, clip)
        if x.shape[dim] != self.in_features:
            raise InputShapeError(
                f"{self.label}: expected {self.in_features} features at dim {dim} of the "
                f"{'clip' if clip else 'step input'}, got shape {tuple(x.shape)}"
            )
        check_dtype_device(self, x, params["weight"], "clip" if clip else "step input")
        if dim in (-1, x.dim() - 1):
            return F.linear(x, params["weight"], params.get("bias"))
        return F.linear(x.movedim(dim, -1), params["weight"], params.get("bias")).movedim(-1, dim)

    def step_unmasked(self, params, state, x):
        return self._apply(params, x, False), state

    def forward(self, params, xs):
        return self._apply(params, xs, True)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        return self._apply(params, xs, True), state

    def step_output_shape(self, input_shape):
        shape = list(input_shape)
        dim = self.channel_dim if self.channel_dim is not None else (1 if self.step_rank is None else len(shape) - self.step_rank)
        shape[dim] = self.out_features
        return tuple(shape)


def linear(in_features: int, out_features: int, bias: bool = True, channel_dim: Optional[int] = None) -> Linear:
    """A continual ``Linear`` over the channel axis (stateless).

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.linear(4, 2)
        >>> layer.forward(layer.init_params(), torch.zeros(1, 4, 7)).shape
        torch.Size([1, 2, 7])
    """
    return Linear(in_features, out_features, bias, channel_dim)
