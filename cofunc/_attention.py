"""Continual multi-head attention over a sliding window of ``sequence_len`` tokens.

Layout: a step is one token ``(*B, E)``, a clip ``(*B, E, T)`` (channel first, like every
cofunc layer). Params are keyed like ``torch.nn.MultiheadAttention``'s ``state_dict``:
``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``, and
``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` when ``kdim``/``vdim`` differ from
``embed_dim``.

Two layers, after Hedegaard et al., "Continual Transformers" (co's two attention modules):

- `single_output_attention`: each step attends from one query of the window (the newest by
  default) to the N keys of the window: O(N E) per step after projecting only the new token.
- `retroactive_attention`: each step outputs the updated attention outputs of all N tokens of
  the window. It keeps the projected queries, keys and values of the window and computes
  ``softmax(Q K^T / sqrt(d)) V`` exactly over the window (2 N^2 E multiply-adds), with the
  softmax's max subtraction: numerically as safe as torch. co's incremental update computes
  ``exp`` without max subtraction and overflows on large inputs; the exact window costs little
  next to the out-projection and feed-forward over N tokens that any retroactive layer needs.

Both emit once N tokens were seen (``receptive_field = N``, ``delay = N - 1``: cofunc's delay
is the warm-up; co's ``SingleOutputMultiheadAttention.delay`` meant the query's lag instead).
``forward`` on a clip of T >= N tokens returns the output of every window of N consecutive
tokens (stride 1), exactly what the steps emit; for T == N it is the torch.nn module's output
(up to float rounding: it is computed in the same way as the steps, not by torch's kernel).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import ConfigurationError, DTypeDeviceError, InputShapeError, StateError
from ._layer import Layer, NO_STATE, check_dtype_device
from ._params import detach_params, module_params
from ._values import push_frames

AttentionInput = Union[Tensor, Tuple[Tensor, Tensor, Tensor]]


class AttentionState(NamedTuple):
    """The window of projected tokens, per head, oldest first.

    queries: ``(*B, H, Nq, d)``: the last ``Nq`` projected queries (single-output attention keeps
    the queries not yet used, ``Nq = N - 1 - query position``; retroactive attention keeps
    ``N - 1``); keys, values: ``(*B, H, N - 1, d)``: the last ``N - 1`` projected keys and
    values; count: ``(*B,)`` int64, the steps each stream has taken.
    """

    queries: Tensor
    keys: Tensor
    values: Tensor
    count: Tensor


# --- shared tensor helpers ------------------------------------------------------------------


def split_heads(t: Tensor, heads: int) -> Tensor:
    """``(..., L, E) -> (..., H, L, d)``."""
    return t.unflatten(-1, (heads, -1)).transpose(-3, -2)


def merge_heads(t: Tensor) -> Tensor:
    """``(..., H, L, d) -> (..., L, E)``."""
    return t.transpose(-3, -2).flatten(-2)


def attend(q: Tensor, k_t: Tensor, v: Tensor, scale: float) -> Tensor:
    """``softmax(q k^T * scale) v`` for ``q: (..., Lq, d)``, ``k_t: (..., d, N)``, ``v: (..., N, d)``.

    The softmax subtracts the row maximum, so large scores cannot overflow. The scale is applied
    to ``q`` first, as torch.nn.MultiheadAttention does.
    """
    weights = torch.softmax(torch.matmul(q * scale, k_t), dim=-1)
    return torch.matmul(weights, v)


def windows(t: Tensor, size: int) -> Tensor:
    """Sliding windows over the token axis: ``(..., L, d) -> (..., L - size + 1, d, size)`` (a view)."""
    return t.unfold(-2, size, 1)


@dataclasses.dataclass(frozen=True, eq=False)
class _MultiheadAttention(Layer):
    """Projection, validation and state plumbing shared by the two attention layers.

    Internally tokens are kept last-axis-features, ``(*B, L, E)``; the public ``step``,
    ``steps`` and ``forward`` convert to and from cofunc's channel-first layout.
    """

    embed_dim: int
    num_heads: int
    sequence_len: int
    bias: bool = True
    kdim: Optional[int] = None
    vdim: Optional[int] = None

    def __post_init__(self):
        for name in ("embed_dim", "num_heads", "sequence_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{self.label}: `{name}` must be a positive int, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigurationError(
                f"{self.label}: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        object.__setattr__(self, "kdim", self.embed_dim if self.kdim is None else self.kdim)
        object.__setattr__(self, "vdim", self.embed_dim if self.vdim is None else self.vdim)
        for name in ("kdim", "vdim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{self.label}: `{name}` must be a positive int, got {value!r}")

    # --- static metadata ------------------------------------------------------------------------
    @property
    def receptive_field(self) -> int:
        return self.sequence_len

    @property
    def step_rank(self) -> int:
        return 1

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def scale(self) -> float:
        return math.sqrt(1.0 / float(self.head_dim))  # torch.nn.MultiheadAttention's expression

    @property
    def packed(self) -> bool:
        """Whether the projections are one packed ``in_proj_weight`` (torch's ``_qkv_same_embed_dim``)."""
        return self.kdim == self.embed_dim and self.vdim == self.embed_dim

    @property
    def n_queries(self) -> int:
        """How many projected queries the state keeps."""
        raise NotImplementedError

    # --- params ----------------------------------------------------------------------------------
    def init_params(self, *, device=None, dtype=None):
        module = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, bias=self.bias, kdim=self.kdim, vdim=self.vdim, device=device, dtype=dtype
        )
        return detach_params(module_params(module))

    def params_from(self, module: nn.Module):
        if isinstance(module, nn.MultiheadAttention):
            if module.bias_k is not None or module.add_zero_attn:
                raise ConfigurationError(f"{self.label}: add_bias_kv and add_zero_attn are not supported")
            if (module.embed_dim, module.num_heads, module.kdim, module.vdim) != (
                self.embed_dim, self.num_heads, self.kdim, self.vdim
            ) or (module.in_proj_bias is not None) != self.bias:
                raise ConfigurationError(
                    f"{self.label}: the module has embed_dim={module.embed_dim}, num_heads={module.num_heads}, "
                    f"kdim={module.kdim}, vdim={module.vdim}, bias={module.in_proj_bias is not None}; this layer has "
                    f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kdim={self.kdim}, vdim={self.vdim}, "
                    f"bias={self.bias}"
                )
        return module_params(module)

    def reference(self, params) -> Tensor:
        return params["out_proj"]["weight"]

    # --- projections (tokens last-axis-features) ----------------------------------------------------
    def _weights(self, params, which: int) -> Tuple[Tensor, Optional[Tensor]]:
        """Weight and bias of projection ``which`` (0: query, 1: key, 2: value)."""
        e = self.embed_dim
        bias = params.get("in_proj_bias")
        b = None if bias is None else bias[which * e:(which + 1) * e]
        if self.packed:
            return params["in_proj_weight"][which * e:(which + 1) * e], b
        return params[("q_proj_weight", "k_proj_weight", "v_proj_weight")[which]], b

    def project(self, params, x: Tensor, which: int) -> Tensor:
        """One of the input projections of tokens ``(..., C) -> (..., E)``."""
        w, b = self._weights(params, which)
        return F.linear(x, w, b)

    def project_qkv(self, params, q_in: Tensor, k_in: Tensor, v_in: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Projected queries, keys and values ``(..., E)``; one packed matmul for self-attention."""
        if self.packed and q_in is k_in and k_in is v_in:
            qkv = F.linear(q_in, params["in_proj_weight"], params.get("in_proj_bias"))
            return qkv.unflatten(-1, (3, self.embed_dim)).unbind(-2)
        return (self.project(params, q_in, 0),) + self.project_kv(params, k_in, v_in)

    def project_kv(self, params, k_in: Tensor, v_in: Tensor) -> Tuple[Tensor, Tensor]:
        """Projected keys and values ``(..., E)``; one matmul for self-attention."""
        if self.packed and k_in is v_in:
            e = self.embed_dim
            bias = params.get("in_proj_bias")
            kv = F.linear(k_in, params["in_proj_weight"][e:], None if bias is None else bias[e:])
            return kv.unflatten(-1, (2, e)).unbind(-2)
        return self.project(params, k_in, 1), self.project(params, v_in, 2)

    def out_proj(self, params, o: Tensor) -> Tensor:
        p = params["out_proj"]
        return F.linear(o, p["weight"], p.get("bias"))

    # --- inputs ------------------------------------------------------------------------------------
    def split_input(self, x: AttentionInput, clip: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """``x`` or ``(query, key, value)`` as three tensors, checked against the layer's sizes."""
        what = "clip" if clip else "step input"
        if isinstance(x, (tuple, list)):
            if len(x) != 3:
                raise InputShapeError(f"{self.label}: expected a tensor or a (query, key, value) tuple, got {len(x)} values")
            q, k, v = x
        elif isinstance(x, Tensor):
            if not self.packed:
                raise InputShapeError(
                    f"{self.label}: with kdim={self.kdim}, vdim={self.vdim} the {what} must be a (query, key, value) tuple"
                )
            q = k = v = x
        else:
            raise InputShapeError(f"{self.label}: expected a tensor {what}, got {type(x).__name__}")
        rank = 2 if clip else 1
        lead = None
        for name, t, size in (("query", q, self.embed_dim), ("key", k, self.kdim), ("value", v, self.vdim)):
            if not isinstance(t, Tensor):
                raise InputShapeError(f"{self.label}: the {name} {what} is a {type(t).__name__}, not a tensor")
            if t.dim() < rank or t.shape[-rank] != size:
                shape = "(*B, C, T)" if clip else "(*B, C)"
                hint = ""
                if not clip and t.dim() >= 2 and t.shape[-2] == size:
                    hint = " (is there a time axis? `step` takes one token, `steps` takes clips)"
                raise InputShapeError(
                    f"{self.label}: expected a {name} {what} of shape {shape} with C={size}, got shape "
                    f"{tuple(t.shape)}{hint}"
                )
            t_lead = tuple(t.shape[: t.dim() - rank])
            if lead is not None and t_lead != lead:
                raise InputShapeError(f"{self.label}: query, key and value have different stream dims")
            lead = t_lead
        if clip and not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
            raise InputShapeError(
                f"{self.label}: query, key and value clips have different lengths "
                f"{q.shape[-1]}, {k.shape[-1]}, {v.shape[-1]}"
            )
        return q, k, v

    def _check(self, params, state: Optional[AttentionState], q: Tensor, clip: bool) -> None:
        what = "clip" if clip else "step input"
        check_dtype_device(self, q, self.reference(params), what)
        if state is NO_STATE:  # the clip forward keeps no state
            return
        self.check_state_type(state, AttentionState)
        self.check_state_batch(state.count, q, what)
        batch = tuple(state.count.shape)
        want = {
            "queries": batch + (self.num_heads, self.n_queries, self.head_dim),
            "keys": batch + (self.num_heads, self.sequence_len - 1, self.head_dim),
            "values": batch + (self.num_heads, self.sequence_len - 1, self.head_dim),
        }
        for name, shape in want.items():
            got = getattr(state, name)
            if tuple(got.shape) != shape:
                raise StateError(
                    f"{self.label}: expected state {name} of shape {shape}, got {tuple(got.shape)}; the state "
                    f"comes from another layer"
                )
            if got.dtype != q.dtype:
                raise DTypeDeviceError(f"{self.label}: the state holds {got.dtype}, but the {what} has dtype {q.dtype}")

    # --- state ---------------------------------------------------------------------------------------
    def init_state(self, params, input_shape, *, device=None, dtype=None) -> AttentionState:
        shape = input_shape[0] if isinstance(input_shape, list) else input_shape
        batch = self.batch_shape(shape)
        if params:
            ref = self.reference(params)
            device = ref.device if device is None else device
            dtype = ref.dtype if dtype is None else dtype
        h, d, n = self.num_heads, self.head_dim, self.sequence_len
        return AttentionState(
            torch.zeros(batch + (h, self.n_queries, d), device=device, dtype=dtype),
            torch.zeros(batch + (h, n - 1, d), device=device, dtype=dtype),
            torch.zeros(batch + (h, n - 1, d), device=device, dtype=dtype),
            torch.zeros(batch, dtype=torch.int64, device=device),
        )

    def clock(self, state):
        return state.count

    # --- token-level core, shared with the transformer layers -------------------------------------
    def _step_project(self, params, q_in: Tensor, k_in: Tensor, v_in: Tensor):
        """The new token's projected query, key and value, one per head: ``(*B, H, 1, d)`` each."""
        q, k, v = self.project_qkv(params, q_in, k_in, v_in)
        h = self.num_heads
        return tuple(t.unflatten(-1, (h, -1)).unsqueeze(-2) for t in (q, k, v))

    def _chunk_project(self, params, q_in: Tensor, k_in: Tensor, v_in: Tensor):
        """Projected tokens of a chunk ``(*B, T, C)``, one per head: ``(*B, H, T, d)`` each."""
        q, k, v = self.project_qkv(params, q_in, k_in, v_in)
        return tuple(split_heads(t, self.num_heads) for t in (q, k, v))


    def _first(self, clock: int) -> int:
        """Index in a chunk of the first step that emits, from a shared clock."""
        return max(0, self.sequence_len - 1 - clock)

    def _advance(self, params, state: AttentionState, q_in, k_in, v_in, clock: int):
        """Project a chunk ``(*B, T, C)`` and shift it into the registers: the registers with the
        chunk appended (queries, keys, values), the first emitting chunk position, the number
        of outputs and the next state."""
        t = q_in.shape[-2]
        q, k, v = self._chunk_project(params, q_in, k_in, v_in)
        queries, next_queries = push_frames(state.queries, q, -2)
        keys, next_keys = push_frames(state.keys, k, -2)
        values, next_values = push_frames(state.values, v, -2)
        first = self._first(clock)
        next_state = AttentionState(next_queries, next_keys, next_values, state.count + t)
        return queries, keys, values, first, max(t - first, 0), next_state

    def _tokens(self, xs: Tensor) -> Tensor:
        return xs.transpose(-1, -2)




@dataclasses.dataclass(frozen=True, eq=False)
class SingleOutputMHA(_MultiheadAttention):
    """Continual attention from one query of the window to all N tokens of the window.

    A step takes one token ``(*B, E)`` (or a ``(query, key, value)`` tuple of steps with their
    own sizes) and returns ``(*B, E)``: the attention output of the token at ``query_index`` of
    the window of the last N tokens (``-1``, the newest, by default). It projects only the new
    token and attends over the window: O(N E) after the projections.
    """

    query_index: int = -1

    def __post_init__(self):
        super().__post_init__()
        n = self.sequence_len
        if not isinstance(self.query_index, int) or not -n <= self.query_index < n:
            raise ConfigurationError(
                f"{self.label}: query_index must be in [-{n}, {n - 1}] for sequence_len {n}, got {self.query_index!r}"
            )

    @property
    def label(self) -> str:
        return f"single_output_attention(E={self.embed_dim}, heads={self.num_heads}, N={self.sequence_len}, q={self.query_index})"

    @property
    def query_position(self) -> int:
        """The query's position in the window, ``0 .. N - 1``."""
        return self.query_index % self.sequence_len

    @property
    def n_queries(self) -> int:
        # The query of the window ending now was projected this many steps ago.
        return self.sequence_len - 1 - self.query_position

    @property
    def out_rank(self) -> int:
        return 1

    def step_output_shape(self, input_shape):
        shape = input_shape[0] if isinstance(input_shape, list) else input_shape
        return tuple(shape[:-1]) + (self.embed_dim,)

    # --- token-level core ----------------------------------------------------------------------------
    def step_tokens(self, params, state: AttentionState, q_in: Tensor, k_in: Tensor, v_in: Tensor):
        """One step on tokens ``(*B, C)``: the query's attention output ``(*B, E)`` and the next
        state."""
        q, k, v = self._step_project(params, q_in, k_in, v_in)
        keys, next_keys = push_frames(state.keys, k, -2)
        values, next_values = push_frames(state.values, v, -2)
        if self.n_queries:
            queries, next_queries = push_frames(state.queries, q, -2)
            q = queries.narrow(-2, 0, 1)
        else:
            next_queries = state.queries
        o = attend(q, keys.transpose(-1, -2), values, self.scale).flatten(-3)  # (*B, H, 1, d) -> (*B, E)
        return self.out_proj(params, o), AttentionState(next_queries, next_keys, next_values, state.count + 1)

    def windows_tokens(self, params, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention over every window of projected tokens ``(*B, H, L, d)``: keys and values hold
        ``W + N - 1`` tokens, ``q`` the ``W`` selected queries; returns ``(*B, W, E)``."""
        n = self.sequence_len
        k_t = windows(k, n)  # (*B, H, W, d, N)
        vw = windows(v, n).transpose(-1, -2)  # (*B, H, W, N, d)
        o = attend(q.unsqueeze(-2), k_t, vw, self.scale).squeeze(-2)  # (*B, H, W, d)
        return self.out_proj(params, merge_heads(o))

    def steps_tokens(self, params, state: AttentionState, q_in, k_in, v_in, clock: int):
        """A chunk of tokens ``(*B, T, C)``: the emitted outputs ``(*B, T', E)`` and the next state."""
        # The query of the window ending at chunk token i sits at index i of `queries`.
        queries, keys, values, first, n_out, next_state = self._advance(params, state, q_in, k_in, v_in, clock)
        if n_out == 0:
            return q_in.new_zeros(q_in.shape[:-2] + (0, self.embed_dim)), next_state
        length = n_out + self.sequence_len - 1
        ys = self.windows_tokens(
            params, queries.narrow(-2, first, n_out), keys.narrow(-2, first, length), values.narrow(-2, first, length)
        )
        return ys, next_state

    def forward_tokens(self, params, q_in: Tensor, k_in: Tensor, v_in: Tensor) -> Tensor:
        """Every window of a clip of tokens ``(*B, T, C)``: ``(*B, T - N + 1, E)``."""
        n_out = q_in.shape[-2] - self.sequence_len + 1
        if n_out <= 0:
            return q_in.new_zeros(q_in.shape[:-2] + (0, self.embed_dim))
        q, k, v = self._chunk_project(params, q_in.narrow(-2, self.query_position, n_out), k_in, v_in)
        return self.windows_tokens(params, q, k, v)

    # --- the Layer interface (channel first) ------------------------------------------------------
    def step_unmasked(self, params, state, x):
        """One token ``(*B, E)`` (or a (query, key, value) tuple) -> ``(*B, E)``."""
        q_in, k_in, v_in = self.split_input(x, clip=False)
        self._check(params, state, q_in, clip=False)
        return self.step_tokens(params, state, q_in, k_in, v_in)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        q_in, k_in, v_in = self.split_input(xs, clip=True)
        self._check(params, state, q_in, clip=True)
        ys, state = self.steps_tokens(params, state, *map(self._tokens, (q_in, k_in, v_in)), clock)
        return ys.transpose(-1, -2), state

    def forward(self, params, xs):
        """A clip ``(*B, E, T)`` -> ``(*B, E, T - N + 1)``: the output of each window of N tokens."""
        q_in, k_in, v_in = self.split_input(xs, clip=True)
        self._check(params, NO_STATE, q_in, clip=True)
        return self.forward_tokens(params, *map(self._tokens, (q_in, k_in, v_in))).transpose(-1, -2)


@dataclasses.dataclass(frozen=True, eq=False)
class RetroactiveMHA(_MultiheadAttention):
    """Continual attention that outputs the updated attention outputs of all N window tokens.

    A step takes one token ``(*B, E)`` and returns ``(*B, E, N)``: torch.nn.MultiheadAttention's
    output for the window of the last N tokens (oldest first), transposed to channel first.
    ``softmax(Q K^T / sqrt(d)) V`` is computed exactly over the kept window (projecting only the
    new token), with a max-subtracting softmax: finite and accurate for inputs of any magnitude.
    """

    @property
    def label(self) -> str:
        return f"retroactive_attention(E={self.embed_dim}, heads={self.num_heads}, N={self.sequence_len})"

    @property
    def n_queries(self) -> int:
        return self.sequence_len - 1

    @property
    def out_rank(self) -> int:
        return 2

    def step_output_shape(self, input_shape):
        shape = input_shape[0] if isinstance(input_shape, list) else input_shape
        return tuple(shape[:-1]) + (self.embed_dim, self.sequence_len)

    # --- token-level core ----------------------------------------------------------------------------
    def step_tokens(self, params, state: AttentionState, q_in: Tensor, k_in: Tensor, v_in: Tensor):
        """One step on tokens ``(*B, C)``: the attention outputs of the window ``(*B, N, E)`` and
        the next state."""
        q, k, v = self._step_project(params, q_in, k_in, v_in)
        queries, next_queries = push_frames(state.queries, q, -2)
        keys, next_keys = push_frames(state.keys, k, -2)
        values, next_values = push_frames(state.values, v, -2)
        o = attend(queries, keys.transpose(-1, -2), values, self.scale)  # (*B, H, N, d)
        next_state = AttentionState(next_queries, next_keys, next_values, state.count + 1)
        return self.out_proj(params, merge_heads(o)), next_state

    def windows_tokens(self, params, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention within every window of projected tokens ``(*B, H, W + N - 1, d)``:
        ``(*B, W, N, E)``."""
        n = self.sequence_len
        qw = windows(q, n).transpose(-1, -2)  # (*B, H, W, N, d)
        k_t = windows(k, n)  # (*B, H, W, d, N)
        vw = windows(v, n).transpose(-1, -2)
        o = attend(qw, k_t, vw, self.scale)  # (*B, H, W, N, d)
        return self.out_proj(params, o.movedim(-4, -2).flatten(-2))  # (*B, W, N, E)

    def steps_tokens(self, params, state: AttentionState, q_in, k_in, v_in, clock: int):
        """A chunk of tokens ``(*B, T, C)``: the emitted outputs ``(*B, T', N, E)`` and the next state."""
        queries, keys, values, first, n_out, next_state = self._advance(params, state, q_in, k_in, v_in, clock)
        if n_out == 0:
            return q_in.new_zeros(q_in.shape[:-2] + (0, self.sequence_len, self.embed_dim)), next_state
        length = n_out + self.sequence_len - 1
        sel = [s.narrow(-2, first, length) for s in (queries, keys, values)]
        return self.windows_tokens(params, *sel), next_state

    def forward_tokens(self, params, q_in: Tensor, k_in: Tensor, v_in: Tensor) -> Tensor:
        """Every window of a clip of tokens ``(*B, T, C)``: ``(*B, T - N + 1, N, E)``."""
        if q_in.shape[-2] < self.sequence_len:
            return q_in.new_zeros(q_in.shape[:-2] + (0, self.sequence_len, self.embed_dim))
        return self.windows_tokens(params, *self._chunk_project(params, q_in, k_in, v_in))

    # --- the Layer interface (channel first) ------------------------------------------------------
    def step_unmasked(self, params, state, x):
        """One token ``(*B, E)`` (or a (query, key, value) tuple) -> ``(*B, E, N)``."""
        q_in, k_in, v_in = self.split_input(x, clip=False)
        self._check(params, state, q_in, clip=False)
        ys, state = self.step_tokens(params, state, q_in, k_in, v_in)
        return ys.transpose(-1, -2), state

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        """A chunk ``(*B, E, T)`` -> ``(*B, E, T', N)``, one window per emitting step."""
        q_in, k_in, v_in = self.split_input(xs, clip=True)
        self._check(params, state, q_in, clip=True)
        ys, state = self.steps_tokens(params, state, *map(self._tokens, (q_in, k_in, v_in)), clock)
        return ys.movedim(-1, -3), state

    def forward(self, params, xs):
        """A clip ``(*B, E, T)`` -> ``(*B, E, T - N + 1, N)``: the outputs of every window of N tokens."""
        q_in, k_in, v_in = self.split_input(xs, clip=True)
        self._check(params, NO_STATE, q_in, clip=True)
        return self.forward_tokens(params, *map(self._tokens, (q_in, k_in, v_in))).movedim(-1, -3)


def single_output_attention(
    embed_dim: int,
    num_heads: int,
    sequence_len: int,
    query_index: int = -1,
    bias: bool = True,
    kdim: Optional[int] = None,
    vdim: Optional[int] = None,
) -> SingleOutputMHA:
    """Continual single-output multi-head attention over the last ``sequence_len`` tokens.

    Steps ``(*B, E) -> (*B, E)``; the first output comes at the ``sequence_len``-th step. The
    output equals ``nn.MultiheadAttention(batch_first=True)(w, w, w)[0][:, query_index]`` for the
    window ``w`` of the last ``sequence_len`` tokens.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.single_output_attention(8, 2, sequence_len=4)
        >>> params = layer.init_params()
        >>> state = layer.init_state(params, (1, 8))
        >>> for t in range(4):
        ...     y, state = layer.step(params, state, torch.randn(1, 8))
        >>> y.shape, bool(layer.valid(state)), layer.delay
        (torch.Size([1, 8]), True, 3)
    """
    return SingleOutputMHA(embed_dim, num_heads, sequence_len, bias, kdim, vdim, query_index)


def retroactive_attention(
    embed_dim: int,
    num_heads: int,
    sequence_len: int,
    bias: bool = True,
    kdim: Optional[int] = None,
    vdim: Optional[int] = None,
) -> RetroactiveMHA:
    """Continual retroactive multi-head attention: each step updates all ``sequence_len`` outputs.

    Steps ``(*B, E) -> (*B, E, N)``: ``nn.MultiheadAttention(batch_first=True)(w, w, w)[0]`` for
    the window ``w`` of the last N tokens, transposed to channel first.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.retroactive_attention(8, 2, sequence_len=4)
        >>> params = layer.init_params()
        >>> ys, state = layer.steps(params, layer.init_state(params, (1, 8)), torch.randn(1, 8, 6))
        >>> ys.shape  # (B, E, emitted steps, N)
        torch.Size([1, 8, 3, 4])
    """
    return RetroactiveMHA(embed_dim, num_heads, sequence_len, bias, kdim, vdim)


def full_attention(layer: _MultiheadAttention, params, q_in: Tensor, kv_in: Tensor) -> Tensor:
    """Regular (stateless) multi-head self-attention of queries ``(..., Lq, E)`` over the tokens
    ``kv_in: (..., N, E)`` with ``layer``'s params: ``(..., Lq, E)``. ``q_in is kv_in`` projects
    all three with one matmul."""
    if q_in is kv_in:
        q, k, v = layer.project_qkv(params, q_in, q_in, q_in)
    else:
        q = layer.project(params, q_in, 0)
        k, v = layer.project_kv(params, kv_in, kv_in)
    h = layer.num_heads
    q, k, v = (split_heads(t, h) for t in (q, k, v))
    o = attend(q, k.transpose(-1, -2), v, layer.scale)
    return layer.out_proj(params, merge_heads(o))


def single_query_attention(layer: _MultiheadAttention, params, q_in: Tensor, kv_in: Tensor) -> Tensor:
    """Multi-head attention of ONE query token ``q_in: (..., E)`` over the tokens ``kv_in: (..., N,
    C)``, without projecting the N keys and values: ``(..., E)``.

    Per head, ``q . (W_k x_j + b_k) = (W_k^T q) . x_j + q . b_k`` and, as the weights sum to 1,
    ``sum_j a_j (W_v x_j + b_v) = W_v (sum_j a_j x_j) + b_v``. So the cost is ``E C + 2 H N C +
    E C`` multiply-adds instead of the ``2 N E C`` of projecting the window: exact algebra,
    equal to `full_attention` up to float rounding. Used where the window's tokens change every
    step (after a retroactive layer), so projected keys and values cannot be kept.
    """
    h, d = layer.num_heads, layer.head_dim
    q = layer.project(params, q_in, 0).unflatten(-1, (h, d))  # (..., H, d)
    w_k, b_k = layer._weights(params, 1)  # (E, C), (E,)
    w_v, b_v = layer._weights(params, 2)
    u = torch.einsum("...hd,hdc->...hc", q, w_k.unflatten(0, (h, d)))  # (..., H, C): W_k^T q per head
    scores = torch.matmul(kv_in, u.transpose(-1, -2))  # (..., N, H)
    if b_k is not None:  # constant over the window: no effect on the softmax but for rounding
        scores = scores + (q * b_k.unflatten(0, (h, d))).sum(-1).unsqueeze(-2)
    weights = torch.softmax(scores * layer.scale, dim=-2)  # over the N tokens
    mixed = torch.matmul(weights.transpose(-1, -2), kv_in)  # (..., H, C): sum_j a_j x_j per head
    o = torch.einsum("...hc,hdc->...hd", mixed, w_v.unflatten(0, (h, d)))  # (..., H, d)
    if b_v is not None:
        o = o + b_v.unflatten(0, (h, d))
    return layer.out_proj(params, o.flatten(-2))


__all__: Sequence[str] = (
    "AttentionState",
    "RetroactiveMHA",
    "SingleOutputMHA",
    "full_attention",
    "retroactive_attention",
    "single_output_attention",
    "single_query_attention",
)
