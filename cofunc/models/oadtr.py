"""OadTR / CoOadTR: online action detection with transformers, regular and continual.

One module is both networks: ``forward`` on a window of ``sequence_len`` (64) feature vectors is
the regular encoder-only OadTR (OadTR-b1 / OadTR-b2: the full encoder over all 64 tokens, the
last token's output classified), and ``forward_step`` runs it continually, one feature vector
per step, with the same weights (CoOadTR-b1 / CoOadTR-b2 of Hedegaard et al., "Continual
Transformers", Table 6). The architecture follows the CoOadTR repository
(``transformer_models/ViT.py``, ``CoVisionTransformer``):

    linear_encoding   Linear(in_features -> 1024) on every feature vector
    position_encoding recycling positional encoding (step t adds pe[t mod num_embeds])
    encoder           1 or 2 post-norm encoder layers: 8 heads, dim_feedforward 1024, GELU,
                      attention without biases (co's ``in_proj_bias=False``, which torch's
                      ``bias=False`` turns into no in- and no out-projection bias)
    pre_head_ln       LayerNorm(1024) of the output token
    mlp_head          Linear(1024 -> num_classes), 22 classes for THUMOS14

What is and is not in it (checked against the OadTR and CoOadTR repositories):

- No class token and no decoder: OadTR proper appends a class token and has a 5-layer decoder
  predicting future frames; CoOadTR's ablations (its README's "no-decoder-no-cls-token" branch,
  the paper's OadTR-b1/-b2 rows) drop both and classify the output of the newest token, which is
  what a continual step can produce.
- Post-norm layers (``norm_first=False``), as CoOadTR's continual encoders; OadTR's own
  ``TransformerModel`` is pre-norm (``norm_first=True`` builds that ordering; its attention keeps
  an output-projection bias, ``attn_bias`` is all or nothing here). Dropout is ignored
  (inference).
- ``num_embeds`` recycled positions (default ``2 * sequence_len - 1`` = 127, CoOadTR's
  ``--num_embeddings 127``), learned (an ``nn.Embedding``) or co's fixed cyclic encoding.
  With ``in_features=3072`` (ActivityNet TSN features) and a learned encoding the parameter
  counts are 9,598,998 (b1) and 15,896,598 (b2), co's README's "9.6 M" and "15.9 M".

Layers: the continual encoder is `cofunc.transformer_encoder`: CoOadTR-b1 a single-output
layer; CoOadTR-b2 a retroactive layer (all 64 tokens updated per step) then a layer that
computes the newest token only, attending from its query over the 64 updated tokens without
projecting their keys and values (`cofunc.single_query_attention`). ``forward`` runs the regular
network on every window of ``sequence_len`` tokens of the clip (the layers of
``nn.TransformerEncoder`` over all tokens, `OadTREncoder`), so `cofunc.profile` reports the
regular OadTR's cost as the clip cost.

Shapes: clips ``(B, in_features, T)`` (features first, cofunc's channel-first layout) ->
scores ``(B, num_classes, T - sequence_len + 1)``, one per window of ``sequence_len`` tokens; a
step ``(B, in_features)`` -> ``(B, num_classes)``, or None for the first ``sequence_len - 1``
steps. Positions in ``forward`` count from the clip's first token, as a stream's steps from a
fresh state: stepping a clip from a fresh state equals ``forward`` on it.

Example::

    net = oadtr(num_layers=1).eval()          # OadTR-b1 / CoOadTR-b1, 9.6 M params
    scores = net(features)                    # (B, 3072, 64) -> (B, 22, 1)
    for t in range(features.shape[2]):
        out = net.forward_step(features[:, :, t])   # None for t < 63, then (B, 22)
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Optional, Tuple

from torch import Tensor, nn

import cofunc.nn as cn
from cofunc import ChannelLayerNorm, ConfigurationError, EncoderLayerConfig, Seq, WindowEncoderLayer, transformer_encoder

POSITIONAL_ENCODINGS = ("learned", "fixed")


# --- the encoder ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class OadTREncoder(Seq):
    """`cofunc.transformer_encoder`'s continual layers (children ``layers``, params keyed like
    ``nn.TransformerEncoder``'s ``state_dict``), whose ``forward`` is the regular encoder.

    Steps ``(*B, E) -> (*B, E)``: the newest token's output for the window of the last
    ``sequence_len`` tokens. ``forward``: clips ``(*B, E, T) -> (*B, E, T - N + 1)``, computed as
    the regular network does: every layer over all N tokens of each window
    (`WindowEncoderLayer` with ``query_index=None``), then the window's last token. The values
    are the steps' (up to float rounding); the cost is the regular network's (N times the
    per-token work of every layer), where `transformer_encoder`'s own ``forward`` computes only
    what the last token needs.

    ``attn_bias=False`` drops the attention's in- and out-projection biases from
    `init_params` (the computation reads whichever biases the params hold).
    """

    config: Optional[EncoderLayerConfig] = None
    num_layers: int = 1
    sequence_len: int = 1
    attn_bias: bool = True

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "_regular", WindowEncoderLayer(self.config, None))

    @property
    def label(self) -> str:
        c = self.config
        return f"oadtr_encoder(layers={self.num_layers}, d={c.d_model}, heads={c.nhead}, N={self.sequence_len})"

    def init_params(self, *, device=None, dtype=None):
        params = super().init_params(device=device, dtype=dtype)
        if not self.attn_bias:
            for layer in params["layers"].values():
                attn = layer["self_attn"]
                attn.pop("in_proj_bias", None)
                attn["out_proj"].pop("bias", None)
        return params

    def forward(self, params, xs: Tensor) -> Tensor:
        """A clip ``(*B, E, T)`` -> ``(*B, E, T - N + 1)``: the regular encoder on every window."""
        n = self.sequence_len
        self.layers[0].check_clip_input(xs, self.config.d_model)
        if xs.shape[-1] < n:
            return xs[..., :0]
        windows = xs.unfold(-1, n, 1)  # (*B, E, W, N), a view
        for i in range(self.num_layers):
            windows = self._regular.forward(params["layers"][str(i)], windows)
        return windows[..., -1]


def oadtr_encoder(config: EncoderLayerConfig, num_layers: int, sequence_len: int, attn_bias: bool = True) -> OadTREncoder:
    """The continual encoder of `transformer_encoder` with the regular network as ``forward``."""
    base = transformer_encoder(config, num_layers, sequence_len=sequence_len)
    return OadTREncoder(base.children, config, num_layers, sequence_len, attn_bias)


class OadTREncoderModule(cn.TransformerEncoder):
    """`OadTREncoder` as a module: an ``nn.TransformerEncoder`` (post-norm or pre-norm, batch
    first, no final norm) whose layers' attention has biases or none (``attn_bias``); its
    ``state_dict`` is the torch module's. ``forward``: clips ``(B, E, T) -> (B, E, T - N + 1)``,
    the regular encoder on every window of N tokens; steps ``(B, E) -> (B, E)``."""

    def __init__(self, config: EncoderLayerConfig, num_layers: int, sequence_len: int, attn_bias: bool = True):
        layer = config.module()
        if not attn_bias:
            # torch's bias=False: no in_proj_bias and no out_proj.bias (co's in_proj_bias=False).
            layer.self_attn = nn.MultiheadAttention(config.d_model, config.nhead, dropout=config.dropout, bias=False,
                                                    batch_first=True)
        super().__init__(layer, num_layers, None, sequence_len)

    @classmethod
    def build_from(cls, module: nn.TransformerEncoder, sequence_len: int) -> "OadTREncoderModule":
        """A copy of ``module`` (its configuration and weights; no final norm)."""
        if not isinstance(module, nn.TransformerEncoder) or module.norm is not None:
            raise ConfigurationError("OadTREncoderModule.build_from: expected an nn.TransformerEncoder without a final norm")
        first = module.layers[0]
        new = cls(EncoderLayerConfig.from_module(first), module.num_layers, sequence_len,
                  first.self_attn.in_proj_bias is not None)
        new = new.to(device=first.linear1.weight.device, dtype=first.linear1.weight.dtype)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def _build_layer(self):
        first = self.layers[0]
        return oadtr_encoder(EncoderLayerConfig.from_module(first), self.num_layers, self.sequence_len,
                             first.self_attn.in_proj_bias is not None)


class LayerNorm(cn.ContinualModule, nn.LayerNorm):
    """``nn.LayerNorm(num_channels)`` over the channel axis of clips ``(B, C, T)`` and steps
    ``(B, C)`` (`cofunc.ChannelLayerNorm`); params ``weight`` and ``bias``."""

    def __init__(self, num_channels: int, eps: float = 1e-5):
        nn.LayerNorm.__init__(self, num_channels, eps)

    def _build_layer(self):
        return ChannelLayerNorm(self.normalized_shape[0], self.eps, step_rank=1)

    def forward(self, input: Tensor) -> Tensor:
        return self.layer.forward(self.params, input)


# --- the network --------------------------------------------------------------------------------


class OadTR(cn.Sequential):
    """OadTR / CoOadTR: children ``linear_encoding``, ``position_encoding``, ``encoder``
    (`OadTREncoderModule`), ``pre_head_ln`` and ``mlp_head``.

    ``forward``: feature clips ``(B, in_features, T)`` -> scores ``(B, num_classes,
    T - sequence_len + 1)`` (the regular OadTR on every window; ``(B, num_classes, 1)`` for one
    window). ``forward_step``: ``(B, in_features)`` -> ``(B, num_classes)``, or None while
    warming up. ``config`` records the builder's arguments.
    """

    def __init__(self, children: "OrderedDict[str, nn.Module]", config: dict):
        super().__init__(children)
        self.config = dict(config)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


def oadtr(num_classes: int = 22, *, in_features: int = 3072, num_layers: int = 1, embed_dim: int = 1024,
          num_heads: int = 8, dim_feedforward: int = 1024, sequence_len: int = 64,
          positional_encoding: str = "learned", num_embeds: Optional[int] = None, activation: str = "gelu",
          norm_first: bool = False, attn_bias: bool = False, layer_norm_eps: float = 1e-5) -> OadTR:
    """OadTR-b{num_layers} / CoOadTR-b{num_layers} (see the module docstring).

    Args:
        num_classes: outputs of ``mlp_head`` (22 for THUMOS14, background included; 31 for
            TVSeries).
        in_features: the dimension of a feature vector: 3072 for the ActivityNet-pretrained TSN
            features (RGB 2048 + flow 1024), 4096 for the Kinetics-pretrained ones.
        num_layers: encoder layers, 1 (b1) or 2 (b2); any depth works (layers 2 .. L - 1 of the
            continual form are regular layers over the window, see `transformer_encoder`).
        embed_dim, num_heads, dim_feedforward: 1024, 8, 1024 (CoOadTR's ``--embedding_dim``,
            ``--num_heads``, ``--hidden_dim``).
        sequence_len: the window, 64 feature vectors (``--enc_layers``).
        positional_encoding: ``"learned"`` (an ``nn.Embedding``) or ``"fixed"`` (co's cyclic
            encoding, a buffer).
        num_embeds: recycled positions (default ``2 * sequence_len - 1``).
        activation: of the feed-forward block, ``"gelu"`` (exact GELU, as ``nn.GELU()``).
        norm_first: pre-norm layers (OadTR's ordering) instead of post-norm (CoOadTR's).
        attn_bias: biases in the attention's projections (CoOadTR has none).
    """
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ConfigurationError(f"oadtr: `num_layers` must be a positive int, got {num_layers!r}")
    if positional_encoding not in POSITIONAL_ENCODINGS:
        raise ConfigurationError(f"oadtr: `positional_encoding` must be one of {POSITIONAL_ENCODINGS}, got {positional_encoding!r}")
    if not isinstance(sequence_len, int) or sequence_len < 1:
        raise ConfigurationError(f"oadtr: `sequence_len` must be a positive int, got {sequence_len!r}")
    num_embeds = 2 * sequence_len - 1 if num_embeds is None else num_embeds
    if num_embeds < sequence_len:
        # Two tokens of one window would share a position.
        raise ConfigurationError(f"oadtr: `num_embeds` ({num_embeds}) must be at least `sequence_len` ({sequence_len})")
    config = EncoderLayerConfig(embed_dim, num_heads, dim_feedforward, 0.0, activation, layer_norm_eps, norm_first)
    net_config = dict(model=f"oadtr_b{num_layers}", num_classes=num_classes, in_features=in_features,
                      num_layers=num_layers, embed_dim=embed_dim, num_heads=num_heads, dim_feedforward=dim_feedforward,
                      sequence_len=sequence_len, positional_encoding=positional_encoding, num_embeds=num_embeds,
                      activation=activation, norm_first=norm_first, attn_bias=attn_bias)
    return OadTR(OrderedDict(
        linear_encoding=cn.Linear(in_features, embed_dim, channel_dim=1),
        position_encoding=cn.RecyclingPositionalEncoding(embed_dim, num_embeds, learned=positional_encoding == "learned"),
        encoder=OadTREncoderModule(config, num_layers, sequence_len, attn_bias),
        pre_head_ln=LayerNorm(embed_dim, layer_norm_eps),
        mlp_head=cn.Linear(embed_dim, num_classes, channel_dim=1),
    ), net_config)


__all__: Tuple[str, ...] = ("LayerNorm", "OadTR", "OadTREncoder", "OadTREncoderModule", "oadtr", "oadtr_encoder")
