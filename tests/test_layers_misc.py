"""Per-frame and frame-selecting layers: ``linear``, ``identity``, ``Lambda``, ``add``,
``multiply``, ``constant``, ``zero``, ``one``, ``reshape``, ``skip``, ``delay``; their
``cofunc.nn`` adapters; and ``continual(module)`` conversion of torch.nn stacks.

Shapes: clips ``(*B, C, T, *S)``, steps ``(*B, C, *S)``. For each layer: ``forward`` equals the
torch.nn counterpart (``nn.Linear`` on the channel axis) or the obvious clip computation; step
outputs appear after ``delay`` steps and equal the clip outputs; ``steps(pad_end=True)`` equals
``forward``; ``vmap(step)`` equals the batched step; the adapters' ``update_state=False`` changes
nothing.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import cofunc
import cofunc.nn as cn
from conftest import (
    F64,
    assert_tree_close,
    assert_tree_equal,
    clip_len,
    expected_flags,
    fresh_state,
    step_through,
    time_slice,
    tree_clone,
)

VMAP_STEP = dict(in_dims=(None, 0, 0))


def assert_call_modes(layer, params, xs, out_layer=None, **tol):
    """From a fresh state: outputs at ``expected_flags``, equal to ``forward``'s first frames;
    ``steps`` equals stepping; ``steps(pad_end=True)`` equals ``forward``. Returns ``forward``.

    ``out_layer`` names the output time axis when the output rank differs (reshape)."""
    out_layer = out_layer or layer
    ys = layer.forward(params, xs)
    run = step_through(layer, params, xs, out_layer=out_layer)
    assert run.flags == expected_flags(layer.delay, layer.stride, clip_len(layer, xs))
    n = clip_len(out_layer, run.ys)
    torch.testing.assert_close(run.ys, time_slice(out_layer, ys, 0, n), **tol)
    state = fresh_state(layer, params, xs)
    chunk, after = layer.steps(params, state, xs)
    torch.testing.assert_close(chunk, run.ys, **tol)
    assert_tree_close(after, run.state, "state after steps", **tol)
    padded, _ = layer.steps(params, state, xs, pad_end=True)
    torch.testing.assert_close(padded, ys, **tol)
    return ys


def module_steps(module, xs):
    """``forward_step`` on each frame of ``xs: (B, C, T, *S)``; the list of outputs (or None)."""
    return [module.forward_step(xs[:, :, t]) for t in range(xs.shape[2])]


def assert_update_state_false_is_a_probe(module, xs, at: int):
    """Step ``module`` over ``xs[:, :, :at]``, then probe frame ``at`` with
    ``update_state=False``: the stored state is unchanged and the output is the real step's."""
    for t in range(at):
        module.forward_step(xs[:, :, t])
    before = module.get_state()
    before = None if before is None else tree_clone(before)
    probe = module.forward_step(xs[:, :, at], update_state=False)
    if before is None:
        assert module.get_state() is None
    else:
        assert_tree_equal(module.get_state(), before, "update_state=False changed the state")
    real = module.forward_step(xs[:, :, at])
    assert (probe is None) == (real is None)
    assert probe is None or torch.equal(probe, real)


def assert_vmap_equals_batched(layer, params, frames):
    """``vmap(layer.step)`` over the leading stream dim of ``frames`` (each ``(N, C, *S)``)
    equals the batched step: validity, valid outputs and states."""
    state = layer.init_state(params, tuple(frames[0].shape), dtype=frames[0].dtype)
    vstate = tree_clone(state)
    vstep = torch.func.vmap(layer.step, **VMAP_STEP)
    for t, x in enumerate(frames):
        y, state = layer.step(params, state, x)
        yv, vstate = vstep(params, vstate, x)
        valid = layer.valid(state)
        assert torch.equal(valid.expand(x.shape[:1]), layer.valid(vstate).expand(x.shape[:1])), f"step {t}"
        if bool(valid.all()):
            torch.testing.assert_close(yv, y, msg=f"step {t}")
        assert_tree_close(vstate, state, f"state after step {t}")


# --- linear ----------------------------------------------------------------------------------------


@given(lead=st.sampled_from([(), (2,), (2, 1)]), spatial=st.sampled_from([(), (3,), (2, 3)]),
       bias=st.booleans(), T=st.integers(0, 5))
def test_linear_equals_nn_linear_on_the_channel_axis(lead, spatial, bias, T):
    """``forward`` is ``nn.Linear`` applied to the channel axis, bit for bit (float32); steps
    apply it to each frame (stateless, delay 0)."""
    torch.manual_seed(0)
    ref = nn.Linear(4, 3, bias=bias)
    rank = 1 + len(spatial)
    layer = cofunc.Linear(4, 3, bias, step_rank=rank) if lead != (2,) else cofunc.linear(4, 3, bias)
    params = layer.params_from(ref)
    assert sorted(params) == sorted(ref.state_dict())
    xs = torch.randn(lead + (4, T) + spatial)
    axis = len(lead)
    expected = ref(xs.movedim(axis, -1)).movedim(-1, axis)
    assert torch.equal(layer.forward(params, xs), expected)
    assert (layer.delay, layer.stride, layer.stateful) == (0, 1, False)
    if T:
        ys = assert_call_modes(layer, params, xs)
        assert torch.equal(ys, expected)


def test_linear_init_params_like_nn_linear():
    layer = cofunc.linear(5, 2)
    params = layer.init_params(dtype=F64)
    assert params["weight"].shape == (2, 5) and params["bias"].shape == (2,) and params["weight"].dtype == F64
    bound = 1 / 5 ** 0.5  # kaiming-uniform bound of nn.Linear
    assert float(params["weight"].abs().max()) <= bound and float(params["bias"].abs().max()) <= bound
    assert "bias" not in cofunc.linear(5, 2, bias=False).init_params()


def test_linear_channel_dim_as_in_co():
    """``channel_dim=-1`` projects the last axis of clips and steps alike (co's convention)."""
    torch.manual_seed(0)
    ref = nn.Linear(6, 2)
    layer = cofunc.linear(6, 2, channel_dim=-1)
    params = layer.params_from(ref)
    xs = torch.randn(2, 3, 5, 6, dtype=F64)  # (B, C, T, F)
    ref = ref.double()
    params = layer.params_from(ref)
    assert torch.equal(layer.forward(params, xs), ref(xs))
    ys = assert_call_modes(layer, params, xs)
    assert torch.equal(ys, ref(xs))


def test_linear_adapter():
    torch.manual_seed(0)
    ref = nn.Linear(4, 3).double()
    module = cn.continual(ref)
    assert isinstance(module, cn.Linear) and isinstance(module, nn.Linear)
    assert list(module.state_dict()) == list(ref.state_dict())
    assert torch.equal(module.weight, ref.weight) and module.weight is not ref.weight
    assert module.channel_dim == -1  # torch's (and co's) axis: the last
    feats_last = torch.randn(2, 5, 4, dtype=F64)
    assert torch.equal(module(feats_last), ref(feats_last))
    module = cn.Linear.build_from(ref, channel_dim=1)
    xs = torch.randn(2, 4, 5, 3, dtype=F64)
    expected = ref(xs.movedim(1, -1)).movedim(-1, 1)
    assert torch.equal(module(xs), expected)
    assert torch.equal(module.forward_steps(xs, pad_end=True), expected)
    outs = module_steps(module, xs)
    assert torch.equal(torch.stack(outs, dim=2), expected)
    assert_update_state_false_is_a_probe(cn.Linear(4, 3, channel_dim=1).double(), xs, 2)
    co_style = cn.Linear.build_from(ref, channel_dim=-1)
    feats = torch.randn(2, 3, 5, 4, dtype=F64)
    assert torch.equal(co_style(feats), ref(feats))
    assert torch.equal(co_style.forward_step(feats[:, :, 0]), ref(feats[:, :, 0]))


def test_linear_vmap_equals_batched():
    """With the rank known (given, or taken from a conv before it in a seq)."""
    layer = cofunc.Linear(3, 2, step_rank=2)
    params = layer.init_params(dtype=F64)
    assert_vmap_equals_batched(layer, params, [torch.randn(4, 3, 5, dtype=F64) for _ in range(3)])
    net = cofunc.seq(cofunc.conv1d(2, 3, 3, padding=1), cofunc.linear(3, 3))
    assert net.layers[1].step_rank == 1
    net_params = net.init_params(dtype=F64)
    assert_vmap_equals_batched(net, net_params, [torch.randn(4, 2, dtype=F64) for _ in range(5)])


# --- closures ----------------------------------------------------------------------------------------

SPATIAL_CONSTANT = torch.arange(3, dtype=F64)  # broadcasts against frames (B, C, 3) and clips (B, C, T, 3)

CLOSURES = {
    "identity": (cofunc.identity, cn.Identity, lambda x: x),
    "add_scalar": (lambda: cofunc.add(1.5), lambda: cn.Add(1.5), lambda x: x + 1.5),
    "add_tensor": (lambda: cofunc.add(SPATIAL_CONSTANT), lambda: cn.Add(SPATIAL_CONSTANT), lambda x: x + SPATIAL_CONSTANT),
    "multiply_scalar": (lambda: cofunc.multiply(-2.0), lambda: cn.Multiply(-2.0), lambda x: x * -2.0),
    "multiply_tensor": (lambda: cofunc.multiply(SPATIAL_CONSTANT), lambda: cn.Multiply(SPATIAL_CONSTANT), lambda x: x * SPATIAL_CONSTANT),
    "constant": (lambda: cofunc.constant(3.0), lambda: cn.Constant(3.0), lambda x: torch.full_like(x, 3.0)),
    "zero": (cofunc.zero, cn.Zero, torch.zeros_like),
    "one": (cofunc.one, cn.One, torch.ones_like),
}


@pytest.mark.parametrize("name", sorted(CLOSURES))
def test_closures(name):
    make, make_module, reference = CLOSURES[name]
    layer = make()
    xs = torch.randn(2, 2, 5, 3, dtype=F64)
    expected = reference(xs)
    assert (layer.delay, layer.stride, layer.stateful) == (0, 1, False)
    assert torch.equal(layer.forward({}, xs), expected)
    assert torch.equal(assert_call_modes(layer, {}, xs), expected)
    module = make_module()
    assert torch.equal(module(xs), expected)
    assert torch.equal(torch.stack(module_steps(module, xs), dim=2), expected)
    assert torch.equal(module.forward_steps(xs, pad_end=True), expected)
    assert_update_state_false_is_a_probe(make_module(), xs, 1)
    # Pointwise: any number of stream dims, and vmap.
    frames = [torch.randn(4, 2, 3, dtype=F64) for _ in range(2)]
    assert_vmap_equals_batched(layer, {}, frames)


def test_identity_ignores_arguments_like_torch():
    module = cn.Identity(3, some_option=True)
    x = torch.randn(1, 2, 4)
    assert torch.equal(module(x), x)


def test_lambda_frame_function():
    """``takes_time=False``: ``fn`` sees frames ``(B, C, *S)``; ``forward`` applies it to each."""
    def fn(frame):
        return frame.flip(1) * frame.sum(dim=1, keepdim=True)

    module = cn.Lambda(fn)
    xs = torch.randn(2, 3, 6, 4, dtype=F64)
    expected = torch.stack([fn(xs[:, :, t]) for t in range(6)], dim=2)
    assert torch.equal(module(xs), expected)
    assert torch.equal(torch.stack(module_steps(module, xs), dim=2), expected)
    assert torch.equal(module.forward_steps(xs, pad_end=True), expected)
    assert_update_state_false_is_a_probe(cn.Lambda(fn), xs, 2)


def test_lambda_clip_function_and_mode_overrides():
    """``takes_time=True``: ``fn`` sees clips ``(B, C, T, *S)`` (a step gets T = 1); the
    ``*_only_fn`` arguments replace ``fn`` in one call mode."""
    softmax = nn.Softmax(dim=1)
    module = cn.Lambda(softmax, takes_time=True)
    assert module.fn is softmax
    xs = torch.randn(2, 3, 5, 2, dtype=F64)
    assert torch.equal(module(xs), softmax(xs))
    # A frame is softmaxed on its own: equal to rounding (vectorised over another length).
    torch.testing.assert_close(torch.stack(module_steps(module, xs), dim=2), softmax(xs))
    mixed = cn.Lambda(lambda x: x, forward_step_only_fn=lambda x: x + 1, takes_time=True)
    assert torch.equal(mixed(xs), xs)
    assert torch.equal(mixed.forward_step(xs[:, :, 0]), xs[:, :, 0] + 1)
    assert torch.equal(mixed.forward_steps(xs), xs)
    with pytest.raises(cofunc.ConfigurationError):
        cn.Lambda()


def test_lambda_with_parametrised_module_uses_its_params():
    """A module ``fn`` is a submodule: its parameters are the adapter's (``fn.weight``)."""
    torch.manual_seed(0)
    inner = nn.Conv1d(3, 2, 1).double()  # a per-frame module on clips (B, C, T)
    module = cn.Lambda(inner, takes_time=True)
    assert list(module.state_dict()) == ["fn.weight", "fn.bias"]
    xs = torch.randn(2, 3, 4, dtype=F64)
    assert torch.equal(module(xs), inner(xs))
    torch.testing.assert_close(torch.stack(module_steps(module, xs), dim=2), inner(xs))


# --- reshape ------------------------------------------------------------------------------------------


def test_reshape_excludes_batch_and_time():
    """A step ``(*B, C, *S) -> (*B, *shape)``; a clip's frames are reshaped alike, with time
    after the first new axis: the obvious clip computation is the per-frame reshape."""
    layer = cofunc.reshape(4, 3)
    xs = torch.randn(2, 2, 5, 6, dtype=F64)  # (B, C=2, T, S=6) -> frames (B, 4, 3)
    expected = torch.stack([xs[:, :, t].reshape(2, 4, 3) for t in range(5)], dim=2)
    ys = layer.forward({}, xs)
    assert torch.equal(ys, expected)
    run = step_through(layer, {}, xs, out_layer=cofunc.Reshape((4, 3), step_rank=2))
    assert run.flags == [True] * 5 and torch.equal(run.ys, expected)
    padded, _ = layer.steps({}, (), xs, pad_end=True)
    assert torch.equal(padded, expected)
    # One layer for any batch size (co's Reshape shapes include the batch).
    assert layer.forward({}, torch.randn(7, 2, 5, 6)).shape == (7, 4, 5, 3)
    flat = cofunc.reshape(-1, contiguous=True)
    assert flat.step({}, (), xs[:, :, 0])[0].shape == (2, 12)
    assert flat.forward({}, xs).is_contiguous()


def test_reshape_with_rank_and_stream_dims():
    """With the rank known, any number of stream dims; vmap equals the batched step."""
    layer = cofunc.Reshape((3, 2), step_rank=2)
    out_layer = cofunc.Reshape((3, 2), step_rank=2)  # output rank 2 as well
    xs = torch.randn(2, 3, 2, 4, 3, dtype=F64)  # (B1, B2, C=2, T, S=3)
    assert_call_modes(layer, {}, xs, out_layer=out_layer)
    assert layer.forward({}, xs).shape == (2, 3, 3, 4, 2)
    assert_vmap_equals_batched(layer, {}, [torch.randn(3, 2, 3, dtype=F64) for _ in range(2)])
    net = cofunc.seq(cofunc.conv2d(2, 2, (2, 1)), cofunc.reshape(6), cofunc.linear(6, 2))
    params = net.init_params(dtype=F64)
    assert net.out_rank == 1
    assert_vmap_equals_batched(net, params, [torch.randn(3, 2, 3, dtype=F64) for _ in range(3)])
    xs = torch.randn(2, 2, 5, 3, dtype=F64)
    ys = net.forward(params, xs)
    assert ys.shape == (2, 2, 4)
    run = step_through(net, params, xs, out_layer=net.layers[-1])
    torch.testing.assert_close(run.ys, ys)


def test_reshape_adapter():
    module = cn.Reshape(4, 3)
    xs = torch.randn(2, 2, 5, 6, dtype=F64)
    expected = torch.stack([xs[:, :, t].reshape(2, 4, 3) for t in range(5)], dim=2)
    assert torch.equal(module(xs), expected)
    assert torch.equal(torch.stack(module_steps(module, xs), dim=2), expected)
    assert torch.equal(module.forward_steps(xs, pad_end=True), expected)
    assert_update_state_false_is_a_probe(cn.Reshape(4, 3), xs, 1)
    with pytest.raises(cofunc.ConfigurationError):
        cofunc.reshape(2, -1, -1)


# --- skip and delay ------------------------------------------------------------------------------------


@given(n=st.integers(0, 4), T=st.integers(1, 7), lead=st.sampled_from([(), (2,), (2, 1)]), rank=st.integers(1, 3))
def test_skip(n, T, lead, rank):
    """``forward`` drops the first ``n`` frames; steps emit from step ``n`` on, frame by frame."""
    layer = cofunc.skip(n, step_rank=rank)
    assert (layer.delay, layer.stride, layer.padding, layer.padding_end) == (n, 1, 0, 0)
    xs = torch.randn(lead + (2, T) + (3,) * (rank - 1), dtype=F64)
    axis = layer.time_axis()
    ys = assert_call_modes(layer, {}, xs)
    assert torch.equal(ys, xs.narrow(axis, min(n, T), T - min(n, T)))


@given(n=st.integers(0, 4), T=st.integers(1, 7), lead=st.sampled_from([(), (2,), (2, 1)]), rank=st.integers(1, 3))
def test_delay(n, T, lead, rank):
    """``forward`` is the identity; step ``t >= n`` outputs frame ``t - n``; ``pad_end``
    flushes the last ``n`` frames."""
    layer = cofunc.delay(n, step_rank=rank)
    xs = torch.randn(lead + (2, T) + (3,) * (rank - 1), dtype=F64)
    assert torch.equal(assert_call_modes(layer, {}, xs), xs)
    run = step_through(layer, {}, xs)
    axis = layer.time_axis()
    for t in range(n, T):
        assert torch.equal(run.outputs[t], xs.select(axis, t - n))


@pytest.mark.parametrize("layer", [cofunc.skip(2, step_rank=2), cofunc.delay(2, step_rank=2)], ids=["skip", "delay"])
def test_skip_delay_vmap(layer):
    assert_vmap_equals_batched(layer, {}, [torch.randn(3, 2, 4, dtype=F64) for _ in range(5)])


@pytest.mark.parametrize("make", [lambda: cn.Skip(2), lambda: cn.Delay(2)], ids=["skip", "delay"])
def test_skip_delay_adapters(make):
    module = make()
    xs = torch.randn(2, 3, 6, 4, dtype=F64)
    expected = xs[:, :, 2:] if isinstance(module, cn.Skip) else xs
    assert torch.equal(module(xs), expected)
    outs = module_steps(module, xs)
    assert [o is None for o in outs] == [True, True, False, False, False, False]
    assert torch.equal(torch.stack(outs[2:], dim=2), expected[:, :, :4])
    module.clean_state()
    assert torch.equal(module.forward_steps(xs, pad_end=True), expected)
    for at in (1, 3):
        assert_update_state_false_is_a_probe(make(), xs, at)


# --- continual(module) ----------------------------------------------------------------------------------


def randomise_norms(module: nn.Module):
    """Non-trivial affine params and running statistics for every norm of ``module``."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if getattr(m, "weight", None) is not None and isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


def torch_stack_3d():
    """Convs, pools (an adaptive one at the end), activations, norms and dropouts (3D clips)."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv3d(2, 4, 3, padding=(1, 1, 1)),
        bn=nn.BatchNorm3d(4),
        act=nn.ReLU(),
        drop=nn.Dropout3d(0.3),
        pool=nn.MaxPool3d((2, 2, 2), stride=(1, 2, 2), padding=(1, 0, 0)),
        conv2=nn.Conv3d(4, 6, (3, 1, 1), stride=(2, 1, 1)),
        inorm=nn.InstanceNorm3d(6, affine=True, track_running_stats=True),
        gelu=nn.GELU(),
        avg=nn.AvgPool3d((1, 2, 2)),
        gap=nn.AdaptiveAvgPool3d((1, 1, 1)),
        drop1=nn.Dropout(0.5),
    ))


def test_continual_converts_a_torch_stack():
    """``continual`` converts a Sequential of convs, pools (adaptive ones with a temporal
    window), norms, activations and dropouts; ``forward`` is torch's, bit for bit (eval)."""
    ref = randomise_norms(torch_stack_3d()).eval()
    net = cn.continual(ref, temporal_window=2)
    assert isinstance(net, cn.Sequential)
    assert [type(m).__name__ for m in net] == [type(m).__name__ for m in ref]
    for ours, theirs in zip(net, ref):
        assert isinstance(ours, cn.ContinualModule)
        assert isinstance(ours, type(theirs)) or type(theirs).__name__.startswith("Adaptive")
    net.load_state_dict(ref.state_dict(), strict=True)
    xs = torch.randn(2, 2, 11, 8, 8)
    trunk = ref[:-2](xs)
    assert torch.equal(net[:-2](xs), trunk)
    # The adaptive pool averages windows of 2 frames (temporal_window) of the trunk's output.
    windows = torch.cat([ref.gap(trunk[:, :, t:t + 2]) for t in range(trunk.shape[2] - 1)], dim=2)
    assert torch.equal(net(xs), windows)
    net = net.double()
    xs = xs.double()
    torch.testing.assert_close(net.forward_steps(xs, pad_end=True), net(xs))
    net.clean_state()
    outs = module_steps(net, xs)
    emitted = [o for o in outs if o is not None]
    assert [o is None for o in outs] == [not f for f in expected_flags(net.delay, net.stride[0], 11)]
    torch.testing.assert_close(torch.stack(emitted, dim=2), net(xs)[:, :, : len(emitted)])


def test_continual_converts_linear_head_and_dropout1d():
    """A 1d stack: conv, Dropout1d, LayerNorm over channels-last features via Linear, pools."""
    torch.manual_seed(0)
    ref = nn.Sequential(
        nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4), nn.Dropout1d(0.2), nn.SiLU(),
        nn.AvgPool1d(2, stride=1, padding=1, count_include_pad=False), nn.MaxPool1d(3, stride=2, ceil_mode=True),
        nn.Linear(4, 2), nn.PReLU(), nn.Softmax(dim=1),
    ).double()
    randomise_norms(ref).eval()
    net = cn.continual(ref)
    assert isinstance(net[2], nn.Dropout1d) and isinstance(net[6], cn.Linear) and net[6].channel_dim == -1
    net[6] = cn.Linear.build_from(ref[6], channel_dim=1)
    xs = torch.randn(2, 3, 10, dtype=F64)
    # nn.Linear projects the last axis; the continual Linear projects channels, so compare
    # with torch's on channels moved last.
    trunk = ref[:6](xs)
    expected = ref[7:](ref[6](trunk.movedim(1, -1)).movedim(-1, 1))
    assert torch.equal(net(xs), expected)
    torch.testing.assert_close(net.forward_steps(xs, pad_end=True), expected)
    net.clean_state()
    outs = module_steps(net, xs)
    emitted = torch.stack([o for o in outs if o is not None], dim=2)
    torch.testing.assert_close(emitted, expected[:, :, : emitted.shape[2]])


class Unknown(nn.Module):
    def forward(self, x):
        return x.cumsum(2)


@pytest.mark.parametrize("bad", [Unknown(), nn.Sequential(nn.Conv1d(1, 1, 1), Unknown()), nn.ConvTranspose1d(1, 1, 3)],
                         ids=["custom", "nested", "transposed_conv"])
def test_continual_rejects_unknown_modules(bad):
    with pytest.raises(cofunc.UnsupportedModuleError, match="register"):
        cn.continual(bad)


@pytest.mark.parametrize("make, frame", [
    (lambda: nn.GroupNorm(2, 4), (2, 4, 3)),
    (lambda: nn.InstanceNorm1d(4), (2, 4)),
    (lambda: nn.InstanceNorm2d(4, affine=True), (2, 4, 3)),
], ids=["group_norm", "instance_norm_1d", "instance_norm_2d_affine"])
def test_clip_statistics_norms_forward_but_refuse_to_step(make, frame):
    """Norms over time: the clip forward is torch's; stepping raises ConfigurationError (also
    inside a Sequential) and leaves no state behind."""
    ref = make().double()
    module = cn.continual(ref)
    xs = torch.randn(frame[:2] + (5,) + frame[2:], dtype=F64)
    assert torch.equal(module(xs), ref(xs))
    with pytest.raises(cofunc.ConfigurationError, match=type(ref).__name__):
        module.forward_step(torch.randn(frame, dtype=F64))
    with pytest.raises(cofunc.ConfigurationError, match=type(ref).__name__):
        module.forward_steps(xs)
    assert module.get_state() is None
    net = cn.continual(nn.Sequential(nn.Conv1d(4, 4, 1) if len(frame) == 2 else nn.Conv2d(4, 4, 1), make())).double()
    with pytest.raises(cofunc.ConfigurationError):
        net.forward_steps(xs)
    assert net.get_state() is None


def test_batch_norm_in_train_mode_steps_like_co_with_a_warning():
    """In training mode a step is normalised with its own batch statistics and updates the
    running statistics, as co (torch's module on the frame) does; a warning says it differs
    from the clip. In eval mode the steps are exact."""
    ref = nn.BatchNorm2d(3).double().train()
    module = cn.continual(ref)
    xs = torch.randn(2, 3, 5, 4, dtype=F64)
    expected = nn.BatchNorm2d(3).double().train()(xs)
    assert torch.equal(module(xs), expected)
    torch_bn = nn.BatchNorm2d(3).double().train()
    torch_bn.load_state_dict(module.state_dict())
    with pytest.warns(cn.module.TrainingModeStepWarning, match="eval"):
        y = module.forward_step(xs[:, :, 0])
    torch.testing.assert_close(y, torch_bn(xs[:, :, 0:1]).squeeze(2))
    torch.testing.assert_close(module.running_mean, torch_bn.running_mean)
    module.eval()
    torch.testing.assert_close(torch.stack(module_steps(module, xs), dim=2), module(xs))


def test_instance_norm_with_running_statistics_steps_in_eval_mode():
    ref = randomise_norms(nn.InstanceNorm2d(3, affine=True, track_running_stats=True)).double().eval()
    module = cn.continual(ref)
    xs = torch.randn(2, 3, 5, 4, dtype=F64)
    assert torch.equal(module(xs), ref(xs))
    torch.testing.assert_close(torch.stack(module_steps(module, xs), dim=2), ref(xs))


def test_reshape_with_an_inferred_size_on_a_chunk_that_emits_nothing():
    """``reshape(-1)`` after a layer still warming up gets a chunk of no frames: the -1 comes
    from the frame's size, not from the (empty) chunk."""
    import cofunc

    layer = cofunc.seq(cofunc.conv2d(2, 3, (3, 1)), cofunc.reshape(-1))
    params = layer.init_params()
    state = layer.init_state(params, (1, 2, 4))
    ys, state = layer.steps(params, state, torch.randn(1, 2, 2, 4))
    assert ys.shape == (1, 12, 0)
    ys, state = layer.steps(params, state, torch.randn(1, 2, 3, 4))
    assert ys.shape == (1, 12, 3)
