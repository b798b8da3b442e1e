"""``RetroactiveMultiheadAttention``: every window token's updated attention output per step."""

from __future__ import annotations

from ..._attention import RetroactiveMHA
from .mha_base import _ContinualMultiheadAttention

__all__ = ["RetroactiveMultiheadAttention"]


class RetroactiveMultiheadAttention(_ContinualMultiheadAttention):
    """Continual attention updating the outputs of all window tokens per step (co's signature).

    Steps ``(B, E) -> (B, E, N)`` natively: ``nn.MultiheadAttention`` on the window of the last
    ``sequence_len`` tokens, every token's output.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> mha = cn.RetroactiveMultiheadAttention(8, 2, sequence_len=4, embed_dim_second=True,
        ...                                        forward_returns_attn_mask=False)
        >>> x = torch.randn(1, 8, 4)
        >>> mha(x).shape  # (B, E, windows, N)
        torch.Size([1, 8, 1, 4])
        >>> mha.forward_steps(x).shape
        torch.Size([1, 8, 1, 4])
    """

    _retroactive = True

    def _build_layer(self):
        return RetroactiveMHA(self.embed_dim, self.num_heads, self.sequence_len, self.in_proj_bias is not None,
                              self.kdim, self.vdim)
