"""``SingleOutputMultiheadAttention``: one query's attention output per step."""

from __future__ import annotations

from ..._attention import SingleOutputMHA
from ..._errors import ConfigurationError
from .mha_base import _ContinualMultiheadAttention

__all__ = ["SingleOutputMultiheadAttention"]


class SingleOutputMultiheadAttention(_ContinualMultiheadAttention):
    """Continual attention computing one query's output per step (co's signature and defaults).

    Steps ``(B, E) -> (B, E)``: ``nn.MultiheadAttention`` on the window of the last
    ``sequence_len`` tokens, for the token at ``query_index`` (the newest by default).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> mha = cn.SingleOutputMultiheadAttention(8, 2, sequence_len=4, embed_dim_second=True)
        >>> x = torch.randn(1, 8, 4)
        >>> out, _ = mha(x)
        >>> mha.forward_steps(x[:, :, :3]) is None
        True
        >>> torch.allclose(mha.forward_step(x[:, :, 3]), out[:, :, 0], atol=1e-6)
        True
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False, kdim=None,
                 vdim=None, batch_first=True, device=None, dtype=None, sequence_len=None, query_index=-1,
                 forward_returns_attn_mask=True, embed_dim_second=False, single_output_forward=True):
        if not single_output_forward:
            raise ConfigurationError(
                "SingleOutputMultiheadAttention: single_output_forward=False (forward over all tokens) is not "
                "supported; forward returns what the steps emit. Use nn.MultiheadAttention for all tokens, or "
                "RetroactiveMultiheadAttention"
            )
        self.query_index = query_index
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first, device,
                         dtype, sequence_len, forward_returns_attn_mask, embed_dim_second)

    def _queries(self, query):  # (B, L, E) -> (B, 1, E): the token at query_index, as co
        return query[:, self.query_index].unsqueeze(1)

    def _build_layer(self):
        return SingleOutputMHA(self.embed_dim, self.num_heads, self.sequence_len, self.in_proj_bias is not None,
                               self.kdim, self.vdim, self.query_index)
