"""A user's program, type-checked by tests/test_typing.py (never run by pytest).

It uses the public API as the README and the docstrings do; ``assert_type`` fails the check if a
public name's type is missing (``Any``) or wrong, so the annotations users see stay real.
"""

import io
from typing import Any, Mapping, Optional, Tuple

import torch
from torch import Tensor
from typing_extensions import assert_type

import cofunc
import cofunc.models
import cofunc.nn as cn

# Functional core.
conv = cofunc.conv3d(3, 8, kernel_size=3, padding=1)
assert_type(conv, cofunc.Conv)
layer = cofunc.seq(conv, cofunc.lift(torch.relu), cofunc.conv3d(8, 8, 3, stride=(2, 1, 1)))
assert_type(layer, cofunc.Seq)
delay: int = layer.delay
rf: int = layer.receptive_field + layer.stride + layer.padding


# The Layer protocol, as generic code sees it. (Subclasses override these methods without
# repeating the annotations, which mypy then reads as Any on a `Seq`; pyright infers them.)
def run(layer: cofunc.Layer, frame: Tensor, clip: Tensor) -> Tuple[Tensor, Tensor]:
    params = layer.init_params()
    assert_type(params, Mapping[str, Any])
    state = layer.init_state(params, frame.shape)
    out = layer.step(params, state, frame)
    assert_type(out, Tuple[Tensor, Any])
    y, state = out
    assert_type(layer.valid(state), Tensor)
    ys, state = layer.steps(params, state, clip, pad_end=True)
    assert_type(ys, Tensor)
    assert_type(layer.forward(params, clip), Tensor)
    return y, ys


run(layer, torch.randn(4, 3, 16, 16), torch.randn(4, 3, 8, 16, 16))
frame = torch.randn(4, 3, 16, 16)
params = layer.init_params()
state = layer.init_state(params, frame.shape)

residual = cofunc.residual(cofunc.conv3d(3, 3, 3, padding=1))
assert_type(residual, cofunc.BroadcastReduce)
head = cofunc.linear(8, 2)
assert_type(head, cofunc.Linear)

# Streams and snapshots.
y2, valid2, state = cofunc.step_streams(layer, params, state, frame, torch.tensor([True, False, True, True]))
buffer = io.BytesIO()
cofunc.save_state(buffer, layer, state, (4, 3, 16, 16))

# Production.
step = cofunc.step_fn(layer)
assert_type(step(params, state, frame), Tuple[Tensor, Tensor, Any])
program = cofunc.export_step(layer, params, (4, 3, 16, 16))
assert_type(program, torch.export.ExportedProgram)
report = cofunc.profile(layer, params, (1, 3, 16, 16))
assert_type(report, cofunc.Profile)
macs: float = report.macs_per_step

# nn adapters.
net = cn.Sequential(cn.Conv3d(3, 16, 3, padding=1), torch.nn.ReLU(), cn.Conv3d(16, 16, 3))
assert_type(net, cn.Sequential)
assert_type(net.delay, int)
maybe: Optional[Tensor] = net.forward_step(torch.randn(1, 3, 32, 32))
maybe = net.forward_steps(torch.randn(1, 3, 8, 32, 32), pad_end=True)
with cn.call_mode("forward_step"):
    net(torch.randn(1, 3, 32, 32))
converted = cn.continual(torch.nn.Conv3d(3, 4, 3))
assert_type(converted, cn.ContinualModule)
net.clean_state()

# Model zoo.
x3d = cofunc.models.x3d("S")
assert_type(x3d, cofunc.models.VideoNet)
skeleton = cofunc.models.st_gcn(60)
assert_type(skeleton, cofunc.models.SkeletonNet)
detector = cofunc.models.oadtr(num_layers=2)
assert_type(detector, cofunc.models.OadTR)
