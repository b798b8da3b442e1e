"""The nn.Module adapters of `cofunc.nn`: clip forward, stepping, state handling, conversion,
state dicts and ``call_mode``.

Shapes: clips are ``(B, C, T, *S)``, steps ``(B, C, *S)``. Step outputs are compared with the
clip ``forward`` in float64, where the different conv algorithms agree to rounding.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict

import optree
import pytest
import torch
from torch import nn

import cofunc
import cofunc.nn as cn

F64 = torch.float64

# torch warns that padding="same" with an even kernel copies the input; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


# --- helpers ---------------------------------------------------------------------------------


def leaves(state):
    return optree.tree_leaves(state, namespace="cofunc")


def snapshot(state):
    """A deep copy of a state pytree (clones every leaf)."""
    return optree.tree_map(torch.clone, state, namespace="cofunc")


def assert_same_state(a, b):
    """Two states have the same structure and bit-identical leaves."""
    assert optree.tree_structure(a, namespace="cofunc") == optree.tree_structure(b, namespace="cofunc")
    for x, y in zip(leaves(a), leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert torch.equal(x, y)


def assert_close_state(a, b):
    """Two states have the same structure and leaves equal up to rounding (different code paths)."""
    assert optree.tree_structure(a, namespace="cofunc") == optree.tree_structure(b, namespace="cofunc")
    for x, y in zip(leaves(a), leaves(b)):
        torch.testing.assert_close(x, y)


def step_through(module, xs):
    """``forward_step`` on each frame of ``xs: (B, C, T, *S)``; a list of T outputs (or None)."""
    return [module.forward_step(xs[:, :, t]) for t in range(xs.shape[2])]


def stack_emitted(outs):
    """Stack the non-None step outputs ``(B, C, *S)`` on dim 2, or None if there are none."""
    real = [o for o in outs if o is not None]
    return torch.stack(real, dim=2) if real else None


def expected_none(n_steps, delay, stride):
    """co's timing from a fresh state: nothing for ``delay`` steps, then one output per ``stride``."""
    return [t < delay or (t - delay) % stride != 0 for t in range(n_steps)]


def n_emitted(n_steps, delay, stride):
    return sum(not none for none in expected_none(n_steps, delay, stride))


def temporal_stride(module) -> int:
    return module.stride[0]


def randomise_batch_norms(module: nn.Module, seed: int = 0):
    """Give every batch norm non-trivial affine params and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


# --- the modules under test --------------------------------------------------------------------

# (dims, kwargs) for Conv{dims}d; the first entry of every tuple option is time.
CONV_CONFIGS = {
    "1d_k3_p1": (1, dict(in_channels=2, out_channels=4, kernel_size=3, padding=1)),
    "1d_k3_s2_p2_d2": (1, dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=2, dilation=2)),
    "1d_replicate": (1, dict(in_channels=2, out_channels=2, kernel_size=3, padding=1, padding_mode="replicate")),
    "2d_groups_s2": (2, dict(in_channels=4, out_channels=6, kernel_size=(3, 3), stride=(2, 1), padding=(1, 1), groups=2)),
    "2d_replicate_spatial": (2, dict(in_channels=2, out_channels=3, kernel_size=(2, 3), padding=(1, 1), padding_mode="replicate")),
    "2d_reflect_spatial": (2, dict(in_channels=2, out_channels=3, kernel_size=(3, 3), padding=(0, 1), padding_mode="reflect")),
    "2d_same_even": (2, dict(in_channels=2, out_channels=2, kernel_size=(4, 3), padding="same", dilation=(1, 2))),
    "3d_s122_p2": (3, dict(in_channels=2, out_channels=3, kernel_size=3, stride=(1, 2, 2), padding=(2, 1, 1))),
    "3d_s3": (3, dict(in_channels=2, out_channels=2, kernel_size=(3, 1, 1), stride=(3, 1, 1), padding=(1, 0, 0), bias=False)),
    "3d_stateless": (3, dict(in_channels=2, out_channels=3, kernel_size=(1, 3, 3), padding=(0, 1, 1))),
}
CN_CONV = {1: cn.Conv1d, 2: cn.Conv2d, 3: cn.Conv3d}
NN_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SPATIAL = {1: (), 2: (5,), 3: (5, 4)}


def make_conv(name, dtype=F64):
    dims, kwargs = CONV_CONFIGS[name]
    torch.manual_seed(1)
    return CN_CONV[dims](**kwargs, dtype=dtype), (2, kwargs["in_channels"]) + SPATIAL[dims]


def make_cnn3d(dtype=F64):
    """conv, BN (eval), ReLU, dropout, strided conv: converted from torch.nn with `continual`."""
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv3d(4, 3, (3, 1, 1), stride=(2, 1, 1)),
    )
    randomise_batch_norms(net)
    return cn.continual(net.to(dtype)).eval(), (2, 2, 4, 4)


def make_paper_seq(dtype=F64):
    """The paper's example (conv k3 p2 s2, then conv k3): rf 7, padding 2, delay 4, stride 2."""
    torch.manual_seed(3)
    net = cn.Sequential(cn.Conv1d(1, 2, 3, padding=2, stride=2), nn.ReLU(), cn.Conv1d(2, 1, 3))
    return net.to(dtype), (2, 1)


def make_seq_with_delay(dtype=F64):
    torch.manual_seed(4)
    net = cn.Sequential(
        cn.Conv2d(2, 3, (3, 1), padding=(1, 0)), cn.Delay(2), nn.Tanh(), cn.Conv2d(3, 2, (2, 3), stride=(3, 1)),
    )
    return net.to(dtype), (1, 2, 5)


def make_two_strides(dtype=F64):
    torch.manual_seed(5)
    net = cn.Sequential(cn.Conv1d(2, 3, 3, stride=2, padding=1), cn.Conv1d(3, 2, 3, stride=2, padding=1))
    return net.to(dtype), (3, 2)


def make_delay(dtype=F64):
    return cn.Delay(3), (2, 3, 4)


MODULES = {f"conv_{name}": (lambda name=name: make_conv(name)) for name in CONV_CONFIGS}
MODULES.update(
    cnn3d=make_cnn3d, paper_seq=make_paper_seq, seq_with_delay=make_seq_with_delay,
    two_strides=make_two_strides, delay=make_delay,
)


def clip_for(step_shape, n_steps, seed=0, dtype=F64):
    """A random clip ``(B, C, T, *S)`` whose frames have shape ``step_shape``."""
    g = torch.Generator().manual_seed(seed)
    shape = list(step_shape)
    shape.insert(2, n_steps)
    return torch.randn(shape, generator=g, dtype=dtype)


# --- clip forward --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONV_CONFIGS))
def test_conv_forward_equals_torch_nn_exactly(name):
    """``forward`` is torch.nn's computation: bit-identical output for the same weights."""
    dims, kwargs = CONV_CONFIGS[name]
    torch.manual_seed(0)
    ref = NN_CONV[dims](**kwargs)
    conv = CN_CONV[dims](**kwargs)
    conv.load_state_dict(ref.state_dict())
    assert isinstance(conv, NN_CONV[dims])
    x = clip_for((2, kwargs["in_channels"]) + SPATIAL[dims], 9, dtype=torch.float32)
    assert torch.equal(conv(x), ref(x))
    assert torch.equal(conv.forward(x), ref(x))


def test_converted_sequential_forward_equals_torch_nn_exactly():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 3, (3, 1, 1), stride=(2, 1, 1)))
    randomise_batch_norms(ref).eval()
    net = cn.continual(ref)
    x = clip_for((2, 2, 4, 4), 8, dtype=torch.float32)
    assert torch.equal(net(x), ref(x))


# --- stepping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODULES))
def test_forward_step_timing_and_values(name):
    """None while warming up and on strided steps; the k-th output is ``forward(x)[:, :, k]``."""
    module, step_shape = MODULES[name]()
    xs = clip_for(step_shape, 11)
    outs = step_through(module, xs)
    assert [o is None for o in outs] == expected_none(11, module.delay, temporal_stride(module))
    emitted = stack_emitted(outs)
    assert emitted is not None
    ref = module.forward(xs)
    torch.testing.assert_close(emitted, ref[:, :, : emitted.shape[2]])


@pytest.mark.parametrize("name", list(MODULES))
def test_forward_steps_pad_end_from_fresh_equals_forward(name):
    module, step_shape = MODULES[name]()
    xs = clip_for(step_shape, 10)
    torch.testing.assert_close(module.forward_steps(xs, pad_end=True), module.forward(xs))


@pytest.mark.parametrize("name", list(MODULES))
def test_forward_steps_equals_forward_step(name):
    """Without end padding, ``forward_steps`` emits exactly what stepping frame by frame emits."""
    module, step_shape = MODULES[name]()
    stepped = copy.deepcopy(module)
    xs = clip_for(step_shape, 10)
    ys = module.forward_steps(xs)
    expected = stack_emitted(step_through(stepped, xs))
    assert ys.shape[2] == n_emitted(10, module.delay, temporal_stride(module))
    torch.testing.assert_close(ys, expected)
    assert_close_state(module.get_state(), stepped.get_state())


@pytest.mark.parametrize("name", list(MODULES))
def test_pad_end_does_not_corrupt_continuation(name):
    """steps(x1, pad_end=True) then steps(x2) gives the outputs and state of steps(cat(x1, x2))."""
    module, step_shape = MODULES[name]()
    whole = copy.deepcopy(module)
    xs = clip_for(step_shape, 12)
    x1, x2 = xs[:, :, :5], xs[:, :, 5:]
    n1 = n_emitted(5, module.delay, temporal_stride(module))
    ref = whole.forward_steps(xs)
    padded = module.forward_steps(x1, pad_end=True)
    torch.testing.assert_close(padded, module.forward(x1))
    ys2 = module.forward_steps(x2)
    torch.testing.assert_close(ys2, ref[:, :, n1:])
    assert_close_state(module.get_state(), whole.get_state())


@pytest.mark.parametrize("name", list(MODULES))
def test_chunked_steps_equal_one_chunk(name):
    """Chunks of uneven length (1, 4, 2, 3 steps) give the same outputs as one chunk."""
    module, step_shape = MODULES[name]()
    whole = copy.deepcopy(module)
    xs = clip_for(step_shape, 10)
    outs, t = [], 0
    for n in (1, 4, 2, 3):
        y = module.forward_steps(xs[:, :, t : t + n])
        if y is not None:
            outs.append(y)
        t += n
    torch.testing.assert_close(torch.cat(outs, dim=2), whole.forward_steps(xs))


@pytest.mark.parametrize("name", ["conv_3d_s3", "cnn3d", "delay", "paper_seq"])
def test_update_state_false_leaves_state_unchanged(name):
    module, step_shape = MODULES[name]()
    probe = copy.deepcopy(module)  # same weights; restored to the stored state to get the true outputs
    xs = clip_for(step_shape, 12)
    # From a fresh state nothing is stored.
    module.forward_steps(xs[:, :, :3], update_state=False)
    module.forward_step(xs[:, :, 0], update_state=False)
    assert module.get_state() is None

    module.forward_steps(xs[:, :, :5])
    stored = module.get_state()
    before = snapshot(stored)
    for call in (
        lambda m, update: m.forward_step(xs[:, :, 5], update_state=update),
        lambda m, update: m.forward_steps(xs[:, :, 5:9], update_state=update),
        lambda m, update: m.forward_steps(xs[:, :, 5:9], pad_end=True, update_state=update),
    ):
        probe.set_state(stored)
        got, want = call(module, False), call(probe, True)
        assert (got is None) == (want is None)
        if got is not None:
            assert torch.equal(got, want)
        assert module.get_state() is stored
        assert_same_state(module.get_state(), before)
    # The stream goes on as if the calls had not happened.
    probe.set_state(stored)
    torch.testing.assert_close(module.forward_steps(xs[:, :, 5:]), probe.forward_steps(xs[:, :, 5:]))


@pytest.mark.parametrize("name", ["conv_2d_groups_s2", "cnn3d", "delay"])
def test_clean_state_restarts_the_stream(name):
    module, step_shape = MODULES[name]()
    xs = clip_for(step_shape, 9)
    first = step_through(module, xs)
    assert module.get_state() is not None
    module.clean_state()
    assert module.get_state() is None
    again = step_through(module, xs)
    assert [o is None for o in again] == [o is None for o in first]
    torch.testing.assert_close(stack_emitted(again), stack_emitted(first))


def test_sequential_clean_state_cleans_children():
    net, step_shape = make_paper_seq()
    xs = clip_for(step_shape, 6)
    net.forward_steps(xs)
    net[0].forward_steps(xs)  # the child used on its own keeps its own stream
    net.clean_state()
    assert net.get_state() is None and net[0].get_state() is None


@pytest.mark.parametrize("name", ["conv_1d_k3_s2_p2_d2", "cnn3d", "delay", "seq_with_delay"])
def test_get_state_set_state_round_trip(name):
    """A snapshot taken with get_state, restored with set_state, reproduces the outputs."""
    module, step_shape = MODULES[name]()
    other = copy.deepcopy(module)  # same weights, its own stream
    xs = clip_for(step_shape, 12)
    module.forward_steps(xs[:, :, :4])
    saved = module.get_state()
    saved_copy = snapshot(saved)
    first = step_through(module, xs[:, :, 4:])
    # Stepping on never changed the snapshot (states are never mutated in place).
    assert_same_state(saved, saved_copy)
    module.set_state(saved)
    second = step_through(module, xs[:, :, 4:])
    assert [o is None for o in first] == [o is None for o in second]
    assert torch.equal(stack_emitted(first), stack_emitted(second))
    # The state moves to another module with the same weights.
    other.set_state(saved_copy)
    assert torch.equal(stack_emitted(step_through(other, xs[:, :, 4:])), stack_emitted(first))


def test_state_does_not_alias_inputs():
    """Changing an input after a step does not change the stored state."""
    for name in ("conv_1d_k3_p1", "delay"):
        module, step_shape = MODULES[name]()
        xs = clip_for(step_shape, 6)
        module.forward_steps(xs[:, :, :4])
        frame = xs[:, :, 4].clone()
        module.forward_step(frame)
        before = snapshot(module.get_state())
        xs.add_(1.0)
        frame.add_(1.0)
        assert_same_state(module.get_state(), before)


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


def torch_cnn3d(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout(0.3),
        nn.Conv3d(4, 3, (3, 1, 1), stride=(2, 1, 1)),
    )


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


# --- batch norm modes ------------------------------------------------------------------------------


def test_batch_norm_train_mode_clip_uses_batch_statistics():
    ref = torch_cnn3d(0)[:2].double()  # conv, BN
    net = cn.continual(copy.deepcopy(ref))
    ref.train()
    net.train()
    x = clip_for((2, 2, 4, 4), 6)
    assert torch.equal(net(x), ref(x))
    # Both updated their running statistics the same way.
    assert torch.equal(net[1].running_mean, ref[1].running_mean)
    assert torch.equal(net[1].running_var, ref[1].running_var)


def test_batch_norm_train_mode_steps_warn():
    """In train mode BN normalises over the clip, which a step cannot see: stepping warns (and
    runs co's per-step batch statistics, so co code keeps running)."""
    net = cn.continual(torch_cnn3d(0)[:3].double()).train()
    x = clip_for((2, 2, 4, 4), 6)
    for module, frame in ((net, x[:, :, 0]), (net[1], torch.randn(2, 4, 4, 4, dtype=F64))):
        with pytest.warns(cn.module.TrainingModeStepWarning, match="BatchNorm3d.*eval"):
            module.forward_step(frame)
        module.clean_state()
    with pytest.warns(cn.module.TrainingModeStepWarning, match="BatchNorm3d"):
        net.forward_steps(x)
    net.clean_state()
    # In eval mode the steps are exact.
    net.eval()
    outs = step_through(net, x)
    torch.testing.assert_close(stack_emitted(outs), net(x)[:, :, : len([o for o in outs if o is not None])])


# --- Delay ---------------------------------------------------------------------------------------------


def test_delay_module():
    d = cn.Delay(2)
    xs = clip_for((2, 3, 4), 6)
    assert d(xs) is xs  # clip forward: identity
    outs = step_through(d, xs)
    assert [o is None for o in outs] == [True, True, False, False, False, False]
    for t in range(2, 6):
        assert torch.equal(outs[t], xs[:, :, t - 2])
    d.clean_state()
    assert torch.equal(d.forward_steps(xs, pad_end=True), xs)
    assert torch.equal(cn.Delay(0).forward_step(xs[:, :, 0]), xs[:, :, 0])


# --- call_mode -----------------------------------------------------------------------------------------


def observed_mode(probe: cn.Delay) -> str:
    """Which mode calling ``probe`` (a fresh ``Delay(1)``) runs, told apart by the output.

    The input ``(1, 1, 4)`` is a clip of 4 steps for ``forward``/``forward_steps`` and one frame
    ``(B, C, S)`` for ``forward_step``: forward returns it whole, forward_steps drops the last
    frame still buffered, forward_step is warming up (None).
    """
    probe.clean_state()
    y = probe(torch.zeros(1, 1, 4))
    if y is None:
        return "forward_step"
    return "forward_steps" if y.shape[2] == 3 else "forward"


def test_call_mode_attribute_names_and_co_ints():
    probe = cn.Delay(1)
    assert probe.call_mode == "forward" and observed_mode(probe) == "forward"
    for value, name in ((2, "forward_step"), (1, "forward_steps"), (0, "forward"), ("forward_step", "forward_step"), ("FORWARD_STEPS", "forward_steps")):
        probe.call_mode = value
        assert probe.call_mode == name
        assert observed_mode(probe) == name
    for bad in ("backward", 3, -1, True, None):
        with pytest.raises(cofunc.ConfigurationError, match="call_mode"):
            probe.call_mode = bad


def test_call_mode_attribute_dispatches_conv_and_sequential():
    net, step_shape = make_paper_seq()
    xs = clip_for(step_shape, 9)
    ref = net.forward(xs)
    net.call_mode = "forward_step"
    outs = [net(xs[:, :, t]) for t in range(9)]
    assert [o is None for o in outs] == expected_none(9, 4, 2)
    torch.testing.assert_close(stack_emitted(outs), ref[:, :, :3])
    net.clean_state()
    net.call_mode = "forward_steps"
    torch.testing.assert_close(net(xs), ref[:, :, :3])
    # A child's own mode does not leak into the container's clip forward.
    net.call_mode = "forward"
    net[0].call_mode = "forward_step"
    assert torch.equal(net(xs), ref)


def test_call_mode_context_wins_and_nests():
    probe = cn.Delay(1)
    probe.call_mode = "forward_steps"
    with cn.call_mode("forward_step"):
        assert observed_mode(probe) == "forward_step"
        with cn.call_mode("forward"):
            assert observed_mode(probe) == "forward"
            with cn.call_mode(1):
                assert observed_mode(probe) == "forward_steps"
            assert observed_mode(probe) == "forward"
        assert observed_mode(probe) == "forward_step"  # leaving the inner context restores the outer
    assert observed_mode(probe) == "forward_steps"  # and leaving all restores the attribute
    probe.call_mode = "forward"
    # co's bug: after a nested exit every later context was ignored. Here they keep working.
    with cn.call_mode("forward_step"):
        assert observed_mode(probe) == "forward_step"
    with cn.call_mode(2):
        assert observed_mode(probe) == "forward_step"
    assert observed_mode(probe) == "forward"


def test_call_mode_context_is_restored_after_an_exception():
    probe = cn.Delay(1)
    with pytest.raises(RuntimeError, match="boom"):
        with cn.call_mode("forward_step"):
            raise RuntimeError("boom")
    assert observed_mode(probe) == "forward"
    with pytest.raises(cofunc.ConfigurationError):
        cn.call_mode("sideways")


def test_call_mode_context_runs_the_step():
    conv, step_shape = make_conv("1d_k3_p1")
    xs = clip_for(step_shape, 5)
    ref = conv.forward(xs)
    with cn.call_mode("forward_step"):
        outs = [conv(xs[:, :, t]) for t in range(5)]
    assert outs[0] is None
    torch.testing.assert_close(stack_emitted(outs), ref[:, :, :4])
    conv.clean_state()
    with cn.call_mode("forward_steps"):
        torch.testing.assert_close(conv(xs, pad_end=True), ref)


def test_call_mode_contexts_do_not_leak_across_threads():
    """Two threads inside different contexts at the same time each see only their own."""
    barrier = threading.Barrier(2, timeout=20)
    seen = {}
    errors = []

    def other():
        try:
            probe = cn.Delay(1)
            barrier.wait()  # 1: the main thread is inside "forward_step"
            seen["other, main in context"] = observed_mode(probe)
            with cn.call_mode("forward_steps"):
                barrier.wait()  # 2: both threads are inside their own contexts
                seen["other, both in context"] = observed_mode(probe)
                barrier.wait()  # 3: the main thread has looked
            seen["other, after"] = observed_mode(probe)
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)
            barrier.abort()

    thread = threading.Thread(target=other)
    thread.start()
    probe = cn.Delay(1)
    with cn.call_mode("forward_step"):
        barrier.wait()
        barrier.wait()
        seen["main, both in context"] = observed_mode(probe)
        barrier.wait()
    thread.join(timeout=20)
    assert not errors
    assert seen == {
        "other, main in context": "forward",
        "other, both in context": "forward_steps",
        "main, both in context": "forward_step",
        "other, after": "forward",
    }
    assert observed_mode(probe) == "forward"
