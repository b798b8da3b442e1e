"""``SingleOutputMultiheadAttention`` and ``RetroactiveMultiheadAttention``: co's continual
attention modules, subclasses of ``torch.nn.MultiheadAttention`` (same ``state_dict`` keys).

Layouts follow co's flags. With ``embed_dim_second=True`` (cofunc's native layout, the one to
use inside containers) clips are ``(B, E, T)``; otherwise ``(B, T, E)`` with ``batch_first``,
else ``(T, B, E)``. Steps are ``(B, E)`` in every layout. Outputs keep the input's layout, with
the extra window axis of retroactive outputs before the feature axis (``(B, E, N)`` per step
natively, ``(B, N, E)`` batch first, ``(N, B, E)`` time first).

Differences from co, on purpose:

- ``forward`` on a clip of T tokens returns the output of every window of ``sequence_len``
  consecutive tokens (what the steps emit), not torch's attention over all T tokens; for
  T == sequence_len the two agree. Retroactive outputs of a clip have a window axis:
  ``(B, E, T - N + 1, N)`` natively.
- ``delay`` is the warm-up, ``sequence_len - 1`` (co's single-output ``delay`` was the query's lag).
- Attention weights are not computed: with ``forward_returns_attn_mask=True`` (co's default)
  ``forward`` returns ``(output, None)``.
- Dropout is not applied (the continual computation is inference); masks, ``add_bias_kv`` and
  ``add_zero_attn`` raise.
- The retroactive steps are exact over the window and stay finite for large inputs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


from ..._errors import ConfigurationError
from ..._profile import count_macs
from ..module import ContinualModule


class _torch_layout:
    """``batch_first=True`` while torch's forward runs on batch-first tensors."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.saved = self.module.batch_first
        self.module.batch_first = True

    def __exit__(self, *exc):
        self.module.batch_first = self.saved


class _ContinualMultiheadAttention(ContinualModule, nn.MultiheadAttention):
    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False, kdim=None,
                 vdim=None, batch_first=False, device=None, dtype=None, sequence_len=None, forward_returns_attn_mask=True,
                 embed_dim_second=False):
        name = type(self).__name__
        if add_bias_kv or add_zero_attn:
            raise ConfigurationError(f"{name}: add_bias_kv and add_zero_attn are not supported in continual attention")
        if sequence_len is None:
            raise ConfigurationError(f"{name}: `sequence_len`, the number of tokens attention spans, is required")
        nn.MultiheadAttention.__init__(
            self, embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first, device, dtype
        )
        self.sequence_len = sequence_len
        self.forward_returns_attn_mask = forward_returns_attn_mask
        self.embed_dim_second = embed_dim_second
        self.__dict__["_co_layer"] = self._build_layer()  # validates the configuration now


    # --- layouts ---------------------------------------------------------------------------------
    def _to_native(self, x: Optional[Tensor]) -> Optional[Tensor]:
        """A clip in this module's layout -> ``(B, E, T)``."""
        if x is None or self.embed_dim_second:
            return x
        if self.batch_first:
            return x.transpose(1, 2)
        return x.permute(1, 2, 0)

    def _from_native(self, y: Optional[Tensor]) -> Optional[Tensor]:
        """``(B, E, *rest)`` -> this module's layout (``rest`` holds the time and window axes)."""
        if y is None or self.embed_dim_second:
            return y
        y = y.movedim(1, -1)  # (B, *rest, E)
        return y if self.batch_first else y.movedim(0, -2)  # (*rest, B, E)

    def _input(self, query, key, value, to_native: bool):
        convert = self._to_native if to_native else (lambda t: t)
        if key is None and value is None:
            return convert(query)
        key = query if key is None else key
        value = key if value is None else value
        return tuple(convert(t) for t in (query, key, value))

    # --- the computation -------------------------------------------------------------------------
    def forward(self, query: Tensor, key: Optional[Tensor] = None, value: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None, need_weights: bool = True, attn_mask: Optional[Tensor] = None,
                average_attn_weights: bool = True, is_causal: bool = False):
        """A clip of exactly ``sequence_len`` tokens: torch's attention, as co computes it (the
        single-output module attends from its ``query_index`` token; weights returned). A
        longer clip: the output of every window of ``sequence_len`` tokens (what the steps
        emit; no weights). See the module notes for the layouts."""
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ConfigurationError(f"{type(self).__name__}: masks are not supported in continual attention")
        native = self._input(query, key, value, True)
        first = native[0] if isinstance(native, tuple) else native
        if first.dim() >= 2 and first.shape[-1] == self.sequence_len:
            y, weights = self._torch_forward(native, need_weights, average_attn_weights)
        else:
            y, weights = self.layer.forward(self.params, native), None
        y = self._from_native(y)
        return (y, weights) if self.forward_returns_attn_mask else y

    def _torch_forward(self, native, need_weights: bool, average_attn_weights: bool):
        """torch's computation on one window in the native layout ``(B, E, N)``: the queries
        this module answers (all of them; the single-output module picks one)."""
        query, key, value = native if isinstance(native, tuple) else (native, native, native)
        query = self._queries(query.transpose(1, 2))  # (B, L, E)
        with _torch_layout(self):
            y, weights = nn.MultiheadAttention.forward(
                self, query, key.transpose(1, 2), value.transpose(1, 2), need_weights=need_weights,
                average_attn_weights=average_attn_weights,
            )
        return self._native_output(y), weights

    def flops(self, include_muls: bool = True, include_adds: bool = False, include_exps: bool = False) -> int:
        """Multiply-accumulates of one call in the current call mode for one stream (co's
        method; ptflops counts the attention modules with it): a step in the step modes, one
        window of ``sequence_len`` tokens in ``forward``. Counted by running the computation
        on zeros of the call's shapes (`cofunc.count_macs`), so the figure is what cofunc
        computes. ``include_adds`` adds one addition per multiply-accumulate, ``include_exps``
        one exponential per attention weight (``num_heads * sequence_len`` per query)."""
        if not include_muls:
            raise ConfigurationError(f"{type(self).__name__}.flops: the count is built on the multiplications (include_muls=True)")
        layer, params = self.layer, self.params
        reference = self.out_proj.weight
        e_k = self.kdim if self.kdim is not None else self.embed_dim
        shapes = [(1, self.embed_dim), (1, e_k), (1, self.vdim if self.vdim is not None else self.embed_dim)]
        cross = not self._qkv_same_embed_dim
        with torch.no_grad():
            if self.call_mode == "forward":
                clip = [torch.zeros(s + (self.sequence_len,), dtype=reference.dtype) for s in shapes]
                macs, _ = count_macs(layer.forward, params, tuple(clip) if cross else clip[0])
            else:
                step = [torch.zeros(s, dtype=reference.dtype) for s in shapes]
                value = tuple(step) if cross else step[0]
                state = layer.init_state(params, [s for s in shapes] if cross else shapes[0], dtype=reference.dtype)
                macs, _ = count_macs(layer.step, params, state, value)
        queries = self._queries_per_window() if self.call_mode == "forward" or not self._retroactive else self.sequence_len
        return int(macs) * (2 if include_adds else 1) + (self.num_heads * self.sequence_len * queries if include_exps else 0)

    _retroactive = False

    def _queries_per_window(self) -> int:
        return self.sequence_len if self._retroactive else 1

    def _queries(self, query: Tensor) -> Tensor:
        return query

    def _native_output(self, y: Tensor) -> Tensor:
        """torch's ``(B, L, E)`` output -> this module's native clip output."""
        return y.transpose(1, 2)

    def forward_step(self, query: Tensor, key: Optional[Tensor] = None, value: Optional[Tensor] = None,
                     update_state: bool = True) -> Optional[Tensor]:
        """One token ``(B, E)`` (and its key and value for cross-attention); ``None`` while warming up."""
        y = ContinualModule.forward_step(self, self._input(query, key, value, False), update_state)
        return self._from_native(y)

    def forward_steps(self, query: Tensor, key: Optional[Tensor] = None, value: Optional[Tensor] = None,
                      update_state: bool = True, pad_end: bool = False) -> Optional[Tensor]:
        """A clip of tokens in this module's layout; the emitted outputs, or ``None``."""
        ys = ContinualModule.forward_steps(self, self._input(query, key, value, True), pad_end, update_state)
        return self._from_native(ys)

    @classmethod
    def build_from(cls, module: nn.MultiheadAttention, sequence_len: int, **kwargs) -> "_ContinualMultiheadAttention":
        """A continual copy of ``module`` (same options, a copy of its weights)."""
        options = dict(
            embed_dim=module.embed_dim, num_heads=module.num_heads, dropout=module.dropout,
            bias=module.in_proj_bias is not None, add_bias_kv=module.bias_k is not None,
            add_zero_attn=module.add_zero_attn, kdim=module.kdim, vdim=module.vdim, batch_first=module.batch_first,
            device=module.out_proj.weight.device, dtype=module.out_proj.weight.dtype, sequence_len=sequence_len,
        )
        options.update(kwargs)
        new = cls(**options)
        new.load_state_dict(module.state_dict())
        return new

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, sequence_len={self.sequence_len}"
