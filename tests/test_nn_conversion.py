"""The nn adapters' metadata, their functional view and params, `continual` conversion and
torch state dicts."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import cofunc
import cofunc.nn as cn
from _nn_modules import (
    torch_cnn3d,
    F64, assert_same_state, clip_for, expected_none,
    make_cnn3d, randomise_batch_norms, stack_emitted, step_through,
)

# torch warns that padding="same" with an even kernel copies the input; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


# --- metadata, layer and params --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, delay, receptive_field, stride, padding",
    [
        (lambda: cn.Conv1d(2, 2, 3), 2, 3, (1,), (0,)),
        (lambda: cn.Conv1d(2, 2, 3, padding=2, stride=2), 0, 3, (2,), (2,)),
        (lambda: cn.Conv1d(2, 2, 3, padding=1, dilation=2), 3, 5, (1,), (1,)),
        (lambda: cn.Conv2d(2, 2, (4, 3), padding="same"), 2, 4, (1, 1), "same"),
        (lambda: cn.Conv3d(2, 2, (5, 3, 3), stride=(1, 2, 2), padding=(2, 1, 1)), 2, 5, (1, 2, 2), (2, 1, 1)),
        (lambda: cn.Conv3d(2, 2, (1, 3, 3)), 0, 1, (1, 1, 1), (0, 0, 0)),
        (lambda: cn.Delay(3), 3, 4, (1,), (0,)),
        (lambda: cn.Delay(0), 0, 1, (1,), (0,)),
        (lambda: cn.continual(nn.ReLU()), 0, 1, (1,), (0,)),
        (lambda: cn.Sequential(cn.Conv1d(1, 1, 3, padding=2, stride=2), cn.Conv1d(1, 1, 3)), 4, 7, (2,), (2,)),
        (lambda: cn.Sequential(cn.Conv1d(1, 1, 3, stride=2, padding=1), nn.ReLU(), cn.Conv1d(1, 1, 3, stride=2, padding=1)), 3, 7, (4,), (3,)),
        (lambda: cn.Sequential(cn.Conv1d(1, 1, 3), cn.Delay(2), cn.Conv1d(1, 1, 5, padding=1)), 7, 9, (1,), (1,)),
    ],
)
def test_temporal_properties(make, delay, receptive_field, stride, padding):
    module = make()
    assert module.delay == delay
    assert module.receptive_field == receptive_field
    assert module.stride == stride  # conv adapters keep torch's tuples, time first
    assert module.padding == padding
    assert module.layer.delay == delay and module.layer.receptive_field == receptive_field
    assert module.layer.stride == stride[0]


def test_conv_layer_and_params_are_the_modules_own():
    conv = cn.Conv3d(2, 4, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0), groups=2)
    layer = conv.layer
    assert isinstance(layer, cofunc.Conv)
    assert (layer.dims, layer.in_channels, layer.out_channels) == (3, 2, 4)
    assert (layer.kernel_size, layer.conv_stride, layer.groups) == ((3, 1, 1), (2, 1, 1), 2)
    assert (layer.delay, layer.stride, layer.padding) == (1, 2, 1)
    params = conv.params
    assert set(params) == {"weight", "bias"}
    assert params["weight"] is conv.weight and params["bias"] is conv.bias
    assert set(cn.Conv1d(1, 1, 3, bias=False).params) == {"weight"}

    # Loading a state dict updates the tensors in place: params still are the module's own.
    torch.manual_seed(9)
    conv.load_state_dict(nn.Conv3d(2, 4, (3, 1, 1), groups=2).state_dict())
    assert conv.params["weight"] is conv.weight


def test_functional_view_matches_the_module():
    """``module.layer`` run on ``module.params`` and an explicit state gives the module's steps."""
    net, step_shape = make_cnn3d()
    xs = clip_for(step_shape, 7)
    layer, params = net.layer, net.params
    assert isinstance(layer, cofunc.Seq)
    state = layer.init_state(params, step_shape, dtype=F64)
    for t in range(7):
        y, state = layer.step(params, state, xs[:, :, t])
        out = net.forward_step(xs[:, :, t])
        assert (out is None) == (not bool(layer.valid(state).all()))
        if out is not None:
            assert torch.equal(out, y)
    assert_same_state(state, net.get_state())


def test_sequential_params_are_the_childrens_tensors():
    net, _ = make_cnn3d()
    params = net.params
    assert params["0"]["weight"] is net[0].weight
    assert params["1"]["running_mean"] is net[1].running_mean
    assert params["4"]["bias"] is net[4].bias
    assert set(cofunc.flatten_params(params)) == set(net.state_dict())


# --- conversion and state dicts -------------------------------------------------------------------


def test_converted_module_loads_torch_state_dict_unchanged():
    ref = torch_cnn3d(0)
    # Real running statistics: a few training-mode passes.
    with torch.no_grad():
        for _ in range(3):
            ref(torch.randn(4, 2, 6, 4, 4))
    ref.eval()
    net = cn.continual(torch_cnn3d(1))  # different initial weights
    assert list(net.state_dict()) == list(ref.state_dict())
    net.load_state_dict(ref.state_dict())  # strict, no key remapping
    net.eval()
    x = torch.randn(2, 2, 9, 4, 4)
    assert torch.equal(net(x), ref(x))
    torch.testing.assert_close(net.forward_steps(x, pad_end=True), ref(x), atol=1e-5, rtol=1e-4)


def test_hand_built_sequential_loads_torch_state_dict_unchanged():
    ref = randomise_batch_norms(torch_cnn3d(0)).eval()
    net = cn.Sequential(
        cn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout(0.3),
        cn.Conv3d(4, 3, (3, 1, 1), stride=(2, 1, 1)),
    )
    net.load_state_dict(ref.state_dict())
    net.eval()
    x = torch.randn(2, 2, 9, 4, 4)
    assert torch.equal(net(x), ref(x))
    outs = step_through(net, x)
    assert [o is None for o in outs] == expected_none(9, net.delay, 2)
    torch.testing.assert_close(stack_emitted(outs), ref(x)[:, :, :3], atol=1e-5, rtol=1e-4)


def test_continual_copies_weights_and_options():
    ref = torch_cnn3d(0).eval()
    net = cn.continual(ref)
    assert isinstance(net, cn.Sequential)
    assert isinstance(net[0], cn.Conv3d) and isinstance(net[4], cn.Conv3d)
    assert isinstance(net[1], nn.BatchNorm3d) and isinstance(net[1], cn.ContinualModule)
    assert isinstance(net[3], nn.Dropout) and net[3].p == 0.3
    assert not net.training and not net[1].training
    assert net[4].stride == (2, 1, 1)
    # A copy: the converted module does not share tensors with the original.
    assert net[0].weight is not ref[0].weight and torch.equal(net[0].weight, ref[0].weight)
    with torch.no_grad():
        ref[0].weight.add_(1.0)
    assert not torch.equal(net[0].weight, ref[0].weight)
    # Continual modules come back unchanged.
    assert cn.continual(net) is net


def test_sequential_converts_torch_modules():
    net = cn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), cn.Delay(1))
    assert isinstance(net[0], cn.Conv1d) and isinstance(net[1], cn.ContinualModule) and isinstance(net[1], nn.ReLU)
    net.append(nn.Conv1d(3, 2, 1))
    assert isinstance(net[3], cn.Conv1d)
    net[1] = nn.Tanh()
    assert isinstance(net[1], cn.ContinualModule) and isinstance(net[1], nn.Tanh)
    named = cn.Sequential(OrderedDict(conv=nn.Conv1d(2, 3, 3), act=nn.ReLU()))
    assert list(named.state_dict()) == ["conv.weight", "conv.bias"]
    assert isinstance(named.conv, cn.Conv1d)
    # The converted container steps like its clip forward.
    net = net.double()
    xs = clip_for((2, 2), 8)
    torch.testing.assert_close(net.forward_steps(xs, pad_end=True), net(xs))


class Unknown(nn.Module):
    """A module type no converter knows."""

    def forward(self, x):
        return x.flip(2)


def test_continual_of_unsupported_module_names_type_and_register():
    for bad in (Unknown(), nn.Sequential(nn.Conv1d(1, 1, 3), Unknown())):
        with pytest.raises(cofunc.UnsupportedModuleError) as info:
            cn.continual(bad)
        message = str(info.value)
        assert "Unknown" in message and "register" in message
    with pytest.raises(cofunc.UnsupportedModuleError, match="Unknown"):
        cn.Sequential(nn.ReLU(), Unknown())


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


class Lag(nn.Module):
    """A user module whose continual version is a delay (clip forward: identity)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, x):
        return x


def test_register_a_user_converter():
    cn.register(Doubler, cn.lift_nn_module)
    cn.register(Lag, lambda module: cn.Delay(module.n))
    ref = nn.Sequential(nn.Conv1d(2, 2, 3), Lag(2), Doubler()).double()
    net = cn.continual(ref)
    assert isinstance(net[1], cn.Delay) and isinstance(net[2], Doubler)
    assert net.delay == 2 + 2
    xs = clip_for((1, 2), 8)
    assert torch.equal(net(xs), ref(xs))
    outs = step_through(net, xs)
    assert [o is None for o in outs] == expected_none(8, 4, 1)
    torch.testing.assert_close(stack_emitted(outs), ref(xs)[:, :, :4])
    with pytest.raises(TypeError, match="register"):
        cn.register(lambda x: x, cn.lift_nn_module)
