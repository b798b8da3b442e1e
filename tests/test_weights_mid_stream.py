"""`load_state_dict` in the middle of a stream keeps the stream (as co does, and as optimiser
steps, which also change weights in place, do): outputs mix old and new weights until the
cached activations are flushed, at most ``receptive_field - 1`` steps later; `clean_state`
restarts the stream.

Frames are ``(1, C)``; the network is conv -> relu -> conv with receptive field 5.
"""

from __future__ import annotations

import torch
from torch import nn

import cofunc.nn as cn


def _net(seed):
    torch.manual_seed(seed)
    return cn.continual(nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 3, 3))).eval()


def _run(net, frames):
    return [net.forward_step(f) for f in frames]


def test_load_state_dict_mid_stream_mixes_weights_until_the_cached_activations_are_flushed():
    old, new = _net(0), _net(1)
    reference = _net(1)  # the new weights over the whole stream
    frames = list(torch.randn(20, 1, 2))
    switch, rf = 8, old.receptive_field
    assert rf == 5
    with torch.no_grad():
        before = _run(old, frames[:switch])
        old.load_state_dict(new.state_dict())
        after = _run(old, frames[switch:])
        want = _run(reference, frames)[switch:]
    assert before[-1] is not None and all(y is not None for y in after)
    # The second conv caches two activations of the first, computed with the old weights (the
    # first conv caches input frames, which do not depend on weights): two outputs mix, and in
    # general at most receptive_field - 1 do.
    for i, (y, w) in enumerate(zip(after, want)):
        if i < 2:
            assert not torch.allclose(y, w), f"step {switch + i} should still mix in the old weights"
        else:
            torch.testing.assert_close(y, w, msg=f"step {switch + i}")


def test_clean_state_after_load_state_dict_is_the_new_network_from_the_start():
    old, new = _net(0), _net(1)
    frames = list(torch.randn(12, 1, 2))
    with torch.no_grad():
        _run(old, frames[:5])
        old.load_state_dict(new.state_dict())
        old.clean_state()
        got = _run(old, frames[5:])
        want = _run(new, frames[5:])
    for y, w in zip(got, want):
        assert (y is None) == (w is None)
        if y is not None:
            torch.testing.assert_close(y, w)
