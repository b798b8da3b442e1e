"""Lift temporally-local functions and torch.nn modules into stateless continual layers.

A temporally-local operation treats every frame on its own (activations, eval-mode batch norm,
layer norm over non-temporal axes, dropout at inference), so its step is the operation on one
frame and its ``steps`` is the operation on the chunk: no state, delay 0.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._clock import STEP_HINTS
from ._errors import ConfigurationError
from ._layer import EMPTY_PARAMS, Stateless, with_one_batch_dim
from ._params import flatten_params, module_params, params_shapes_of


@dataclasses.dataclass(frozen=True, eq=False)
class Lift(Stateless):
    """A stateless layer applying ``apply(params, x)`` to each frame and to whole clips.

    ``pointwise=True`` means ``apply`` works on tensors of any rank alike (activations, dropout,
    layer norm over trailing spatial axes), so a frame is passed as it is. Otherwise the frame
    is given a time axis of length 1 before ``apply`` and loses it after, and the leading stream
    dims are flattened into one batch dim when ``step_rank`` is known. ``step_rank`` is the
    non-batch rank of a step input (None: taken from the neighbours in a `seq`); ``keeps_rank``
    says the output has the input's rank whatever it is (always so when ``pointwise``), and
    ``out_rank`` gives the output's rank when ``apply`` changes it (a spatial mean).
    ``channelwise=True`` says ``apply`` takes ``(N, C, *any)`` alike (batch norm: a frame and
    the same frame with a time axis of length 1 hold the same elements per channel): a frame
    with one batch dim is passed as it is.
    """

    apply: Callable
    name: str = "lift"
    pointwise: bool = True
    step_rank: Optional[int] = None
    template: Optional[nn.Module] = None
    keeps_rank: bool = False
    frame_loop: bool = False
    out_rank: Optional[int] = None
    channelwise: bool = False

    def __post_init__(self):
        if self.pointwise:
            object.__setattr__(self, "keeps_rank", True)
        if self.keeps_rank and self.out_rank is None:
            object.__setattr__(self, "out_rank", self.step_rank)

    @property
    def label(self) -> str:
        return self.name

    def with_rank(self, rank: int) -> "Lift":
        if self.step_rank == rank:
            return self
        return dataclasses.replace(self, step_rank=rank, out_rank=rank if self.keeps_rank else self.out_rank)

    def init_params(self, *, device=None, dtype=None):
        if self.template is None:
            return {}
        fresh = _fresh_copy(self.template)
        fresh.to(device=device, dtype=dtype)
        return _nest(module_params(fresh))

    def params_from(self, module):
        return module_params(module)

    def params_shapes(self):
        # The template's own tensors have the shapes (no copy of the module, as init_params makes).
        return {} if self.template is None else params_shapes_of(_nest(module_params(self.template)))

    def step_unmasked(self, params, state, x):
        if not STEP_HINTS.inputs_fit:
            self.check_step_input(x)
        if self.pointwise:
            return self.apply(params, x), state
        if self.channelwise and self.step_rank is not None and x.dim() == self.step_rank + 1:
            return self.apply(params, x), state

        def on_frame(frame):  # (N, C, *S): give it a time axis of length 1, as in a clip
            if self.frame_loop:
                return self.apply(params, frame)
            return self.apply(params, frame.unsqueeze(2)).squeeze(2)

        return with_one_batch_dim(on_frame, x, self.step_rank), state

    def forward(self, params, xs):
        self.check_clip_input(xs)
        if self.pointwise:
            return self.apply(params, xs)
        time_axis = 2 if self.step_rank is None else xs.dim() - self.step_rank
        if xs.shape[time_axis] == 0:
            # A module may refuse an empty clip (a conv): the output shape comes from a frame.
            step_shape = tuple(s for i, s in enumerate(xs.shape) if i != time_axis)
            out = self.step_output_shape(step_shape)
            return xs.new_zeros(out[:time_axis] + (0,) + tuple(out[time_axis:]))
        if self.frame_loop:
            def on_clip(clip):
                return torch.stack([self.apply(params, frame) for frame in clip.unbind(2)], dim=2)
        else:
            def on_clip(clip):
                return self.apply(params, clip)
        return with_one_batch_dim(on_clip, xs, None if self.step_rank is None else self.step_rank + 1)

    def step_output_shape(self, input_shape):
        if self.pointwise and self.template is None:
            return tuple(input_shape)
        return _meta_step_shape(self, tuple(input_shape))


@functools.lru_cache(maxsize=256)
def _meta_step_shape(layer: Lift, input_shape):
    params, dtype = EMPTY_PARAMS, None
    if layer.template is not None:
        params = _to_meta(module_params(layer.template))
        # The stand-in frame takes the params' float dtype: some ops (prelu) refuse to promote.
        dtype = next((t.dtype for t in _leaves(params) if t.is_floating_point()), None)
    y, _ = layer.step(params, (), torch.empty(input_shape, device="meta", dtype=dtype))
    return tuple(y.shape)


def _leaves(tree):
    for v in tree.values():
        yield from _leaves(v) if isinstance(v, dict) else (v,)


def _to_meta(tree):
    return {k: _to_meta(v) if isinstance(v, dict) else v.to("meta") for k, v in tree.items()}


def _nest(tree):
    return {k: _nest(v) if isinstance(v, dict) else v.detach() for k, v in tree.items()}


def _fresh_copy(module: nn.Module) -> nn.Module:
    import copy

    fresh = copy.deepcopy(module)
    for sub in fresh.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    return fresh


def lift(fn: Callable[[Tensor], Tensor], *, name: Optional[str] = None, pointwise: bool = True, step_rank: Optional[int] = None) -> Lift:
    """Lift a parameter-free, temporally-local function ``fn(x) -> y`` into a stateless layer.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.lift(torch.relu)
        >>> y, state = layer.step({}, (), torch.tensor([[-1.0, 2.0]]))
        >>> y
        tensor([[0., 2.]])
    """
    return Lift(lambda params, x: fn(x), name or getattr(fn, "__name__", "lift"), pointwise, step_rank)


# --- torch.nn modules ------------------------------------------------------------------------

_BATCH_NORMS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}
_POINTWISE_MODULES = (
    nn.Threshold, nn.ReLU, nn.RReLU, nn.Hardtanh, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.Hardshrink, nn.LeakyReLU,
    nn.LogSigmoid, nn.Softplus, nn.Softshrink, nn.Softsign, nn.Tanhshrink, nn.Identity,
)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _batch_norm_apply(eps: float, affine: bool, mode_of: Optional[nn.Module] = None):
    """The inference batch norm; with ``mode_of`` (the nn adapters' own module), torch's
    training-mode computation while that module is in training mode, as co steps it."""
    def apply(params, x):
        weight, bias = (params.get("weight"), params.get("bias")) if affine else (None, None)
        if mode_of is None or not mode_of.training:
            # The op F.batch_norm calls in eval mode, without its Python checks (a hot path).
            # (cudnn's flag is read for CUDA inputs only: on other devices the op ignores it.)
            return torch.batch_norm(x, weight, bias, params["running_mean"], params["running_var"], False, 0.0, eps,
                                    x.is_cuda and torch.backends.cudnn.enabled)
        momentum = mode_of.momentum if mode_of.momentum is not None else 0.1
        return F.batch_norm(x, params["running_mean"], params["running_var"], weight, bias, True, momentum, eps)

    return apply


def lift_module(module: nn.Module, *, step_rank: Optional[int] = None, follow_training: bool = False) -> Lift:
    """Lift a temporally-local torch.nn module into a stateless layer with the module's params.

    Batch norm is applied with its running statistics (its inference behaviour, exact per frame);
    dropouts are the identity (the inference path has no randomness); activations and layer
    norm act on each frame. Other modules are applied to each frame with a time axis of length 1
    through ``torch.func.functional_call``. ``follow_training=True`` (what the nn adapters use)
    makes a batch norm compute torch's training-mode normalisation of each step's frames while
    ``module`` is in training mode, as co does; the layer is then not pure.

    Example:
        >>> import torch, cofunc
        >>> bn = torch.nn.BatchNorm3d(4).eval()
        >>> layer = cofunc.lift_module(bn)
        >>> x = torch.randn(2, 4, 5, 5)
        >>> y, _ = layer.step(layer.params_from(bn), (), x)
        >>> torch.allclose(y, bn(x.unsqueeze(2)).squeeze(2))
        True
    """
    name = type(module).__name__
    if isinstance(module, nn.GroupNorm):
        raise ConfigurationError(
            f"{name}: group norm normalises over time as well, so a step cannot equal the clip; "
            f"use it on clips only (forward), or replace it by a per-frame norm"
        )
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        if not module.track_running_stats or module.running_mean is None:
            raise ConfigurationError(
                f"{name}: instance norm without running statistics normalises over time, so a step "
                f"cannot equal the clip; use track_running_stats=True and eval mode"
            )
        in_rank = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}
        norm_rank = step_rank if step_rank is not None else next(r for cls, r in in_rank.items() if isinstance(module, cls))
        # With running statistics an instance norm at inference is a batch norm.
        return Lift(_batch_norm_apply(module.eps, module.affine), name, False, norm_rank, module, keeps_rank=True,
                    channelwise=True)
    if isinstance(module, tuple(_BATCH_NORMS)):
        if not module.track_running_stats or module.running_mean is None:
            raise ConfigurationError(
                f"{name}: batch norm without running statistics normalises over time, so a step "
                f"cannot equal the clip; use track_running_stats=True"
            )
        bn_rank = step_rank if step_rank is not None else next(r for cls, r in _BATCH_NORMS.items() if isinstance(module, cls))
        # A frame (N, C, *S) without its time axis of length 1: the same elements per channel,
        # so the same statistics in training mode too.
        return Lift(_batch_norm_apply(module.eps, module.affine, module if follow_training else None), name, False,
                    bn_rank, module, keeps_rank=True, channelwise=True)
    if isinstance(module, _DROPOUTS):
        return Lift(lambda params, x: x, name, True, step_rank, None)
    if isinstance(module, nn.LayerNorm):
        shape, eps = tuple(module.normalized_shape), module.eps
        return Lift(
            lambda params, x: F.layer_norm(x, shape, params.get("weight"), params.get("bias"), eps),
            name, True, step_rank, module if module_params(module) else None,
        )
    if isinstance(module, nn.ReLU) and type(module).forward is nn.ReLU.forward:
        # The op ReLU.forward ends in, without its Python layers (the most frequent activation
        # of a step); `inplace` is read at each call, as the module reads it.
        return Lift(lambda params, x: torch.relu_(x) if module.inplace else torch.relu(x), name, True, step_rank, None)
    if isinstance(module, _POINTWISE_MODULES) and not module_params(module):
        return Lift(lambda params, x: module.forward(x), name, True, step_rank, None)
    if not module_params(module):
        return Lift(lambda params, x: module.forward(x), name, False, step_rank, None)

    def apply(params, x):
        return torch.func.functional_call(module, flatten_params(params), (x,), strict=True)

    return Lift(apply, name, False, step_rank, module)
