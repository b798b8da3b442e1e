"""Static and measured costs of a continual layer: params, state, multiply-accumulates, memory.

`profile(layer, params, step_shape)` runs the layer's eager ``step`` from a fresh state and its
clip ``forward`` once, on random inputs, and measures:

- **MACs** (multiply-accumulates) with ``torch.utils.flop_counter.FlopCounterMode``, as its
  FLOPs / 2. It counts matrix products and convolutions (``mm``, ``addmm``, ``bmm``, ``baddbmm``,
  convolutions, scaled-dot-product attention), whatever layer issues them, so no layer needs a
  formula of its own. By the usual convention everything else costs no MACs: pools, activations,
  normalisations, additions, bias terms, concatenations and copies.
- **Peak memory of one step** by `LiveTensorBytes`, a ``TorchDispatchMode`` that follows every
  tensor the step's ATen ops allocate until its storage is freed (see its docstring).

Definitions (all for the given ``step_shape``, so for all its streams together):

``macs_per_step``
    The mean MACs of one eager step once the layer is warmed up, over one stride period: the
    steps ``delay .. delay + stride - 1`` from a fresh state (step ``delay`` emits the first
    output; the pattern repeats every ``stride`` steps). Eager steps skip the window operation of
    a strided layer, and everything after it in a `seq`, on steps where no stream has an input.
``macs_emitting_step``
    The MACs of a step that emits an output. Every layer runs on such a step, so this is also
    the cost of *every* step of a compiled or exported step, which computes branch-free.
``macs_per_prediction``
    The continual cost of one output: ``macs_per_step * stride``.
``clip_macs``
    The cost of the regular network's prediction for the newest frame by sliding-window
    inference: one ``forward`` on the last ``clip_length`` frames (default: the receptive field,
    the shortest clip whose forward yields an output that sees the newest frame and no end
    padding). ``clip_outputs`` is the number of output frames that forward returns (more than
    one if the network pads in time); ``mac_ratio = clip_macs / macs_per_prediction`` is how
    many times fewer MACs continual inference spends per prediction.
``state_bytes``
    The bytes of all state leaves (they have fixed shapes, so this holds for every step).
``n_params`` / ``param_bytes``
    Elements and bytes of all params leaves: the module's ``state_dict``, so batch-norm running
    statistics count along with the parameters.
``peak_step_bytes``
    The largest number of bytes held at once by tensors that one eager step allocates, over the
    steps of a stride period (outputs and the new state included; the input, the old state and
    the params excluded).
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Sequence, Tuple, Union

import optree
import torch
import torch.utils.flop_counter as _flop_counter
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from ._errors import ConfigurationError
from ._layer import Layer, resolve_layer
from ._params import Params
from ._values import tree_leaves

StepShape = Union[Sequence[int], List[Sequence[int]]]

_aten = torch.ops.aten


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # torch's registry lacks the CPU kernel of scaled_dot_product_attention (torch 2.13).
    return _flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {}
if hasattr(_aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FLOP_FORMULAS[_aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


def count_macs(fn, *args, **kwargs) -> Tuple[int, Any]:
    """``(macs, fn(*args, **kwargs))``: the multiply-accumulates of one call (FLOPs / 2)."""
    with torch.no_grad(), _flop_counter.FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        out = fn(*args, **kwargs)
    return counter.get_total_flops() // 2, out


class LiveTensorBytes(TorchDispatchMode):
    """Follow the bytes of the tensors that ATen ops allocate while the mode is active.

    An op's output whose storage is not one of its inputs' storages is a new allocation (views
    and in-place results share an input's storage and cost nothing). Each new storage is held by
    a weak reference; a storage counts as freed as soon as its reference expires, which is
    checked after every op, before the op's own outputs are added. ``peak`` is the largest
    ``current`` seen, in bytes.

    This counts tensor bytes exactly and deterministically (independent of the allocator and of
    the machine); memory that a kernel allocates internally and frees before returning (oneDNN
    scratch space, for example) is not seen.
    """

    def __init__(self):
        super().__init__()
        self._current = 0
        self.peak = 0
        self._live = {}  # StorageWeakRef -> nbytes

    @property
    def current(self) -> int:
        """The bytes of the tracked storages still alive."""
        self._sweep()
        return self._current

    def _sweep(self):
        for ref in [ref for ref in self._live if ref.expired()]:
            self._current -= self._live.pop(ref)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            t.untyped_storage()._cdata
            for t in optree.tree_leaves((args, kwargs), none_is_leaf=True)
            if isinstance(t, Tensor)
        }
        self._sweep()
        for t in optree.tree_leaves(out, none_is_leaf=True):
            if not isinstance(t, Tensor):
                continue
            storage = t.untyped_storage()
            if storage._cdata in inputs:
                continue
            ref = StorageWeakRef(storage)
            if ref not in self._live:
                self._live[ref] = storage.nbytes()
                self._current += storage.nbytes()
        self.peak = max(self.peak, self._current)
        return out


@dataclasses.dataclass(frozen=True)
class Profile:
    """What `profile` measured; see the module docstring for the definitions. ``str()`` is a table."""

    label: str
    step_shape: Any
    dtype: torch.dtype
    delay: int
    stride: int
    receptive_field: int
    n_params: int
    param_bytes: int
    state_leaves: int
    state_bytes: int
    macs_period: Tuple[int, ...]  # MACs of the steps delay, delay + 1, ..., delay + stride - 1
    clip_length: int
    clip_outputs: int
    clip_macs: int
    peak_step_bytes: int

    @property
    def macs_per_step(self) -> float:
        return sum(self.macs_period) / len(self.macs_period)

    @property
    def macs_emitting_step(self) -> int:
        return self.macs_period[0]

    @property
    def macs_per_prediction(self) -> int:
        return sum(self.macs_period)

    @property
    def mac_ratio(self) -> float:
        """Regular sliding-window MACs per prediction over continual MACs per prediction."""
        if self.macs_per_prediction == 0:
            return float("inf") if self.clip_macs else 1.0
        return self.clip_macs / self.macs_per_prediction

    def as_dict(self) -> dict:
        """The fields and the derived numbers, as plain Python values."""
        out = dataclasses.asdict(self)
        out["dtype"] = str(self.dtype)
        for name in ("macs_per_step", "macs_emitting_step", "macs_per_prediction", "mac_ratio"):
            out[name] = getattr(self, name)
        return out

    def __str__(self) -> str:
        rows = [
            ("params", f"{self.n_params:,}", _bytes(self.param_bytes)),
            ("state", f"{self.state_leaves} leaves", _bytes(self.state_bytes)),
            (f"MACs per step (mean over {self.stride})", _num(self.macs_per_step), ""),
            ("MACs of an emitting step", _num(self.macs_emitting_step), "= every compiled step"),
            ("MACs per prediction, continual", _num(self.macs_per_prediction), f"{self.stride} step(s)"),
            ("MACs per prediction, regular", _num(self.clip_macs),
             f"forward on {self.clip_length} frame(s) -> {self.clip_outputs} output(s)"),
            ("regular / continual MACs", f"{self.mac_ratio:.2f}x", ""),
            ("peak memory of a step", _bytes(self.peak_step_bytes), "tensors allocated by the step"),
        ]
        width = max(len(r[0]) for r in rows)
        value_width = max(len(r[1]) for r in rows)
        head = (
            f"{self.label}\n"
            f"step input {_shape_str(self.step_shape)} {str(self.dtype).replace('torch.', '')}; "
            f"delay {self.delay}, stride {self.stride}, receptive field {self.receptive_field}"
        )
        lines = [head] + [f"  {name:<{width}}  {value:>{value_width}}  {note}".rstrip() for name, value, note in rows]
        return "\n".join(lines)


def _num(x) -> str:
    return f"{x:,.1f}" if isinstance(x, float) and not float(x).is_integer() else f"{int(x):,}"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _shape_str(shape) -> str:
    if isinstance(shape, list):
        return "[" + ", ".join(_shape_str(s) for s in shape) + "]"
    return str(tuple(shape))


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _reference(params) -> Optional[Tensor]:
    leaves = [leaf for leaf in tree_leaves(params) if isinstance(leaf, Tensor)]
    for leaf in leaves:
        if leaf.is_floating_point():
            return leaf
    return leaves[0] if leaves else None


def _random_value(shape, generator, dtype, device):
    if isinstance(shape, list):
        return tuple(_random_value(s, generator, dtype, device) for s in shape)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)


def _clip_shape(shape, axis: int, length: int):
    if isinstance(shape, list):
        return [_clip_shape(s, axis, length) for s in shape]
    shape = list(shape)
    shape.insert(len(shape) + 1 + axis if axis < 0 else axis, length)
    return tuple(shape)


def _time_length(value, axis: int) -> int:
    if isinstance(value, tuple):
        return _time_length(value[0], axis)
    return value.shape[axis]


def profile(layer: Layer, params: Params = None, step_shape: StepShape = None, *, clip_length: Optional[int] = None,
            seed: int = 0) -> Profile:
    """Measure ``layer``'s costs for steps of shape ``step_shape`` = ``(*B, C, *S)``.

    Runs ``delay + stride`` eager steps from a fresh state and one clip ``forward`` on random
    normal inputs (seeded by ``seed``; the dtype and device of the params, float32 without
    params). Multi-stream layers take a list of step shapes; ``profile(net, step_shape)`` profiles a
    ``cofunc.nn`` module with its own params. Returns a `Profile`; the module
    docstring defines every number.

    Example:
        >>> import cofunc
        >>> layer = cofunc.conv3d(3, 8, kernel_size=3, padding=1)
        >>> p = cofunc.profile(layer, layer.init_params(), (1, 3, 16, 16))
        >>> p.macs_per_step == 8 * 3 * 27 * 16 * 16, p.state_bytes == 3 * 2 * 16 * 16 * 4 + 8
        (True, True)
        >>> p.clip_macs == p.macs_per_step * 3  # forward on 3 frames with padding 1: 3 outputs
        True
    """
    layer, params, step_shape = resolve_layer("profile", layer, params, step_shape)
    if step_shape is None:
        raise ConfigurationError(f"profile: {layer.label} needs `step_shape`, the shape of one step (*B, C, *S)")
    length = layer.receptive_field if clip_length is None else int(clip_length)
    if length < 1:
        raise ConfigurationError(f"profile: clip_length must be positive, got {clip_length}")
    reference = _reference(params)
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.get_default_dtype()
    device = reference.device if reference is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    if isinstance(step_shape, list):
        step_shape = [tuple(s) for s in step_shape]
    else:
        step_shape = tuple(step_shape)

    param_leaves = [leaf for leaf in tree_leaves(params) if isinstance(leaf, Tensor)]
    with torch.no_grad():
        state = layer.init_state(params, step_shape, device=device, dtype=dtype)
    state_leaves = tree_leaves(state)

    # Warm up to the first emitting step, then measure one stride period.
    delay, stride = layer.delay, layer.stride
    macs_period, peak = [], 0
    with torch.no_grad():
        for _ in range(delay):
            _, state = layer.step(params, state, _random_value(step_shape, generator, dtype, device))
        for _ in range(stride):
            x = _random_value(step_shape, generator, dtype, device)
            macs, _ = count_macs(layer.step, params, state, x)
            tracker = LiveTensorBytes()
            with tracker:
                _, next_state = layer.step(params, state, x)
            macs_period.append(macs)
            peak = max(peak, tracker.peak)
            state = next_state

    axis = layer.time_axis()
    clip = _random_value(_clip_shape(step_shape, axis, length), generator, dtype, device)
    clip_macs, ys = count_macs(layer.forward, params, clip)
    out_axis = layer.out_time_axis()

    return Profile(
        label=layer.label,
        step_shape=step_shape,
        dtype=dtype,
        delay=delay,
        stride=stride,
        receptive_field=layer.receptive_field,
        n_params=sum(leaf.numel() for leaf in param_leaves),
        param_bytes=sum(_nbytes(leaf) for leaf in param_leaves),
        state_leaves=len(state_leaves),
        state_bytes=sum(_nbytes(leaf) for leaf in state_leaves),
        macs_period=tuple(macs_period),
        clip_length=length,
        clip_outputs=_time_length(ys, out_axis),
        clip_macs=clip_macs,
        peak_step_bytes=peak,
    )


__all__ = ["LiveTensorBytes", "Profile", "count_macs", "profile"]
