"""co's surface on cofunc.nn (issue: co's own suite passes): printing, pickling, hooks in every
call mode, co's submodule paths and utilities, and co's README / paper examples unchanged."""

from __future__ import annotations

import copy
import io
import logging
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

import cofunc
import cofunc.nn as co
from cofunc.models import agcn, oadtr, x3d

F64 = torch.float64


def _models():
    return [
        co.Sequential(co.Conv3d(3, 4, 3, padding=1), nn.ReLU(), co.MaxPool3d((1, 2, 2)), co.Conv1d(4, 4, 1)),
        x3d("XS", num_classes=5),
        agcn(variant="star", num_classes=5, clip_length=82),
        oadtr(3, in_features=8, embed_dim=16, num_heads=2, dim_feedforward=16, sequence_len=4),
    ]


@pytest.mark.parametrize("index", range(4))
def test_every_model_prints_and_pickles(index):
    model = _models()[index]
    text = repr(model)
    assert "stride=" in text or "Linear(" in text
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert repr(clone) == text
        assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), model.state_dict().values()))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert repr(torch.load(buffer, weights_only=False)) == text


def test_a_pickled_module_continues_its_stream():
    net = co.Sequential(co.Conv1d(2, 3, 3), nn.ReLU(), co.Conv1d(3, 2, 3)).double().eval()
    xs = torch.randn(1, 2, 9, dtype=F64)
    expected = net(xs)
    firsts = net.forward_steps(xs[:, :, :5])
    clone = pickle.loads(pickle.dumps(net))
    rest = torch.stack([clone.forward_step(xs[:, :, t]) for t in range(5, 9)], dim=2)
    torch.testing.assert_close(torch.cat([firsts, rest], dim=2), expected)


def test_forward_hooks_run_in_step_modes_for_the_module_and_its_children():
    net = co.Sequential(co.Conv1d(2, 3, 3), nn.ReLU(), co.Conv1d(3, 2, 1))
    seen = []
    net.register_forward_hook(lambda m, args, out: seen.append(("net", None if out is None else tuple(out.shape))))
    net[0].register_forward_hook(lambda m, args, out: seen.append(("conv", tuple(out.shape))))
    net[2].register_forward_pre_hook(lambda m, args: seen.append(("pre", tuple(args[0].shape))))
    xs = torch.randn(1, 2, 4)
    with co.call_mode("forward_step"):
        outs = [net(xs[:, :, t]) for t in range(4)]
    assert outs[:2] == [None, None]
    # The container's own hook sees every call; children see the steps that reach them.
    assert [s for s in seen if s[0] == "net"] == [("net", None)] * 2 + [("net", (1, 2))] * 2
    assert seen.count(("conv", (1, 3))) == 2 and seen.count(("pre", (1, 3))) == 2
    seen.clear()
    net.clean_state()
    net.call_mode = "forward_steps"
    net(xs)
    assert ("conv", (1, 3, 2)) in seen and ("pre", (1, 3, 2)) in seen


def test_ptflops_counts_steps_per_frame():
    import ptflops
    conv = co.Conv3d(3, 3, 3, padding=(1, 0, 0))
    clip_macs, params = ptflops.get_model_complexity_info(conv, (3, 4, 3, 3), as_strings=False, print_per_layer_stat=False)
    conv.forward_steps(torch.randn(1, 3, 3, 3, 3))
    with co.call_mode("forward_step"):
        step_macs, step_params = ptflops.get_model_complexity_info(conv, (3, 3, 3), as_strings=False, print_per_layer_stat=False)
    assert step_macs * 4 == clip_macs and step_params == params
    mha = co.SingleOutputMultiheadAttention(8, 2, sequence_len=6, batch_first=True)
    mha.call_mode = "forward_step"
    assert 0 < mha.flops() < mha.flops(include_adds=True) < mha.flops(include_adds=True, include_exps=True)


def test_add_and_multiply_agree_between_steps_and_clips():
    constant = torch.tensor([[[[2.0, 3.0]]]])  # broadcasts against (B, C, T, S)
    xs = torch.randn(2, 1, 5, 2)
    for module, op in ((co.Add(constant), torch.add), (co.Multiply(constant), torch.mul)):
        clip = module(xs)
        assert torch.equal(clip, op(xs, constant))
        steps = torch.stack([module.forward_step(xs[:, :, t]) for t in range(5)], dim=2)
        assert torch.equal(steps, clip) and torch.equal(module.forward_steps(xs), clip)
    assert repr(co.Multiply(2)) == "Lambda(_multiply, takes_time=True)"


def test_linear_defaults_to_the_last_axis_like_co_and_torch():
    torch_linear = nn.Linear(2, 3)
    linear = co.Linear.build_from(torch_linear)
    assert repr(linear) == "Linear(in_features=2, out_features=3, bias=True, channel_dim=-1)"
    xs = torch.randn(1, 4, 2)  # (B, T, C)
    torch.testing.assert_close(linear(xs), torch_linear(xs))
    torch.testing.assert_close(linear.forward_step(xs[:, 1]), torch_linear(xs[:, 1]))


def test_co_submodules_and_utilities():
    from cofunc.nn import __about__, closure, container, conv, convert, delay, linear, logging as co_logging
    from cofunc.nn import module, multihead_attention, onnx, pooling, positional_encoding, rnn, shape, skip, transformer, utils
    from cofunc.nn.multihead_attention import retroactive_mha, single_output_mha

    assert closure.Lambda is co.Lambda and container.Sequential is co.Sequential and conv.Conv3d is co.Conv3d
    assert convert.continual is co.continual and delay.Delay is co.Delay and linear.Linear is co.Linear
    assert module.CoModule is co.ContinualModule and pooling.MaxPool3d is co.MaxPool3d and rnn.GRU is co.GRU
    assert positional_encoding.RecyclingPositionalEncoding is co.RecyclingPositionalEncoding
    assert shape.Reshape is co.Reshape and skip.Skip is co.Skip and transformer.TransformerEncoder is co.TransformerEncoder
    assert single_output_mha.SingleOutputMultiheadAttention is multihead_attention.SingleOutputMultiheadAttention
    assert retroactive_mha.RetroactiveMultiheadAttention is co.RetroactiveMultiheadAttention
    assert onnx.OnnxWrapper and co.__version__ == cofunc.__version__ == __about__.__version__
    assert all(isinstance(getattr(__about__, f), str) for f in ("__author__", "__license__", "__homepage__", "__docs__"))
    xs = [torch.ones(1, 2, 3), 2 * torch.ones(1, 2, 3)]
    assert torch.equal(container.reduce_sum(xs), 3 * torch.ones(1, 2, 3))
    assert container.reduce_concat(xs).shape == (1, 4, 3)
    with utils.temporary_parameter(co, "_probe", 1):
        assert co._probe == 1
    assert not hasattr(co, "_probe")
    assert utils.flatten([1, [2, None, [3]]]) == [1, 2, 3]
    logger = co_logging.getLogger("cofunc.test_once", log_once=True)
    assert isinstance(logger, logging.Logger)


def test_log_once_drops_repeats(caplog):
    from cofunc.nn.logging import getLogger

    logger = getLogger("cofunc.test_repeats", log_once=True)
    with caplog.at_level(logging.WARNING):
        for message in ("a", "b", "a"):
            logger.warning(message)
    assert caplog.messages == ["a", "b"]


def test_flat_state_dict_round_trip():
    nested = co.BroadcastReduce(co.Sequential(nn.Conv1d(1, 1, 3)), co.Sequential(OrderedDict(c1=nn.Conv1d(1, 1, 3))))
    assert set(nested.state_dict(flatten=True)) == {"weight", "bias", "c1.weight", "c1.bias"}
    fresh = co.BroadcastReduce(co.Sequential(nn.Conv1d(1, 1, 3)), co.Sequential(OrderedDict(c1=nn.Conv1d(1, 1, 3))))
    fresh.load_state_dict(nested.state_dict(flatten=True), flatten=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), nested.state_dict().values()))
    with co.utils.flat_state_dict:
        assert set(nested.state_dict()) == {"weight", "bias", "c1.weight", "c1.bias"}


def test_delay_auto_shrink_and_repr():
    xs = torch.arange(6.0).reshape(1, 1, 6)
    for shrink, kept in ((False, xs), (True, xs[:, :, 1:-1]), ("lagging", xs[:, :, :-1])):
        delay = co.Delay(1, auto_shrink=shrink)
        assert torch.equal(delay(xs), kept) and torch.equal(delay.forward_steps(xs), kept[:, :, : kept.shape[2]] if shrink else xs[:, :, :-1])
    assert repr(co.Delay(2)) == "Delay(2)" and repr(co.Delay(2, auto_shrink=True)) == "Delay(2, auto_shrink=True)"


def test_broadcast_and_dispatch_route_any_value():
    assert co.Broadcast(2).forward_step(42) == [42, 42]
    assert co.ParallelDispatch([2, 0, [0, 2]]).forward_step([10, 11, 12]) == [12, 10, [10, 12]]
    with pytest.raises(AssertionError):  # co asserted; cofunc's error derives from AssertionError
        co.ParallelDispatch([1.0, "nah"])


def test_conditional_wraps_the_faster_branch_like_co():
    mod = co.Conditional(lambda m, x: True, co.Delay(2), co.Delay(3))
    assert mod.delay == 3 and mod[0].delay == 3 and mod[1].delay == 3
    assert repr(mod).startswith("Conditional(\n  predicate=lambda m, x: True\n")


def test_rnn_get_state_is_cos_layout():
    reg = nn.GRU(2, 3, num_layers=2, batch_first=True)
    con = co.GRU.build_from(reg)
    xs = torch.randn(1, 2, 5)
    _, hidden = reg(xs.transpose(1, 2))
    con.forward_steps(xs)
    (h,) = con.get_state()
    torch.testing.assert_close(h, hidden)


def test_adaptive_pool_build_from_kernel_size_and_short_clips():
    pool = co.AdaptiveAvgPool3d.build_from(nn.AdaptiveAvgPool3d((1, 1, 1)), kernel_size=4)
    xs = torch.randn(1, 2, 3, 4, 4)  # shorter than the window: pooled whole, as torch
    torch.testing.assert_close(pool(xs), nn.AdaptiveAvgPool3d((1, 1, 1))(xs))


def test_production_paths_accept_a_module(tmp_path):
    net = co.Sequential(co.Conv1d(2, 3, 3), nn.ReLU()).eval()
    prof = cofunc.profile(net, (1, 2))
    assert prof.macs_per_step == 3 * 2 * 3
    program = cofunc.export_step(net, (1, 2))
    step = cofunc.compile_step(net, backend="eager")
    state = net.layer.init_state(net.params, (1, 2))
    flat = cofunc.flatten_state(state)
    xs = torch.randn(1, 2, 5)
    with torch.no_grad():
        expected = net(xs)
        ys = []
        for t in range(5):
            y, valid, state = step(net.params, state, xs[:, :, t])
            y2, valid2, *flat = program.module()(xs[:, :, t], *flat)
            if bool(valid.all()):
                ys.append(y)
                torch.testing.assert_close(y2, y)
    torch.testing.assert_close(torch.stack(ys, dim=2), expected)


def test_co_readme_and_paper_examples_run_unchanged():
    """co's README examples with ``import cofunc.nn as co``: a Sequential of convs with call
    modes, Residual, the inception and squeeze-and-excitation blocks, and MobileNetV2."""
    example = torch.randn(1, 192, 7, 5, 5)

    def norm_relu(module, channels):
        return co.Sequential(module, nn.BatchNorm3d(channels), nn.ReLU())

    inception = co.BroadcastReduce(
        co.Conv3d(192, 64, kernel_size=1),
        co.Sequential(norm_relu(co.Conv3d(192, 96, kernel_size=1), 96), norm_relu(co.Conv3d(96, 128, kernel_size=3, padding=1), 128)),
        co.Sequential(norm_relu(co.Conv3d(192, 16, kernel_size=1), 16), norm_relu(co.Conv3d(16, 32, kernel_size=5, padding=2), 32)),
        co.Sequential(co.MaxPool3d(kernel_size=(1, 3, 3), padding=(0, 1, 1), stride=1), norm_relu(co.Conv3d(192, 32, kernel_size=1), 32)),
        reduce="concat",
    ).eval()
    out = inception(example)
    assert out.shape == (1, 256, 7, 5, 5)
    torch.testing.assert_close(inception.forward_steps(example, pad_end=True), out, atol=1e-5, rtol=1e-4)

    se = co.Residual(co.Sequential(OrderedDict([
        ("pool", co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=7)),
        ("down", co.Conv3d(192, 16, kernel_size=1)), ("act1", nn.ReLU()),
        ("up", co.Conv3d(16, 192, kernel_size=1)), ("act2", nn.Sigmoid()),
    ])), reduce="mul")
    long = torch.randn(1, 192, 12, 5, 5)
    gates = se[1](long)
    torch.testing.assert_close(se(long), long[:, :, :6] * gates)  # the residual lags by the delay, as co's steps
    steps = torch.stack([y for t in range(12) if (y := se.forward_step(long[:, :, t])) is not None], dim=2)
    torch.testing.assert_close(steps, se(long))

    mb = co.Residual(co.Sequential(
        co.Conv3d(32, 64, kernel_size=(1, 1, 1)), nn.BatchNorm3d(64), nn.ReLU6(),
        co.Conv3d(64, 64, kernel_size=(3, 3, 3), padding=(1, 1, 1), groups=64), nn.ReLU6(),
        co.Conv3d(64, 32, kernel_size=(1, 1, 1)), nn.BatchNorm3d(32),
    )).eval()
    x = torch.randn(1, 32, 6, 4, 4)
    torch.testing.assert_close(mb.forward_steps(x, pad_end=True), mb(x), atol=1e-5, rtol=1e-4)

    net = co.Sequential(co.Conv3d(3, 4, 3, padding=1), nn.ReLU(), co.Conv3d(4, 2, 3, padding=1))
    clip = torch.randn(1, 3, 5, 4, 4)
    expected = net(clip)
    net.call_mode = "forward_steps"
    torch.testing.assert_close(net(clip, pad_end=True), expected, atol=1e-5, rtol=1e-4)
