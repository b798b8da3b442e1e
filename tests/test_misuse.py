"""Misuse of the functional core raises cofunc's errors, with messages that say what went wrong.

Covers: a missing state (``None``), params of another layer or empty ones (`ParamsError` naming
the first mismatch), clips passed to ``step`` whose time length equals the channel count,
encoder layers on clips shorter than one window, ``load_state`` on damaged files, and an nn
adapter's ``forward_step(None)``. Frames are ``(B, C)``, tokens ``(B, E)``, clips ``(B, C, T)``.
"""

from __future__ import annotations

import io
import pickle

import optree
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import cofunc
import cofunc.nn as cn
from cofunc._serialize import state_dict_of


def _encoder():
    return cofunc.transformer_encoder(nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0), 2, sequence_len=3)


# name -> (factory, frame shape of one stream)
LAYERS = {
    "conv": (lambda: cofunc.conv1d(4, 3, 3, padding=1), (4,)),
    "max pool": (lambda: cofunc.max_pool1d(2), (4,)),
    "delay": (lambda: cofunc.delay(2, step_rank=1), (4,)),
    "seq": (lambda: cofunc.seq(cofunc.conv1d(4, 3, 3), cofunc.linear(3, 2)), (4,)),
    "single-output attention": (lambda: cofunc.single_output_attention(4, 2, sequence_len=3), (4,)),
    "retroactive attention": (lambda: cofunc.retroactive_attention(4, 2, sequence_len=3), (4,)),
    "single-output encoder layer": (lambda: cofunc.single_output_encoder_layer(4, 2, 8, sequence_len=3), (4,)),
    "retroactive encoder layer": (lambda: cofunc.retroactive_encoder_layer(4, 2, 8, sequence_len=3), (4,)),
    "2-layer encoder": (_encoder, (4,)),
    "positional encoding": (lambda: cofunc.recycling_positional_encoding(4, 3), (4,)),
    "gru": (lambda: cofunc.gru(4, 3), (4,)),
    "residual": (lambda: cofunc.residual(cofunc.conv1d(4, 4, 3, padding=1)), (4,)),
}
WITH_PARAMS = [name for name in LAYERS if name not in ("max pool", "delay")]


def _make(name, streams=2):
    make, frame_shape = LAYERS[name]
    layer = make()
    params = layer.init_params()
    state = layer.init_state(params, (streams,) + frame_shape)
    return layer, params, state, torch.randn((streams,) + frame_shape)


def _clip(x, t):
    return x.unsqueeze(-1).expand(*x.shape, t).contiguous()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_missing_state_is_a_state_error(name):
    layer, params, _, x = _make(name)
    with pytest.raises(cofunc.StateError, match="got None"):
        layer.step(params, None, x)
    with pytest.raises(cofunc.StateError, match="got None"):
        layer.steps(params, None, _clip(x, 3))


@pytest.mark.parametrize("name", sorted(WITH_PARAMS))
def test_empty_params_name_the_first_missing_entry(name):
    layer, params, state, x = _make(name)
    first = next(iter(cofunc.flatten_params(params)))
    for call in (lambda: layer.step({}, state, x), lambda: layer.steps({}, state, _clip(x, 3))):
        with pytest.raises(cofunc.ParamsError) as info:
            call()
        assert layer.label in str(info.value) and repr(first.split(".")[0]) in str(info.value)


@pytest.mark.parametrize("name", sorted(WITH_PARAMS))
def test_params_of_another_layer_of_the_same_kind_name_the_first_misshapen_entry(name):
    """Params with every name right but built for other sizes (8 channels instead of 4)."""
    layer, params, state, x = _make(name)
    bigger = {k: torch.zeros(tuple(2 * d for d in v.shape)) for k, v in cofunc.flatten_params(params).items()}
    first = next(iter(bigger))
    with pytest.raises(cofunc.ParamsError) as info:
        layer.step(cofunc.unflatten_params(bigger), state, x)
    message = str(info.value)
    assert f"params[{first!r}] has shape {tuple(bigger[first].shape)}, expected {tuple(params_shape(params, first))}" in message


def params_shape(params, dotted):
    return cofunc.flatten_params(params)[dotted].shape


def test_params_checks_accept_extra_entries_and_torch_modules_params():
    conv = nn.Conv1d(4, 3, 3, padding=1)
    layer = cofunc.conv1d(4, 3, 3, padding=1)
    params = dict(layer.params_from(conv), unused=torch.zeros(1))
    state = layer.init_state(params, (2, 4))
    layer.step(params, state, torch.randn(2, 4))
    with pytest.raises(cofunc.ParamsError, match="params\\['weight'\\] should be a tensor of shape \\(3, 4, 3\\), got list"):
        layer.step({"weight": [1.0], "bias": conv.bias}, state, torch.randn(2, 4))
    with pytest.raises(cofunc.ParamsError, match="params should be a dict"):
        layer.step([conv.weight, conv.bias], state, torch.randn(2, 4))


def test_params_are_checked_once_per_params_object():
    """The expected shapes are made once per layer, and the same params are not walked again."""
    layer, params, state, x = _make("seq")
    calls = []
    original = type(layer).init_params

    def counting(self, **kwargs):
        calls.append(kwargs)
        return original(self, **kwargs)

    type(layer).init_params = counting
    try:
        for _ in range(3):
            _, state = layer.step(params, state, x)
        assert calls == [{"device": "meta"}]
        assert layer.with_rank(1) is layer.with_rank(1)
    finally:
        type(layer).init_params = original


@pytest.mark.parametrize("name", ["conv", "delay", "single-output attention", "retroactive encoder layer", "gru", "seq"])
def test_a_clip_with_as_many_frames_as_channels_passed_to_step_points_at_the_time_axis(name):
    layer, params, state, x = _make(name)
    with pytest.raises(cofunc.InputShapeError, match="is there a time axis"):
        layer.step(params, state, _clip(x, x.shape[-1]))  # (B, C, T) with T == C


@pytest.mark.parametrize("name", ["single-output attention", "retroactive attention", "single-output encoder layer",
                                  "retroactive encoder layer", "2-layer encoder"])
@pytest.mark.parametrize("t", [0, 1, 2])
def test_clips_shorter_than_a_window_give_no_outputs_in_forward_as_in_steps(name, t):
    layer, params, _, x = _make(name, streams=1)
    xs = torch.randn(1, 4, t)
    ys = layer.forward(params, xs)
    stepped, _ = layer.steps(params, layer.init_state(params, (1, 4)), xs)
    assert ys.shape == stepped.shape and ys.shape[2] == 0


# --- load_state on damaged files -----------------------------------------------------------------


def _saved():
    layer, params, state, x = _make("seq")
    for _ in range(3):
        _, state = layer.step(params, state, x)
    buffer = io.BytesIO()
    cofunc.save_state(buffer, layer, state, (2, 4))
    return layer, params, state, buffer.getvalue()


def _load(layer, params, data: bytes):
    return cofunc.load_state(io.BytesIO(data), layer, params)


def test_a_saved_state_round_trips():
    layer, params, state, data = _saved()
    loaded = _load(layer, params, data)
    for a, b in zip(_leaves(loaded), _leaves(state)):
        assert torch.equal(a, b)


def _leaves(state):
    return optree.tree_leaves(state, namespace="cofunc")


@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated_files_are_state_errors(cut):
    layer, params, _, data = _saved()
    with pytest.raises(cofunc.StateError, match="could not read a saved state"):
        _load(layer, params, data[: int(cut * len(data))])


@given(data=st.binary(max_size=300))
def test_random_bytes_are_state_errors(data):
    layer, params, _, _ = _saved()
    with pytest.raises(cofunc.StateError):
        _load(layer, params, data)


class _Exploit:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickle_with_code_in_it_is_refused_without_running(capsys):
    layer, params, _, _ = _saved()
    buffer = io.BytesIO()
    torch.save({"format": "cofunc-state-1", "x": _Exploit()}, buffer)
    with pytest.raises(cofunc.StateError, match="could not read"):
        _load(layer, params, buffer.getvalue())
    with pytest.raises(cofunc.StateError, match="could not read"):
        _load(layer, params, pickle.dumps(_Exploit()))
    assert "code ran" not in capsys.readouterr().out


def _malformed():
    """Saved dicts that torch.load reads but that describe no valid state of the layer."""
    layer, params, state, _ = _saved()
    good = state_dict_of(layer, state, (2, 4))
    counters = [i for i, leaf in enumerate(good["leaves"]) if leaf.dtype == torch.int64]

    def with_(**changes):
        return dict(good, **changes)

    def leaf(i, value):
        leaves = list(good["leaves"])
        leaves[i] = torch.full_like(leaves[i], value)
        return with_(leaves=leaves)

    without = {k: v for k, v in good.items() if k != "leaves"}
    return layer, params, {
        "a list": [1, 2],
        "another format": with_(format="cofunc-state-0"),
        "no leaves": without,
        "leaves not a list": with_(leaves={"a": 1}),
        "a leaf not a tensor": with_(leaves=[1] + good["leaves"][1:]),
        "layer not a string": with_(layer=3),
        "another layer": with_(fingerprint="0" * 16),
        "no fingerprint": {k: v for k, v in good.items() if k != "fingerprint"},
        "names not a list": with_(names="0.buffer"),
        "fewer names": with_(names=good["names"][:-1]),
        "an old file of another layer": dict(with_(format="cofunc-state-1", layer="conv1d(1->1)")),
        "step shape of strings": with_(step_shape=["a"]),
        "negative step shape": with_(step_shape=[-2, 4]),
        "empty step shape": with_(step_shape=[]),
        "step shape of another rank": with_(step_shape=[2, 4, 5]),
        "step shape of another channel count": with_(step_shape=[2, 5]),
        "fewer leaves": with_(leaves=good["leaves"][:-1]),
        "negative counter": leaf(counters[0], -1),
        "absurd counter": leaf(counters[-1], 2 ** 62),
        "float leaves as ints": with_(leaves=[t.to(torch.int64) for t in good["leaves"]]),
    }


@pytest.mark.parametrize("case", sorted(_malformed()[2]))
def test_malformed_saved_states_are_state_errors(case):
    layer, params, cases = _malformed()
    buffer = io.BytesIO()
    torch.save(cases[case], buffer)
    with pytest.raises(cofunc.StateError):
        _load(layer, params, buffer.getvalue())


def test_a_missing_file_is_still_an_os_error(tmp_path):
    layer, params, _, _ = _saved()
    with pytest.raises(FileNotFoundError):
        cofunc.load_state(tmp_path / "nope.pt", layer, params)


# --- nn adapters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["forward_step", "forward_steps"])
@pytest.mark.parametrize("bad", [None, 3, "frame"])
def test_an_adapter_given_no_tensor_raises_input_shape_error(method, bad):
    conv = cn.Conv1d(2, 2, 3)
    conv.forward_steps(torch.randn(1, 2, 4))
    state = conv.get_state()
    with pytest.raises(cofunc.InputShapeError, match=f"Conv1d.{method}: expected"):
        getattr(conv, method)(bad)
    assert conv.get_state() is state
