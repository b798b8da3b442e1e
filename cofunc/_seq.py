"""``seq(...)``: sequential composition with exact temporal arithmetic (docs/design.md, section 3)."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Tuple, Union

import torch

from ._errors import ConfigurationError, StateError
from ._clock import STEP_HINTS, all_streams_emitting, assume_all_streams_emitting, emits_after, emitted
from ._layer import EMPTY_PARAMS, Layer
from ._values import expand_mask, first_tensor, map_values, shape_of, tree_where, values_are_concrete, zeros_of_shape


def _resolve_ranks(children):
    """Give rank-agnostic children (delays, lifted modules) the rank of their neighbours.

    Forward, a child takes the output rank of the layer before it; backward, only children that
    keep the rank (delays, pointwise functions) can take the input rank of the layer after them.
    """
    children = list(children)
    for i in range(1, len(children)):
        children[i] = (children[i][0], children[i][1].follows(children[i - 1][1]))
    known = None
    for i, (name, child) in enumerate(children):
        if child.step_rank is None and known is not None:
            child = child.with_rank(known)
            children[i] = (name, child)
        known = child.out_rank
    known = None
    for i in range(len(children) - 1, -1, -1):
        name, child = children[i]
        if child.step_rank is None and known is not None and child.keeps_rank:
            child = child.with_rank(known)
            children[i] = (name, child)
        known = child.step_rank
    return tuple(children)


@dataclasses.dataclass(frozen=True, eq=False)
class Seq(Layer):
    """Layers applied one after the other; state is a tuple with one entry per child.

    Children whose input can be empty (after a strided layer or one still warming up) do not
    advance their state on that step. When no stream has an input for the rest of the sequence
    and values can be read (eager mode), the rest is skipped entirely.
    """

    children: Tuple[Tuple[str, Layer], ...]

    # Whether each child's params are ``params[name]``; a subclass that nests them otherwise
    # overrides `_child_params`, and its steps take the general path.
    _params_by_name = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._params_by_name = cls._child_params is Seq._child_params

    def __post_init__(self):
        if not self.children:
            raise ConfigurationError("seq: needs at least one layer")
        for name, child in self.children:
            if not isinstance(child, Layer):
                raise ConfigurationError(f"seq: child {name!r} is a {type(child).__name__}, not a cofunc Layer")
        object.__setattr__(self, "children", _resolve_ranks(self.children))

    @property
    def label(self) -> str:
        return "seq(" + ", ".join(child.label for _, child in self.children) + ")"

    @property
    def layers(self) -> Tuple[Layer, ...]:
        return tuple(child for _, child in self.children)

    # Principles 5 and 6 of the paper: fold the temporal metadata from the first layer on.
    def _fold(self):
        # Cached (the record is immutable): nested seqs and branches query these at every
        # level, and recomputing them made deep networks (X3D) spend seconds per call.
        cached = self.__dict__.get("_fold_cache")
        if cached is not None:
            return cached
        rf, stride, padding, padding_end = 1, 1, 0, 0
        for child in self.layers:
            rf = rf + (child.receptive_field - 1) * stride
            padding = padding + child.padding * stride
            padding_end = padding_end + child.padding_end * stride
            stride = stride * child.stride
        object.__setattr__(self, "_fold_cache", (rf, stride, padding, padding_end))
        return rf, stride, padding, padding_end

    @property
    def receptive_field(self) -> int:
        return self._fold()[0]

    @property
    def stride(self) -> int:
        return self._fold()[1]

    @property
    def padding(self) -> int:
        return self._fold()[2]

    @property
    def padding_end(self) -> int:
        return self._fold()[3]

    @property
    def delay(self) -> int:
        return sum(child.delay * s for child, s in zip(self.layers, self._strides_before()))

    def _strides_before(self):
        out, s = [], 1
        for child in self.layers:
            out.append(s)
            s *= child.stride
        return out

    @property
    def step_rank(self):
        return self.layers[0].step_rank

    @property
    def out_rank(self):
        return self.layers[-1].out_rank

    @property
    def keeps_rank(self) -> bool:
        return all(child.keeps_rank for child in self.layers)

    @property
    def stateful(self) -> bool:
        return any(child.stateful for child in self.layers)

    def with_rank(self, rank: int) -> "Seq":
        if self.step_rank is not None:
            return self
        first_name, first = self.children[0]
        return Seq(((first_name, first.with_rank(rank)),) + self.children[1:])

    def init_params(self, *, device=None, dtype=None):
        params = {}
        for name, child in self.children:
            p = child.init_params(device=device, dtype=dtype)
            if p:
                params[name] = p
        return params

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        states, shape = [], input_shape
        for i, (name, child) in enumerate(self.children):
            p = self._child_params(params, i, name)
            states.append(child.init_state(p, shape, device=device, dtype=dtype))
            shape = child.step_output_shape(shape)
        return tuple(states)

    def step_output_shape(self, input_shape):
        shape = input_shape
        for child in self.layers:
            shape = child.step_output_shape(shape)
        return shape

    def clock(self, state):
        for child, s in zip(self.layers, state):
            count = child.clock(s)
            if count is not None:
                return count
        return None

    def valid(self, state):
        # The children advance only on real inputs, so the sequence emits exactly when its
        # folded delay and stride say, counted on its own clock: no walk over the subtree.
        count = self.clock(state)
        if count is not None:
            return emits_after(count, self.delay, self.stride)
        out = None
        for child, s in zip(self.layers, state):
            if child.delay > 0 or child.stride > 1:
                v = child.valid(s)
                out = v if out is None else out & v
        return torch.ones((), dtype=torch.bool) if out is None else out

    def _child_params(self, params, index: int, name: str):
        return params.get(name, EMPTY_PARAMS)

    def _check_state(self, state):
        if not isinstance(state, tuple) or len(state) != len(self.children):
            got = f"a {type(state).__name__} of length {len(state)}" if isinstance(state, (tuple, list)) else type(state).__name__
            raise StateError(f"{self.label}: expected a tuple of {len(self.children)} child states, got {got}")

    def _masked_step(self, params, state, x):
        # The mask of emitting streams is tracked through the children anyway: zero the
        # non-emitting outputs with it rather than from `valid` (no extra work when all emit).
        # (`_run` checks the state; `all_streams_warm` reads a malformed one as not warm.)
        if self.delay and self.all_streams_warm(state):
            if all_streams_emitting():  # assumed by the caller (a compiled all-warm graph)
                return self._run(params, state, x, zero_invalid=False)
            with assume_all_streams_emitting():
                return self._run(params, state, x, zero_invalid=False)
        return self._run(params, state, x, zero_invalid=True)

    def step_unmasked(self, params, state, x):
        return self._run(params, state, x, zero_invalid=False)

    def _run(self, params, state, x, zero_invalid: bool):
        if STEP_HINTS.inputs_fit and STEP_HINTS.all_emit and self._params_by_name:
            # The hot path of an eager step in a warm stream: a state known to fit, a real input
            # for every child, no masks (a deep network runs this loop hundreds of times a step).
            new_states = []
            y = x
            for (name, child), s in zip(self.children, state):
                y, s = child.step_unmasked(params.get(name, EMPTY_PARAMS), s, y)
                new_states.append(s)
            return y, tuple(new_states)
        if not STEP_HINTS.inputs_fit:
            self._check_state(state)
        mask = None  # None: every stream has a real input for the current child
        # Every stream past the warm-up (set by the outermost step): no masks, no host reads.
        check = not all_streams_emitting()
        new_states = list(state)
        y = x
        for i, (name, child) in enumerate(self.children):
            y, s = child.step_unmasked(self._child_params(params, i, name), state[i], y)
            if mask is not None and child.stateful:
                s = tree_where(mask, s, state[i])
            new_states[i] = s
            if check and (child.delay > 0 or child.stride > 1):
                v = child.valid(s)
                mask = v if mask is None else mask & v
                if values_are_concrete(mask):
                    n_valid = int(mask.sum())
                    if n_valid == mask.numel():
                        mask = None
                    elif n_valid == 0:
                        # No stream has input for the rest: skip it, states stay as they are.
                        shape = shape_of(y)
                        for _, rest in self.children[i + 1:]:
                            shape = rest.step_output_shape(shape)
                        return zeros_of_shape(first_tensor(y), shape), tuple(new_states)
        if zero_invalid and mask is not None:
            y = map_values(lambda t: torch.where(expand_mask(mask, t), t, torch.zeros((), dtype=t.dtype, device=t.device)), y)
        return y, tuple(new_states)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        self._check_state(state)
        new_states, clocks, counts = [], [], []
        ys, c = xs, clock
        for i, (name, child) in enumerate(self.children):
            clocks.append(c)
            axis = child.time_axis()
            counts.append(first_tensor(ys).shape[axis])
            ys, s = child.steps_at_clock(self._child_params(params, i, name), state[i], ys, c, False)
            new_states.append(s)
            c = emitted(c, child.delay, child.stride)
        if pad_end:
            # Flush from the state after the chunk; the flushed states are thrown away.
            first_axis = self.layers[0].time_axis()
            zs = map_values(lambda t: t.narrow(first_axis, t.shape[first_axis], 0), xs)
            for i, (name, child) in enumerate(self.children):
                zs, _ = child.steps_at_clock(self._child_params(params, i, name), new_states[i], zs, clocks[i] + counts[i], True)
            last_axis = self.layers[-1].out_time_axis()
            ys = map_values(lambda a, b: torch.cat([a, b], dim=last_axis), ys, zs)
        return ys, tuple(new_states)

    def forward(self, params, xs):
        for i, (name, child) in enumerate(self.children):
            xs = child.forward(self._child_params(params, i, name), xs)
        return xs


def seq(*layers: Union[Layer, Mapping[str, Layer]]) -> Seq:
    """Compose layers in sequence; children are named ``"0"``, ``"1"``, ... or by a mapping.

    ``receptive_field``, ``stride``, ``padding`` and ``delay`` follow Principles 5 and 6 of the
    Continual Inference paper: the paper's example has receptive field 7, padding 2, delay 4 and
    stride 2.

    Example:
        >>> import cofunc
        >>> net = cofunc.seq(cofunc.conv1d(1, 1, 3, padding=2, stride=2), cofunc.conv1d(1, 1, 3))
        >>> net.receptive_field, net.padding, net.delay, net.stride
        (7, 2, 4, 2)
    """
    if len(layers) == 1 and isinstance(layers[0], Mapping):
        children = tuple((str(k), v) for k, v in layers[0].items())
    else:
        children = tuple((str(i), layer) for i, layer in enumerate(layers))
    return Seq(children)

