"""The adapter base: an ``nn.Module`` that runs a cofunc `Layer` with co's call modes."""

from __future__ import annotations

from typing import Any, Optional

import optree
import torch
from torch import Tensor, nn

from .._errors import ConfigurationError, InputShapeError, StateError, StreamsOutOfStepError
from .._layer import Layer, first_tensor, module_params, shape_of, tree_map
from ._call_mode import _stack, current_call_mode, normalise_call_mode


_STATISTICS_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)

# Bumped whenever any module registers a parameter, buffer or submodule (assignments included):
# adapters cache their params and module lists until then. In-place changes (load_state_dict,
# .to(), optimisers) keep the tensor objects, so they need no bump.
_registry_version = [0]


def _bump_registry_version(*args):
    _registry_version[0] += 1


nn.modules.module.register_module_parameter_registration_hook(_bump_registry_version)
nn.modules.module.register_module_buffer_registration_hook(_bump_registry_version)
nn.modules.module.register_module_module_registration_hook(_bump_registry_version)


class _ForwardMode:
    """While a layer computes, modules it calls run their torch ``forward`` (no re-dispatch)."""

    def __enter__(self):
        _stack().append("forward")

    def __exit__(self, *exc):
        _stack().pop()


_forward_mode = _ForwardMode()


class ContinualModule(nn.Module):
    """Mix-in for cofunc's nn adapters (co's ``CoModule`` contract).

    Subclasses implement ``_build_layer()``. The clip ``forward`` is the torch.nn computation;
    ``forward_step`` and ``forward_steps`` run the functional `Layer` on ``.params`` (the
    module's own tensors) and the stream state kept in a plain attribute, outside the
    ``state_dict``. Streams share one clock here, as in co: a warming-up or strided step
    returns ``None``.
    """

    _co_state: Any = None
    _co_call_mode: str = "forward"

    # --- the functional view ----------------------------------------------------------------
    def _build_layer(self) -> Layer:
        raise NotImplementedError

    @property
    def layer(self) -> Layer:
        """The cofunc `Layer` this module runs."""
        layer = self.__dict__.get("_co_layer")
        if layer is None:
            layer = self._build_layer()
            self.__dict__["_co_layer"] = layer
        return layer

    def _layer_for(self, rank: int, mode: str = "forward") -> Layer:
        """The layer to run in ``mode`` for inputs of non-batch rank ``rank``."""
        layer = self.layer
        return layer if layer.step_rank is not None else layer.with_rank(rank)

    @property
    def params(self) -> dict:
        """The tensors the computation reads (parameters, persistent buffers), nested by name:
        the module's own tensors (kept until a parameter, buffer or submodule is registered)."""
        cached = self.__dict__.get("_co_params")
        if cached is None or cached[0] != _registry_version[0]:
            cached = (_registry_version[0], module_params(self))
            self.__dict__["_co_params"] = cached
        return cached[1]

    # --- temporal metadata (co's names; stride and padding are tuples, time first) ----------
    @property
    def delay(self) -> int:
        return self.layer.delay

    @property
    def receptive_field(self) -> int:
        return self.layer.receptive_field

    # co's stride and padding are tuples whose first entry is time. The torch.nn classes that
    # own these attributes (convolutions, pools) set them in their __init__ and keep their values.
    @property
    def stride(self) -> tuple:
        if "_torch_stride" in self.__dict__:
            return self.__dict__["_torch_stride"]
        return (self.layer.stride,)

    @stride.setter
    def stride(self, value) -> None:
        self.__dict__["_torch_stride"] = value

    @property
    def padding(self) -> tuple:
        if "_torch_padding" in self.__dict__:
            return self.__dict__["_torch_padding"]
        return (self.layer.padding,)

    @padding.setter
    def padding(self, value) -> None:
        self.__dict__["_torch_padding"] = value

    # --- call modes ---------------------------------------------------------------------------
    @property
    def call_mode(self) -> str:
        return self._co_call_mode

    @call_mode.setter
    def call_mode(self, mode) -> None:
        self._co_call_mode = normalise_call_mode(mode)

    def __call__(self, *args, **kwargs):
        mode = current_call_mode() or self._co_call_mode
        if mode == "forward_step":
            return self.forward_step(*args, **kwargs)
        if mode == "forward_steps":
            return self.forward_steps(*args, **kwargs)
        with _forward_mode:
            return super().__call__(*args, **kwargs)

    # --- stepping -----------------------------------------------------------------------------
    def _fresh_state(self, layer: Layer, step_shape, like: Tensor):
        return layer.init_state(self.params, step_shape, device=like.device, dtype=like.dtype)

    def _check_step_mode(self) -> None:
        """Raise if a step cannot equal the clip: a norm in training mode (here or in any
        submodule) normalises with the statistics of the whole clip, which a step cannot see."""
        for norm in self._statistics_norms():
            if norm.training:
                raise ConfigurationError(
                    f"{type(self).__name__}: {type(norm).__name__} is in training mode and normalises with "
                    f"the statistics of the whole clip, which a step cannot see; call .eval() before stepping"
                )

    def _statistics_norms(self):
        """The batch and instance norms in this module's tree (cached until modules change)."""
        cached = self.__dict__.get("_co_norms")
        if cached is None or cached[0] != _registry_version[0]:
            norms = [m for m in self.modules() if isinstance(m, _STATISTICS_NORMS)]
            cached = (_registry_version[0], norms)
            self.__dict__["_co_norms"] = cached
        return cached[1]

    def forward_step(self, input: Tensor, update_state: bool = True) -> Optional[Tensor]:
        """One frame ``(B, C, *S)`` in; the output frame, or ``None`` while warming up or on a
        strided step. ``update_state=False`` leaves the stored state as it was."""
        self._check_step_mode()
        like = first_tensor(input)
        _check_tensor(self, like, "forward_step")
        layer = self._layer_for(like.dim() - 1, "forward_step")
        _check_one_batch_dim(layer, like, clip=False)
        with _forward_mode:
            state = self._co_state
            if state is None:
                state = self._fresh_state(layer, shape_of(input), like)
            y, new_state = layer.step(self.params, state, input)
            valid = _all_or_none(layer, layer.valid(new_state))
        if update_state:
            self._co_state = _without_history(new_state)
        return y if valid else None

    def forward_steps(self, input: Tensor, pad_end: bool = False, update_state: bool = True) -> Optional[Tensor]:
        """A clip ``(B, C, T, *S)`` of steps in; the emitted outputs stacked on dim 2, or
        ``None`` if there were none. ``pad_end=True`` appends the outputs that need end padding
        without storing the padded state."""
        self._check_step_mode()
        like = first_tensor(input)
        _check_tensor(self, like, "forward_steps")
        layer = self._layer_for(like.dim() - 2, "forward_steps")
        _check_one_batch_dim(layer, like, clip=True)
        with _forward_mode:
            state = self._co_state
            if state is None:
                axis = layer.time_axis()
                state = self._fresh_state(layer, _without_axis(input, axis), like)
            ys, new_state = layer.steps(self.params, state, input, pad_end=pad_end)
        if update_state:
            self._co_state = _without_history(new_state)
        return ys if first_tensor(ys).shape[layer.out_time_axis()] > 0 else None

    def warm_up(self, step_shape) -> None:
        """Feed ``delay`` zero frames, as co's ``warm_up`` does."""
        if self.delay > 0:
            param = next(iter(optree.tree_leaves(self.params)), None)
            shape = list(step_shape)
            shape.insert(2, self.delay)
            kwargs = {} if param is None else {"device": param.device, "dtype": param.dtype}
            self.forward_steps(torch.zeros(shape, **kwargs))

    # --- state --------------------------------------------------------------------------------
    def clean_state(self) -> None:
        """Forget the stream: the next step starts from a fresh state."""
        self._co_state = None

    def get_state(self):
        """The stream state (a pytree of tensors), or ``None`` before the first step."""
        return self._co_state

    def set_state(self, state) -> None:
        """Resume from a state returned by ``get_state`` (of this module or an equal one)."""
        if state is not None:
            current = self._co_state
            if current is not None:
                want = optree.tree_structure(current, namespace="cofunc")
                got = optree.tree_structure(state, namespace="cofunc")
                if want != got:
                    raise StateError(f"{self.layer.label}: set_state expected a state structured as {want}, got {got}")
                for a, b in zip(optree.tree_leaves(current, namespace="cofunc"), optree.tree_leaves(state, namespace="cofunc")):
                    if a.shape != b.shape or a.dtype != b.dtype:
                        raise StateError(
                            f"{self.layer.label}: set_state expected leaves of shape {tuple(a.shape)} and "
                            f"dtype {a.dtype}, got {tuple(b.shape)} and {b.dtype}"
                        )
        self._co_state = state


def _without_history(state):
    """The state to store: without autograd history.

    States are functions of the params: with grad enabled, each stored state would keep the
    graphs of all earlier steps alive (memory growing with the stream). Outputs keep their graph,
    so gradients flow within a call; they do not flow into earlier calls (as truncated BPTT).
    """
    return tree_map(lambda t: t.detach(), state)


def _check_tensor(module: nn.Module, x, method: str) -> None:
    if not isinstance(x, Tensor):
        form = "a frame (B, C, *S)" if method == "forward_step" else "a clip (B, C, T, *S)"
        raise InputShapeError(f"{type(module).__name__}.{method}: expected {form} tensor, got {type(x).__name__}")


def _check_one_batch_dim(layer: Layer, x: Tensor, clip: bool) -> None:
    """nn adapters take one batch dim, like co: ``(B, C, *S)`` steps and ``(B, C, T, *S)`` clips."""
    rank = layer.step_rank
    if rank is not None and x.dim() != rank + 1 + clip:
        form = "(B, C, T, *S)" if clip else "(B, C, *S)"
        hint = " (a clip passed to forward_step?)" if not clip and x.dim() == rank + 2 else ""
        raise InputShapeError(
            f"{layer.label}: expected a {'clip' if clip else 'step'} {form} with {rank + 1 + clip} dims, "
            f"got shape {tuple(x.shape)}{hint}"
        )


def _without_axis(value, axis: int):
    """The step shape of a clip value: its shape without the time axis (lists for tuples)."""
    if isinstance(value, (tuple, list)):
        return [_without_axis(v, axis) for v in value]
    shape = list(value.shape)
    del shape[axis]
    return tuple(shape)


def _all_or_none(layer: Layer, valid: Tensor) -> bool:
    if valid.dim() == 0 or valid.numel() <= 1:
        return bool(valid.all())
    n = int(valid.sum())
    if 0 < n < valid.numel():
        raise StreamsOutOfStepError(
            f"{layer.label}: the streams of this module's state are at different positions; an "
            f"nn adapter steps all streams on one clock (use the functional Layer for streams out of step)"
        )
    return n > 0
