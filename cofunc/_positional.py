"""Recycling positional encoding (Hedegaard et al., "Continual Transformers").

A stream has no first token to count from, so positions are recycled: step ``t`` of a stream
adds the embedding ``pe[t mod num_embeds]``. The encoding is learned (``nn.Embedding``, param
``pe.weight``) or the fixed cyclic positional encoding of Ma et al. 2021 as co computes it
(buffer ``pe.pattern``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import ConfigurationError
from ._layer import Layer, NO_STATE, check_dtype_device


class PositionState(NamedTuple):
    """position: ``(*B,)`` int64, the steps each stream has taken (its next position, before the
    ``mod num_embeds``)."""

    position: Tensor


def cyclic_positional_encoding(num_embeds: int, embed_dim: int, mean_pooling: bool = True) -> Tensor:
    """The fixed "cyclic positional encoding" of Ma et al. 2021 (arXiv:2110.02544), exactly as co
    1.2.4 computes it (a port of ``continual.positional_encoding.CyclicPositionalEncoding``, in
    numpy float64, then float32): ``(num_embeds, embed_dim)``, mean-pooled over +-2 neighbours
    and centred."""
    try:
        import numpy as np
    except ImportError as error:  # pragma: no cover (numpy ships with every torch install we know)
        raise ConfigurationError("the fixed cyclic positional encoding needs numpy (pip install numpy)") from error

    skip_base = np.power(num_embeds, 1 / (embed_dim // 2))
    skip_set = np.linspace(skip_base, num_embeds, embed_dim // 2, dtype="int")
    x = np.zeros((num_embeds, embed_dim))

    def basesin(x, omiga, fai=0):
        T = 2 * np.pi / omiga
        return np.sin(omiga * np.abs(np.mod(x, 2 * T) - T) + fai)

    def basecos(x, omiga, fai=0):
        T = 2 * np.pi / omiga
        return np.cos(omiga * np.abs(np.mod(x, 2 * T) - T) + fai)

    for i in range(embed_dim):
        # Appendix B of the paper.
        skip = skip_set[i // 3 * 3 + 1] if (i // 3 * 3 + 1) < (embed_dim // 2) else skip_set[-1]
        # z(i) of the paper, through a longer pattern.
        if num_embeds > skip:
            longer_pattern = np.arange(0, np.ceil(num_embeds / skip) * skip + 0.01, 0.01)
        else:
            longer_pattern = np.arange(0, num_embeds + 0.01, 0.01)
            skip = num_embeds
        num = len(longer_pattern) - 1
        omiga = 2 * np.pi / skip
        fai = 0 if i <= (embed_dim // 2) else 2 * np.pi * ((-i + (embed_dim // 2)) / (embed_dim // 2))
        base = basecos if i % 2 == 1 else basesin  # Eq. (4)
        x[:, i] = base(longer_pattern, omiga, fai)[np.linspace(0, num, num_embeds + 1, dtype="int")][:num_embeds]

    pattern = torch.from_numpy(x).type(torch.FloatTensor)
    pattern_sum = torch.zeros_like(pattern)
    arange = torch.arange(num_embeds)
    pooling = [-2, -1, 0, 1, 2] if mean_pooling else [0]
    for i in pooling:
        index = (arange + i + num_embeds) % num_embeds
        pattern_sum += pattern.gather(0, index.view(-1, 1).expand_as(pattern))
    return 1.0 / len(pooling) * pattern_sum - pattern.mean(0)


@dataclasses.dataclass(frozen=True, eq=False)
class RecyclingPositionalEncoding(Layer):
    """Adds ``pe[position mod num_embeds]`` to each token: steps ``(*B, E)``, clips ``(*B, E, T)``.

    ``forward`` is stateless: a clip's tokens take positions ``0 .. T - 1`` (co's ``forward``
    advanced its state on every call). Steps take the stream's position from the state, one per
    step, per stream.
    """

    embed_dim: int
    num_embeds: int
    learned: bool = True

    def __post_init__(self):
        for name in ("embed_dim", "num_embeds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{self.label}: `{name}` must be a positive int, got {value!r}")

    @property
    def label(self) -> str:
        kind = "learned" if self.learned else "cyclic"
        return f"recycling_positional_encoding(E={self.embed_dim}, n={self.num_embeds}, {kind})"

    @property
    def step_rank(self) -> int:
        return 1

    def init_params(self, *, device=None, dtype=None):
        if self.learned:
            weight = nn.Embedding(self.num_embeds, self.embed_dim, device=device, dtype=dtype).weight.detach()
            return {"pe": {"weight": weight}}
        pattern = cyclic_positional_encoding(self.num_embeds, self.embed_dim).to(device=device)
        return {"pe": {"pattern": pattern if dtype is None else pattern.to(dtype)}}

    def table(self, params) -> Tensor:
        """The embeddings ``(num_embeds, E)``."""
        return params["pe"]["weight" if self.learned else "pattern"]

    def init_state(self, params, input_shape, *, device=None, dtype=None):
        batch = self.batch_shape(input_shape)
        if params and device is None:
            device = self.table(params).device
        return PositionState(torch.zeros(batch, dtype=torch.int64, device=device))

    def clock(self, state):
        return state.position

    def _check(self, params, state, x, clip: bool):
        what = "clip" if clip else "step input"
        if clip:
            self.check_clip_input(x, self.embed_dim)
        else:
            self.check_step_input(x, self.embed_dim)
        check_dtype_device(self, x, self.table(params), what)
        if state is not NO_STATE:  # the clip forward keeps no state
            self.check_state_type(state, PositionState)
            self.check_state_batch(state.position, x, what)

    def step_unmasked(self, params, state, x):
        """A token ``(*B, E)`` plus its stream's positional embedding; the position advances."""
        self._check(params, state, x, clip=False)
        pe = F.embedding(torch.remainder(state.position, self.num_embeds), self.table(params))  # (*B, E)
        return x + pe, PositionState(state.position + 1)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        self._check(params, state, xs, clip=True)
        t = xs.shape[-1]
        positions = state.position.unsqueeze(-1) + torch.arange(t, device=xs.device)  # (*B, T), per stream
        pe = F.embedding(torch.remainder(positions, self.num_embeds), self.table(params))  # (*B, T, E)
        return xs + pe.transpose(-1, -2), PositionState(state.position + t)

    def forward(self, params, xs):
        """A clip ``(*B, E, T)`` plus the embeddings of positions ``0 .. T - 1`` (stateless)."""
        self._check(params, NO_STATE, xs, clip=True)
        positions = torch.remainder(torch.arange(xs.shape[-1], device=xs.device), self.num_embeds)
        return xs + F.embedding(positions, self.table(params)).transpose(0, 1)


def recycling_positional_encoding(embed_dim: int, num_embeds: int, learned: bool = True) -> RecyclingPositionalEncoding:
    """A recycling positional encoding: step ``t`` of a stream adds ``pe[t mod num_embeds]``.

    ``learned=True``: an ``nn.Embedding(num_embeds, embed_dim)`` (param ``pe.weight``);
    ``learned=False``: co's fixed cyclic encoding (buffer ``pe.pattern``). Use ``num_embeds``
    larger than the attention window (co's examples use ``2 N - 1``) so that a window never holds
    two tokens with the same position.

    Example:
        >>> import torch, cofunc
        >>> pe = cofunc.recycling_positional_encoding(4, 7)
        >>> params = pe.init_params()
        >>> x = torch.zeros(1, 4, 3)
        >>> ys, state = pe.steps(params, pe.init_state(params, (1, 4)), x)
        >>> torch.equal(ys, pe.forward(params, x)), int(state.position)
        (True, 3)
    """
    return RecyclingPositionalEncoding(embed_dim, num_embeds, learned)
