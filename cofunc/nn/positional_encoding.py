"""``RecyclingPositionalEncoding``: co's positional encoding for continual transformers."""

from __future__ import annotations

from torch import Tensor, nn

from .._positional import RecyclingPositionalEncoding as RecyclingPositionalEncodingLayer
from .._positional import cyclic_positional_encoding
from .module import ContinualModule

__all__ = ["RecyclingPositionalEncoding"]


class _CyclicPattern(nn.Module):
    """Holds co's fixed cyclic encoding as the buffer ``pattern`` (state_dict key ``pe.pattern``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.register_buffer("pattern", cyclic_positional_encoding(num_embeddings, embedding_dim))

    def forward(self, input: Tensor) -> Tensor:
        return self.pattern[input]


class RecyclingPositionalEncoding(ContinualModule):
    """co's ``RecyclingPositionalEncoding``: adds ``pe[position mod num_embeds]`` to each token.

    Clips ``(B, E, T)``, steps ``(B, E)``. ``forward`` is stateless (positions ``0 .. T - 1``);
    co's ``forward`` advanced the stream position on every call, which
    ``forward_update_index_steps`` controlled: the argument is accepted for co's signature and
    has no effect. Steps advance the position.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> pe = cn.RecyclingPositionalEncoding(4, num_embeds=7)
        >>> x = torch.zeros(1, 4, 3)
        >>> torch.equal(pe(x), pe(x)), torch.equal(pe.forward_steps(x), pe(x))
        (True, True)
    """

    def __init__(self, embed_dim: int, num_embeds: int, learned: bool = True, forward_update_index_steps: int = 1):
        super().__init__()
        self.__dict__["_co_source"] = RecyclingPositionalEncodingLayer(embed_dim, num_embeds, learned)
        self.pe = nn.Embedding(num_embeds, embed_dim) if learned else _CyclicPattern(num_embeds, embed_dim)
        self.forward_update_index_steps = forward_update_index_steps


    def forward(self, input: Tensor) -> Tensor:
        return self.layer.forward(self.params, input)

    def extra_repr(self):
        layer = self.layer
        return f"embed_dim={layer.embed_dim}, num_embeds={layer.num_embeds}, learned={layer.learned}"
