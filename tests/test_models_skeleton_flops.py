"""Skeleton models at full size: `cofunc.profile` against the seed table (Hedegaard et al.,
"Continual Spatio-Temporal Graph Convolutional Networks", Table II, NTU RGB+D 60).

| model | params (M) | regular GFLOPs (300 frames) | continual "*" GFLOPs per prediction |
|---|---|---|---|
| ST-GCN / CoST-GCN* | 3.1 | 16.73 | 0.16 |
| AGCN / CoAGCN* | 3.5 | 18.69 | 0.17 |
| S-TR / CoS-TR* | 3.1 | 16.14 | 0.15 |

The table's "GFLOPs" are multiply-accumulates of the convolutions (and a few per-element
modules, ptflops' count) for the 2-person input. `cofunc.profile` counts MACs (FlopCounterMode's
FLOPs / 2) of every matrix product: the convolutions and also the graph products (``x @ A`` per
subset, AGCN's data-dependent graphs, S-TR's spatial attention), which add 1.5-4 %: ST-GCN
17.25 (+3.1 %), AGCN 19.41 (+3.8 %), S-TR 16.43 (+1.8 %); CoST-GCN* 0.159 (-0.6 %), CoAGCN*
0.177 (+3.9 %), CoS-TR* 0.152 (+1.2 %). All within 5 % of the table.

The regular networks (``variant="original"``) are profiled on a 300-frame clip: the profiler
steps through their delay (372 frames) first, ~5-8 s per model, so those tests are marked slow.
The "*" networks' cost per step does not depend on the temporal pool's window (the pool has no
multiply-accumulates), so they are profiled with the shortest clip, 81 frames (80 warm-up steps).
"""

from __future__ import annotations

import pytest
import torch

from cofunc import profile
from cofunc.models.skeleton import agcn, s_tr, st_gcn

BUILDERS = {"st_gcn": st_gcn, "agcn": agcn, "s_tr": s_tr}
# params (M), regular GFLOPs on 300 frames, continual "*" GFLOPs per prediction
SEED = {"st_gcn": (3.1, 16.73, 0.16), "agcn": (3.5, 18.69, 0.17), "s_tr": (3.1, 16.14, 0.15)}
FRAME = (1, 3, 25, 2)  # one frame of a stream: (B, C, V, M), NTU's 25 joints and 2 persons


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_regular_network_against_the_table(kind):
    """ST-GCN, AGCN, S-TR: params and the MACs of one prediction, ``forward`` on 300 frames.
    The same profile gives the original continual network's cost (CoST-GCN etc., no "*"): one
    prediction every 4 steps (the two strided blocks), 4 steps' MACs."""
    params_m, regular, _ = SEED[kind]
    net = BUILDERS[kind]().eval()
    trainable = sum(p.numel() for p in net.parameters())
    assert round(trainable / 1e6, 1) == params_m
    p = profile(net.layer, net.params, FRAME, clip_length=300)
    assert (p.stride, p.clip_length, p.clip_outputs) == (4, 300, 1)
    # the profiler's params are the state dict: batch-norm statistics and the graph buffers too
    assert p.n_params > trainable
    assert 0.015 < p.clip_macs / 1e9 / regular - 1 < 0.05
    # CoX (original): 4 steps per prediction, ~75x fewer MACs than the clip
    assert 60 < p.mac_ratio < 90


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_continual_star_network_against_the_table(kind):
    """CoST-GCN*, CoAGCN*, CoS-TR*: one prediction per step."""
    params_m, regular, continual = SEED[kind]
    net = BUILDERS[kind](variant="star", clip_length=81).eval()
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == params_m
    p = profile(net.layer, net.params, FRAME)
    assert (p.delay, p.stride, p.receptive_field, p.clip_outputs) == (80, 1, 81, 1)
    assert abs(p.macs_per_prediction / 1e9 / continual - 1) < 0.05
    # the table's ratio of regular (300 frames) to continual: ~108x
    assert 100 < regular * 1e9 / p.macs_per_prediction < 115
