"""Continual recurrent layers: ``rnn``, ``gru``, ``lstm`` (multi-layer, unidirectional).

A recurrent network is continual by construction: its hidden state already summarises the past,
so every step emits (delay 0, receptive field 1, stride 1, as in co). Layouts follow cofunc:
clips ``(*B, C, T)``, steps ``(*B, C)``; outputs ``(*B, H_out, T)`` and ``(*B, H_out)``.

- ``forward`` and ``steps`` run torch's fused RNN kernel over the whole clip or chunk, the very
  computation ``torch.nn.RNN/GRU/LSTM`` performs (``forward`` is bit-identical to torch.nn with
  the module's own params);
- ``step`` runs the cell equations with plain matmuls, so it vmaps (torch's fused and cell ops
  have no batching rules) and compiles without graph breaks; it equals the fused kernel within
  float rounding.

The state holds every layer's hidden state with the stream dims first: ``h: (*B, L, H_out)``
(and ``c: (*B, L, H)`` for the LSTM), where torch's ``hx`` is ``(L, *B, H_out)``;
`Recurrent.state_from_hx` and `Recurrent.hx_from_state` convert. ``dropout`` between layers is a
training-time regulariser: these pure functions never apply it (torch.nn in eval mode).
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, _VF, nn

from ._errors import ConfigurationError, DTypeDeviceError, InputShapeError, StateError, UnsupportedModuleError
from ._layer import Layer, check_dtype_device
from ._params import Params, module_params

MODES = ("RNN_TANH", "RNN_RELU", "GRU", "LSTM")
_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}
_NN_CLASS = {"RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}
_FUSED = {"RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu, "GRU": _VF.gru, "LSTM": _VF.lstm}


class RNNState(NamedTuple):
    """The state of `rnn` and `gru`: h ``(*B, num_layers, hidden_size)``, every layer's last
    hidden state (torch's ``h_n`` with the stream dims moved first)."""

    h: Tensor


class LSTMState(NamedTuple):
    """The state of `lstm`: h ``(*B, num_layers, H_out)`` (H_out = proj_size or hidden_size)
    and c ``(*B, num_layers, hidden_size)``, torch's ``(h_n, c_n)`` with the stream dims first."""

    h: Tensor
    c: Tensor


RecurrentState = Union[RNNState, LSTMState]
TorchHx = Union[Tensor, Tuple[Tensor, Tensor]]


def _in_functorch_transform() -> bool:
    # torch's fused RNN ops have no vmap batching rule; under a torch.func transform the
    # chunked paths fall back to a loop of cell steps.
    return torch._C._functorch.maybe_current_level() is not None


@dataclasses.dataclass(frozen=True, eq=False)
class Recurrent(Layer):
    """A continual multi-layer RNN, GRU or LSTM (construct with `rnn`, `gru` or `lstm`).

    ``mode`` is torch's: ``"RNN_TANH"``, ``"RNN_RELU"``, ``"GRU"`` or ``"LSTM"``. Params carry
    torch's names (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
    ``weight_hr_l0`` with ``proj_size``, then ``..._l1``, ...). ``dropout`` is kept for the nn
    adapter's training mode and is never applied by these functions.
    """

    mode: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    dropout: float = 0.0
    proj_size: int = 0

    def __post_init__(self):
        label = self.label
        if self.mode not in MODES:
            raise ConfigurationError(f"{label}: `mode` must be one of {MODES}, got {self.mode!r}")
        for name in ("input_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{label}: `{name}` must be a positive int, got {value!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout <= 1:
            raise ConfigurationError(f"{label}: `dropout` must be a number in [0, 1], got {self.dropout!r}")
        if not isinstance(self.proj_size, int) or self.proj_size < 0:
            raise ConfigurationError(f"{label}: `proj_size` must be a non-negative int, got {self.proj_size!r}")
        if self.proj_size and self.mode != "LSTM":
            raise ConfigurationError(f"{label}: `proj_size` is only supported by the LSTM")
        if self.proj_size >= self.hidden_size:
            raise ConfigurationError(
                f"{label}: `proj_size` ({self.proj_size}) must be smaller than `hidden_size` ({self.hidden_size})"
            )

    # --- metadata -----------------------------------------------------------------------------
    @property
    def label(self) -> str:
        kind = {"RNN_TANH": "rnn", "RNN_RELU": "rnn", "GRU": "gru", "LSTM": "lstm"}.get(self.mode, "recurrent")
        extra = ""
        if self.mode == "RNN_RELU":
            extra += ", nonlinearity='relu'"
        if self.num_layers != 1:
            extra += f", num_layers={self.num_layers}"
        if self.proj_size:
            extra += f", proj_size={self.proj_size}"
        return f"{kind}({self.input_size}->{self.hidden_size}{extra})"

    @property
    def step_rank(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        """H_out: the size of an output frame and of ``h`` (``proj_size`` if set)."""
        return self.proj_size or self.hidden_size

    @property
    def param_names(self) -> List[str]:
        """torch's ``_flat_weights_names``: the order the fused kernel takes the weights in."""
        names = []
        for k in range(self.num_layers):
            names += [f"weight_ih_l{k}", f"weight_hh_l{k}"]
            if self.bias:
                names += [f"bias_ih_l{k}", f"bias_hh_l{k}"]
            if self.proj_size:
                names.append(f"weight_hr_l{k}")
        return names

    def step_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_size,)

    # --- params -------------------------------------------------------------------------------
    def torch_module(self, *, device=None, dtype=None) -> nn.Module:
        """The equivalent ``torch.nn.RNN/GRU/LSTM`` (``batch_first=True``, freshly initialised)."""
        kwargs = dict(
            input_size=self.input_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
            bias=self.bias, batch_first=True, dropout=float(self.dropout), device=device, dtype=dtype,
        )
        if self.mode.startswith("RNN"):
            kwargs["nonlinearity"] = "tanh" if self.mode == "RNN_TANH" else "relu"
        if self.mode == "LSTM":
            kwargs["proj_size"] = self.proj_size
        return _NN_CLASS[self.mode](**kwargs)

    def init_params(self, *, device=None, dtype=None) -> Params:
        module = self.torch_module(device=device, dtype=dtype)
        return {name: p.detach() for name, p in module.named_parameters()}

    def params_from(self, module: nn.Module) -> Params:
        """The params of a ``torch.nn.RNN/GRU/LSTM`` with this configuration (its own tensors).

        ``batch_first`` does not matter (the weights are the same); a bidirectional module
        cannot be streamed (`UnsupportedModuleError`).
        """
        if not isinstance(module, nn.RNNBase):
            raise UnsupportedModuleError(f"{self.label}: expected a torch.nn.RNN, GRU or LSTM, got {type(module).__name__}")
        if module.bidirectional:
            raise UnsupportedModuleError(
                f"{self.label}: a bidirectional {type(module).__name__} reads the clip backwards from its "
                f"end, which a stream does not have"
            )
        mine = (self.mode, self.input_size, self.hidden_size, self.num_layers, self.bias, self.proj_size)
        theirs = (module.mode, module.input_size, module.hidden_size, module.num_layers, module.bias, module.proj_size)
        if mine != theirs:
            raise ConfigurationError(
                f"{self.label}: the module's configuration (mode, input_size, hidden_size, num_layers, "
                f"bias, proj_size) = {theirs} differs from this layer's {mine}"
            )
        return module_params(module)

    # --- state --------------------------------------------------------------------------------
    def init_state(self, params, input_shape, *, device=None, dtype=None) -> RecurrentState:
        """Zeros (torch's default ``hx``) for steps of shape ``input_shape = (*B, input_size)``."""
        batch = self.batch_shape(input_shape)
        reference = params.get("weight_ih_l0") if params else None
        if reference is not None:
            device = reference.device if device is None else device
            dtype = reference.dtype if dtype is None else dtype
        h = torch.zeros(batch + (self.num_layers, self.output_size), device=device, dtype=dtype)
        if self.mode == "LSTM":
            return LSTMState(h, torch.zeros(batch + (self.num_layers, self.hidden_size), device=device, dtype=dtype))
        return RNNState(h)

    def state_from_hx(self, hx: TorchHx) -> RecurrentState:
        """The state equal to torch's ``hx``: ``h (L, *B, H_out)``, or ``(h, c)`` for the LSTM
        with ``c (L, *B, H)``; ``*B`` may be several stream dims or none (unbatched)."""
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise StateError(f"{self.label}: expected torch's LSTM hx, a pair (h, c), got {type(hx).__name__}")
            h, c = hx
            self._check_hx(h, self.output_size, "h")
            self._check_hx(c, self.hidden_size, "c")
            if h.shape[1:-1] != c.shape[1:-1]:
                raise StateError(f"{self.label}: h {tuple(h.shape)} and c {tuple(c.shape)} have different stream dims")
            return LSTMState(h.movedim(0, -2).contiguous(), c.movedim(0, -2).contiguous())
        if isinstance(hx, (tuple, list)) and len(hx) == 1:
            hx = hx[0]  # co's RNN/GRU state: a 1-tuple (h,)
        self._check_hx(hx, self.output_size, "h")
        return RNNState(hx.movedim(0, -2).contiguous())

    def hx_from_state(self, state: RecurrentState) -> TorchHx:
        """torch's ``hx`` for a state: ``h (L, *B, H_out)``, or ``(h, c)`` for the LSTM."""
        self.check_state_type(state, LSTMState if self.mode == "LSTM" else RNNState)
        if self.mode == "LSTM":
            return state.h.movedim(-2, 0).contiguous(), state.c.movedim(-2, 0).contiguous()
        return state.h.movedim(-2, 0).contiguous()

    def _check_hx(self, h, size: int, name: str) -> None:
        if not isinstance(h, Tensor) or h.dim() < 2 or h.shape[0] != self.num_layers or h.shape[-1] != size:
            got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise StateError(
                f"{self.label}: expected torch's {name} of shape (num_layers={self.num_layers}, *B, {size}), got {got}"
            )

    def check_state(self, state) -> Tuple[int, ...]:
        """Check that ``state`` comes from this layer's `init_state` (type, layer sizes, one set
        of stream dims for ``h`` and ``c``); return its stream dims ``*B``. Raises `StateError`."""
        self.check_state_type(state, LSTMState if self.mode == "LSTM" else RNNState)
        leaves = [("h", state.h, self.output_size)]
        if self.mode == "LSTM":
            leaves.append(("c", state.c, self.hidden_size))
        for name, t, size in leaves:
            if not isinstance(t, Tensor) or t.dim() < 2 or tuple(t.shape[-2:]) != (self.num_layers, size):
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise StateError(
                    f"{self.label}: expected a state with {name} of shape (*B, num_layers={self.num_layers}, "
                    f"{size}), got {got}; the state comes from another layer"
                )
        lead = tuple(state.h.shape[:-2])
        if self.mode == "LSTM" and tuple(state.c.shape[:-2]) != lead:
            raise StateError(
                f"{self.label}: the state's h {tuple(state.h.shape)} and c {tuple(state.c.shape)} have "
                f"different stream dims"
            )
        return lead

    def _check_state(self, state, x: Tensor, clip: bool) -> None:
        """``state`` must come from this layer's `init_state` for the streams of ``x``."""
        lead = self.check_state(state)
        what = "clip" if clip else "step input"
        self.check_stream_dims(tuple(lead), x, what)
        for t in state:
            if t.dtype != x.dtype or t.device != x.device:
                raise DTypeDeviceError(
                    f"{self.label}: the state holds {t.dtype} on {t.device}, but the {what} is {x.dtype} on {x.device}"
                )

    # --- the cell equations (torch's, aten/src/ATen/native/RNN.cpp) -----------------------------
    def _cell(self, params, k: int, x: Tensor, h: Tensor, c: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Layer ``k`` of one step over ``(N, features)`` rows: the new ``h`` (and ``c``)."""
        b_ih = params[f"bias_ih_l{k}"] if self.bias else None
        b_hh = params[f"bias_hh_l{k}"] if self.bias else None
        gi = F.linear(x, params[f"weight_ih_l{k}"], b_ih)
        gh = F.linear(h, params[f"weight_hh_l{k}"], b_hh)
        if self.mode == "RNN_TANH":
            return torch.tanh(gh + gi), None
        if self.mode == "RNN_RELU":
            return torch.relu(gh + gi), None
        if self.mode == "GRU":
            i_r, i_z, i_n = gi.chunk(3, -1)
            h_r, h_z, h_n = gh.chunk(3, -1)
            reset = torch.sigmoid(h_r + i_r)
            update = torch.sigmoid(h_z + i_z)
            new = torch.tanh(i_n + h_n * reset)
            return (h - new) * update + new, None
        i, f, g, o = (gh + gi).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if self.proj_size:
            h = F.linear(h, params[f"weight_hr_l{k}"])
        return h, c

    def _step_rows(self, params, h: Tensor, c: Optional[Tensor], x: Tensor):
        """One step of every layer: ``x (N, C)``, ``h (N, L, H_out)``, ``c (N, L, H)``."""
        hs, cs = [], []
        for k in range(self.num_layers):
            hk, ck = self._cell(params, k, x, h[:, k], None if c is None else c[:, k])
            hs.append(hk)
            cs.append(ck)
            x = hk
        return x, torch.stack(hs, 1), None if c is None else torch.stack(cs, 1)

    def _fused(self, params, h: Tensor, c: Optional[Tensor], xs: Tensor):
        """torch's multi-layer kernel on ``xs (N, T, C)`` from ``h (L, N, H_out)``, ``c (L, N, H)``.

        Returns ``(out (N, T, H_out), h_n, c_n)`` in torch's layouts.
        """
        if _in_functorch_transform():
            # The same equations step by step (vmap has no rule for the fused kernel).
            hr, cr = h.transpose(0, 1), None if c is None else c.transpose(0, 1)
            outs = []
            for t in range(xs.shape[1]):
                y, hr, cr = self._step_rows(params, hr, cr, xs[:, t])
                outs.append(y)
            out = torch.stack(outs, 1) if outs else xs.new_zeros(xs.shape[:2] + (self.output_size,))
            return out, hr.transpose(0, 1), None if cr is None else cr.transpose(0, 1)
        weights = [params[name] for name in self.param_names]
        fused = _FUSED[self.mode]
        # Arguments as torch.nn passes them in eval mode: (input, hx, weights, has_biases,
        # num_layers, dropout, train, bidirectional, batch_first).
        if self.mode == "LSTM":
            return fused(xs, (h, c), weights, self.bias, self.num_layers, float(self.dropout), False, False, True)
        out, h_n = fused(xs, h, weights, self.bias, self.num_layers, float(self.dropout), False, False, True)
        return out, h_n, None

    # --- computation --------------------------------------------------------------------------
    def _check_input(self, params, x: Tensor, clip: bool) -> None:
        if clip:
            self.check_clip_input(x, self.input_size)
        else:
            self.check_step_input(x, self.input_size)
        check_dtype_device(self, x, params.get("weight_ih_l0"), "clip" if clip else "step input")

    def step_unmasked(self, params, state, x):
        """One frame ``x: (*B, input_size)`` to ``y: (*B, H_out)`` (the last layer's new ``h``)."""
        self._check_input(params, x, clip=False)
        self._check_state(state, x, clip=False)
        lead = tuple(x.shape[:-1])
        n = math.prod(lead)
        h = state.h.reshape(n, self.num_layers, self.output_size)
        c = state.c.reshape(n, self.num_layers, self.hidden_size) if self.mode == "LSTM" else None
        y, h, c = self._step_rows(params, h, c, x.reshape(n, self.input_size))
        h = h.reshape(lead + (self.num_layers, self.output_size))
        if self.mode == "LSTM":
            return y.reshape(lead + (self.output_size,)), LSTMState(h, c.reshape(lead + (self.num_layers, self.hidden_size)))
        return y.reshape(lead + (self.output_size,)), RNNState(h)

    def _run(self, params, state: Optional[RecurrentState], xs: Tensor):
        """The fused kernel over a clip ``(*B, C, T)`` from ``state`` (zeros if None).

        Returns the outputs ``(*B, H_out, T)`` and the state after the clip.
        """
        lead = tuple(xs.shape[:-2])
        n, length = math.prod(lead), xs.shape[-1]
        rows = xs.reshape(n, self.input_size, length).transpose(1, 2)
        if state is None:
            h = xs.new_zeros(self.num_layers, n, self.output_size)
            c = xs.new_zeros(self.num_layers, n, self.hidden_size) if self.mode == "LSTM" else None
        else:
            h = state.h.reshape(n, self.num_layers, self.output_size).transpose(0, 1).contiguous()
            c = None
            if self.mode == "LSTM":
                c = state.c.reshape(n, self.num_layers, self.hidden_size).transpose(0, 1).contiguous()
        out, h_n, c_n = self._fused(params, h, c, rows)
        ys = out.transpose(1, 2).reshape(lead + (self.output_size, length))
        # Stream dims first and contiguous: every state has the fresh state's layout (a compiled
        # step guards on strides).
        h_n = h_n.transpose(0, 1).reshape(lead + (self.num_layers, self.output_size)).contiguous()
        if self.mode == "LSTM":
            c_n = c_n.transpose(0, 1).reshape(lead + (self.num_layers, self.hidden_size)).contiguous()
            return ys, LSTMState(h_n, c_n)
        return ys, RNNState(h_n)

    def steps_at_clock(self, params, state, xs, clock, pad_end):
        """Steps over a chunk ``xs: (*B, input_size, T)`` with the fused kernel, from ``state``:
        ``ys (*B, H_out, T)`` and the state after the chunk (``pad_end`` has nothing to flush)."""
        self._check_input(params, xs, clip=True)
        self._check_state(state, xs, clip=True)
        if xs.shape[-1] == 0:
            return xs.new_zeros(tuple(xs.shape[:-2]) + (self.output_size, 0)), state
        return self._run(params, state, xs)

    def forward(self, params, xs):
        """The clip computation ``(*B, input_size, T) -> (*B, H_out, T)`` from a zero state,
        exactly torch.nn's (in eval mode) on ``xs`` transposed to ``(B, T, C)``.

        Only the output clip is returned (so the layer composes in `seq`); use `forward_hx` for
        torch's ``(out, h_n)``.
        """
        return self.forward_hx(params, xs)[0]

    def forward_hx(self, params, xs: Tensor, hx: Optional[TorchHx] = None):
        """torch.nn's call: ``(out (*B, H_out, T), h_n)`` from torch's ``hx`` (zeros if None);
        ``h_n`` is torch's ``h_n (L, *B, H_out)``, or ``(h_n, c_n)`` for the LSTM."""
        self._check_input(params, xs, clip=True)
        state = None if hx is None else self.state_from_hx(hx)
        if state is not None:
            self._check_state(state, xs, clip=True)
        if xs.shape[-1] == 0:
            raise InputShapeError(f"{self.label}: a clip needs at least one frame (as in torch.nn), got shape {tuple(xs.shape)}")
        ys, new_state = self._run(params, state, xs)
        return ys, self.hx_from_state(new_state)


def rnn(
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    nonlinearity: str = "tanh",
    bias: bool = True,
    dropout: float = 0.0,
) -> Recurrent:
    """A continual Elman ``RNN``: clips ``(*B, input_size, T)``, steps ``(*B, input_size)``.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.rnn(3, 5, num_layers=2)
        >>> params = layer.init_params()
        >>> state = layer.init_state(params, (4, 3))
        >>> y, state = layer.step(params, state, torch.randn(4, 3))
        >>> y.shape, state.h.shape, layer.delay
        (torch.Size([4, 5]), torch.Size([4, 2, 5]), 0)
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ConfigurationError(f"rnn({input_size}->{hidden_size}): `nonlinearity` must be 'tanh' or 'relu', got {nonlinearity!r}")
    return Recurrent("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, num_layers, bias, dropout)


def gru(input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, dropout: float = 0.0) -> Recurrent:
    """A continual ``GRU``: clips ``(*B, input_size, T)``, steps ``(*B, input_size)``.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.gru(3, 5)
        >>> params = layer.init_params()
        >>> ys, state = layer.steps(params, layer.init_state(params, (2, 3)), torch.randn(2, 3, 7))
        >>> ys.shape
        torch.Size([2, 5, 7])
    """
    return Recurrent("GRU", input_size, hidden_size, num_layers, bias, dropout)


def lstm(
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bias: bool = True,
    dropout: float = 0.0,
    proj_size: int = 0,
) -> Recurrent:
    """A continual ``LSTM``: clips ``(*B, input_size, T)``, steps ``(*B, input_size)``; outputs
    have ``proj_size`` features if it is set, else ``hidden_size``.

    Example:
        >>> import torch, cofunc
        >>> layer = cofunc.lstm(3, 8, proj_size=4)
        >>> params = layer.init_params()
        >>> state = layer.init_state(params, (2, 3))
        >>> y, state = layer.step(params, state, torch.randn(2, 3))
        >>> y.shape, state.h.shape, state.c.shape
        (torch.Size([2, 4]), torch.Size([2, 1, 4]), torch.Size([2, 1, 8]))
    """
    return Recurrent("LSTM", input_size, hidden_size, num_layers, bias, dropout, proj_size)
