"""Continual transformer encoder modules.

(The recycling positional encoding lives in `cofunc.nn.positional_encoding`, as in co.)

``SingleOutputTransformerEncoderLayer`` and ``RetroactiveTransformerEncoderLayer`` subclass
``torch.nn.TransformerEncoderLayer`` and ``TransformerEncoder`` subclasses
``torch.nn.TransformerEncoder``, so their ``state_dict`` keys are torch's and a torch
``state_dict`` loads unchanged. Clips are ``(B, E, T)`` and steps ``(B, E)`` (co's layout for its
transformers). ``forward`` returns what the steps emit, one result per window of
``sequence_len`` tokens: for a clip of exactly ``sequence_len`` tokens, the single-output layer
and the encoder give the last token's output ``(B, E, 1)``, the retroactive layer all tokens
``(B, E, 1, N)``. Dropout is ignored (inference); masks raise. Unlike co, ``"gelu"`` is the
GELU, encoders of any depth work, and ``norm_first`` and ``bias=False`` are supported. The
stored stream state carries no autograd history (step outputs keep theirs).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import ConfigurationError
from .._transformer import EncoderLayerConfig, RetroactiveEncoderLayer, SingleOutputEncoderLayer, transformer_encoder
from .multihead_attention import SingleOutputMultiheadAttention
from .module import ContinualModule


def _no_masks(name: str, *masks) -> None:
    if any(m is not None and m is not False for m in masks):
        raise ConfigurationError(f"{name}: masks are not supported by continual transformers")


class _ContinualEncoderLayer(ContinualModule, nn.TransformerEncoderLayer):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = F.relu, layer_norm_eps: float = 1e-5, device=None,
                 dtype=None, sequence_len: Optional[int] = None, *, norm_first: bool = False, bias: bool = True):
        if sequence_len is None:
            raise ConfigurationError(f"{type(self).__name__}: `sequence_len`, the number of tokens attention spans, is required")
        nn.TransformerEncoderLayer.__init__(
            self, d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first=True,
            norm_first=norm_first, bias=bias, device=device, dtype=dtype,
        )
        self.sequence_len = sequence_len
        self.__dict__["_co_layer"] = self._build_layer()  # validates the configuration now


    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        """A clip ``(B, E, T)``: the layer's output for every window of ``sequence_len`` tokens."""
        _no_masks(type(self).__name__, src_mask, src_key_padding_mask, is_causal)
        return self.layer.forward(self.params, src)

    @classmethod
    def build_from(cls, module: nn.TransformerEncoderLayer, sequence_len: int, **kwargs):
        """A continual copy of ``module`` (same options, a copy of its weights)."""
        config = EncoderLayerConfig.from_module(module)
        options = dict(
            d_model=config.d_model, nhead=config.nhead, dim_feedforward=config.dim_feedforward, dropout=config.dropout,
            activation=config.activation, layer_norm_eps=config.layer_norm_eps, device=module.linear1.weight.device,
            dtype=module.linear1.weight.dtype, sequence_len=sequence_len, norm_first=config.norm_first, bias=config.bias,
        )
        options.update(kwargs)
        new = cls(**options)
        new.load_state_dict(module.state_dict())
        return new

    def extra_repr(self):
        return f"sequence_len={self.sequence_len}"


class SingleOutputTransformerEncoderLayer(_ContinualEncoderLayer):
    """A continual ``nn.TransformerEncoderLayer`` with one output token per step.

    Steps ``(B, E) -> (B, E)``: ``nn.TransformerEncoderLayer`` on the window of the last
    ``sequence_len`` tokens, the token at ``query_index``. Arguments follow co's function of the
    same name (``single_output_forward`` is gone: ``forward`` always returns what steps emit).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> layer = cn.SingleOutputTransformerEncoderLayer(8, 2, 16, dropout=0.0, sequence_len=4)
        >>> x = torch.randn(1, 8, 4)
        >>> layer.forward_steps(x[:, :, :3]) is None
        True
        >>> torch.allclose(layer.forward_step(x[:, :, 3]), layer(x)[:, :, 0], atol=1e-6)
        True
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = F.relu, layer_norm_eps: float = 1e-5, device=None,
                 dtype=None, sequence_len: Optional[int] = None, *, query_index: int = -1, norm_first: bool = False,
                 bias: bool = True):
        self.query_index = query_index
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, device, dtype, sequence_len,
                         norm_first=norm_first, bias=bias)

    def _build_layer(self):
        return SingleOutputEncoderLayer(EncoderLayerConfig.from_module(self), self.sequence_len, self.query_index)


class RetroactiveTransformerEncoderLayer(_ContinualEncoderLayer):
    """A continual ``nn.TransformerEncoderLayer`` whose steps update all window tokens.

    Steps ``(B, E) -> (B, E, N)``: ``nn.TransformerEncoderLayer`` on the window of the last
    ``sequence_len`` tokens, every token (transposed to channel first).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> layer = cn.RetroactiveTransformerEncoderLayer(8, 2, 16, sequence_len=4)
        >>> layer.forward_steps(torch.randn(1, 8, 5)).shape  # (B, E, emitted steps, N)
        torch.Size([1, 8, 2, 4])
    """

    def _build_layer(self):
        return RetroactiveEncoderLayer(EncoderLayerConfig.from_module(self), self.sequence_len)


class TransformerEncoderLayerFactory:
    """co's layer factory: holds the hyper-parameters, and ``factory("retroactive")`` or
    ``factory("single_output")`` builds a layer; `TransformerEncoder` takes it in place of a layer.

    Example:
        >>> import cofunc.nn as cn
        >>> factory = cn.TransformerEncoderLayerFactory(8, 2, 16, sequence_len=4)
        >>> type(factory("retroactive")).__name__
        'RetroactiveTransformerEncoderLayer'
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = F.relu, layer_norm_eps: float = 1e-5, device=None,
                 dtype=None, sequence_len: Optional[int] = None, *, norm_first: bool = False, bias: bool = True):
        if sequence_len is None:
            raise ConfigurationError("TransformerEncoderLayerFactory: `sequence_len` is required")
        self.kwargs = dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout,
                           activation=activation, layer_norm_eps=layer_norm_eps, device=device, dtype=dtype,
                           sequence_len=sequence_len, norm_first=norm_first, bias=bias)
        EncoderLayerConfig(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, norm_first, bias)

    @property
    def sequence_len(self) -> int:
        return self.kwargs["sequence_len"]

    def __call__(self, mha_type: str = "single_output") -> _ContinualEncoderLayer:
        mha_type = getattr(mha_type, "value", mha_type)  # co's MhaType enum
        if mha_type == "retroactive":
            return RetroactiveTransformerEncoderLayer(**self.kwargs)
        if mha_type == "single_output":
            return SingleOutputTransformerEncoderLayer(**self.kwargs)
        raise ConfigurationError(
            f"TransformerEncoderLayerFactory: mha_type must be 'retroactive' or 'single_output', got {mha_type!r} "
            f"(TransformerEncoder builds the other layer kinds itself)"
        )

    def plain_layer(self) -> nn.TransformerEncoderLayer:
        """An ``nn.TransformerEncoderLayer`` with these hyper-parameters (batch first)."""
        kw = dict(self.kwargs)
        kw.pop("sequence_len")
        return nn.TransformerEncoderLayer(batch_first=True, **kw)


class TransformerEncoder(ContinualModule, nn.TransformerEncoder):
    """A continual ``nn.TransformerEncoder`` of any depth; steps ``(B, E) -> (B, E)``.

    Each step returns the last token of ``nn.TransformerEncoder`` on the window of the last
    ``sequence_len`` tokens (see `cofunc.transformer_encoder` for the layers it runs). Built
    from an encoder layer (``nn.TransformerEncoderLayer`` or one of the continual layers) and
    ``sequence_len``, from co's ``TransformerEncoderLayerFactory``, or with
    ``TransformerEncoder.build_from(nn_encoder, sequence_len)``.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> factory = cn.TransformerEncoderLayerFactory(8, 2, 16, dropout=0.0, sequence_len=4)
        >>> enc = cn.TransformerEncoder(factory, num_layers=3)
        >>> x = torch.randn(1, 8, 4)
        >>> torch.allclose(enc.forward_steps(x)[:, :, 0], enc(x)[:, :, 0], atol=1e-5)
        True
    """

    def __init__(self, encoder_layer, num_layers: int, norm: Optional[nn.Module] = None,
                 sequence_len: Optional[int] = None):
        if isinstance(encoder_layer, TransformerEncoderLayerFactory):
            sequence_len = encoder_layer.sequence_len if sequence_len is None else sequence_len
            encoder_layer = encoder_layer.plain_layer()
        elif isinstance(encoder_layer, _ContinualEncoderLayer):
            sequence_len = encoder_layer.sequence_len if sequence_len is None else sequence_len
        elif not isinstance(encoder_layer, nn.TransformerEncoderLayer):
            raise ConfigurationError(
                f"TransformerEncoder: expected an nn.TransformerEncoderLayer or a TransformerEncoderLayerFactory, got "
                f"{type(encoder_layer).__name__}"
            )
        if sequence_len is None:
            raise ConfigurationError("TransformerEncoder: `sequence_len`, the number of tokens attention spans, is required")
        nn.TransformerEncoder.__init__(self, encoder_layer, num_layers, norm, enable_nested_tensor=False)
        self.sequence_len = sequence_len
        self.__dict__["_co_layer"] = self._build_layer()  # validates the configuration now

    def _build_layer(self):
        return transformer_encoder(EncoderLayerConfig.from_module(self.layers[0]), self.num_layers, self.norm,
                                   self.sequence_len)


    def forward(self, src: Tensor, mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None) -> Tensor:
        """A clip ``(B, E, T)`` -> ``(B, E, T - N + 1)``: the last token's output for every window."""
        _no_masks("TransformerEncoder", mask, src_key_padding_mask, is_causal)
        return self.layer.forward(self.params, src)

    @classmethod
    def build_from(cls, module: nn.TransformerEncoder, sequence_len: int) -> "TransformerEncoder":
        """A continual copy of ``module`` (its configuration, a copy of its weights)."""
        if not isinstance(module, nn.TransformerEncoder):
            raise ConfigurationError(f"TransformerEncoder.build_from: expected an nn.TransformerEncoder, got {type(module).__name__}")
        norm = copy.deepcopy(module.norm) if module.norm is not None else None
        new = cls(module.layers[0], module.num_layers, norm, sequence_len)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def extra_repr(self):
        return f"sequence_len={self.sequence_len}"


def convert_multihead_attention(module: nn.MultiheadAttention, sequence_len: int) -> SingleOutputMultiheadAttention:
    """`continual` converter: ``nn.MultiheadAttention`` -> ``SingleOutputMultiheadAttention`` over
    ``(B, E, T)`` clips (``embed_dim_second=True``, no attention weights returned)."""
    return SingleOutputMultiheadAttention.build_from(
        module, sequence_len, embed_dim_second=True, forward_returns_attn_mask=False
    ).train(module.training)


def convert_transformer_encoder_layer(module: nn.TransformerEncoderLayer, sequence_len: int) -> SingleOutputTransformerEncoderLayer:
    """`continual` converter: ``nn.TransformerEncoderLayer`` -> ``SingleOutputTransformerEncoderLayer``."""
    return SingleOutputTransformerEncoderLayer.build_from(module, sequence_len).train(module.training)


def convert_transformer_encoder(module: nn.TransformerEncoder, sequence_len: int) -> TransformerEncoder:
    """`continual` converter: ``nn.TransformerEncoder`` -> ``TransformerEncoder``."""
    return TransformerEncoder.build_from(module, sequence_len)
