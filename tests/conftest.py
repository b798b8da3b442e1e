"""Shared helpers for the cofunc test suite.

Conventions: a clip is ``(*B, C, T, *S)`` and a step ``(*B, C, *S)``; a layer's clip time axis is
``layer.time_axis()`` (counted from the end, so any number of stream dims works).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, List, NamedTuple, Sequence, Tuple

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import cofunc

# Hypothesis: modest example counts (2 shared cores; the whole suite must stay within minutes)
# and no deadline (the first conv call of a new shape can take tens of ms while torch picks
# its kernel). `HYPOTHESIS_PROFILE=thorough` runs more examples locally.
settings.register_profile(
    "cofunc",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "cofunc"))

# Step and clip paths use different conv algorithms; float32 comparisons need this slack
# (float64 comparisons use assert_close's tight float64 defaults).
FLOAT32_TOL = dict(atol=1e-5, rtol=1e-4)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state (reproducible failures)."""
    torch.manual_seed(0)


# --- clips and time axes -------------------------------------------------------------------


def clip_len(layer, xs: Tensor) -> int:
    """The number of frames of a clip ``xs: (*B, C, T, *S)``."""
    return xs.shape[layer.time_axis()]


def frame(layer, xs: Tensor, t: int) -> Tensor:
    """Frame ``t`` of a clip: ``(*B, C, T, *S) -> (*B, C, *S)``."""
    return xs.select(layer.time_axis(), t)


def time_slice(layer, xs: Tensor, start: int, stop: int) -> Tensor:
    """Frames ``start:stop`` of a clip, keeping the time axis."""
    return xs.narrow(layer.time_axis(), start, stop - start)


def step_shape(layer, xs: Tensor) -> tuple:
    """The shape of one step of the clip ``xs``: the clip shape without its time axis."""
    shape = list(xs.shape)
    del shape[layer.time_axis() % xs.dim()]
    return tuple(shape)


def fresh_state(layer, params, xs: Tensor):
    """The fresh state for streams shaped like the clip ``xs`` (same dtype as ``xs``)."""
    return layer.init_state(params, step_shape(layer, xs), dtype=xs.dtype)


class Stepped(NamedTuple):
    """The result of `step_through`.

    ys: the valid outputs stacked on the time axis, ``(*B, C', T', *S')`` (T' may be 0).
    flags: per step, whether its output was valid (one Python bool: streams are in lock step).
    outputs: every step's raw output ``(*B, C', *S')``, valid or not.
    state: the state after the last step.
    """

    ys: Tensor
    flags: List[bool]
    outputs: List[Tensor]
    state: Any


def step_through(layer, params, xs: Tensor, state=None, out_layer=None) -> Stepped:
    """Run ``layer.step`` over every frame of ``xs: (*B, C, T, *S)``, from ``state`` or fresh.

    The streams must stay in lock step (every stream agrees on validity at each step), which
    is asserted. ``out_layer`` gives the output time axis when it differs from the input's (a
    `seq` whose last layer has another rank); by default the layer's own.
    """
    if state is None:
        state = fresh_state(layer, params, xs)
    flags, outputs, valid_ys = [], [], []
    for t in range(clip_len(layer, xs)):
        y, state = layer.step(params, state, frame(layer, xs, t))
        v = layer.valid(state)
        assert bool(v.all()) == bool(v.any()), "streams out of lock step"
        flags.append(bool(v.all()))
        outputs.append(y)
        if flags[-1]:
            valid_ys.append(y)
    axis = (out_layer or layer).time_axis()
    if valid_ys:
        ys = torch.stack(valid_ys, dim=axis)
    else:
        y_shape = list(layer.step_output_shape(step_shape(layer, xs)))
        y_shape.insert(len(y_shape) + 1 + axis, 0)
        ys = xs.new_zeros(y_shape)
    return Stepped(ys, flags, outputs, state)


def expected_flags(delay: int, stride: int, n_steps: int, start: int = 0) -> List[bool]:
    """docs/design.md, section 3: steps ``start .. start + n_steps - 1`` (0-based) emit iff at least
    ``delay`` steps came before and the step is a multiple of ``stride`` after the first."""
    return [t >= delay and (t - delay) % stride == 0 for t in range(start, start + n_steps)]


# --- pytrees of states ---------------------------------------------------------------------


def tree_clone(tree):
    """A deep copy of a state pytree (every leaf cloned)."""
    return pytree.tree_map(lambda t: t.clone(), tree)


def assert_tree_equal(actual, expected, msg: str = ""):
    """Same structure, and every leaf ``torch.equal`` (shape, dtype and values)."""
    a_leaves, a_spec = pytree.tree_flatten(actual)
    e_leaves, e_spec = pytree.tree_flatten(expected)
    assert a_spec == e_spec, f"{msg}: tree structures differ: {a_spec} vs {e_spec}"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        assert a.dtype == e.dtype and a.shape == e.shape, f"{msg}: leaf {i}: {a.dtype}{tuple(a.shape)} vs {e.dtype}{tuple(e.shape)}"
        assert torch.equal(a, e), f"{msg}: leaf {i} differs"


def assert_tree_close(actual, expected, msg: str = "", **tol):
    """Same structure, and every leaf close (`torch.testing.assert_close`, exact for ints)."""
    a_leaves, a_spec = pytree.tree_flatten(actual)
    e_leaves, e_spec = pytree.tree_flatten(expected)
    assert a_spec == e_spec, f"{msg}: tree structures differ: {a_spec} vs {e_spec}"
    for a, e in zip(a_leaves, e_leaves):
        torch.testing.assert_close(a, e, msg=lambda m: f"{msg}: {m}", **tol)


def tree_stack(trees: Sequence[Any], dim: int = 0):
    """Stack states of single streams into one state with a new stream dim ``dim``."""
    return pytree.tree_map(lambda *leaves: torch.stack(leaves, dim), *trees)


def tree_index(tree, i: int):
    """Stream ``i`` of a state with one leading stream dim."""
    return pytree.tree_map(lambda t: t[i], tree)


def split_points(draw_points: Sequence[int], length: int) -> List[int]:
    """Chunk boundaries ``[0, ..., length]`` from arbitrary cut points (repeats allowed: empty
    chunks are part of the contract)."""
    cuts = sorted(min(max(p, 0), length) for p in draw_points)
    return [0] + cuts + [length]


# --- convolution configurations (hypothesis) ------------------------------------------------

NN_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CO_CONV = {1: cofunc.conv1d, 2: cofunc.conv2d, 3: cofunc.conv3d}
F64 = torch.float64


@dataclasses.dataclass(frozen=True)
class ConvConfig:
    """A convolution configuration plus input sizes that it accepts.

    kwargs: the arguments shared by ``torch.nn.ConvNd`` and ``cofunc.convNd``.
    spatial: spatial input sizes ``S`` (large enough for the kernel and for reflect padding).
    pads: per dim ``(start, end)`` padding, with torch's rule for ``"same"``.
    """

    dims: int
    kwargs: dict
    spatial: Tuple[int, ...]
    pads: Tuple[Tuple[int, int], ...]

    def layer(self) -> cofunc.Conv:
        return CO_CONV[self.dims](**self.kwargs)

    def module(self, dtype=torch.float32) -> nn.Module:
        return NN_CONV[self.dims](**self.kwargs, dtype=dtype)

    @property
    def rf(self) -> int:
        dilation = as_tuple(self.kwargs.get("dilation", 1), self.dims)[0]
        return dilation * (as_tuple(self.kwargs["kernel_size"], self.dims)[0] - 1) + 1

    @property
    def t_stride(self) -> int:
        return as_tuple(self.kwargs.get("stride", 1), self.dims)[0]

    @property
    def min_len(self) -> int:
        """The shortest clip whose forward has at least one frame."""
        lo, hi = self.pads[0]
        return max(1, self.rf - lo - hi)

    def clip(self, lead: Tuple[int, ...], length: int, dtype=F64) -> torch.Tensor:
        """A random clip ``(*lead, C_in, length, *S)``."""
        return torch.randn(lead + (self.kwargs["in_channels"], length) + self.spatial, dtype=dtype)

    def forward_len(self, length: int) -> int:
        lo, hi = self.pads[0]
        return (length + lo + hi - self.rf) // self.t_stride + 1


def as_tuple(value, n):
    """torch.nn's int-or-tuple arguments as a tuple of ``n`` values."""
    return (value,) * n if isinstance(value, int) else tuple(value)


def same_pads(kernel, dilation):
    # torch.nn's rule for padding="same": the extra frame of an even total goes at the end.
    return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))


@st.composite
def conv_configs(draw, dims=None, max_temporal_kernel=4):
    """Valid configurations (ones both torch.nn and cofunc accept), with fitting input sizes."""
    dims = draw(st.integers(1, 3)) if dims is None else dims
    groups = draw(st.sampled_from([1, 1, 2]))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["zeros", "zeros", "replicate", "reflect", "circular"]))
    kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    kernel = [draw(st.integers(1, max_temporal_kernel))] + [draw(st.integers(1, 3)) for _ in range(dims - 1)]
    dilation = [draw(st.integers(1, 2)) for _ in range(dims)]
    if kind == "same":
        stride = [1] * dims  # torch.nn rejects "same" with any stride > 1
        if mode in ("reflect", "circular"):
            kernel[0] = 1  # no temporal padding for modes that pad with future frames
    else:
        stride = [draw(st.integers(1, 3))] + [draw(st.integers(1, 2)) for _ in range(dims - 1)]
    rf = dilation[0] * (kernel[0] - 1) + 1
    max_t_pad = 0 if mode in ("reflect", "circular") else rf - 1
    if kind == "same":
        padding = "same"
        pads = same_pads(kernel, dilation)
    elif kind == "valid":
        padding = "valid"
        pads = ((0, 0),) * dims
    elif kind == "int":
        padding = draw(st.integers(0, min(max_t_pad, 2)))
        pads = ((padding, padding),) * dims
    else:
        padding = (draw(st.integers(0, max_t_pad)),) + tuple(draw(st.integers(0, 2)) for _ in range(dims - 1))
        pads = tuple((p, p) for p in padding)
    spatial = []
    for k, d, (lo, hi) in zip(kernel[1:], dilation[1:], pads[1:]):
        need = max(1, d * (k - 1) + 1 - lo - hi, max(lo, hi) + 1)
        spatial.append(need + draw(st.integers(0, 2)))
    # Ints where torch accepts them, tuples otherwise: both spellings get exercised.
    compact = lambda v: v[0] if len(set(v)) == 1 and draw(st.booleans()) else tuple(v)  # noqa: E731
    kwargs = dict(
        in_channels=in_channels, out_channels=out_channels, kernel_size=compact(kernel),
        stride=compact(stride), padding=padding, dilation=compact(dilation), groups=groups,
        bias=draw(st.booleans()), padding_mode=mode,
    )
    return ConvConfig(dims, kwargs, tuple(spatial), pads)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: the model tests run many tiny convolutions, and on
    shared cores one thread is several times faster than two competing ones. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- a local Ray cluster (tests marked `ray`) ----------------------------------------------


@pytest.fixture(scope="session")
def cluster():
    """A local Ray cluster for the session, shut down at its end. Ray binds to the machine's
    interface address whatever it is asked, so the tests only start one inside a private network
    namespace (loopback only), as `make test` runs them."""
    import socket

    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        pytest.skip("the Ray tests start servers: run them inside a private network namespace, "
                    "`unshare -n sh -c 'ip link set lo up && exec python -m pytest -m ray'` (make test does)")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield ray
    ray.shutdown()
