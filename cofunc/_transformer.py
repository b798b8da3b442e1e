"""Continual transformer encoders, weight-compatible with ``torch.nn.TransformerEncoder(Layer)``.

Layout: steps are tokens ``(*B, E)``, clips ``(*B, E, T)``; retroactive outputs carry the window
as a last axis, ``(*B, E, N)`` per step and ``(*B, E, T', N)`` per clip. Params are keyed like
the torch.nn modules' ``state_dict`` (``self_attn.in_proj_weight``, ``linear1.weight``,
``norm1.weight``, ...; ``layers.0. ...`` and ``norm. ...`` for an encoder), so a torch.nn
``state_dict`` loads unchanged. Dropout is ignored (inference). Post-norm and pre-norm
(``norm_first``) are supported; the activation is ``"relu"``, ``"gelu"`` (the exact GELU, as
torch; co silently used relu) or a parameter-free callable.

Layers:

- `single_output_encoder_layer`: one output token per step, ``nn.TransformerEncoderLayer(w)[:,
  query_index]`` for the window ``w`` of the last N tokens; attention from one query, the
  feed-forward on one token.
- `retroactive_encoder_layer`: all N updated tokens per step, ``nn.TransformerEncoderLayer(w)``;
  the position-wise feed-forward and norms run over the N tokens in one batched call.
- `window_encoder_layer`: stateless, a regular encoder layer applied to the ``(E, N)`` window of
  each step (all tokens, or the queries of one token against all N keys).
- `transformer_encoder`: any depth. One layer is a single-output layer; L >= 2 layers are a
  retroactive layer, L - 2 window layers over all tokens and a window layer for the last token
  (then the optional final norm), whose step equals ``nn.TransformerEncoder(w)[:, -1]``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._attention import AttentionState, RetroactiveMHA, SingleOutputMHA, _MultiheadAttention, full_attention, single_query_attention
from ._errors import ConfigurationError, InputShapeError, StateError
from ._layer import Layer, NO_STATE, Stateless, StatelessAnyRank, check_dtype_device
from ._params import detach_params, module_params
from ._values import push_frames
from ._seq import Seq

Activation = Union[str, Callable[[Tensor], Tensor]]


@dataclasses.dataclass(frozen=True)
class EncoderLayerConfig:
    """The hyper-parameters of an encoder layer, as ``nn.TransformerEncoderLayer`` takes them.

    ``dropout`` is accepted for signature compatibility and ignored (inference).
    """

    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Activation = "relu"
    layer_norm_eps: float = 1e-5
    norm_first: bool = False
    bias: bool = True

    def __post_init__(self):
        for name in ("d_model", "nhead", "dim_feedforward"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"encoder layer: `{name}` must be a positive int, got {value!r}")
        if self.d_model % self.nhead:
            raise ConfigurationError(f"encoder layer: d_model {self.d_model} is not divisible by nhead {self.nhead}")
        act = self.activation
        if isinstance(act, str):
            if act not in ("relu", "gelu"):
                raise ConfigurationError(f"encoder layer: activation must be 'relu', 'gelu' or a callable, got {act!r}")
        elif not callable(act):
            raise ConfigurationError(f"encoder layer: activation must be 'relu', 'gelu' or a callable, got {act!r}")
        elif isinstance(act, nn.Module) and module_params(act):
            raise ConfigurationError(
                f"encoder layer: the activation {type(act).__name__} has parameters, which cofunc's encoder "
                f"layers do not carry; use a parameter-free activation"
            )

    @property
    def activation_fn(self) -> Callable[[Tensor], Tensor]:
        if self.activation == "relu":
            return F.relu
        if self.activation == "gelu":
            return F.gelu
        return self.activation

    @classmethod
    def from_module(cls, module: nn.TransformerEncoderLayer) -> "EncoderLayerConfig":
        """The configuration of an existing ``nn.TransformerEncoderLayer``."""
        if not isinstance(module, nn.TransformerEncoderLayer):
            raise ConfigurationError(f"encoder layer: expected an nn.TransformerEncoderLayer, got {type(module).__name__}")
        attn = module.self_attn
        if attn.bias_k is not None or attn.add_zero_attn or not attn._qkv_same_embed_dim:
            raise ConfigurationError("encoder layer: self_attn with add_bias_kv, add_zero_attn or kdim/vdim is not supported")
        return cls(
            d_model=attn.embed_dim,
            nhead=attn.num_heads,
            dim_feedforward=module.linear1.out_features,
            dropout=module.dropout.p,
            activation=module.activation,
            layer_norm_eps=module.norm1.eps,
            norm_first=module.norm_first,
            bias=module.linear1.bias is not None,
        )

    def module(self, device=None, dtype=None) -> nn.TransformerEncoderLayer:
        """A fresh ``nn.TransformerEncoderLayer`` with this configuration (batch first)."""
        return nn.TransformerEncoderLayer(
            self.d_model, self.nhead, self.dim_feedforward, self.dropout, self.activation_fn,
            self.layer_norm_eps, batch_first=True, norm_first=self.norm_first, bias=self.bias,
            device=device, dtype=dtype,
        )


class EncoderLayerState(NamedTuple):
    """attn: the attention's state; inputs: ``(*B, K, E)``, the last raw input tokens the
    residual connection still needs (oldest first)."""

    attn: AttentionState
    inputs: Tensor




@dataclasses.dataclass(frozen=True, eq=False)
class _EncoderBlock(Layer):
    """The position-wise parts of an encoder layer (norms, feed-forward, residuals), on tokens
    whose features are the last axis."""

    config: EncoderLayerConfig

    def init_params(self, *, device=None, dtype=None):
        return detach_params(module_params(self.config.module(device=device, dtype=dtype)))

    def params_from(self, module):
        if isinstance(module, nn.TransformerEncoderLayer):
            got = EncoderLayerConfig.from_module(module)
            mine = self.config
            if (got.d_model, got.nhead, got.dim_feedforward, got.norm_first, got.bias) != (
                mine.d_model, mine.nhead, mine.dim_feedforward, mine.norm_first, mine.bias
            ):
                raise ConfigurationError(f"{self.label}: the module's configuration {got} differs from this layer's {mine}")
        return module_params(module)

    def _norm(self, params, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.config.d_model,), params.get("weight"), params.get("bias"), self.config.layer_norm_eps)

    def attn_input(self, params, x: Tensor) -> Tensor:
        """What the attention sees of tokens ``x``: ``norm1(x)`` (pre-norm) or ``x``."""
        return self._norm(params["norm1"], x) if self.config.norm_first else x

    def feed_forward(self, params, x: Tensor) -> Tensor:
        l1, l2 = params["linear1"], params["linear2"]
        return F.linear(self.config.activation_fn(F.linear(x, l1["weight"], l1.get("bias"))), l2["weight"], l2.get("bias"))

    def finish(self, params, residual: Tensor, attended: Tensor) -> Tensor:
        """The layer output from the input tokens and their attention outputs ``(..., E)``."""
        if self.config.norm_first:
            h = residual + attended
            return h + self.feed_forward(params, self._norm(params["norm2"], h))
        h = self._norm(params["norm1"], residual + attended)
        return self._norm(params["norm2"], h + self.feed_forward(params, h))

    def reference(self, params) -> Tensor:
        return params["linear1"]["weight"]


@dataclasses.dataclass(frozen=True, eq=False)
class _StatefulEncoderLayer(_EncoderBlock):
    sequence_len: int = 1

    def _make_attn(self) -> _MultiheadAttention:
        raise NotImplementedError

    def __post_init__(self):
        # Built once (validating sequence_len and query_index at construction), not per step.
        object.__setattr__(self, "_attn", self._make_attn())

    @property
    def attn(self) -> _MultiheadAttention:
        """The layer's attention (its params are ``params["self_attn"]``)."""
        return self._attn

    @property
    def receptive_field(self) -> int:
        return self.sequence_len

    @property
    def step_rank(self) -> int:
        return 1

    def _n_inputs(self) -> int:
        raise NotImplementedError

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        batch = self.batch_shape(input_shape)
        if params:
            ref = self.reference(params)
            device = ref.device if device is None else device
            dtype = ref.dtype if dtype is None else dtype
        attn = self.attn.init_state(params.get("self_attn", {}), input_shape, device=device, dtype=dtype)
        inputs = torch.zeros(batch + (self._n_inputs(), self.config.d_model), device=device, dtype=dtype)
        return EncoderLayerState(attn, inputs)

    def clock(self, state):
        return state.attn.count

    def _check(self, params, state, x: Tensor, clip: bool):
        what = "clip" if clip else "step input"
        if clip:
            self.check_clip_input(x, self.config.d_model)
        else:
            self.check_step_input(x, self.config.d_model)
        check_dtype_device(self, x, self.reference(params), what)
        if state is NO_STATE:  # the clip forward keeps no state
            return
        self.check_state_type(state, EncoderLayerState)
        self.attn._check(params["self_attn"], state.attn, x, clip)
        want = tuple(state.attn.count.shape) + (self._n_inputs(), self.config.d_model)
        if tuple(state.inputs.shape) != want:
            raise StateError(f"{self.label}: expected state inputs of shape {want}, got {tuple(state.inputs.shape)}")



@dataclasses.dataclass(frozen=True, eq=False)
class SingleOutputEncoderLayer(_StatefulEncoderLayer):
    """A continual encoder layer with one output token per step: ``(*B, E) -> (*B, E)``.

    Equals ``nn.TransformerEncoderLayer(w)[:, query_index]`` for the window ``w`` of the last
    ``sequence_len`` tokens. The state keeps the projected keys and values of the window, the
    pending queries and the raw tokens the residual still needs.
    """

    query_index: int = -1

    @property
    def label(self) -> str:
        c = self.config
        return f"single_output_encoder_layer(d={c.d_model}, heads={c.nhead}, N={self.sequence_len}, q={self.query_index})"

    def _make_attn(self) -> SingleOutputMHA:
        c = self.config
        return SingleOutputMHA(c.d_model, c.nhead, self.sequence_len, c.bias, query_index=self.query_index)

    def _n_inputs(self) -> int:
        return self.attn.n_queries

    @property
    def out_rank(self) -> int:
        return 1

    def step_output_shape(self, input_shape):
        return tuple(input_shape)

    def step_unmasked(self, params, state, x):
        """One token ``(*B, E)`` -> the output token ``(*B, E)``."""
        self._check(params, state, x, clip=False)
        attn = self.attn
        a_in = self.attn_input(params, x)
        attended, attn_state = attn.step_tokens(params["self_attn"], state.attn, a_in, a_in, a_in)
        if attn.n_queries:
            seq, inputs = push_frames(state.inputs, x.unsqueeze(-2), -2)
            residual = seq.select(-2, 0)
        else:
            residual, inputs = x, state.inputs
        return self.finish(params, residual, attended), EncoderLayerState(attn_state, inputs)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        """A chunk ``(*B, E, T)`` -> the emitted tokens ``(*B, E, T')``."""
        self._check(params, state, xs, clip=True)
        attn = self.attn
        tokens = xs.transpose(-1, -2)
        a_in = self.attn_input(params, tokens)
        attended, attn_state = attn.steps_tokens(params["self_attn"], state.attn, a_in, a_in, a_in, clock)
        seq, inputs = push_frames(state.inputs, tokens, -2)
        # The query token of the window ending at chunk token i sits at index i of `seq`.
        n_out = attended.shape[-2]
        residual = seq.narrow(-2, attn._first(clock) if n_out else 0, n_out)
        return self.finish(params, residual, attended).transpose(-1, -2), EncoderLayerState(attn_state, inputs)

    def forward(self, params, xs):
        """A clip ``(*B, E, T)`` -> ``(*B, E, T - N + 1)``: the query token's output for each window."""
        self._check(params, NO_STATE, xs, clip=True)
        attn = self.attn
        tokens = xs.transpose(-1, -2)
        a_in = self.attn_input(params, tokens)
        attended = attn.forward_tokens(params["self_attn"], a_in, a_in, a_in)
        n_out = attended.shape[-2]
        # A clip shorter than one window has no outputs, as for the attention layers.
        residual = tokens.narrow(-2, attn.query_position if n_out else 0, n_out)
        return self.finish(params, residual, attended).transpose(-1, -2)


@dataclasses.dataclass(frozen=True, eq=False)
class RetroactiveEncoderLayer(_StatefulEncoderLayer):
    """A continual encoder layer whose step outputs all N updated tokens: ``(*B, E) -> (*B, E, N)``.

    Equals ``nn.TransformerEncoderLayer(w)`` (transposed to ``(E, N)``) for the window ``w`` of
    the last ``sequence_len`` tokens. Attention is exact over the window (see
    `retroactive_attention`); norms and feed-forward run over the N tokens in one batched call.
    """

    @property
    def label(self) -> str:
        c = self.config
        return f"retroactive_encoder_layer(d={c.d_model}, heads={c.nhead}, N={self.sequence_len})"

    def _make_attn(self) -> RetroactiveMHA:
        c = self.config
        return RetroactiveMHA(c.d_model, c.nhead, self.sequence_len, c.bias)

    def _n_inputs(self) -> int:
        return self.sequence_len - 1

    @property
    def out_rank(self) -> int:
        return 2

    def step_output_shape(self, input_shape):
        return tuple(input_shape) + (self.sequence_len,)

    def step_unmasked(self, params, state, x):
        """One token ``(*B, E)`` -> the window's updated tokens ``(*B, E, N)``."""
        self._check(params, state, x, clip=False)
        a_in = self.attn_input(params, x)
        attended, attn_state = self.attn.step_tokens(params["self_attn"], state.attn, a_in, a_in, a_in)
        window, inputs = push_frames(state.inputs, x.unsqueeze(-2), -2)
        return self.finish(params, window, attended).transpose(-1, -2), EncoderLayerState(attn_state, inputs)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        """A chunk ``(*B, E, T)`` -> ``(*B, E, T', N)``, one window per emitting step."""
        self._check(params, state, xs, clip=True)
        attn = self.attn
        tokens = xs.transpose(-1, -2)
        a_in = self.attn_input(params, tokens)
        attended, attn_state = attn.steps_tokens(params["self_attn"], state.attn, a_in, a_in, a_in, clock)
        seq, inputs = push_frames(state.inputs, tokens, -2)
        n_out = attended.shape[-3]
        if n_out == 0:
            return attended.movedim(-1, -3), EncoderLayerState(attn_state, inputs)
        residual = seq.narrow(-2, attn._first(clock), n_out + self.sequence_len - 1).unfold(-2, self.sequence_len, 1)
        ys = self.finish(params, residual.transpose(-1, -2), attended)  # (*B, T', N, E)
        return ys.movedim(-1, -3), EncoderLayerState(attn_state, inputs)

    def forward(self, params, xs):
        """A clip ``(*B, E, T)`` -> ``(*B, E, T - N + 1, N)``: every window's output tokens."""
        self._check(params, NO_STATE, xs, clip=True)
        tokens = xs.transpose(-1, -2)
        a_in = self.attn_input(params, tokens)
        attended = self.attn.forward_tokens(params["self_attn"], a_in, a_in, a_in)  # (*B, W, N, E)
        n_out = attended.shape[-3]
        if n_out == 0:  # a clip shorter than one window: no outputs, as for the attention layers
            return attended.movedim(-1, -3)
        residual = tokens.narrow(-2, 0, n_out + self.sequence_len - 1).unfold(-2, self.sequence_len, 1)
        return self.finish(params, residual.transpose(-1, -2), attended).movedim(-1, -3)


@dataclasses.dataclass(frozen=True, eq=False)
class WindowEncoderLayer(_EncoderBlock, Stateless):
    """A regular encoder layer applied to the window of tokens each step brings (stateless).

    A step is a window ``(*B, E, N)`` (what a retroactive layer emits); a clip is ``(*B, E, T,
    N)``. With ``query_index=None`` every token is updated: ``(*B, E, N) -> (*B, E, N)``, equal to
    ``nn.TransformerEncoderLayer`` on the window. With an int, only that token's output is
    computed (one query against the N tokens, whose keys and values are never projected: see
    `single_query_attention`): ``(*B, E, N) -> (*B, E)``.
    """

    query_index: Optional[int] = None

    @property
    def label(self) -> str:
        c = self.config
        which = "all tokens" if self.query_index is None else f"token {self.query_index}"
        return f"window_encoder_layer(d={c.d_model}, heads={c.nhead}, {which})"

    @property
    def step_rank(self) -> int:
        return 2

    @property
    def out_rank(self) -> int:
        return 2 if self.query_index is None else 1

    def __post_init__(self):
        # Only the attention's projection helpers are used: the window length comes with each input.
        c = self.config
        object.__setattr__(self, "_attn", RetroactiveMHA(c.d_model, c.nhead, 1, c.bias))

    @property
    def attn(self) -> RetroactiveMHA:
        return self._attn

    def step_output_shape(self, input_shape):
        return tuple(input_shape) if self.query_index is None else tuple(input_shape[:-1])

    def _apply(self, params, tokens: Tensor) -> Tensor:
        """Tokens ``(..., N, E)`` -> ``(..., N, E)`` (all) or ``(..., E)`` (one query)."""
        a_in = self.attn_input(params, tokens)
        if self.query_index is None:
            return self.finish(params, tokens, full_attention(self.attn, params["self_attn"], a_in, a_in))
        n = tokens.shape[-2]
        if not -n <= self.query_index < n:
            raise InputShapeError(f"{self.label}: query_index {self.query_index} is outside a window of {n} tokens")
        pos = self.query_index % n
        # One query against a window whose tokens are new every step: the keys and values are
        # never projected (see `single_query_attention`), O(E^2 + H N E) instead of O(N E^2).
        attended = single_query_attention(self.attn, params["self_attn"], a_in.select(-2, pos), a_in)
        return self.finish(params, tokens.select(-2, pos), attended)

    def step_unmasked(self, params, state, x):
        self.check_step_input(x, self.config.d_model)
        check_dtype_device(self, x, self.reference(params))
        ys = self._apply(params, x.transpose(-1, -2))
        return (ys.transpose(-1, -2) if self.query_index is None else ys), state

    def forward(self, params, xs):
        """Windows ``(*B, E, T, N)`` -> ``(*B, E, T, N)`` (all tokens) or ``(*B, E, T)``."""
        self.check_clip_input(xs, self.config.d_model)
        check_dtype_device(self, xs, self.reference(params), "clip")
        ys = self._apply(params, xs.movedim(-3, -1))  # (*B, T, N, E) -> (*B, T, N, E) or (*B, T, E)
        return ys.movedim(-1, -3) if self.query_index is None else ys.transpose(-1, -2)


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelLayerNorm(StatelessAnyRank):
    """``nn.LayerNorm(num_channels)`` over the channel axis of steps ``(*B, C, *S)`` and clips
    ``(*B, C, T, *S)`` (stateless; params ``weight`` and ``bias`` as nn.LayerNorm's)."""

    num_channels: int
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True
    step_rank: Optional[int] = None

    @property
    def label(self) -> str:
        return f"channel_layer_norm({self.num_channels})"

    def init_params(self, *, device=None, dtype=None):
        module = nn.LayerNorm(self.num_channels, self.eps, self.elementwise_affine, self.bias, device=device, dtype=dtype)
        return detach_params(module_params(module))

    def _apply(self, params, x: Tensor, axis: int) -> Tensor:
        if x.shape[axis] != self.num_channels:
            raise InputShapeError(f"{self.label}: expected {self.num_channels} channels at dim {axis}, got shape {tuple(x.shape)}")
        moved = x if axis == -1 else x.movedim(axis, -1)
        y = F.layer_norm(moved, (self.num_channels,), params.get("weight"), params.get("bias"), self.eps)
        return y if axis == -1 else y.movedim(-1, axis)

    def _axis(self, clip: bool) -> int:
        rank = 1 if self.step_rank is None else self.step_rank
        return -rank - clip

    def step_unmasked(self, params, state, x):
        return self._apply(params, x, self._axis(False)), state

    def forward(self, params, xs):
        return self._apply(params, xs, self._axis(True))


def channel_layer_norm(num_channels: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True) -> ChannelLayerNorm:
    """Layer norm over the channel axis (``nn.LayerNorm(num_channels)`` applied to each frame's
    channel vector), keyed like nn.LayerNorm. Without a known rank, steps are ``(*B, C)``.

    Example:
        >>> import torch, cofunc
        >>> norm = cofunc.channel_layer_norm(4)
        >>> y = norm.forward(norm.init_params(), torch.randn(2, 4, 7))
        >>> torch.allclose(y.mean(1), torch.zeros(2, 7), atol=1e-6)
        True
    """
    return ChannelLayerNorm(num_channels, eps, elementwise_affine, bias)


# --- constructors -------------------------------------------------------------------------------


def _config(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, norm_first, bias) -> EncoderLayerConfig:
    return EncoderLayerConfig(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, norm_first, bias)


def _need_sequence_len(sequence_len, what: str) -> int:
    if sequence_len is None:
        raise ConfigurationError(f"{what}: `sequence_len` (the number of tokens attention spans) is required")
    return sequence_len


def single_output_encoder_layer(
    d_model: int,
    nhead: int,
    dim_feedforward: int = 2048,
    dropout: float = 0.1,
    activation: Activation = "relu",
    layer_norm_eps: float = 1e-5,
    norm_first: bool = False,
    bias: bool = True,
    *,
    sequence_len: int,
    query_index: int = -1,
) -> SingleOutputEncoderLayer:
    """A continual ``nn.TransformerEncoderLayer`` with one output token per step.

    Steps ``(*B, E) -> (*B, E)``, the output of the token at ``query_index`` of the window of the
    last ``sequence_len`` tokens; the first output comes at step ``sequence_len``.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.single_output_encoder_layer(8, 2, 16, sequence_len=4)
        >>> params = layer.init_params()
        >>> ys, _ = layer.steps(params, layer.init_state(params, (1, 8)), torch.randn(1, 8, 6))
        >>> ys.shape
        torch.Size([1, 8, 3])
    """
    config = _config(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, norm_first, bias)
    return SingleOutputEncoderLayer(config, _need_sequence_len(sequence_len, "single_output_encoder_layer"), query_index)


def retroactive_encoder_layer(
    d_model: int,
    nhead: int,
    dim_feedforward: int = 2048,
    dropout: float = 0.1,
    activation: Activation = "relu",
    layer_norm_eps: float = 1e-5,
    norm_first: bool = False,
    bias: bool = True,
    *,
    sequence_len: int,
) -> RetroactiveEncoderLayer:
    """A continual ``nn.TransformerEncoderLayer`` whose steps output all N updated tokens.

    Steps ``(*B, E) -> (*B, E, N)``.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.retroactive_encoder_layer(8, 2, 16, sequence_len=4)
        >>> layer.step_output_shape((1, 8)), layer.delay
        ((1, 8, 4), 3)
    """
    config = _config(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, norm_first, bias)
    return RetroactiveEncoderLayer(config, _need_sequence_len(sequence_len, "retroactive_encoder_layer"))


def window_encoder_layer(config: Union[EncoderLayerConfig, nn.TransformerEncoderLayer], query_index: Optional[int] = None) -> WindowEncoderLayer:
    """A stateless regular encoder layer over each step's window ``(*B, E, N)``: all tokens
    (``query_index=None``, output ``(*B, E, N)``) or one (output ``(*B, E)``)."""
    if isinstance(config, nn.Module):
        config = EncoderLayerConfig.from_module(config)
    return WindowEncoderLayer(config, query_index)


def transformer_encoder(
    encoder_layer: Union[EncoderLayerConfig, nn.TransformerEncoderLayer],
    num_layers: int,
    norm: Union[None, nn.LayerNorm, Layer] = None,
    sequence_len: Optional[int] = None,
) -> Seq:
    """A continual ``nn.TransformerEncoder`` of any depth: steps ``(*B, E) -> (*B, E)``, the last
    token of ``nn.TransformerEncoder(w)`` for the window ``w`` of the last ``sequence_len`` tokens.

    One layer is a single-output layer. With L >= 2 layers the first is retroactive (it updates
    the N tokens of the window), the next L - 2 are regular layers over the window, and the last
    computes the last token only (co could not build 3 or more layers). ``norm`` (an
    ``nn.LayerNorm``, whose configuration is used, or a cofunc layer) is applied to the output
    token. Params are keyed like ``nn.TransformerEncoder``'s ``state_dict``
    (``layers.0.self_attn.in_proj_weight``, ..., ``norm.weight``). ``forward`` on a clip
    ``(*B, E, T)`` returns ``(*B, E, T - N + 1)``: the last token of every window.

    Example:
        >>> import torch, cofunc
        >>> cfg = cofunc.EncoderLayerConfig(8, 2, 16)
        >>> enc = cofunc.transformer_encoder(cfg, num_layers=3, sequence_len=4)
        >>> params = enc.init_params()
        >>> sorted(cofunc.flatten_params(params))[:2]
        ['layers.0.linear1.bias', 'layers.0.linear1.weight']
        >>> enc.forward(params, torch.randn(1, 8, 4)).shape
        torch.Size([1, 8, 1])
    """
    if isinstance(encoder_layer, nn.Module):
        encoder_layer = EncoderLayerConfig.from_module(encoder_layer)
    if not isinstance(encoder_layer, EncoderLayerConfig):
        raise ConfigurationError(
            f"transformer_encoder: expected an EncoderLayerConfig or an nn.TransformerEncoderLayer, got {type(encoder_layer).__name__}"
        )
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ConfigurationError(f"transformer_encoder: `num_layers` must be a positive int, got {num_layers!r}")
    n = _need_sequence_len(sequence_len, "transformer_encoder")
    if num_layers == 1:
        layers = [SingleOutputEncoderLayer(encoder_layer, n)]
    else:
        layers = [RetroactiveEncoderLayer(encoder_layer, n)]
        layers += [WindowEncoderLayer(encoder_layer, None) for _ in range(num_layers - 2)]
        layers.append(WindowEncoderLayer(encoder_layer, -1))
    children = {"layers": Seq(tuple((str(i), layer) for i, layer in enumerate(layers)))}
    if norm is not None:
        if isinstance(norm, nn.LayerNorm):
            if tuple(norm.normalized_shape) != (encoder_layer.d_model,):
                raise ConfigurationError(
                    f"transformer_encoder: the norm normalises shape {tuple(norm.normalized_shape)}, expected ({encoder_layer.d_model},)"
                )
            norm = ChannelLayerNorm(encoder_layer.d_model, norm.eps, norm.elementwise_affine, norm.bias is not None, step_rank=1)
        elif not isinstance(norm, Layer):
            raise ConfigurationError(f"transformer_encoder: `norm` must be an nn.LayerNorm or a cofunc Layer, got {type(norm).__name__}")
        children["norm"] = norm
    return Seq(tuple(children.items()))


__all__ = (
    "ChannelLayerNorm",
    "EncoderLayerConfig",
    "EncoderLayerState",
    "RetroactiveEncoderLayer",
    "SingleOutputEncoderLayer",
    "WindowEncoderLayer",
    "channel_layer_norm",
    "retroactive_encoder_layer",
    "single_output_encoder_layer",
    "transformer_encoder",
    "window_encoder_layer",
)
