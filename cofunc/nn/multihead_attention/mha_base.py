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

from torch import Tensor, nn


from ..._errors import ConfigurationError
from ..module import ContinualModule


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
        """The output of every window of ``sequence_len`` tokens of the clip (see the module notes)."""
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ConfigurationError(f"{type(self).__name__}: masks are not supported in continual attention")
        y = self._from_native(self.layer.forward(self.params, self._input(query, key, value, True)))
        return (y, None) if self.forward_returns_attn_mask else y

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
