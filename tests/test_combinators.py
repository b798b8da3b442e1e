"""Multi-stream combinators: ``broadcast``, ``parallel``, ``parallel_dispatch``, ``reduce``,
``broadcast_reduce``, ``residual`` (plain and shrunk), ``conditional``, and their ``cofunc.nn``
adapters.

Shapes: clips ``(*B, C, T, *S)``, steps ``(*B, C, *S)``; a multi-stream value is a tuple of
them (the nn adapters use lists, as co does). For each combinator: ``forward`` is the obvious
clip computation from its branches' ``forward``; from a fresh state the outputs appear after
``delay`` steps (the largest branch delay: branches are aligned) and equal the clip outputs;
``steps(pad_end=True)`` equals ``forward``; ``vmap(step)`` equals the batched step.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import cofunc
import cofunc.nn as cn
from conftest import F64, FLOAT32_TOL, assert_tree_close, assert_tree_equal, expected_flags, tree_clone

VMAP_STEP = dict(in_dims=(None, 0, 0))


# --- helpers over tensors and tuples of tensors ----------------------------------------------------


def tmap(fn, *values):
    """``fn`` on a tensor, or element-wise on (nested) tuples/lists of tensors."""
    if isinstance(values[0], (tuple, list)):
        return tuple(tmap(fn, *parts) for parts in zip(*values))
    return fn(*values)


def first(value):
    return first(value[0]) if isinstance(value, (tuple, list)) else value


def step_shape_of(value, axis):
    """The step shape of a clip value (a list of shapes for tuples)."""
    if isinstance(value, (tuple, list)):
        return [step_shape_of(v, axis) for v in value]
    shape = list(value.shape)
    del shape[axis]
    return tuple(shape)


def assert_call_modes(layer, params, xs, **tol):
    """From a fresh state, over the clip value ``xs`` (a clip or a tuple of clips):

    - the steps emit at ``expected_flags(delay, stride)`` (all streams in lock step), and the
      emitted outputs equal ``forward``'s first frames, stream by stream;
    - ``steps`` emits the same outputs and state as stepping;
    - ``steps(pad_end=True)`` equals ``forward``.

    Returns ``forward(xs)``.
    """
    in_axis, out_axis = layer.time_axis(), layer.out_time_axis()
    T = first(xs).shape[in_axis]
    ys = layer.forward(params, xs)
    state = layer.init_state(params, step_shape_of(xs, in_axis), dtype=first(xs).dtype)
    s, flags, emitted = state, [], []
    for t in range(T):
        y, s = layer.step(params, s, tmap(lambda a: a.select(in_axis, t), xs))
        valid = layer.valid(s)
        assert bool(valid.all()) == bool(valid.any()), "streams out of lock step"
        flags.append(bool(valid.all()))
        if flags[-1]:
            emitted.append(y)
    assert flags == expected_flags(layer.delay, layer.stride, T)
    n = len(emitted)
    chunk, after = layer.steps(params, state, xs)
    assert tmap(lambda c: c.shape[out_axis], chunk) == tmap(lambda y: n, ys)
    if n:
        stacked = tmap(lambda *frames: torch.stack(frames, dim=out_axis), *emitted)
        torch.testing.assert_close(stacked, tmap(lambda y: y.narrow(out_axis, 0, n), ys), **tol)
        torch.testing.assert_close(chunk, stacked, **tol)
    assert_tree_close(after, s, "state after steps", **tol)
    padded, _ = layer.steps(params, state, xs, pad_end=True)
    torch.testing.assert_close(padded, ys, **tol)
    return ys


def assert_vmap_equals_batched(layer, params, frames):
    """``vmap(layer.step)`` over the leading stream dim equals the batched step (frames: a list
    of step values, each a tensor ``(N, C, *S)`` or a tuple of them)."""
    state = layer.init_state(params, tmap_shape(frames[0]), dtype=F64)
    vstate = tree_clone(state)
    vstep = torch.func.vmap(layer.step, **VMAP_STEP)
    for t, x in enumerate(frames):
        y, state = layer.step(params, state, x)
        yv, vstate = vstep(params, vstate, x)
        n = first(x).shape[0]
        valid = layer.valid(state).expand(n)
        assert torch.equal(layer.valid(vstate).expand(n), valid), f"step {t}"
        if bool(valid.all()):
            torch.testing.assert_close(yv, y, msg=f"step {t}")
        assert_tree_close(vstate, state, f"state after step {t}")


def tmap_shape(value):
    return [tmap_shape(v) for v in value] if isinstance(value, (tuple, list)) else tuple(value.shape)


def assert_update_state_false_is_a_probe(module, xs, at: int):
    """Step an nn adapter over ``xs[:, :, :at]`` (a clip or a list of clips), then probe frame
    ``at`` with ``update_state=False``: the stored state is unchanged and the output equals the
    real step's."""
    frame = lambda t: tmap(lambda a: a[:, :, t], xs) if isinstance(xs, list) else xs[:, :, t]  # noqa: E731
    as_input = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    for t in range(at):
        module.forward_step(as_input(frame(t)))
    before = tree_clone(module.get_state())
    probe = module.forward_step(as_input(frame(at)), update_state=False)
    assert_tree_equal(module.get_state(), before, "update_state=False changed the state")
    real = module.forward_step(as_input(frame(at)))
    assert (probe is None) == (real is None)
    if probe is not None:
        torch.testing.assert_close(probe, real, rtol=0, atol=0)


@pytest.mark.parametrize("make, inputs", [
    (lambda: cn.Residual(cn.Conv1d(2, 2, 3), residual_shrink="centered"), 1),
    (lambda: cn.Parallel(cn.Conv1d(2, 2, 3), cn.MaxPool1d(2, 1)), 2),
    (lambda: cn.Conditional(lambda m, x: True, cn.Conv1d(2, 2, 3, padding=1), cn.Delay(1)), 1),
    (lambda: cn.Sequential(cn.Broadcast(), cn.Parallel(cn.Conv1d(2, 2, 3), cn.Delay(2)), cn.Reduce("concat")), 1),
], ids=["residual", "parallel", "conditional", "sequential_broadcast_parallel_reduce"])
@pytest.mark.parametrize("at", [1, 2, 4])
def test_adapters_update_state_false(make, inputs, at):
    module = make().double()
    xs = clip(2, 2, 6) if inputs == 1 else [clip(2, 2, 6) for _ in range(inputs)]
    assert_update_state_false_is_a_probe(module, xs, at)


def clip(*shape):
    return torch.randn(shape, dtype=F64)


def conv_params(layer, seed=0):
    torch.manual_seed(seed)
    return layer.init_params(dtype=F64)


# --- broadcast, parallel, dispatch, reduce -------------------------------------------------------


def test_broadcast():
    layer = cofunc.broadcast(3)
    xs = clip(2, 2, 5, 3)
    ys = assert_call_modes(layer.with_rank(2), {}, xs)
    assert len(ys) == 3 and all(y is xs for y in ys)
    module = cn.Broadcast(2)
    assert [y is xs for y in module(xs)] == [True, True]
    assert torch.equal(module.forward_step(xs[:, :, 0])[1], xs[:, :, 0])
    assert isinstance(module.forward_steps(xs), list)
    with pytest.raises(cofunc.ConfigurationError):
        cofunc.broadcast(0)


def test_parallel_aligns_branch_delays():
    """Branch delays 2 (conv k3), 0 (conv k1) and 1 (avg pool k2 p0 s1): the group's delay is
    2, and each branch's k-th emitted output is its own ``forward``'s frame k."""
    branches = (cofunc.conv1d(2, 3, 3), cofunc.conv1d(2, 2, 1), cofunc.avg_pool1d(2, stride=1))
    layer = cofunc.parallel(*branches)
    assert (layer.delay, layer.receptive_field, layer.stride) == (2, 3, 1)
    params = conv_params(layer)
    assert sorted(params) == ["0", "1"]  # the stateless pool has no params; no alignment level
    xs = (clip(2, 2, 7), clip(2, 2, 7), clip(2, 2, 7))
    ys = assert_call_modes(layer, params, xs)
    expected = tuple(b.forward(params.get(str(i), {}), x) for i, (b, x) in enumerate(zip(branches, xs)))
    assert all(torch.equal(a, b) for a, b in zip(ys, expected))
    assert [y.shape[2] for y in ys] == [5, 7, 6]


def test_parallel_without_auto_delay_keeps_equal_delays():
    """``auto_delay=False`` inserts nothing: branches with equal delays stay aligned."""
    layer = cofunc.parallel(cofunc.conv1d(2, 2, 3, padding=1), cofunc.delay(1, step_rank=1), auto_delay=False)
    assert (layer.delay, layer.receptive_field) == (1, 3)
    params = conv_params(layer)
    xs = (clip(1, 2, 6), clip(1, 2, 6))
    ys = assert_call_modes(layer, params, xs)
    assert torch.equal(ys[1], xs[1])


def test_parallel_rejects_unequal_strides():
    with pytest.raises(cofunc.ConfigurationError, match="stride"):
        cofunc.parallel(cofunc.conv1d(1, 1, 3, stride=2), cofunc.conv1d(1, 1, 3))
    with pytest.raises(cofunc.InputShapeError, match="2 streams"):
        cofunc.parallel(cofunc.conv1d(1, 1, 1), cofunc.conv1d(1, 1, 1)).forward({}, clip(1, 1, 3))


def test_parallel_strided_branches():
    """Branches of stride 2 with delays 4, 0 and 1 share one clock: the k1 conv is aligned by
    4 input steps (2 of its output steps), the pool by 3 (not a whole number of its output
    steps, so its input is delayed)."""
    layer = cofunc.parallel(cofunc.conv1d(2, 2, 5, stride=2), cofunc.conv1d(2, 2, 1, stride=2), cofunc.max_pool1d(2, stride=2))
    assert (layer.delay, layer.stride) == (4, 2)
    params = conv_params(layer)
    for T in (9, 10):
        ys = assert_call_modes(layer, params, (clip(2, 2, T), clip(2, 2, T), clip(2, 2, T)))
        assert [y.shape[2] for y in ys] == [(T - 5) // 2 + 1, (T - 1) // 2 + 1, T // 2]


def test_parallel_dispatch():
    layer = cofunc.parallel_dispatch([2, 0, [0, 2], 1])
    xs = (clip(1, 2, 4), clip(1, 3, 4), clip(1, 1, 4))
    ys = layer.forward({}, xs)
    assert ys[0] is xs[2] and ys[1] is xs[0] and ys[2][0] is xs[0] and ys[2][1] is xs[2] and ys[3] is xs[1]
    y, state = layer.step({}, (), tmap(lambda a: a[:, :, 0], xs))
    assert state == () and torch.equal(y[2][1], xs[2][:, :, 0])
    zs, _ = layer.steps({}, (), xs, pad_end=True)
    assert zs[2][0] is xs[0]
    module = cn.ParallelDispatch([1, [0, 0]])
    frames = [xs[0][:, :, 0], xs[1][:, :, 0]]
    out = module.forward_step(frames)
    assert isinstance(out, list) and isinstance(out[1], list) and out[1][1] is frames[0] and out[0] is frames[1]
    assert module([xs[0], xs[1]])[0] is xs[1]
    with pytest.raises(cofunc.InputShapeError, match="out of range"):
        layer.forward({}, xs[:2])


REDUCERS = {
    "sum": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "max": torch.maximum,
    "concat": lambda a, b: torch.cat([a, b], dim=1),
    "callable": lambda a, b: a - b,
}


@pytest.mark.parametrize("how", sorted(REDUCERS))
def test_reduce(how):
    fn = (lambda values: values[0] - values[1]) if how == "callable" else how
    layer = cofunc.reduce(fn).with_rank(2)
    xs = (clip(2, 2, 5, 3), clip(2, 2, 5, 3))
    expected = REDUCERS[how](*xs)
    assert torch.equal(assert_call_modes(layer, {}, xs), expected)
    module = cn.Reduce(fn)
    assert torch.equal(module(list(xs)), expected)
    assert torch.equal(module.forward_step([xs[0][:, :, 1], xs[1][:, :, 1]]), expected[:, :, 1])
    assert torch.equal(module.forward_steps(list(xs), pad_end=True), expected)


def test_reduce_concat_with_stream_dims_and_errors():
    """With the rank known, ``concat`` joins the channel axis of steps and clips alike."""
    layer = cofunc.Reduce("concat", step_rank=2)
    xs = (clip(2, 3, 1, 4, 2), clip(2, 3, 2, 4, 2))  # (B1, B2, C, T, S)
    ys = assert_call_modes(layer, {}, xs)
    assert torch.equal(ys, torch.cat(xs, dim=2))
    assert_vmap_equals_batched(layer, {}, [(clip(3, 1, 2), clip(3, 2, 2)) for _ in range(2)])
    with pytest.raises(cofunc.InputShapeError, match="equal or broadcastable shapes"):
        cofunc.reduce("sum").forward({}, (clip(1, 2, 3), clip(1, 3, 3)))
    with pytest.raises(cofunc.ConfigurationError):
        cofunc.reduce("channel")


# --- broadcast_reduce ----------------------------------------------------------------------------


def test_broadcast_reduce_sum_and_concat():
    """conv k3 p1 (delay 1) + conv k1 (delay 0, aligned by a delay of 1) + max pool k3 p1 s1."""
    branches = OrderedDict(a=cofunc.conv2d(2, 3, 3, padding=1), b=cofunc.conv2d(2, 3, 1), c=cofunc.max_pool2d(3, stride=1, padding=1))
    for how in ("concat", "sum"):
        if how == "sum":
            branches["c"] = cofunc.seq(cofunc.max_pool2d(3, stride=1, padding=1), cofunc.conv2d(2, 3, 1))
        layer = cofunc.broadcast_reduce(branches, reduce=how)
        assert (layer.delay, layer.receptive_field, layer.stride) == (1, 3, 1)
        params = conv_params(layer)
        xs = clip(2, 2, 6, 4)
        outs = [b.forward(params.get(name, {}), xs) for name, b in branches.items()]
        expected = torch.cat(outs, dim=1) if how == "concat" else outs[0] + outs[1] + outs[2]
        assert torch.equal(layer.forward(params, xs), expected)
        assert_call_modes(layer, params, xs)


def test_broadcast_reduce_strided_branches():
    """Both branches strided by 2 and of equal output length ((T - 1) // 2 + 1)."""
    layer = cofunc.broadcast_reduce(cofunc.conv1d(2, 2, 3, stride=2, padding=1), cofunc.avg_pool1d(1, stride=2))
    assert (layer.delay, layer.stride) == (1, 2)
    params = conv_params(layer)
    for T in (5, 6):
        assert_call_modes(layer, params, clip(2, 2, T))


def test_broadcast_reduce_adapter_and_state_dict():
    """Branch params are keyed ``0.*``, ``1.*`` like a regular two-branch module."""
    torch.manual_seed(0)
    regular = nn.ModuleDict(OrderedDict([("0", nn.Conv1d(2, 3, 3, padding=1)), ("1", nn.Conv1d(2, 3, 1))])).double()
    module = cn.BroadcastReduce(cn.Conv1d(2, 3, 3, padding=1), cn.Conv1d(2, 3, 1), reduce="sum").double()
    assert list(module.state_dict()) == list(regular.state_dict())
    module.load_state_dict(regular.state_dict(), strict=True)
    xs = clip(2, 2, 7)
    expected = regular["0"](xs) + regular["1"](xs)
    assert torch.equal(module(xs), expected)
    torch.testing.assert_close(module.forward_steps(xs, pad_end=True), expected)
    module.clean_state()
    outs = [module.forward_step(xs[:, :, t]) for t in range(7)]
    assert [o is None for o in outs] == [True] + [False] * 6
    torch.testing.assert_close(torch.stack(outs[1:], dim=2), expected[:, :, :6])
    module.clean_state()
    module.forward_step(xs[:, :, 0])
    before = tree_clone(module.get_state())
    probe = module.forward_step(xs[:, :, 1], update_state=False)
    assert_tree_equal(module.get_state(), before)
    assert torch.equal(probe, module.forward_step(xs[:, :, 1]))
    with pytest.raises(cofunc.ConfigurationError):
        cn.BroadcastReduce(cn.Conv1d(2, 3, 1))


def test_sequential_broadcast_parallel_reduce_adapter():
    """co's explicit form: ``Sequential(Broadcast(), Parallel(a, b), Reduce)``; the Broadcast
    takes its stream count from the Parallel."""
    torch.manual_seed(0)
    net = cn.Sequential(cn.Broadcast(), cn.Parallel(cn.Conv1d(2, 2, 3, padding=1), cn.Delay(1)), cn.Reduce("sum")).double()
    assert net[0].num_streams == 2 and net.delay == 1
    xs = clip(2, 2, 6)
    expected = getattr(net[1], "0")(xs) + xs
    assert torch.equal(net(xs), expected)
    torch.testing.assert_close(net.forward_steps(xs, pad_end=True), expected)


# --- residual --------------------------------------------------------------------------------------


def test_residual_plain():
    """An equally padded module: the residual is a delay; ``forward`` is ``x + f(x)``."""
    conv = cofunc.conv2d(2, 2, 3, padding=1)
    layer = cofunc.residual(conv)
    params = conv_params(layer)
    assert sorted(params) == ["1"] and (layer.delay, layer.receptive_field) == (1, 3)
    xs = clip(2, 2, 6, 4)
    expected = xs + conv.forward(params["1"], xs)
    assert torch.equal(layer.forward(params, xs), expected)
    assert_call_modes(layer, params, xs)
    mul = cofunc.residual(conv, reduce="mul")
    assert torch.equal(mul.forward(params, xs), xs * conv.forward(params["1"], xs))
    assert_call_modes(mul, params, xs)


@pytest.mark.parametrize("shrink, kernel, padding, frames", [
    ("centered", 3, 0, lambda x: x[:, :, 1:-1]),
    (True, 3, 0, lambda x: x[:, :, 1:-1]),
    ("lagging", 3, 0, lambda x: x[:, :, :-2]),
    ("leading", 3, 0, lambda x: x[:, :, 2:]),
    ("centered", 5, 1, lambda x: x[:, :, 1:-1]),  # output j's window: frames j-1 .. j+3, centre j+1
    ("lagging", 5, 1, lambda x: x[:, :, :-2]),  # lag = delay 3 behind the newest frame j+3: frame j
], ids=["centered", "true", "lagging", "leading", "centered_k5_p1", "lagging_k5_p1"])
def test_residual_shrink(shrink, kernel, padding, frames):
    """An unequally padded module changes the clip length: the residual is shrunk to the frames
    the outputs belong to (the window's centre, oldest or newest frame)."""
    conv = cofunc.conv1d(2, 2, kernel, padding=padding)
    layer = cofunc.residual(conv, residual_shrink=shrink)
    params = conv_params(layer)
    assert layer.delay == conv.delay
    xs = clip(2, 2, 8)
    expected = frames(xs) + conv.forward(params["1"], xs)
    assert torch.equal(layer.forward(params, xs), expected)
    assert_call_modes(layer, params, xs)


def test_residual_lagging_of_a_padded_module():
    """For conv k5 p1, output j's window covers frames j-1 .. j+3 (frame -1 is padding, never
    a residual): "lagging" lags the module's delay (3) behind the newest frame, so output j
    pairs with frame j. With zero weights the block outputs the residual frames themselves."""
    conv = cofunc.conv1d(1, 1, 5, padding=1)
    layer = cofunc.residual(conv, residual_shrink="lagging")
    run_frames = torch.arange(8, dtype=F64).reshape(1, 1, 8)
    zero = {"1": {"weight": torch.zeros(1, 1, 5, dtype=F64), "bias": torch.zeros(1, dtype=F64)}}
    assert torch.equal(layer.forward(zero, run_frames)[0, 0], torch.arange(6, dtype=F64))


@pytest.mark.parametrize("build, match", [
    (lambda: cofunc.residual(cofunc.conv1d(2, 2, 3, stride=2, padding=1)), "stride"),
    (lambda: cofunc.residual(cofunc.conv1d(2, 2, 2), residual_shrink="centered"), "odd"),
    (lambda: cofunc.residual(cofunc.conv1d(2, 2, 5, padding=1), residual_shrink="leading"), "not seen"),
    (lambda: cofunc.residual(cofunc.conv1d(2, 2, 3), residual_shrink="sideways"), "residual_shrink"),
])
def test_residual_configuration_errors(build, match):
    with pytest.raises(cofunc.ConfigurationError, match=match):
        build()


def test_residual_without_shrink_lags_like_co():
    """An unpadded module without ``residual_shrink`` pairs each output with the oldest frame of
    its window (the residual delayed by the module's delay), as co's steps do; co's README
    squeeze-and-excitation block relies on it."""
    torch.manual_seed(0)
    module = cn.Residual(cn.Conv1d(2, 2, 3)).double()
    lagging = cn.Residual(cn.Conv1d(2, 2, 3), residual_shrink="lagging").double()
    lagging.load_state_dict(module.state_dict())
    xs = clip(1, 2, 7)
    expected = module[1](xs) + xs[:, :, :-2]
    assert torch.equal(module(xs), expected) and torch.equal(lagging(xs), expected)
    steps = torch.stack([y for t in range(7) if (y := module.forward_step(xs[:, :, t])) is not None], dim=2)
    torch.testing.assert_close(steps, expected)
    assert "Delay(2, auto_shrink=True)" in repr(module)


def test_residual_adapter():
    """co's layout: the module is child ``1`` (keys ``1.weight``); all call modes agree, for
    the plain and the shrunk residual."""
    torch.manual_seed(0)
    for kwargs, shrink, frames in ((dict(padding=1), False, lambda x: x), (dict(padding=(0, 1, 1)), "centered", lambda x: x[:, :, 1:-1])):
        module = cn.Residual(nn.Conv3d(2, 2, 3, **kwargs), residual_shrink=shrink).double()
        assert list(module.state_dict()) == ["1.weight", "1.bias"]
        xs = clip(2, 2, 6, 4, 4)
        expected = frames(xs) + module[1](xs)
        assert torch.equal(module(xs), expected)
        torch.testing.assert_close(module.forward_steps(xs, pad_end=True), expected)
        module.clean_state()
        outs = [module.forward_step(xs[:, :, t]) for t in range(6)]
        emitted = [o for o in outs if o is not None]
        assert len(outs) - len(emitted) == module.delay
        torch.testing.assert_close(torch.stack(emitted, dim=2), expected[:, :, : len(emitted)])
    with pytest.raises(cofunc.ConfigurationError):
        cn.Residual(nn.Conv1d(2, 2, 3), residual_shrink="sideways")


# --- conditional -------------------------------------------------------------------------------------


def test_conditional_branches_and_alignment():
    """The predicate picks a branch per call; the identity ``on_false`` is aligned to the
    conv's delay, so both branches emit from the same step."""
    flag = {"on": True}
    conv = cofunc.conv1d(2, 2, 3)
    layer = cofunc.conditional(lambda x: flag["on"], conv)
    assert layer.delay == 2
    params = conv_params(layer)
    xs = clip(2, 2, 6)
    ys = assert_call_modes(layer, params, xs)
    assert torch.equal(ys, conv.forward(params["0"], xs))
    flag["on"] = False
    ys = assert_call_modes(layer, params, xs)
    assert torch.equal(ys, xs)


def test_conditional_only_the_taken_branch_advances():
    flag = {"on": True}
    layer = cofunc.conditional(lambda x: flag["on"], cofunc.conv1d(2, 2, 3), cofunc.delay(1))
    params = conv_params(layer)
    state = layer.init_state(params, (1, 2), dtype=F64)
    x = clip(1, 2)
    _, state = layer.step(params, state, x)
    assert int(state.on_true.count[0]) == 1 and bool(state.took_true.all())
    false_before = tree_clone(state.on_false)
    _, state = layer.step(params, state, x)
    assert_tree_equal(state.on_false, false_before)
    flag["on"] = False
    true_before = tree_clone(state.on_true)
    _, state = layer.step(params, state, x)
    assert_tree_equal(state.on_true, true_before)
    assert not bool(state.took_true.any())


def test_conditional_adapter():
    """co's usage: a softmax only at inference (``not module.training``)."""
    module = cn.Conditional(lambda m, x: not m.training, cn.Lambda(nn.Softmax(dim=1), takes_time=True))
    xs = clip(2, 3, 4)
    module.eval()
    assert torch.equal(module(xs), torch.softmax(xs, dim=1))
    torch.testing.assert_close(module.forward_step(xs[:, :, 0]), torch.softmax(xs[:, :, 0], dim=1))
    module.train()
    assert torch.equal(module(xs), xs)
    assert torch.equal(module.forward_step(xs[:, :, 1]), xs[:, :, 1])
    other = cn.Conditional(lambda m, x: x.shape[0] > 1, cn.Conv1d(3, 3, 3, padding=1), cn.Multiply(2.0)).double()
    assert other.delay == 1
    torch.testing.assert_close(other.forward_steps(xs, pad_end=True), other(xs))
    single = clip(1, 3, 4)
    other.clean_state()
    assert torch.equal(other.forward_steps(single, pad_end=True), 2 * single)


# --- vmap over streams ----------------------------------------------------------------------------------


def _vmap_cases():
    yield "broadcast_reduce", cofunc.broadcast_reduce(cofunc.conv2d(2, 2, 3, padding=1), cofunc.max_pool2d((2, 1), stride=1)), (2, 3)
    yield "residual_centered", cofunc.residual(cofunc.conv2d(2, 2, (3, 1)), residual_shrink="centered"), (2, 3)
    yield "residual_leading", cofunc.residual(cofunc.conv1d(2, 2, 3), residual_shrink="leading"), (2,)
    yield "conditional", cofunc.conditional(lambda x: True, cofunc.conv1d(2, 2, 3, stride=2, padding=1), cofunc.avg_pool1d(2, stride=2)), (2,)
    yield "seq_broadcast_parallel_reduce", cofunc.seq(
        cofunc.conv1d(2, 2, 1), cofunc.broadcast(2),
        cofunc.parallel(cofunc.conv1d(2, 2, 3, stride=2), cofunc.avg_pool1d(2, stride=2)), cofunc.reduce("concat"),
    ), (2,)


@pytest.mark.parametrize("name, layer, frame_shape", list(_vmap_cases()), ids=[c[0] for c in _vmap_cases()])
def test_vmap_equals_batched(name, layer, frame_shape):
    params = conv_params(layer)
    assert_vmap_equals_batched(layer, params, [clip(3, *frame_shape) for _ in range(7)])


def test_vmap_parallel_tuple_inputs():
    layer = cofunc.parallel(cofunc.conv1d(2, 2, 3), cofunc.delay(0, step_rank=1))
    params = conv_params(layer)
    assert_vmap_equals_batched(layer, params, [(clip(3, 2), clip(3, 2)) for _ in range(5)])


# --- torch.compile -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_step_of_a_mixed_network():
    """``torch.compile(step, fullgraph=True)`` of a network with a strided max pool, a centred
    residual, a broadcast_reduce (conv + average pool without padding counts) and a linear
    head: no graph breaks, eager's validity, outputs and states for 12 steps."""
    import torch._dynamo

    net = cofunc.seq(
        cofunc.conv2d(2, 4, 3, padding=1), cofunc.lift(torch.relu),
        cofunc.max_pool2d((2, 1), stride=(2, 1)),
        cofunc.residual(cofunc.conv2d(4, 4, (3, 1)), residual_shrink="centered"),
        cofunc.broadcast_reduce(cofunc.conv2d(4, 4, (3, 1), padding=(1, 0)),
                                cofunc.avg_pool2d((3, 1), stride=1, padding=(1, 0), count_include_pad=False)),
        cofunc.linear(4, 3),
    )
    params = net.init_params()
    torch._dynamo.reset()
    compiled = torch.compile(net.step, fullgraph=True)
    state = eager_state = net.init_state(params, (2, 2, 5))
    for t in range(12):
        x = torch.randn(2, 2, 5)
        y, state = compiled(params, state, x)
        y_eager, eager_state = net.step(params, eager_state, x)
        assert torch.equal(net.valid(state), net.valid(eager_state)), f"step {t}"
        if bool(net.valid(eager_state).all()):
            torch.testing.assert_close(y, y_eager, **FLOAT32_TOL, msg=f"step {t}")
        assert_tree_close(state, eager_state, f"state after step {t}", **FLOAT32_TOL)
    assert net.delay < 12  # some outputs were compared
