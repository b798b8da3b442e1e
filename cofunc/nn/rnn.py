"""``RNN``, ``GRU``, ``LSTM``: torch.nn recurrent networks over ``(B, C, T)`` clips that also
step through time (co's modules of the same names).

Each is a subclass of its torch.nn class (``batch_first=True``, unidirectional), so parameter
names, ``state_dict``, ``flatten_parameters`` and ``forward`` are torch's; ``forward(x, hx)``
returns torch's ``(out, h_n)`` with ``out`` as ``(B, H_out, T)``.

State: ``get_state()`` returns the functional state (`cofunc.RNNState` ``(h,)`` or
`cofunc.LSTMState` ``(h, c)``, stream dims first: ``h (B, num_layers, H_out)``).
``set_state`` also takes co's forms in torch's layout: ``h (num_layers, B, H_out)`` or ``(h,)``
for RNN and GRU, ``(h, c)`` for LSTM, as ``forward`` takes ``hx``; ``get_hx()`` returns the
state in that layout.

Training mode with ``dropout > 0`` (and more than one layer): the step modes run torch's own
module call from the stored state, as co does, so the dropout between layers is applied; in
every other case they run the functional layer (no dropout, as torch.nn in eval mode).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .._errors import UnsupportedModuleError
from .._rnn import LSTMState, Recurrent, RNNState, gru, lstm, rnn
from .module import ContinualModule


class _Recurrent(ContinualModule):
    _torch_class: type

    def _build_layer(self) -> Recurrent:
        return Recurrent(
            self.mode, self.input_size, self.hidden_size, self.num_layers, self.bias, float(self.dropout),
            self.proj_size,
        )


    def forward(self, input: Tensor, hx=None):
        """torch.nn's computation on ``input (B, input_size, T)`` (or unbatched ``(input_size, T)``):
        ``(out (B, H_out, T), h_n)``, where ``h_n`` is ``(num_layers, B, H_out)``, or
        ``(h_n, c_n)`` for the LSTM. It does not read or change the stream state."""
        out, h_n = self._torch_class.forward(self, input.transpose(-1, -2), hx)
        return out.transpose(-1, -2), h_n

    # --- stepping: torch's call in training mode with dropout, else the functional layer -------
    def _stochastic(self) -> bool:
        return self.training and self.dropout > 0 and self.num_layers > 1

    def _torch_steps(self, input: Tensor, update_state: bool) -> Tensor:
        """The clip ``input (B, C, T)`` through torch's module call from the stored state."""
        layer = self.layer
        state = self._co_state
        hx = None if state is None else layer.hx_from_state(state)
        out, h_n = self.forward(input, hx)
        if update_state:
            self._co_state = layer.state_from_hx(h_n)
        return out

    def forward_step(self, input: Tensor, update_state: bool = True) -> Optional[Tensor]:
        if self._stochastic():
            return self._torch_steps(input.unsqueeze(-1), update_state).squeeze(-1)
        return super().forward_step(input, update_state)

    def forward_steps(self, input: Tensor, pad_end: bool = False, update_state: bool = True) -> Optional[Tensor]:
        if self._stochastic():
            return self._torch_steps(input, update_state) if input.shape[-1] > 0 else None
        return super().forward_steps(input, pad_end, update_state)

    # --- state --------------------------------------------------------------------------------
    def set_state(self, state) -> None:
        """Resume from ``state``: a functional state (from ``get_state``), or co's forms in
        torch's layout: ``h (num_layers, B, H_out)`` or ``(h,)`` for RNN and GRU, ``(h, c)``
        for LSTM; ``None`` forgets the stream. As in co, the batch may differ from the current
        state's (a hidden state from ``forward`` starts a new stream batch)."""
        if state is not None:
            layer = self.layer
            if not isinstance(state, (RNNState, LSTMState)):
                state = layer.state_from_hx(state)
            layer.check_state(state)
        self._co_state = state

    def get_state(self):
        """The stream state in co's layout: ``(h,)`` for RNN and GRU, ``(h, c)`` for LSTM, each
        ``(num_layers, B, H_out)`` as torch's ``hx``; ``None`` before the first step. The
        functional state is ``module.stream_state``."""
        hx = self.get_hx()
        if hx is None:
            return None
        return tuple(hx) if isinstance(hx, tuple) else (hx,)

    @property
    def stream_state(self):
        """The functional state of the stream (`cofunc.RNNState` / `cofunc.LSTMState`), or None."""
        return self._co_state

    def get_hx(self):
        """The stream state in torch's layout (what ``forward`` takes as ``hx``): ``h
        (num_layers, B, H_out)``, or ``(h, c)`` for the LSTM; ``None`` before the first step."""
        state = self._co_state
        return None if state is None else self.layer.hx_from_state(state)

    # --- conversion ---------------------------------------------------------------------------
    @classmethod
    def build_from(cls, module: nn.RNNBase, **overrides) -> "_Recurrent":
        """A continual copy of a ``torch.nn`` RNN, GRU or LSTM (same options, a copy of its
        weights). ``batch_first`` does not matter; bidirectional modules are rejected."""
        if not isinstance(module, cls._torch_class):
            raise UnsupportedModuleError(
                f"{cls.__name__}.build_from: expected a torch.nn.{cls._torch_class.__name__}, got {type(module).__name__}"
            )
        if module.bidirectional:
            raise UnsupportedModuleError(
                f"{cls.__name__}.build_from: a bidirectional {type(module).__name__} reads the clip backwards "
                f"from its end, which a stream does not have; only unidirectional RNNs can be made continual"
            )
        weight = module.weight_ih_l0
        kwargs = dict(
            input_size=module.input_size, hidden_size=module.hidden_size, num_layers=module.num_layers,
            bias=module.bias, dropout=module.dropout, device=weight.device, dtype=weight.dtype,
        )
        if module.mode.startswith("RNN"):
            kwargs["nonlinearity"] = module.nonlinearity
        if module.mode == "LSTM":
            kwargs["proj_size"] = module.proj_size
        kwargs.update(overrides)
        new = cls(**kwargs)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new


class RNN(_Recurrent, nn.RNN):
    """``torch.nn.RNN`` (Elman, tanh or relu) over ``(B, C, T)`` clips that also steps over
    ``(B, C)`` frames; delay 0: every step emits.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> rnn = cn.RNN(input_size=10, hidden_size=20, num_layers=2)
        >>> x, h0 = torch.randn(1, 10, 16), torch.randn(2, 1, 20)
        >>> output, hn = rnn(x, h0)
        >>> rnn.set_state(h0)
        >>> firsts = rnn.forward_steps(x[:, :, :-1])
        >>> last = rnn.forward_step(x[:, :, -1])
        >>> torch.allclose(firsts, output[:, :, :-1], atol=1e-6), torch.allclose(last, output[:, :, -1], atol=1e-6)
        (True, True)
    """

    _torch_class = nn.RNN

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        # Validate with the functional layer first, so errors name the continual layer.
        layer = rnn(input_size, hidden_size, num_layers, nonlinearity, bias, dropout)
        nn.RNN.__init__(
            self, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
            nonlinearity=nonlinearity, bias=bias, batch_first=True, dropout=dropout, bidirectional=False,
            device=device, dtype=dtype,
        )
        self.__dict__["_co_layer"] = layer


class GRU(_Recurrent, nn.GRU):
    """``torch.nn.GRU`` over ``(B, C, T)`` clips that also steps over ``(B, C)`` frames; delay 0.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> gru = cn.GRU(input_size=4, hidden_size=3)
        >>> x = torch.randn(2, 4, 6)
        >>> torch.allclose(gru.forward_steps(x), gru(x)[0], atol=1e-6)
        True
    """

    _torch_class = nn.GRU

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        layer = gru(input_size, hidden_size, num_layers, bias, dropout)
        nn.GRU.__init__(
            self, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, bias=bias,
            batch_first=True, dropout=dropout, bidirectional=False, device=device, dtype=dtype,
        )
        self.__dict__["_co_layer"] = layer


class LSTM(_Recurrent, nn.LSTM):
    """``torch.nn.LSTM`` (optionally with ``proj_size``) over ``(B, C, T)`` clips that also steps
    over ``(B, C)`` frames; delay 0. ``set_state`` takes torch's ``(h, c)``.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> lstm = cn.LSTM(input_size=4, hidden_size=6, proj_size=3)
        >>> x = torch.randn(2, 4, 5)
        >>> h0 = (torch.randn(1, 2, 3), torch.randn(1, 2, 6))
        >>> output, (hn, cn_) = lstm(x, h0)
        >>> lstm.set_state(h0)
        >>> torch.allclose(lstm.forward_steps(x), output, atol=1e-6)
        True
    """

    _torch_class = nn.LSTM

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        dropout: float = 0.0,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ):
        layer = lstm(input_size, hidden_size, num_layers, bias, dropout, proj_size)
        nn.LSTM.__init__(
            self, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, bias=bias,
            batch_first=True, dropout=dropout, bidirectional=False, proj_size=proj_size, device=device,
            dtype=dtype,
        )
        self.__dict__["_co_layer"] = layer
