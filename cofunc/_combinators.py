"""Multi-stream combinators: broadcast, parallel, dispatch, reduce, residual, conditional.

A multi-stream value is a tuple of tensors (its step shape a list of shapes). Parallel branches
share one clock (Principle 7 of the paper): the group's delay is the largest branch delay, and
faster branches are delayed automatically without adding a naming level to the params.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Callable, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._clock import STEP_HINTS
from ._delay import Delay
from ._errors import ConfigurationError, InputShapeError, StateError
from ._layer import EMPTY_PARAMS, Layer, Stateless, StatelessAnyRank, Wrapper, read_shared_clock
from ._seq import Seq


def _named(layers) -> Tuple[Tuple[str, Layer], ...]:
    if len(layers) == 1 and isinstance(layers[0], Mapping):
        return tuple((str(k), v) for k, v in layers[0].items())
    return tuple((str(i), layer) for i, layer in enumerate(layers))


def _common(values):
    values = set(values)
    return values.pop() if len(values) == 1 else None


@dataclasses.dataclass(frozen=True, eq=False)
class _Aligned(Seq):
    """A branch with an alignment delay before or after it; the params are the branch's own (no
    naming level)."""

    @property
    def _branch(self) -> Layer:
        return dict(self.children)["branch"]

    @property
    def label(self) -> str:
        return self._branch.label

    def _child_params(self, params, index, name):
        return params if name == "branch" else EMPTY_PARAMS

    def init_params(self, *, device=None, dtype=None):
        return self._branch.init_params(device=device, dtype=dtype)

    def params_from(self, module):
        return self._branch.params_from(module)


def _align(branch: Layer, n: int) -> Layer:
    """``branch`` emitting ``n`` input steps later.

    A delay after a branch of stride ``s`` counts output steps (``s`` input steps each), so it
    goes after the branch only when ``n`` is a multiple of ``s``; otherwise it delays the input.
    """
    if n == 0:
        return branch
    if n % branch.stride == 0:
        return _Aligned((("branch", branch), ("align", Delay(n // branch.stride, branch.out_rank))))
    return _Aligned((("align", Delay(n, branch.step_rank)), ("branch", branch)))


def _share_rank(layers):
    """Branches that see the same input: rank-agnostic ones take the rank the others know."""
    ranks = {layer.step_rank for layer in layers if layer is not None and layer.step_rank is not None}
    if len(ranks) != 1:
        return list(layers)
    rank = ranks.pop()
    return [layer.with_rank(rank) if layer is not None and layer.step_rank is None else layer for layer in layers]


@dataclasses.dataclass(frozen=True, eq=False)
class Broadcast(StatelessAnyRank):
    """``x -> (x, ..., x)``, ``n`` copies. Stateless."""

    n: int
    step_rank: Optional[int] = None

    def __post_init__(self):
        if not isinstance(self.n, int) or self.n < 1:
            raise ConfigurationError(f"broadcast: `n` must be a positive int, got {self.n!r}")

    @property
    def copies_input(self) -> bool:
        return True

    @property
    def label(self):
        return f"broadcast({self.n})"

    def step_unmasked(self, params, state, x):
        return (x,) * self.n, state

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        return (xs,) * self.n, state

    def forward(self, params, xs):
        return (xs,) * self.n

    def step_output_shape(self, input_shape):
        return [tuple(input_shape)] * self.n


@dataclasses.dataclass(frozen=True, eq=False)
class Parallel(Layer):
    """One branch per input stream: ``(x_0, ..., x_n) -> (f_0(x_0), ..., f_n(x_n))``.

    Branches must share the temporal stride. With ``auto_delay`` (default) branches with a smaller
    delay are delayed to the largest one, so outputs of one step belong to the same time.
    """

    branches: Tuple[Tuple[str, Layer], ...]
    auto_delay: bool = True

    def __post_init__(self):
        if not self.branches:
            raise ConfigurationError("parallel: needs at least one branch")
        strides = {layer.stride for _, layer in self.branches}
        if len(strides) > 1:
            raise ConfigurationError(
                f"{self.label}: all branches must have the same temporal stride, got "
                f"{[layer.stride for _, layer in self.branches]}"
            )
        delays = [layer.delay for _, layer in self.branches]
        top = max(delays)
        aligned = tuple(_align(layer, top - d if self.auto_delay else 0) for (_, layer), d in zip(self.branches, delays))
        object.__setattr__(self, "_aligned", aligned)

    @property
    def label(self):
        return "parallel(" + ", ".join(layer.label for _, layer in self.branches) + ")"

    @property
    def receptive_field(self):
        return max(layer.receptive_field for layer in self._aligned)

    @property
    def padding(self):
        return max(layer.padding for layer in self._aligned)

    @property
    def padding_end(self):
        return max(layer.padding_end for layer in self._aligned)

    @property
    def delay(self):
        return max(layer.delay for layer in self._aligned)

    @property
    def stride(self):
        return self.branches[0][1].stride

    @property
    def step_rank(self):
        return _common(layer.step_rank for _, layer in self.branches)

    @property
    def out_rank(self):
        return _common(layer.out_rank for _, layer in self.branches)

    @property
    def keeps_rank(self):
        return all(layer.keeps_rank for _, layer in self.branches)

    @property
    def stateful(self):
        return any(layer.stateful for layer in self._aligned)

    def with_rank(self, rank):
        branches = tuple((name, layer.with_rank(rank) if layer.step_rank is None else layer) for name, layer in self.branches)
        return dataclasses.replace(self, branches=branches)

    def follows(self, previous: Layer) -> "Parallel":
        # After a broadcast, the branches all see copies of one value, so share one rank.
        return self.with_shared_rank() if previous.copies_input else self

    def with_shared_rank(self):
        """This parallel for inputs that are copies of one value (after a broadcast):
        rank-agnostic branches take the rank the other branches know."""
        layers = _share_rank([layer for _, layer in self.branches])
        if all(a is b for a, (_, b) in zip(layers, self.branches)):
            return self
        return dataclasses.replace(self, branches=tuple((name, layer) for (name, _), layer in zip(self.branches, layers)))

    def init_params(self, *, device=None, dtype=None):
        params = {}
        for name, layer in self.branches:
            p = layer.init_params(device=device, dtype=dtype)
            if p:
                params[name] = p
        return params

    def _inputs(self, xs, what="input"):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(self.branches):
            got = f"{len(xs)} streams" if isinstance(xs, (tuple, list)) else f"a {type(xs).__name__}"
            raise InputShapeError(f"{self.label}: expected a tuple of {len(self.branches)} streams as {what}, got {got}")
        return xs

    def _check_state(self, state):
        if not isinstance(state, tuple) or len(state) != len(self.branches):
            raise StateError(f"{self.label}: expected a tuple of {len(self.branches)} branch states, got {type(state).__name__}")

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        shapes = self._inputs(input_shape, "input shapes")
        return tuple(
            layer.init_state(params.get(name, EMPTY_PARAMS), shape, device=device, dtype=dtype)
            for (name, _), layer, shape in zip(self.branches, self._aligned, shapes)
        )

    def step_output_shape(self, input_shape):
        shapes = self._inputs(input_shape, "input shapes")
        return [layer.step_output_shape(shape) for layer, shape in zip(self._aligned, shapes)]

    def clock(self, state):
        for layer, s in zip(self._aligned, state):
            count = layer.clock(s)
            if count is not None:
                return count
        return None

    def valid(self, state):
        out = None
        for layer, s in zip(self._aligned, state):
            if layer.delay > 0 or layer.stride > 1:
                v = layer.valid(s)
                out = v if out is None else out & v
        return torch.ones((), dtype=torch.bool) if out is None else out

    def step_unmasked(self, params, state, x):
        if STEP_HINTS.inputs_fit:  # the state and inputs fit, as in the last step
            xs = x
        else:
            xs = self._inputs(x)
            self._check_state(state)
        ys, states = [], []
        for (name, _), layer, s, xi in zip(self.branches, self._aligned, state, xs):
            y, s = layer.step_unmasked(params.get(name, EMPTY_PARAMS), s, xi)
            ys.append(y)
            states.append(s)
        return tuple(ys), tuple(states)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        xs = self._inputs(xs)
        self._check_state(state)
        ys, states = [], []
        for (name, _), layer, s, xi in zip(self.branches, self._aligned, state, xs):
            y, s = layer.steps_at_clock(params.get(name, EMPTY_PARAMS), s, xi, clock, pad_end)
            ys.append(y)
            states.append(s)
        return tuple(ys), tuple(states)

    def forward(self, params, xs):
        xs = self._inputs(xs)
        return tuple(layer.forward(params.get(name, EMPTY_PARAMS), xi) for (name, layer), xi in zip(self.branches, xs))


Dispatch = Union[int, Sequence["Dispatch"]]


@dataclasses.dataclass(frozen=True, eq=False)
class ParallelDispatch(Stateless):
    """Reorder, copy or group streams by index: ``[2, 0, [0, 2]]`` maps ``(a, b, c)`` to
    ``(c, a, (a, c))``. Stateless."""

    mapping: Tuple

    def __post_init__(self):
        def freeze(m):
            if isinstance(m, int):
                if m < 0:
                    raise ConfigurationError(f"parallel_dispatch: indices must be non-negative, got {m}")
                return m
            if isinstance(m, (list, tuple)):
                return tuple(freeze(v) for v in m)
            raise ConfigurationError(f"parallel_dispatch: expected ints or nested lists of ints, got {m!r}")

        object.__setattr__(self, "mapping", freeze(self.mapping))

    @property
    def label(self):
        return f"parallel_dispatch({list(self.mapping)})"

    @property
    def keeps_rank(self):
        return True

    def _dispatch(self, xs, as_list=False):
        if not isinstance(xs, (tuple, list)):
            raise InputShapeError(f"{self.label}: expected a tuple of streams, got a {type(xs).__name__}")

        def pick(m):
            if isinstance(m, int):
                if m >= len(xs):
                    raise InputShapeError(f"{self.label}: index {m} out of range for {len(xs)} streams")
                return xs[m]
            return (list if as_list else tuple)(pick(v) for v in m)

        return (list if as_list else tuple)(pick(m) for m in self.mapping)

    def step_unmasked(self, params, state, x):
        return self._dispatch(x), state

    def forward(self, params, xs):
        return self._dispatch(xs)

    def step_output_shape(self, input_shape):
        return self._dispatch(input_shape, as_list=True)


def _reduce_max(values):
    return functools.reduce(torch.maximum, values)


_REDUCERS = {"sum": lambda v: functools.reduce(operator.add, v), "mul": lambda v: functools.reduce(operator.mul, v), "max": _reduce_max}


@dataclasses.dataclass(frozen=True, eq=False)
class Reduce(StatelessAnyRank):
    """Merge a tuple of streams into one: ``"sum"``, ``"concat"`` (channels), ``"mul"``,
    ``"max"``, or a callable ``Sequence[Tensor] -> Tensor``. Stateless."""

    how: Union[str, Callable] = "sum"
    step_rank: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.how, str) and self.how not in ("sum", "concat", "mul", "max"):
            raise ConfigurationError(f"reduce: `reduce` must be 'sum', 'concat', 'mul', 'max' or a callable, got {self.how!r}")
        if not isinstance(self.how, str) and not callable(self.how):
            raise ConfigurationError(f"reduce: `reduce` must be a string or a callable, got {self.how!r}")

    @property
    def label(self):
        return f"reduce({self.how if isinstance(self.how, str) else getattr(self.how, '__name__', 'fn')})"

    def _apply(self, values, clip: bool):
        if not isinstance(values, (tuple, list)) or not values:
            raise InputShapeError(f"{self.label}: expected a non-empty tuple of streams, got {type(values).__name__}")
        if self.how == "concat":
            dim = 1 if self.step_rank is None else -(self.step_rank + clip)
            return torch.cat(list(values), dim=dim)
        if self.how == "sum" and len(values) == 2 and values[0].shape == values[1].shape:
            return values[0] + values[1]  # a residual sum, the most frequent reduce of a step
        if isinstance(self.how, str):
            # A list, not a set: symbolic sizes (export with a dynamic stream dim) are unhashable.
            shapes = [tuple(v.shape) for v in values]
            if any(shape != shapes[0] for shape in shapes[1:]):
                # Size-1 axes broadcast, as torch's elementwise ops (and co's reduce) do: gates
                # (*B, C, 1, 1) scale frames (*B, C, H, W) in squeeze-and-excitation.
                try:
                    torch.broadcast_shapes(*shapes)
                except RuntimeError:
                    raise InputShapeError(
                        f"{self.label}: streams must have equal or broadcastable shapes, got {shapes}"
                    ) from None
            return _REDUCERS[self.how](list(values))
        return self.how(list(values))

    def step_unmasked(self, params, state, x):
        return self._apply(x, False), state

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        return self._apply(xs, True), state

    def forward(self, params, xs):
        return self._apply(xs, True)

    def step_output_shape(self, input_shape):
        metas = tuple(torch.empty(shape, device="meta") for shape in input_shape)
        return tuple(self._apply(metas, False).shape)


@dataclasses.dataclass(frozen=True, eq=False)
class BroadcastReduce(Wrapper):
    """``x -> reduce(f_0(x), ..., f_n(x))``: broadcast, parallel branches, reduce.

    A `Wrapper` of the `Parallel` branches (metadata, params and state are theirs) that copies
    the input to every branch and reduces their outputs. Params are keyed by branch name, as
    the branches of co's ``BroadcastReduce``.
    """

    inner: Parallel
    reducer: Reduce

    @property
    def label(self):
        return f"broadcast_reduce({', '.join(layer.label for _, layer in self.inner.branches)}; {self.reducer.label})"

    @property
    def out_rank(self):
        return self.inner.out_rank if self.reducer.how in ("sum", "mul", "max", "concat") else None

    def with_rank(self, rank):
        inner = self.inner.with_rank(rank)
        return dataclasses.replace(self, inner=inner, reducer=self.reducer.with_rank(rank))

    def _n(self):
        return len(self.inner.branches)

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        return self.inner.init_state(params, [tuple(input_shape)] * self._n(), device=device, dtype=dtype)

    def step_output_shape(self, input_shape):
        return self.reducer.step_output_shape(self.inner.step_output_shape([tuple(input_shape)] * self._n()))

    def step_unmasked(self, params, state, x):
        ys, state = self.inner.step_unmasked(params, state, (x,) * self._n())
        return self.reducer._apply(ys, False), state

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        ys, state = self.inner.steps_at_clock(params, state, (xs,) * self._n(), clock, pad_end)
        return self.reducer._apply(ys, True), state

    def forward(self, params, xs):
        return self.reducer._apply(self.inner.forward(params, (xs,) * self._n()), True)


def _shrink(module: Layer, mode) -> Delay:
    """The residual branch that picks the frame of ``module``'s window its output belongs to."""
    d, pe = module.delay, module.padding_end
    if mode is True or mode == "centered":
        if (module.receptive_field - 1) % 2:
            raise ConfigurationError(
                f"residual({module.label}): a centred residual needs an odd receptive field, got "
                f"{module.receptive_field}; use residual_shrink='lagging' or 'leading'"
            )
        lag = (module.receptive_field - 1) // 2
    elif mode == "lagging":
        lag = d
    elif mode == "leading":
        lag = 0
    else:
        raise ConfigurationError(f"residual: residual_shrink must be False, True, 'centered', 'lagging' or 'leading', got {mode!r}")
    if not pe <= lag <= d:
        raise ConfigurationError(
            f"residual({module.label}): residual_shrink={mode!r} would pair outputs with frames the "
            f"stream has not seen (lag {lag}, delay {d}, end padding {pe})"
        )
    return Delay(lag, module.step_rank, window=d + 1, end=pe)


def residual_alignment(module: Layer, shrink: Union[bool, str] = "centered", *, delay_equal: bool = True) -> Optional[Delay]:
    """The layer that aligns a residual (a copy of the input) to ``module``'s output: a delay by
    the module's delay when it is padded equally on both sides (the clip keeps its length),
    otherwise the frame selection ``shrink`` (``"centered"`` / ``True``, ``"lagging"`` or
    ``"leading"``: the centre, oldest or newest frame of the module's window). With
    ``delay_equal=False`` an equally padded module gets None: the caller's combinator delays
    the residual itself (after any strided layer on the residual, by whole output steps).

    Example:
        >>> import cofunc
        >>> cofunc.residual_alignment(cofunc.conv1d(2, 2, 3, padding=1)).label
        'delay(1)'
        >>> cofunc.residual_alignment(cofunc.conv1d(2, 2, 3)).label
        'delay(1, window=3, end=0)'
    """
    if module.receptive_field - 1 == 2 * module.padding and module.padding_end == module.padding:
        return Delay(module.delay, module.step_rank) if delay_equal else None
    return _shrink(module, shrink)


def residual(module: Layer, reduce: Union[str, Callable] = "sum", residual_shrink: Union[bool, str] = False) -> BroadcastReduce:
    """``x -> reduce(x aligned to module, module(x))``; the module's params sit under ``"1"``.

    A module padded equally on both sides needs only a delay on the residual. An unpadded (or
    unequally padded) module changes the clip length, so the residual is shrunk:
    ``"centered"`` (or ``True``) pairs each output with the centre frame of its window,
    ``"lagging"`` with the oldest and ``"leading"`` with the newest frame. Without
    ``residual_shrink`` such a module gets ``"lagging"``: the residual delayed by the module's
    delay, which is what co's steps compute (co's squeeze-and-excitation example).

    Example:
        >>> import cofunc
        >>> block = cofunc.residual(cofunc.conv1d(4, 4, 3, padding=1))
        >>> block.delay, block.receptive_field
        (1, 3)
    """
    if module.stride != 1:
        raise ConfigurationError(f"residual({module.label}): the wrapped module must have temporal stride 1, got {module.stride}")
    branch = residual_alignment(module, "lagging" if residual_shrink in (False, None) else residual_shrink)
    inner = Parallel((("0", branch), ("1", module)), auto_delay=False)
    return BroadcastReduce(inner, Reduce(reduce, module.out_rank))


class ConditionalState(NamedTuple):
    """Both branches' states, and per stream whether the last step took ``on_true``."""

    on_true: object
    on_false: object
    took_true: Tensor


@dataclasses.dataclass(frozen=True, eq=False)
class Conditional(Layer):
    """Run ``on_true`` if ``predicate(x)`` holds, else ``on_false`` (identity if None).

    The predicate is a Python function evaluated at every call (use static facts such as shapes
    or flags: under compile and vmap a data-dependent predicate is not allowed). Branches are
    aligned to the larger delay; only the branch that runs advances its state.
    """

    predicate: Callable
    on_true: Layer
    on_false: Optional[Layer] = None

    def __post_init__(self):
        # Both branches see the input: a rank-agnostic branch takes the other's rank.
        on_true, given_false = _share_rank([self.on_true, self.on_false])
        object.__setattr__(self, "on_true", on_true)
        object.__setattr__(self, "on_false", given_false)
        on_false = self.on_false if self.on_false is not None else Delay(0, self.on_true.out_rank)
        if on_false.stride != self.on_true.stride:
            raise ConfigurationError(f"{self.label}: both branches need the same temporal stride")
        top = max(self.on_true.delay, on_false.delay)
        object.__setattr__(self, "_true", _align(self.on_true, top - self.on_true.delay))
        object.__setattr__(self, "_false", _align(on_false, top - on_false.delay))

    @property
    def label(self):
        return f"conditional({self.on_true.label}, {self.on_false.label if self.on_false else 'identity'})"

    receptive_field = property(lambda self: max(self._true.receptive_field, self._false.receptive_field))
    padding = property(lambda self: max(self._true.padding, self._false.padding))
    padding_end = property(lambda self: max(self._true.padding_end, self._false.padding_end))
    delay = property(lambda self: max(self._true.delay, self._false.delay))
    stride = property(lambda self: self.on_true.stride)
    step_rank = property(lambda self: self.on_true.step_rank)
    out_rank = property(lambda self: self.on_true.out_rank)
    keeps_rank = property(lambda self: self.on_true.keeps_rank and (self.on_false is None or self.on_false.keeps_rank))

    def with_rank(self, rank):
        on_false = None if self.on_false is None else self.on_false.with_rank(rank)
        return Conditional(self.predicate, self.on_true.with_rank(rank), on_false)

    def init_params(self, *, device=None, dtype=None):
        params = {"0": self.on_true.init_params(device=device, dtype=dtype)}
        if self.on_false is not None:
            params["1"] = self.on_false.init_params(device=device, dtype=dtype)
        return {k: v for k, v in params.items() if v}

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        batch = self.batch_shape(input_shape)
        return ConditionalState(
            self._true.init_state(params.get("0", EMPTY_PARAMS), input_shape, device=device, dtype=dtype),
            self._false.init_state(params.get("1", EMPTY_PARAMS), input_shape, device=device, dtype=dtype),
            torch.ones(batch, dtype=torch.bool, device=device),
        )

    def step_output_shape(self, input_shape):
        return self._true.step_output_shape(input_shape)

    def clock(self, state):
        a, b = self._true.clock(state.on_true), self._false.clock(state.on_false)
        if a is None or b is None:
            return a if b is None else b
        return torch.where(state.took_true, a, b)

    def valid(self, state):
        return torch.where(state.took_true, self._true.valid(state.on_true), self._false.valid(state.on_false))

    def step_unmasked(self, params, state, x):
        if not isinstance(state, ConditionalState):
            raise StateError(f"{self.label}: expected a ConditionalState, got {type(state).__name__}")
        if self.predicate(x):
            y, s = self._true.step_unmasked(params.get("0", EMPTY_PARAMS), state.on_true, x)
            return y, ConditionalState(s, state.on_false, torch.ones_like(state.took_true))
        y, s = self._false.step_unmasked(params.get("1", EMPTY_PARAMS), state.on_false, x)
        return y, ConditionalState(state.on_true, s, torch.zeros_like(state.took_true))

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        if self.predicate(xs):
            y, s = self._true.steps_at_clock(params.get("0", EMPTY_PARAMS), state.on_true, xs, clock, pad_end)
            return y, ConditionalState(s, state.on_false, torch.ones_like(state.took_true))
        y, s = self._false.steps_at_clock(params.get("1", EMPTY_PARAMS), state.on_false, xs, clock, pad_end)
        return y, ConditionalState(state.on_true, s, torch.zeros_like(state.took_true))

    def steps(self, params, state, xs, pad_end=False):
        self.check_call(params, state)
        if not isinstance(state, ConditionalState):
            raise StateError(f"{self.label}: expected a ConditionalState, got {type(state).__name__}")
        taken = self._true if self.predicate(xs) else self._false
        sub = state.on_true if taken is self._true else state.on_false
        return self.steps_at_clock(params, state, xs, read_shared_clock(self, taken.clock(sub)), pad_end)

    def forward(self, params, xs):
        if self.predicate(xs):
            return self.on_true.forward(params.get("0", EMPTY_PARAMS), xs)
        return xs if self.on_false is None else self.on_false.forward(params.get("1", EMPTY_PARAMS), xs)


# --- constructors ----------------------------------------------------------------------------

def broadcast(n: int) -> Broadcast:
    """``x -> (x,) * n``.

    Example:
        >>> import torch, cofunc
        >>> ys, _ = cofunc.broadcast(2).step({}, (), torch.ones(1, 3))
        >>> len(ys)
        2
    """
    return Broadcast(n)


def parallel(*branches: Union[Layer, Mapping[str, Layer]], auto_delay: bool = True) -> Parallel:
    """One layer per stream of a tuple; branches are named ``"0"``, ``"1"``, ... or by a mapping.

    Example:
        >>> import cofunc
        >>> par = cofunc.parallel(cofunc.conv1d(2, 2, 3), cofunc.conv1d(2, 2, 1))
        >>> par.delay  # the 1-frame branch is delayed by 2 to match
        2
    """
    return Parallel(_named(branches), auto_delay)


def parallel_dispatch(mapping: Sequence[Dispatch]) -> ParallelDispatch:
    """Reorder, copy or group streams: ``parallel_dispatch([1, 0, [0, 1]])``.

    Example:
        >>> import torch, cofunc
        >>> ys, _ = cofunc.parallel_dispatch([1, 0]).step({}, (), (torch.zeros(1), torch.ones(1)))
        >>> ys
        (tensor([1.]), tensor([0.]))
    """
    return ParallelDispatch(mapping)


def reduce(how: Union[str, Callable] = "sum") -> Reduce:
    """Merge a tuple of streams: ``"sum"``, ``"concat"`` (channels), ``"mul"``, ``"max"`` or a callable.

    Example:
        >>> import torch, cofunc
        >>> y, _ = cofunc.reduce("concat").step({}, (), (torch.zeros(1, 2), torch.ones(1, 3)))
        >>> y.shape
        torch.Size([1, 5])
    """
    return Reduce(how)


def broadcast_reduce(*branches: Union[Layer, Mapping[str, Layer]], reduce: Union[str, Callable] = "sum",
                     auto_delay: bool = True) -> BroadcastReduce:
    """``x -> reduce(f_0(x), ..., f_n(x))`` with automatic delay alignment.

    Example:
        >>> import cofunc
        >>> block = cofunc.broadcast_reduce(cofunc.conv1d(3, 4, 3), cofunc.conv1d(3, 4, 1), reduce="concat")
        >>> block.delay
        2
    """
    named = _named(branches)
    if len(named) < 2:
        raise ConfigurationError(f"broadcast_reduce: needs at least 2 branches, got {len(named)}")
    # Every branch sees the input: rank-agnostic branches take the rank the others know.
    named = tuple(zip([name for name, _ in named], _share_rank([layer for _, layer in named])))
    inner = Parallel(named, auto_delay)
    return BroadcastReduce(inner, Reduce(reduce, inner.out_rank))


def conditional(predicate: Callable[[Tensor], bool], on_true: Layer, on_false: Optional[Layer] = None) -> Conditional:
    """Run ``on_true`` where ``predicate(x)`` holds, else ``on_false`` (identity if None).

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.conditional(lambda x: x.shape[0] > 1, cofunc.lift(torch.neg))
        >>> layer.forward({}, torch.ones(2, 1, 3))[0, 0, 0].item()
        -1.0
    """
    return Conditional(predicate, on_true, on_false)

