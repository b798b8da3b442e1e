"""The adapter base: an ``nn.Module`` that runs a cofunc `Layer` with co's call modes.

Also co's ``CoModule`` (an alias of `ContinualModule`), ``PaddingMode`` and ``call_mode``.
"""

from __future__ import annotations

import dataclasses
import warnings
from enum import Enum
from typing import Any, Optional

import optree
import torch
from torch import Tensor, nn

from .._errors import InputShapeError, StateError, StreamsOutOfStepError
from .._layer import Layer, Wrapper
from .._params import module_params
from .._values import first_tensor, shape_of, tree_leaves, tree_map
from ._call_mode import _stack, call_mode, current_call_mode, normalise_call_mode
from . import utils as _utils

__all__ = ["CoModule", "ContinualModule", "PaddingMode", "call_mode"]


class TrainingModeStepWarning(UserWarning):
    """Stepping a module whose batch norms are in training mode (the steps differ from forward)."""


class PaddingMode(Enum):
    """co's names for the temporal fill of padded frames."""

    REPLICATE = "replicate"
    ZEROS = "zeros"
    NEG_INF = "neg_inf"


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
        """The layer of this module's current options and children (subclasses override). The
        default returns the layer a module was given at construction (``_co_source``)."""
        source = self.__dict__.get("_co_source")
        if source is None:
            raise NotImplementedError(f"{type(self).__name__} implements no _build_layer")
        return source

    def _layer_key(self) -> Any:
        """What the layer depends on beyond options fixed at construction (children's layers, the
        module's identity): the cached layer is rebuilt when the key changes. None: built once."""
        return None

    @property
    def layer(self) -> Layer:
        """The cofunc `Layer` this module runs (cached; see `_layer_key`)."""
        key = self._layer_key()
        cache = self.__dict__
        layer = cache.get("_co_layer")
        if layer is None or cache.get("_co_layer_key") != key:
            layer = self._build_layer()
            cache["_co_layer"], cache["_co_layer_key"] = layer, key
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
    # They live in the instance __dict__ under their own names because torch's ``extra_repr``
    # formats ``self.__dict__`` (the class property shadows the entry for attribute access).
    @property
    def stride(self) -> tuple:
        if "stride" in self.__dict__:
            return self.__dict__["stride"]
        return (self.layer.stride,)

    @stride.setter
    def stride(self, value) -> None:
        self.__dict__["stride"] = value

    @property
    def padding(self) -> tuple:
        if "padding" in self.__dict__:
            return self.__dict__["padding"]
        return (self.layer.padding,)

    @padding.setter
    def padding(self, value) -> None:
        self.__dict__["padding"] = value

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
            return self._call_with_hooks(self.forward_step, args, kwargs)
        if mode == "forward_steps":
            return self._call_with_hooks(self.forward_steps, args, kwargs)
        with _forward_mode:
            return super().__call__(*args, **kwargs)

    def _call_with_hooks(self, method, args, kwargs):
        """``method(*args, **kwargs)`` with this module's forward pre-hooks and hooks around it,
        as co runs them in every call mode (torch's own dispatch only wraps ``forward``)."""
        if not (self._forward_pre_hooks or self._forward_hooks):
            return method(*args, **kwargs)
        for hook_id, hook in list(self._forward_pre_hooks.items()):
            if hook_id in self._forward_pre_hooks_with_kwargs:
                result = hook(self, args, kwargs)
                if result is not None:
                    args, kwargs = result
            else:
                result = hook(self, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        output = method(*args, **kwargs)
        for hook_id, hook in list(self._forward_hooks.items()):
            if hook_id in self._forward_hooks_with_kwargs:
                result = hook(self, args, kwargs, output)
            else:
                result = hook(self, args, output)
            if result is not None:
                output = result
        return output

    def _hooked_layer(self) -> Layer:
        """The layer a container steps for this child: ``self.layer``, wrapped so that this
        module's forward hooks see each step when it has any (ptflops counts with hooks)."""
        layer = self.layer
        if not (self._forward_pre_hooks or self._forward_hooks):
            return layer
        key = (id(layer), tuple(self._forward_pre_hooks), tuple(self._forward_hooks))
        cached = self.__dict__.get("_co_hooked")
        if cached is None or cached[0] != key:
            cached = (key, HookedLayer(layer, self))
            self.__dict__["_co_hooked"] = cached
        return cached[1]

    # --- pickling, copies, state dicts -------------------------------------------------------
    _REBUILT_ON_DEMAND = ("_co_layer", "_co_layer_key", "_co_params", "_co_norms", "_co_cached", "_co_hooked")

    def __getstate__(self):
        # Caches are rebuilt on demand (and may hold functions that do not pickle); the stream
        # state and a layer given at construction (`_co_source`) are kept, so a pickled module
        # continues its stream.
        state = dict(self.__dict__)
        for key in self._REBUILT_ON_DEMAND:
            state.pop(key, None)
        return state

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False, flatten: bool = False):
        """torch's ``state_dict``; ``flatten=True`` (or ``with cofunc.nn.utils.flat_state_dict``)
        drops the numeric names of unnamed container children, as co's does."""
        if args:  # torch's deprecated positional form (destination, prefix, keep_vars)
            return nn.Module.state_dict(self, *args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        return _utils.state_dict(self, destination, prefix, keep_vars, flatten)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False, flatten: bool = False):
        """torch's ``load_state_dict``; ``flatten=True`` accepts the keys of
        ``state_dict(flatten=True)``."""
        if assign:
            return nn.Module.load_state_dict(self, state_dict, strict, assign)
        return _utils.load_state_dict(self, state_dict, strict, flatten)

    # --- stepping -----------------------------------------------------------------------------
    def _fresh_state(self, layer: Layer, step_shape, like: Tensor):
        self.__dict__["_co_step_shape"] = step_shape  # what `cofunc.save_state(f, module)` records
        return layer.init_state(self.params, step_shape, device=like.device, dtype=like.dtype)

    def _check_step_mode(self) -> None:
        """Warn if a step cannot equal the clip: a batch norm in training mode (here or in any
        submodule) normalises each step's frames with their own statistics (co's behaviour,
        kept so co code runs unchanged), not with the clip's as ``forward`` does."""
        for norm in self._statistics_norms():
            if norm.training:
                warnings.warn(
                    f"{type(self).__name__}: {type(norm).__name__} is in training mode, so each step is "
                    f"normalised with its own batch statistics (as co does) and the steps do not equal the "
                    f"clip forward; call .eval() before stepping for exact inference",
                    TrainingModeStepWarning, stacklevel=3,
                )
                return

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
        """Forget the stream, here and in every continual child (each cleans its own): the next
        step starts from a fresh state."""
        self._co_state = None
        for child in self.children():
            if isinstance(child, ContinualModule):
                child.clean_state()

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


CoModule = ContinualModule  # co's name for the base of its modules


@dataclasses.dataclass(frozen=True, eq=False)
class HookedLayer(Wrapper):
    """A child's layer inside a container, running the child module's forward pre-hooks and
    hooks around each step (with the step's input and, when it emitted, its output) and around
    each chunk of steps. The arithmetic is the inner layer's."""

    module: Any

    def _run(self, compute, x, chunk: bool):
        module = self.module
        args = (x,)
        for hook in list(module._forward_pre_hooks.values()):
            result = hook(module, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        y, state = compute(args[0])
        if self._emitted(y, state, chunk):
            for hook in list(module._forward_hooks.values()):
                result = hook(module, args, y)
                if result is not None:
                    y = result
        return y, state

    def _emitted(self, y, state, chunk: bool) -> bool:
        leaf = first_tensor(y) if y is not None else None
        if leaf is None or leaf.numel() == 0:
            return False
        return chunk or bool(self.inner.valid(state).all())

    def step_unmasked(self, params, state, x):
        return self._run(lambda x: self.inner.step_unmasked(params, state, x), x, False)

    def steps(self, params, state, xs, pad_end=False):
        return self._run(lambda xs: self.inner.steps(params, state, xs, pad_end), xs, True)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        return self._run(lambda xs: self.inner.steps_at_clock(params, state, xs, clock, pad_end), xs, True)


def _without_history(state):
    """The state to store: without autograd history.

    States are functions of the params: with grad enabled, each stored state would keep the
    graphs of all earlier steps alive (memory growing with the stream). Outputs keep their graph,
    so gradients flow within a call; they do not flow into earlier calls (as truncated BPTT).
    """
    # A state without history (every state under no_grad) is stored as it is: the layer then
    # recognises it as its own last output at the next step (`Layer.step` skips the checks).
    if not any(t.requires_grad for t in tree_leaves(state)):
        return state
    return tree_map(lambda t: t.detach() if t.requires_grad else t, state)


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
