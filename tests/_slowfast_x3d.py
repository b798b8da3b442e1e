"""SlowFast's X3D, as its checkpoints name and shape it, for the checkpoint tests.

`slowfast_x3d_state_dict` builds a random state dict with the key names and shapes of
SlowFast's ``slowfast/models/video_model_builder.py::X3D`` (and co3d's copy in
``models/x3d``): stem ``s1.pathway0_stem.{conv_xy (1x3x3), conv (5x1x1 depthwise), bn}``,
stages ``s2``-``s5`` of ``pathway0_res{i}`` blocks (``branch1`` + ``branch1_bn`` on block 0 of
every stage, whose stride is 2; ``branch2.{a, a_bn, b, b_bn, se.fc1, se.fc2, c, c_bn}`` with SE
on every other block from the first), head ``head.{conv_5, conv_5_bn, lin_5, projection}``.
`slowfast_x3d_forward` runs SlowFast's eval-mode forward from those names with plain torch
functions (no cofunc code), so a converted checkpoint can be checked against it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

EPS = 1e-5


def round_width(width, multiplier, min_width=8, divisor=8):
    if not multiplier:
        return width
    width *= multiplier
    width_out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if width_out < 0.9 * width:
        width_out += divisor
    return int(width_out)


def stages(dim_c1=12, width_factor=2.0, depth_factor=2.2, bottleneck_factor=2.25):
    """[(num_blocks, dim_in, dim_out, dim_inner)] of s2 .. s5, and the stem's width."""
    dim_res1 = round_width(dim_c1, width_factor)
    bases = [dim_c1]
    for _ in range(3):
        bases.append(round_width(bases[-1], 2.0, divisor=8))
    out, dim_in = [], dim_res1
    for count, base in zip((1, 2, 5, 3), bases):
        dim_out = round_width(base, width_factor)
        out.append((int(math.ceil(depth_factor * count)), dim_in, dim_out, int(bottleneck_factor * dim_out)))
        dim_in = dim_out
    return out, dim_res1


def slowfast_x3d_state_dict(num_classes=400, dim_c1=12, dim_c5=2048, width_factor=2.0, depth_factor=2.2,
                            bottleneck_factor=2.25, se_ratio=0.0625, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()

    def rand(*shape, scale=None):
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        return torch.randn(*shape, generator=g, dtype=dtype) * (scale or fan_in ** -0.5)

    def bn(prefix, c):
        sd[f"{prefix}.weight"] = torch.rand(c, generator=g, dtype=dtype) + 0.5
        sd[f"{prefix}.bias"] = torch.randn(c, generator=g, dtype=dtype) * 0.2
        sd[f"{prefix}.running_mean"] = torch.randn(c, generator=g, dtype=dtype) * 0.2
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=g, dtype=dtype) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    plan, dim_res1 = stages(dim_c1, width_factor, depth_factor, bottleneck_factor)
    sd["s1.pathway0_stem.conv_xy.weight"] = rand(dim_res1, 3, 1, 3, 3)
    sd["s1.pathway0_stem.conv.weight"] = rand(dim_res1, 1, 5, 1, 1)
    bn("s1.pathway0_stem.bn", dim_res1)
    for s, (count, dim_in, dim_out, inner) in enumerate(plan, start=2):
        for i in range(count):
            p = f"s{s}.pathway0_res{i}"
            c_in = dim_in if i == 0 else dim_out
            if i == 0:  # stride 2: a projection shortcut, with its batch norm, in every stage
                sd[f"{p}.branch1.weight"] = rand(dim_out, c_in, 1, 1, 1)
                bn(f"{p}.branch1_bn", dim_out)
            sd[f"{p}.branch2.a.weight"] = rand(inner, c_in, 1, 1, 1)
            bn(f"{p}.branch2.a_bn", inner)
            sd[f"{p}.branch2.b.weight"] = rand(inner, 1, 3, 3, 3)
            bn(f"{p}.branch2.b_bn", inner)
            if (i + 1) % 2:
                dim_fc = round_width(inner, se_ratio)
                sd[f"{p}.branch2.se.fc1.weight"] = rand(dim_fc, inner, 1, 1, 1)
                sd[f"{p}.branch2.se.fc1.bias"] = rand(dim_fc, scale=0.1)
                sd[f"{p}.branch2.se.fc2.weight"] = rand(inner, dim_fc, 1, 1, 1)
                sd[f"{p}.branch2.se.fc2.bias"] = rand(inner, scale=0.1)
            sd[f"{p}.branch2.c.weight"] = rand(dim_out, inner, 1, 1, 1)
            bn(f"{p}.branch2.c_bn", dim_out)
    last_out, last_inner = plan[-1][2], plan[-1][3]
    sd["head.conv_5.weight"] = rand(last_inner, last_out, 1, 1, 1)
    bn("head.conv_5_bn", last_inner)
    sd["head.lin_5.weight"] = rand(dim_c5, last_inner, 1, 1, 1)
    sd["head.projection.weight"] = rand(num_classes, dim_c5)
    sd["head.projection.bias"] = rand(num_classes, scale=0.1)
    return sd


def _bn(sd, prefix, x):
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], False, 0.0, EPS)


def slowfast_x3d_forward(sd, x, softmax=True):
    """SlowFast X3D's eval forward: clips ``(B, 3, T, H, W)`` -> scores ``(B, num_classes)``."""
    x = F.conv3d(x, sd["s1.pathway0_stem.conv_xy.weight"], stride=(1, 2, 2), padding=(0, 1, 1))
    x = F.conv3d(x, sd["s1.pathway0_stem.conv.weight"], padding=(2, 0, 0), groups=x.shape[1])
    x = F.relu(_bn(sd, "s1.pathway0_stem.bn", x))
    for s in range(2, 6):
        i = 0
        while f"s{s}.pathway0_res{i}.branch2.a.weight" in sd:
            p = f"s{s}.pathway0_res{i}"
            stride = 2 if i == 0 else 1
            f = F.relu(_bn(sd, f"{p}.branch2.a_bn", F.conv3d(x, sd[f"{p}.branch2.a.weight"])))
            f = F.conv3d(f, sd[f"{p}.branch2.b.weight"], stride=(1, stride, stride), padding=1, groups=f.shape[1])
            f = _bn(sd, f"{p}.branch2.b_bn", f)
            if f"{p}.branch2.se.fc1.weight" in sd:
                z = f.mean(dim=(2, 3, 4), keepdim=True)
                z = F.relu(F.conv3d(z, sd[f"{p}.branch2.se.fc1.weight"], sd[f"{p}.branch2.se.fc1.bias"]))
                f = f * torch.sigmoid(F.conv3d(z, sd[f"{p}.branch2.se.fc2.weight"], sd[f"{p}.branch2.se.fc2.bias"]))
            f = f * torch.sigmoid(f)  # Swish
            f = _bn(sd, f"{p}.branch2.c_bn", F.conv3d(f, sd[f"{p}.branch2.c.weight"]))
            if f"{p}.branch1.weight" in sd:
                x = _bn(sd, f"{p}.branch1_bn", F.conv3d(x, sd[f"{p}.branch1.weight"], stride=(1, stride, stride)))
            x = F.relu(x + f)
            i += 1
    x = F.relu(_bn(sd, "head.conv_5_bn", F.conv3d(x, sd["head.conv_5.weight"])))
    x = F.avg_pool3d(x, x.shape[2:], stride=1)
    x = F.relu(F.conv3d(x, sd["head.lin_5.weight"]))
    x = F.linear(x.permute(0, 2, 3, 4, 1), sd["head.projection.weight"], sd["head.projection.bias"])
    if softmax:
        x = torch.softmax(x, dim=4)
    return x.mean(dim=(1, 2, 3))
