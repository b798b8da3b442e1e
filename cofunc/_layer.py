"""The core record: a `Layer` is a frozen bundle of pure functions plus static temporal metadata.

Conventions shared by every layer:

- a step input has shape ``(*B, C, *S)``; ``*B`` are independent streams (none under vmap);
- a clip has shape ``(*B, C, T, *S)``: the time axis sits ``step_rank`` places from the end;
- params are nested dicts of tensors keyed like the equivalent torch.nn ``state_dict``;
- state is a pytree of tensors whose leaves all start with the stream dims ``*B``; counters are
  int64 tensors of shape ``*B``; a stateless layer's state is ``()``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._clock import all_streams_emitting, assume_all_streams_emitting, emits_after, emitted, inputs_fit_as
from ._params import Params, _first_mismatch, module_params, params_shapes_of
from ._values import Shape, empty_clip, map_values, values_are_concrete, zero_invalid

from ._errors import (
    ConfigurationError,
    DTypeDeviceError,
    InputShapeError,
    ParamsError,
    StateError,
    StreamsOutOfStepError,
    layer_label,
)

State = Any

EMPTY_PARAMS: Mapping[str, Any] = {}

# What a layer's input checks get as the state when the clip `forward` runs (it has none).
NO_STATE = type("NoState", (), {"__repr__": lambda self: "NO_STATE"})()


def read_shared_clock(layer: "Layer", counter: Optional[Tensor]) -> int:
    """The number of steps all streams have taken; raise if they differ (host read)."""
    if counter is None:
        return 0
    if counter.numel() == 0:
        return 0
    lo, hi = torch.aminmax(counter)
    lo, hi = int(lo), int(hi)
    if lo != hi:
        raise StreamsOutOfStepError(
            f"{layer_label(layer)}: `steps` needs all streams at the same position, but their step "
            f"counters range from {lo} to {hi}. Use `step` (per stream) for streams out of step."
        )
    return lo


_STATIC_METADATA = ("receptive_field", "padding", "padding_end", "stride", "delay", "stateful", "step_rank",
                    "out_rank", "keeps_rank")


def _cached_property(fget, name):
    key = "_static_" + name

    def get(self):
        cache = self.__dict__
        if key not in cache:
            cache[key] = fget(self)
        return cache[key]

    get._cofunc_cached = True
    get.__doc__ = fget.__doc__
    return property(get)


def _memoised_with_rank(fn):
    """Layers are immutable: the layer for a rank is made once (the nn adapters ask on every call,
    and a layer made once keeps its cached metadata and params template)."""
    if getattr(fn, "_cofunc_memoised", False):
        return fn

    def with_rank(self, rank: int):
        cache = self.__dict__.setdefault("_with_rank_cache", {})
        layer = cache.get(rank)
        if layer is None:
            layer = cache[rank] = fn(self, rank)
        return layer

    with_rank._cofunc_memoised = True
    with_rank.__doc__ = fn.__doc__
    return with_rank


@dataclasses.dataclass(frozen=True, eq=False)
class Layer(abc.ABC):
    """A continual layer: static temporal metadata and pure functions over explicit state.

    The contract a layer implements (abstract, so a class that misses one cannot be made):

    - ``init_state(params, input_shape)``: the fresh state;
    - ``step_unmasked(params, state, x)``: one step, without zeroing the outputs of streams that
      did not emit (the public ``step`` checks, calls it and masks once, at the outermost layer);
    - ``forward(params, xs)``: the regular clip computation.

    and, where the defaults do not fit, its static metadata, ``step_output_shape`` and
    ``steps_at_clock(params, state, xs, clock, pad_end)``: the chunk protocol every combinator
    calls on its children, a chunk of steps from a shared clock the caller knows. Its default
    loops ``step_unmasked`` and stacks the emitted outputs; leaves override it only for speed.
    The public ``steps`` checks, reads the clock and calls it.

    Attributes (static, temporal, ints): ``delay`` (steps before the first output),
    ``receptive_field``, ``stride``, ``padding`` (start padding) and ``padding_end`` (the frames
    ``steps(..., pad_end=True)`` flushes). ``step_rank`` is the non-batch rank of a step input
    (``1 + len(S)``), or None for layers that accept any rank.
    """

    def __hash__(self):
        return id(self)

    def __getstate__(self):
        # Copies and pickles drop the last checked params: a cache of identity, meaningless in a
        # copy, and it holds tensors (deepcopy refuses non-leaf ones).
        state = dict(self.__dict__)
        state.pop("_checked_params", None)
        state.pop("_last_step", None)
        return state

    def __init_subclass__(cls, **kwargs):
        # Layers are immutable, so their static metadata is computed once per layer: combinators
        # query their children's metadata on every step, recursively.
        super().__init_subclass__(**kwargs)
        if "with_rank" in cls.__dict__:
            cls.with_rank = _memoised_with_rank(cls.__dict__["with_rank"])
        for name in _STATIC_METADATA:
            attr = cls.__dict__.get(name)
            if isinstance(attr, property) and not getattr(attr.fget, "_cofunc_cached", False):
                setattr(cls, name, _cached_property(attr.fget, name))

    # --- static metadata (overridden by subclasses) -----------------------------------------
    @property
    def receptive_field(self) -> int:
        return 1

    @property
    def padding(self) -> int:
        return 0

    @property
    def padding_end(self) -> int:
        return self.padding

    @property
    def stride(self) -> int:
        return 1

    @property
    def delay(self) -> int:
        return self.receptive_field - 1 - self.padding

    @property
    def step_rank(self) -> Optional[int]:
        return None

    @property
    def out_rank(self) -> Optional[int]:
        """The non-batch rank of a step output (None if unknown)."""
        return self.step_rank

    @property
    def keeps_rank(self) -> bool:
        """Whether outputs have the rank of inputs, whatever it is (delays, pointwise functions)."""
        return False

    @property
    def label(self) -> str:
        return type(self).__name__

    @property
    def stateful(self) -> bool:
        """Whether the layer keeps a state between steps (False: its state is ``()``)."""
        return True

    def with_rank(self, rank: int) -> "Layer":
        """This layer for inputs of non-batch rank ``rank`` (rank-agnostic layers override)."""
        return self

    @property
    def copies_input(self) -> bool:
        """Whether every stream of this layer's output is a copy of its input (a broadcast)."""
        return False

    def follows(self, previous: "Layer") -> "Layer":
        """This layer as placed after ``previous`` in a `seq` (a parallel after a broadcast lets
        its branches share one rank); the default is the layer itself."""
        return self

    # --- params ------------------------------------------------------------------------------
    def init_params(self, *, device=None, dtype=None) -> Params:
        """Fresh params initialised as torch.nn initialises the equivalent module."""
        return {}

    def params_from(self, module: torch.nn.Module) -> Params:
        """The params of an existing torch.nn module: the same tensors, under the same names.

        They are the module's own parameters, so they require grad: stepping with them outside
        ``torch.no_grad()`` / ``torch.inference_mode()`` records a graph, and a carried state
        then keeps the graphs of all earlier steps (memory grows with the stream). Step inside
        ``torch.inference_mode()`` for inference, or carry ``cofunc.detach_state(state)``.
        """
        return module_params(module)

    def params_shapes(self) -> dict:
        """The shape of every params entry this layer reads, nested like its params."""
        return params_shapes_of(self.init_params(device="meta"))

    def check_params(self, params: Params) -> None:
        """Raise `ParamsError` naming the first entry this layer reads that ``params`` lack or
        hold with another shape (params of another layer, or empty ones).

        The expected shapes come from `params_shapes` (``init_params(device="meta")``), made once
        per layer; the last params that passed are remembered, so stepping with the same params
        checks once. Entries the layer does not read are allowed. Not checked while compiling.
        """
        cache = self.__dict__
        if cache.get("_checked_params") is params or torch.compiler.is_compiling():
            return
        template = cache.get("_params_template")
        if template is None:
            try:
                # Outside any vmap (random init is refused there) and on the meta device.
                with torch._C._DisableFuncTorch(), torch.no_grad():
                    template = self.params_shapes()
            except Exception:  # noqa: BLE001 - a layer that cannot describe its params is not checked
                template = {}
            cache["_params_template"] = template
        problem = _first_mismatch(template, params, "")
        if problem is not None:
            raise ParamsError(f"{self.label}: {problem}; are these the params of another layer?")
        cache["_checked_params"] = params

    # --- state -------------------------------------------------------------------------------
    @abc.abstractmethod
    def init_state(self, params: Params, input_shape: Sequence[int], *, device=None, dtype=None) -> State:
        """The fresh state for steps of shape ``input_shape`` = ``(*B, C, *S)``."""

    def clock(self, state: State) -> Optional[Tensor]:
        """Per stream, how many steps this layer has consumed (None for stateless layers)."""
        return None

    def valid(self, state: State) -> Tensor:
        """Per stream: was the output of the step that produced ``state`` a real one?"""
        count = self.clock(state)
        if count is None:
            return torch.ones((), dtype=torch.bool)
        return emits_after(count, self.delay, self.stride)

    def batch_shape(self, input_shape: Sequence[int]) -> Shape:
        rank = self.step_rank
        if rank is None:
            raise StateError(
                f"{self.label}: the rank of a step input is unknown, so the stream dims cannot be "
                f"told apart; give the layer a rank (for example `delay(n, step_rank=3)`) or place it "
                f"after a layer that knows it in a `seq`."
            )
        if len(input_shape) < rank:
            raise InputShapeError(
                f"{self.label}: a step input needs at least {rank} dims (C, *S), got shape {tuple(input_shape)}"
            )
        return tuple(input_shape[: len(input_shape) - rank])

    # --- computation -------------------------------------------------------------------------
    def step(self, params: Params, state: State, x: Tensor) -> Tuple[Tensor, State]:
        """One step: ``x: (*B, C, *S) -> y: (*B, C', *S')`` and the next state.

        The output of a stream that did not emit (warming up, or between strided outputs, see
        `valid`) is zeros, whether the step runs eagerly, vmapped, compiled or exported.
        """
        self.check_call(params, state)
        if not values_are_concrete(x):  # compile, export, vmap: no hint, nothing kept
            return self._masked_step(params, state, x)
        with inputs_fit_as(self._fits_last_step(params, state, x)):
            y, new_state = self._masked_step(params, state, x)
        self._remember_step(params, new_state, x)
        return y, new_state

    def _masked_step(self, params: Params, state: State, x: Tensor) -> Tuple[Tensor, State]:
        """`step` after its checks: `step_unmasked`, then zeros for the streams that did not emit."""
        if self.delay == 0 and self.stride == 1:  # emits on every step: nothing to mask
            return self.step_unmasked(params, state, x)
        if self.all_streams_warm(state):
            if all_streams_emitting():  # assumed by the caller (a compiled all-warm graph)
                return self.step_unmasked(params, state, x)
            with assume_all_streams_emitting():
                return self.step_unmasked(params, state, x)
        y, new_state = self.step_unmasked(params, state, x)
        return zero_invalid(y, self.valid(new_state)), new_state

    # The params, the state the last eager `step` returned and its input's signature: stepping
    # on from that very state, with the same params and a like input, needs no checks below this
    # layer (as `check_params` remembers the params that passed). Held strongly, as the caller
    # holds them; dropped by copies.
    def _fits_last_step(self, params: Params, state: State, x) -> bool:
        last = self.__dict__.get("_last_step")
        return (last is not None and last[0] is state and last[1] is params and isinstance(x, Tensor)
                and last[2] == (x.shape, x.dtype, x.device))

    def _remember_step(self, params: Params, new_state: State, x) -> None:
        if isinstance(x, Tensor):
            self.__dict__["_last_step"] = (new_state, params, (x.shape, x.dtype, x.device))

    def all_streams_warm(self, state: State) -> bool:
        """Whether the next step from ``state`` emits in every stream, and so does every
        sublayer: the layer has temporal stride 1 (so has every part of it) and every stream
        has taken at least ``delay`` steps. One host read; False while tracing (compile, export,
        vmap), where the masked computation runs unless the caller assumes it
        (`assume_all_streams_emitting`)."""
        if all_streams_emitting():
            return True
        if self.stride != 1:
            return False
        try:
            count = self.clock(state)
        except Exception:  # noqa: BLE001 - a malformed state: `step_unmasked` raises the proper error
            return False
        if not isinstance(count, Tensor) or count.numel() == 0 or not values_are_concrete(count):
            return False
        return int(count.min()) >= self.delay

    @abc.abstractmethod
    def step_unmasked(self, params: Params, state: State, x: Tensor) -> Tuple[Tensor, State]:
        """`step` without zeroing the outputs that were not emitted (what a layer implements,
        and what combinators call on their children: the outermost layer masks once)."""

    def steps(self, params: Params, state: State, xs: Tensor, pad_end: bool = False) -> Tuple[Tensor, State]:
        """Many steps at once: ``xs: (*B, C, T, *S) -> ys: (*B, C', T', *S')``.

        ``ys`` holds only the emitted outputs (all streams must be in step, see
        `StreamsOutOfStepError`). With ``pad_end=True`` the outputs that need end padding are
        appended, while the returned state is the one without the padding, so the stream can
        continue.
        """
        self.check_call(params, state)
        clock = read_shared_clock(self, self.clock(state))
        return self.steps_at_clock(params, state, xs, clock, pad_end)

    def check_call(self, params: Params, state: State) -> None:
        """What `step` and `steps` check before computing: the params, and that a stateful layer
        got a state (the inputs and the state's contents are checked by each layer)."""
        self.check_params(params)
        if state is None and self.stateful:
            raise StateError(f"{self.label}: expected a state from this layer's `init_state`, got None")

    def steps_at_clock(self, params: Params, state: State, xs: Tensor, clock: int,
                       pad_end: bool) -> Tuple[Tensor, State]:
        """A chunk of steps, ``xs: (*B, C, T, *S) -> ys: (*B, C', T', *S')``, from a state whose
        streams have all taken ``clock`` steps: the emitted outputs on the time axis and the
        next state. With ``pad_end`` the outputs of the end padding (``padding_end`` zero
        frames) are appended, and the state returned is the one before the padding.

        This default steps frame by frame; a leaf overrides it when a chunk is cheaper at once.
        """
        step_shape = list(xs.shape)
        del step_shape[self.time_axis()]
        frames = list(xs.unbind(self.time_axis()))
        n_real = len(frames)
        if pad_end and self.padding_end:
            # Also after an empty chunk: the frames seen before still owe their end outputs.
            frames += [xs.new_zeros(step_shape)] * self.padding_end
        outputs, final_state = [], state
        for i, x in enumerate(frames):
            y, state = self.step_unmasked(params, state, x)
            if i < n_real:
                final_state = state
            if emitted(clock + i + 1, self.delay, self.stride) > emitted(clock + i, self.delay, self.stride):
                outputs.append(y)
        if outputs:
            return map_values(lambda *ys: torch.stack(ys, self.out_time_axis()), *outputs), final_state
        out_shape = self.step_output_shape(step_shape)
        shapes = out_shape if isinstance(out_shape, list) else [out_shape]
        empty = tuple(empty_clip(xs, shape, self.out_time_axis()) for shape in shapes)
        return (empty if isinstance(out_shape, list) else empty[0]), final_state

    @abc.abstractmethod
    def forward(self, params: Params, xs: Tensor) -> Tensor:
        """The regular clip computation, ``(*B, C, T, *S) -> (*B, C', T', *S')``."""

    def step_output_shape(self, input_shape: Sequence[int]) -> Shape:
        """The shape of a step output for a step input of shape ``input_shape``."""
        return tuple(input_shape)

    # --- helpers shared by subclasses --------------------------------------------------------
    def time_axis(self, rank: Optional[int] = None) -> int:
        """The time axis of a clip, counted from the end (clips may have any leading dims)."""
        rank = self.step_rank if rank is None else rank
        if rank is None:
            return 2  # rank unknown: one batch dim assumed, (B, C, T, ...)
        return -rank

    def out_time_axis(self) -> int:
        """The time axis of an output clip, counted from the end when the output rank is known."""
        return self.time_axis(self.out_rank) if self.out_rank is not None else 2

    def check_step_input(self, x: Tensor, channels: Optional[int] = None) -> None:
        rank = self.step_rank
        if not isinstance(x, Tensor):
            raise InputShapeError(f"{self.label}: expected a tensor step input, got {type(x).__name__}")
        if rank is None:
            return
        if x.dim() < rank:
            raise InputShapeError(
                f"{self.label}: a step input has shape (*B, C{', *S' if rank > 1 else ''}) with "
                f"{rank} non-batch dims, got shape {tuple(x.shape)}"
            )
        if channels is not None and x.shape[-rank] != channels:
            hint = ""
            if x.dim() > rank and x.shape[-rank - 1] == channels:
                hint = " (is there a time axis? `step` takes one frame, `steps` takes clips)"
            raise InputShapeError(
                f"{self.label}: expected {channels} channels at dim {-rank} of the step input, got "
                f"shape {tuple(x.shape)}{hint}"
            )

    def check_clip_input(self, xs: Tensor, channels: Optional[int] = None) -> None:
        rank = self.step_rank
        if not isinstance(xs, Tensor):
            raise InputShapeError(f"{self.label}: expected a tensor clip, got {type(xs).__name__}")
        if rank is None:
            return
        if xs.dim() < rank + 1:
            raise InputShapeError(
                f"{self.label}: a clip has shape (*B, C, T{', *S' if rank > 1 else ''}) with "
                f"{rank + 1} non-batch dims, got shape {tuple(xs.shape)}"
            )
        if channels is not None and xs.shape[-rank - 1] != channels:
            raise InputShapeError(
                f"{self.label}: expected {channels} channels at dim {-rank - 1} of the clip, got "
                f"shape {tuple(xs.shape)}"
            )

    def check_stream_dims(self, streams: Shape, x: Tensor, what: str = "step input") -> None:
        """``x`` must have the stream dims ``streams`` of the state it is stepped with."""
        rank = self.step_rank
        lead = tuple(x.shape[: x.dim() - (rank if what == "step input" else rank + 1)])
        if what == "step input" and lead and lead[:-1] == streams:
            # One dim too many after the streams' own: a clip whose time length happens to pass
            # the channel check (T == C), not another batch.
            raise InputShapeError(
                f"{self.label}: the state's streams have shape {streams}, so a step input has "
                f"{len(streams) + rank} dims, got shape {tuple(x.shape)} (is there a time axis? "
                f"`step` takes one frame, `steps` takes clips)"
            )
        if streams != lead:
            raise StateError(
                f"{self.label}: the state was made for streams of shape {streams}, but "
                f"the {what} has stream dims {lead} (shape {tuple(x.shape)}); re-initialise the "
                f"state for the new batch"
            )

    def check_state_batch(self, counter: Tensor, x: Tensor, what: str = "step input") -> None:
        self.check_stream_dims(tuple(counter.shape), x, what)
        if counter.device != x.device:
            raise DTypeDeviceError(
                f"{self.label}: the state lives on {counter.device} but the {what} on {x.device}"
            )

    def check_state_buffer(
        self, buffer: Tensor, counter: Tensor, length: int, x: Tensor, what: str = "step input",
        channels: Optional[int] = None,
    ) -> None:
        """A state's frame buffer ``(*B, C, length, *S)`` must fit this layer and ``x`` (call after
        `check_state_batch`, which checks ``*B``).

        A buffer of another length, or (when the layer fixes them) another channel count or rank,
        comes from another layer: `StateError`. Frames of another shape than the input's mean the
        input changed mid-stream: `InputShapeError`. Another dtype: `DTypeDeviceError`.
        """
        nb = counter.dim()
        foreign = buffer.dim() < nb + 2 or buffer.shape[nb + 1] != length
        if channels is not None:
            foreign = foreign or buffer.dim() != nb + 1 + self.step_rank or buffer.shape[nb] != channels
        if foreign:
            c = "C" if channels is None else channels
            raise StateError(
                f"{self.label}: expected a state buffering {length} frames, shape (*B, {c}, {length}, *S), "
                f"got a buffer of shape {tuple(buffer.shape)}; the state comes from another layer"
            )
        frames = (buffer.shape[nb],) + tuple(buffer.shape[nb + 2:])
        got = tuple(x.shape[nb:]) if what == "step input" else (x.shape[nb],) + tuple(x.shape[nb + 2:])
        if frames != got:
            raise InputShapeError(
                f"{self.label}: the stream has frames of shape (C, *S) = {frames}, but the {what} of "
                f"shape {tuple(x.shape)} has frames of shape {got}"
            )
        if buffer.dtype != x.dtype:
            raise DTypeDeviceError(f"{self.label}: the state holds {buffer.dtype}, but the {what} has dtype {x.dtype}")

    def check_state_type(self, state, expected_type) -> None:
        if not isinstance(state, expected_type):
            raise StateError(
                f"{self.label}: expected a state of type {expected_type.__name__} (from this layer's "
                f"`init_state`), got {type(state).__name__}"
            )


def with_one_batch_dim(fn: Callable[[Tensor], Tensor], x: Tensor, step_rank: Optional[int]) -> Tensor:
    """Apply ``fn``, which takes exactly one batch dim, to ``x`` with any leading stream dims.

    With ``step_rank=None`` the rank is unknown and ``x`` is assumed to have one batch dim.
    """
    if step_rank is None:
        return fn(x)
    lead = x.shape[: x.dim() - step_rank]
    if len(lead) == 1:
        return fn(x)
    # The explicit size (not -1) also reshapes empty tensors (a chunk of zero frames).
    n = 1
    for d in lead:
        n *= d
    y = fn(x.reshape((n,) + tuple(x.shape[len(lead):])))
    return y.reshape(tuple(lead) + tuple(y.shape[1:]))


@dataclasses.dataclass(frozen=True, eq=False)
class Wrapper(Layer):
    """Base of layers that run ``inner`` with something around it (params read from another
    nesting, hooks): every metadata, state and compute method is ``inner``'s, and a subclass
    overrides only what it changes."""

    inner: Layer

    label = property(lambda self: self.inner.label)
    receptive_field = property(lambda self: self.inner.receptive_field)
    padding = property(lambda self: self.inner.padding)
    padding_end = property(lambda self: self.inner.padding_end)
    stride = property(lambda self: self.inner.stride)
    delay = property(lambda self: self.inner.delay)
    step_rank = property(lambda self: self.inner.step_rank)
    out_rank = property(lambda self: self.inner.out_rank)
    keeps_rank = property(lambda self: self.inner.keeps_rank)
    stateful = property(lambda self: self.inner.stateful)

    def with_rank(self, rank):
        inner = self.inner.with_rank(rank)
        return self if inner is self.inner else dataclasses.replace(self, inner=inner)

    def init_params(self, *, device=None, dtype=None):
        return self.inner.init_params(device=device, dtype=dtype)

    def params_from(self, module):
        return self.inner.params_from(module)

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        return self.inner.init_state(params, input_shape, device=device, dtype=dtype)

    def clock(self, state):
        return self.inner.clock(state)

    def valid(self, state):
        return self.inner.valid(state)

    def batch_shape(self, input_shape):
        return self.inner.batch_shape(input_shape)

    def step_output_shape(self, input_shape):
        return self.inner.step_output_shape(input_shape)

    def step_unmasked(self, params, state, x):
        return self.inner.step_unmasked(params, state, x)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        return self.inner.steps_at_clock(params, state, xs, clock, pad_end)

    def forward(self, params, xs):
        return self.inner.forward(params, xs)


@dataclasses.dataclass(frozen=True, eq=False)
class Stateless(Layer):
    """Base of the layers that keep nothing between steps: state ``()``, no clock, delay 0,
    and a chunk of steps is the clip ``forward``. A subclass implements ``step_unmasked`` (one frame)
    and ``forward`` (a clip).

    Example:
        >>> import dataclasses, torch, cofunc
        >>> @dataclasses.dataclass(frozen=True, eq=False)
        ... class Double(cofunc.Stateless):
        ...     def step_unmasked(self, params, state, x):
        ...         return 2 * x, state
        ...     def forward(self, params, xs):
        ...         return 2 * xs
        >>> ys, _ = Double().steps({}, (), torch.ones(1, 2, 3))
        >>> ys[0, 0].tolist()
        [2.0, 2.0, 2.0]
    """

    @property
    def stateful(self) -> bool:
        return False

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        return ()

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        return self.forward(params, xs), state


@dataclasses.dataclass(frozen=True, eq=False)
class StatelessAnyRank(Stateless):
    """A `Stateless` layer that keeps the rank of whatever it gets: its ``step_rank`` field (the
    non-batch rank of a step) is given, or taken from its neighbours in a `seq`."""

    @property
    def keeps_rank(self) -> bool:
        return True

    def with_rank(self, rank: int):
        return self if rank == self.step_rank else dataclasses.replace(self, step_rank=rank)


def check_dtype_device(layer: Layer, x: Tensor, reference: Optional[Tensor], what: str = "step input") -> None:
    if reference is None:
        return
    if x.dtype != reference.dtype:
        raise DTypeDeviceError(f"{layer.label}: the {what} has dtype {x.dtype}, but the params are {reference.dtype}")
    if x.device != reference.device:
        raise DTypeDeviceError(f"{layer.label}: the {what} lives on {x.device}, but the params on {reference.device}")


def resolve_layer(caller: str, layer, params=None, step_shape=None, *, need_params: bool = True):
    """``(layer, params, step_shape)`` from either ``(layer, params, step_shape)`` or an nn
    adapter (any object with ``.layer`` and ``.params``, such as a ``cofunc.nn`` module) in
    place of the layer, with ``params`` then optional: ``f(net, step_shape)`` means
    ``f(net.layer, net.params, step_shape)``. A rank-agnostic layer takes the rank of
    ``step_shape``'s single stream dim, as the adapters do."""
    if isinstance(layer, Layer):
        return layer, params, step_shape
    if not (hasattr(layer, "layer") and hasattr(layer, "params")):
        raise ConfigurationError(
            f"{caller}: expected a cofunc Layer or a cofunc.nn module, got {type(layer).__name__}"
        )
    module = layer
    if step_shape is None and params is not None and not isinstance(params, dict):
        params, step_shape = None, params  # f(net, step_shape)
    inner = module.layer
    if inner.step_rank is None and step_shape is not None and not isinstance(step_shape, list):
        inner = inner.with_rank(len(tuple(step_shape)) - 1)
    if params is None and need_params:
        params = module.params
    return inner, params, step_shape


