"""State files (`cofunc.save_state` / `load_state`) and state leaf names (`cofunc.state_names`,
the names of an exported step's state inputs)."""

from __future__ import annotations

import io

import optree
import pytest
import torch

import cofunc
import cofunc.nn as cn
from cofunc._serialize import infer_step_shape, layer_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


def _leaves(state):
    return optree.tree_leaves(state, namespace="cofunc")


def _conv_net():
    layer = cofunc.seq({"conv": cofunc.conv2d(3, 4, 3, padding=(1, 1)), "act": cofunc.lift(torch.relu),
                        "pool": cofunc.avg_pool2d((2, 1))})
    return layer, layer.init_params()


def _spatial_stem_net():
    """A network whose first layer reduces the frames (no leaf holds input frames), as X3D's."""
    layer = cofunc.seq({"stem": cofunc.conv2d(3, 4, (1, 3), stride=(1, 2)), "conv": cofunc.conv2d(4, 4, 3)})
    return layer, layer.init_params()


def _run(layer, params, step_shape, steps=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = layer.init_state(params, step_shape)
    for _ in range(steps):
        _, state = layer.step(params, state, torch.randn(step_shape, generator=g))
    return state


def _round_trip(layer, params, state, *args):
    buffer = io.BytesIO()
    cofunc.save_state(buffer, layer, state, *args)
    data = buffer.getvalue()
    return cofunc.load_state(io.BytesIO(data), layer, params), torch.load(io.BytesIO(data), weights_only=True)


def test_the_step_shape_is_read_from_the_state():
    layer, params = _conv_net()
    state = _run(layer, params, (2, 3, 8))
    assert infer_step_shape(layer, state) == (2, 3, 8)
    loaded, saved = _round_trip(layer, params, state)
    assert all(torch.equal(a, b) for a, b in zip(_leaves(loaded), _leaves(state)))
    assert saved["step_shape"] == [2, 3, 8]
    assert saved["names"] == cofunc.state_names(layer, state) == [
        "conv.buffer", "conv.count", "pool.buffer", "pool.count"]
    # the loaded state continues the stream exactly
    x = torch.randn(2, 3, 8)
    assert torch.equal(layer.step(params, loaded, x)[0], layer.step(params, state, x)[0])


def test_saved_leaves_hold_only_their_own_frames():
    """An eagerly stepped buffer is a view of its last window: the file holds the buffer's frames
    only (torch.save would write the view's whole storage)."""
    layer, params = _conv_net()
    state = _run(layer, params, (2, 3, 8))
    window_view = _leaves(state)[0]
    assert window_view.untyped_storage().nbytes() > window_view.numel() * window_view.element_size()
    loaded, _ = _round_trip(layer, params, state)
    for leaf, saved in zip(_leaves(loaded), _leaves(state)):
        assert leaf.untyped_storage().nbytes() == leaf.numel() * leaf.element_size()
        assert torch.equal(leaf, saved)


def test_a_state_that_does_not_show_its_step_shape_needs_it():
    layer, params = _spatial_stem_net()
    state = _run(layer, params, (2, 3, 9))
    assert infer_step_shape(layer, state) is None
    with pytest.raises(cofunc.StateError, match="step_shape"):
        cofunc.save_state(io.BytesIO(), layer, state)
    loaded, saved = _round_trip(layer, params, state, (2, 3, 9))
    assert saved["step_shape"] == [2, 3, 9]
    assert all(torch.equal(a, b) for a, b in zip(_leaves(loaded), _leaves(state)))


def test_a_module_saves_its_own_stream():
    """``save_state(f, net)``: the module's state, and the step shape of the stream it stepped."""
    net = cn.Sequential(cn.Conv2d(3, 4, (1, 3), stride=(1, 2)), torch.nn.ReLU(), cn.Conv2d(4, 4, 3)).eval()
    with pytest.raises(cofunc.StateError, match="no stream"):
        cofunc.save_state(io.BytesIO(), net)
    with torch.no_grad():
        net.forward_steps(torch.randn(1, 3, 5, 9))
    buffer = io.BytesIO()
    cofunc.save_state(buffer, net)
    loaded = cofunc.load_state(io.BytesIO(buffer.getvalue()), net.layer, net.params)
    assert all(torch.equal(a, b) for a, b in zip(_leaves(loaded), _leaves(net.get_state())))


def test_save_checks_what_it_saves():
    layer, params = _conv_net()
    state = _run(layer, params, (2, 3, 8))
    with pytest.raises(cofunc.StateError, match="conv.buffer should have shape"):
        cofunc.save_state(io.BytesIO(), layer, state, (2, 3, 9))  # not the state's step shape
    bad = optree.tree_map(lambda t: t - 10 if t.dtype == torch.int64 else t, state, namespace="cofunc")
    with pytest.raises(cofunc.StateError, match="conv.count holds step counters from -"):
        cofunc.save_state(io.BytesIO(), layer, bad)
    other, other_params = _spatial_stem_net()
    with pytest.raises(cofunc.StateError):
        cofunc.save_state(io.BytesIO(), other, state, (2, 3, 8))
    with pytest.raises(cofunc.StateError, match="got a shape"):
        cofunc.save_state(io.BytesIO(), layer, (2, 3, 8))


def test_the_file_names_the_layer_by_a_fingerprint():
    """The identity is a 16-digit fingerprint of the label (and a label cut to 80 characters
    for messages), not the whole layer description; another layer's state is refused."""
    layer = cofunc.seq(*[cofunc.conv1d(3, 3, 3, padding=1) for _ in range(20)])
    params = layer.init_params()
    state = _run(layer, params, (1, 3))
    buffer = io.BytesIO()
    cofunc.save_state(buffer, layer, state)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert len(layer.label) > 400 and len(saved["layer"]) <= 80
    assert saved["fingerprint"] == layer_fingerprint(layer) and len(saved["fingerprint"]) == 16
    assert layer.label.encode() not in buffer.getvalue()
    similar = cofunc.seq(*[cofunc.conv1d(3, 3, 3, padding=1) for _ in range(19)], cofunc.conv1d(3, 3, 5, padding=2))
    with pytest.raises(cofunc.StateError, match="another layer"):
        cofunc.load_state(io.BytesIO(buffer.getvalue()), similar, similar.init_params())


def test_files_of_the_first_format_still_load():
    layer, params = _conv_net()
    state = _run(layer, params, (2, 3, 8))
    old = {"format": "cofunc-state-1", "layer": layer.label, "step_shape": [2, 3, 8],
           "structure": str(optree.tree_structure(state, namespace="cofunc")), "leaves": _leaves(state)}
    buffer = io.BytesIO()
    torch.save(old, buffer)
    loaded = cofunc.load_state(io.BytesIO(buffer.getvalue()), layer, params)
    assert all(torch.equal(a, b) for a, b in zip(_leaves(loaded), _leaves(state)))


def test_state_names_follow_the_modules():
    """Names are the module paths of the layers holding each leaf, as in the state_dict."""
    from cofunc.models import x3d

    net = x3d("XS", num_classes=5, crop_size=32, stem_dim_in=4, head_dim_out=16, depth_factor=1.0).eval()
    state = net.layer.init_state(net.params, (1, 3, 32, 32))
    names = cofunc.state_names(net.layer, state)
    assert len(names) == len(set(names)) == len(_leaves(state))
    assert names[:2] == ["blocks.0.conv.conv_xy.buffer", "blocks.0.conv.conv_xy.count"]
    modules = {name for name, _ in net.named_modules()}
    convs = [n.rsplit(".", 1)[0] for n in names if ".conv_" in n]
    assert convs and all(c in modules for c in convs)  # e.g. blocks.1.res_blocks.0.branch2.conv_b
    inputs, outputs = cofunc.onnx_names(net.layer, state)
    assert inputs == ["x"] + ["state." + n for n in names]
    assert outputs == ["y", "valid"] + ["next_state." + n for n in names]
    wrapper = cn.onnx.OnnxWrapper(net, (1, 3, 32, 32))
    assert wrapper.state_input_names == inputs[1:] and wrapper.state_output_names == outputs[2:]
