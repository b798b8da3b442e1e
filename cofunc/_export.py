"""Compiling and exporting a continual step: ``torch.compile``, ``torch.export`` and ONNX.

A layer's step is a pure function, so production paths need no special layer support:

- `step_fn(layer)` is ``(params, state, x) -> (y, valid, next_state)``: the step and the
  per-stream validity of its output, the form every path below uses.
- `compile_step(layer)` is ``torch.compile(step_fn(layer), fullgraph=True)``. The whole step
  is one graph with no breaks (layers branch only on static metadata; the eager-only shortcuts
  that read tensor values, such as skipping a strided layer on steps without output, switch
  themselves off while compiling). State leaves keep their shapes, dtypes and strides from step
  to step, so the graph compiled on the first step serves every later one, warm-up included:
  no recompilation as the streams advance. Compiled steps compute every layer on every step
  (branch-free), so they cost what an emitting eager step costs; only outputs where ``valid``
  holds are defined. For inference, detach the params (or run the steps under
  ``torch.no_grad()``): with params that require grad the state starts requiring grad after the
  first step, and the step is compiled a second time.
- `compile_step(layer, vmap=True)` is ``torch.compile(torch.func.vmap(step_fn(layer),
  in_dims=(None, 0, 0)), fullgraph=True)``: streams stacked on dim 0 of a state made for one
  stream (`cofunc.stack_streams`), shared params. This is the form for per-stream params too
  (pass ``in_dims=(0, 0, 0)``). Compiling the layer's own step works the same way,
  ``torch.compile(torch.func.vmap(layer.step, in_dims=(None, 0, 0)), fullgraph=True)``, with
  ``layer.valid(state)`` for the flags; `compile_step` also gives each compiled step its own
  dynamo cache (see `_own_code`).
- `export_step(layer, params, step_shape)` is a ``torch.export.ExportedProgram`` of
  ``(x, *flat_state) -> (y, valid, *flat_next_state)``, with the number of streams (dim 0 of
  ``x`` and of every state leaf) dynamic. The params are baked in as buffers of the exported
  module under their ``state_dict`` names (``ep.state_dict`` holds ``"params." + name`` for each
  name of `flatten_params`), so the program is self-contained, as the ONNX model is.
- `export_onnx(layer, params, step_shape, path)` writes the same function as an ONNX model with
  inputs ``x`` and ``state.<path>`` for each state leaf, outputs ``y``, ``valid`` and
  ``next_state.<path>`` (`onnx_names`); ``<path>`` is the leaf's `state_names` name, such as
  ``blocks.0.conv.conv_xy.buffer``. Dim 0 of each, the streams, is the symbolic dim
  ``"streams"``. Feed each ``next_state.<path>`` back as ``state.<path>`` on the next step.

The flat state is the state's leaves in optree's order for the ``"cofunc"`` namespace
(`flatten_state`); `unflatten_state` rebuilds the state from them. The exported function takes
exactly one stream dim; a fresh state for it is ``flatten_state(layer.init_state(params,
(B, C, *S)))``.

Example:
    >>> import torch, cofunc
    >>> from cofunc._export import export_step, flatten_state
    >>> layer = cofunc.conv1d(2, 3, kernel_size=3)
    >>> params = layer.init_params()
    >>> program = export_step(layer, params, (4, 2))
    >>> step = program.module()
    >>> flat = flatten_state(layer.init_state(params, (5, 2)))  # any number of streams
    >>> y, valid, *flat = step(torch.randn(5, 2), *flat)
    >>> y.shape, valid.tolist()
    (torch.Size([5, 3]), [False, False, False, False, False])
"""

from __future__ import annotations

import os
import types
import warnings
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import optree
import torch
from torch import Tensor, nn

from ._errors import ConfigurationError
from ._clock import assume_all_streams_emitting
from ._layer import Layer, resolve_layer
from ._params import Params
from ._values import TREE_NAMESPACE
from ._state_names import state_names

StepFn = Callable[[Params, Any, Tensor], Tuple[Tensor, Tensor, Any]]


# --- the step as one pure function ---------------------------------------------------------------


def step_fn(layer: Layer) -> StepFn:
    """``(params, state, x) -> (y, valid, next_state)``: one step and its output's validity.

    ``valid`` is per stream, ``(*B,)`` bool (a 0-d True for layers that always emit).
    """

    def step(params, state, x):
        y, next_state = layer.step(params, state, x)
        return y, layer.valid(next_state), next_state

    return _own_code(step)


def compile_step(layer: Layer, *, vmap: bool = False, in_dims=(None, 0, 0), **compile_kwargs) -> StepFn:
    """``torch.compile`` of `step_fn` with ``fullgraph=True`` (no graph breaks allowed).

    With ``vmap=True`` the step is vmapped first, ``torch.func.vmap(step_fn(layer),
    in_dims=in_dims)``: by default shared params and streams stacked on dim 0 of a state built
    for one stream. Other keyword arguments go to ``torch.compile`` (``backend``, ``mode``,
    ``dynamic``, ...).

    Example:
        >>> import torch, cofunc
        >>> from cofunc._export import compile_step
        >>> layer = cofunc.conv1d(2, 3, kernel_size=2)
        >>> params = layer.init_params()
        >>> step = compile_step(layer, backend="eager")
        >>> state = layer.init_state(params, (4, 2))
        >>> for _ in range(3):
        ...     y, valid, state = step(params, state, torch.randn(4, 2))
        >>> bool(valid.all())
        True
    """
    layer, _, _ = resolve_layer("compile_step", layer, need_params=False)
    fn = step_fn(layer)
    if vmap:
        vmapped = torch.func.vmap(fn, in_dims=in_dims)

        def fn(params, state, x):
            return vmapped(params, state, x)

        fn = _own_code(fn)
    compile_kwargs.setdefault("fullgraph", True)
    masked = torch.compile(fn, **compile_kwargs)
    if vmap or layer.stride != 1 or layer.delay == 0 or not layer.stateful:
        return masked
    # Two graphs: the general one masks every state update and output per stream (it cannot
    # read values); once every stream is past the warm-up, a graph traced under that
    # assumption has no masks at all. One host read per step picks the graph.
    warm = torch.compile(step_fn(layer), **compile_kwargs)
    return CompiledStep(layer, masked, warm)


class CompiledStep:
    """`compile_step`'s result for a stateful stride-1 layer: ``(params, state, x) -> (y,
    valid, next_state)``, running ``warm`` (compiled without per-stream masks) when every
    stream of ``state`` has taken at least ``layer.delay`` steps, else ``masked`` (the general
    graph). Both give the eager step's outputs; the choice costs one host read of the clock.
    """

    def __init__(self, layer: Layer, masked: Callable, warm: Callable):
        self.layer, self.masked, self.warm = layer, masked, warm

    def __call__(self, params, state, x):
        if self.layer.all_streams_warm(state):
            with assume_all_streams_emitting():
                return self.warm(params, state, x)
        return self.masked(params, state, x)

    def __repr__(self) -> str:
        return f"CompiledStep({self.layer.label}: a masked and an all-streams-warm graph)"


def _own_code(fn: Callable) -> Callable:
    """A copy of the closure ``fn`` with a code object of its own.

    Dynamo keeps compiled graphs on the code object of the function it compiles and guards them
    on the closure (here: the layer). Steps of different layers would otherwise share one code
    object (and every ``torch.func.vmap`` wrapper shares torch's), so compiling the steps of
    more than a few layers in one process would hit dynamo's recompile limit.
    """
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, "cofunc_step", None, fn.__closure__)


# --- flat states -----------------------------------------------------------------------------------


def flatten_state(state) -> List[Tensor]:
    """The state's leaves, in the order the exported step takes and returns them."""
    return optree.tree_leaves(state, namespace=TREE_NAMESPACE)


def state_spec(layer: Layer, params: Params, step_shape: Sequence[int]) -> optree.PyTreeSpec:
    """The tree structure of ``layer``'s state (the same for every number of streams)."""
    with torch.no_grad():
        template = layer.init_state(params, step_shape)
    return optree.tree_structure(template, namespace=TREE_NAMESPACE)


def unflatten_state(spec_or_layer, leaves_or_params, step_shape=None, leaves=None):
    """Rebuild a state from flat leaves.

    ``unflatten_state(spec, leaves)`` with a spec from `state_spec`, or
    ``unflatten_state(layer, params, step_shape, leaves)``.
    """
    if isinstance(spec_or_layer, Layer):
        spec = state_spec(spec_or_layer, leaves_or_params, step_shape)
    else:
        spec, leaves = spec_or_layer, leaves_or_params
    leaves = list(leaves)
    if len(leaves) != spec.num_leaves:
        raise ConfigurationError(f"unflatten_state: the state has {spec.num_leaves} leaves, got {len(leaves)}")
    return optree.tree_unflatten(spec, leaves)


# --- the exportable module -------------------------------------------------------------------------


class _ParamTree(nn.Module):
    """Nested params as non-trainable buffers, one submodule per nesting level, so that the
    module's ``state_dict`` keys are the params' torch.nn names."""

    def __init__(self, tree: Mapping[str, Any]):
        super().__init__()
        self._keys = tuple(tree)
        for key, value in tree.items():
            if isinstance(value, Mapping):
                self.add_module(key, _ParamTree(value))
            elif isinstance(value, Tensor):
                self.register_buffer(key, value.detach())
            else:
                raise ConfigurationError(f"export: params must be nested dicts of tensors, got {type(value).__name__} at {key!r}")

    def tree(self) -> dict:
        out = {}
        for key in self._keys:
            child = self._modules.get(key)
            out[key] = child.tree() if child is not None else self._buffers[key]
        return out


class StepModule(nn.Module):
    """``forward(x, *flat_state) -> (y, valid, *flat_next_state)`` for one layer and its params.

    ``x``: ``(B, C, *S)``; ``valid``: ``(B,)`` bool; state leaves as in `flatten_state`. The
    params are buffers (under their ``state_dict`` names, below ``params.``).
    """

    def __init__(self, layer: Layer, params: Params, step_shape: Sequence[int]):
        super().__init__()
        if isinstance(step_shape, list) or not all(isinstance(s, int) for s in step_shape):
            raise ConfigurationError(
                f"export: {layer.label} takes a multi-stream value; export supports layers whose "
                f"step input and output are single tensors"
            )
        if len(layer.batch_shape(step_shape)) != 1:
            raise ConfigurationError(
                f"export: the step shape {tuple(step_shape)} of {layer.label} must have exactly one "
                f"stream dim, (B, C, *S)"
            )
        self.layer = layer  # a plain attribute: a Layer is a record of functions, not a Module
        self.params = _ParamTree(params)
        self.spec = state_spec(layer, params, step_shape)

    def forward(self, x: Tensor, *flat_state: Tensor):
        state = optree.tree_unflatten(self.spec, list(flat_state))
        y, next_state = self.layer.step(self.params.tree(), state, x)
        if not isinstance(y, Tensor):
            raise ConfigurationError(f"export: {self.layer.label} returns a multi-stream value; export needs one tensor")
        valid = torch.broadcast_to(self.layer.valid(next_state), x.shape[:1])
        return (y, valid, *flatten_state(next_state))


def _example_state(layer: Layer, params: Params, step_shape: Sequence[int], streams: int):
    shape = (streams,) + tuple(step_shape[1:])
    reference = next((t for t in optree.tree_leaves(params) if isinstance(t, Tensor) and t.is_floating_point()), None)
    dtype = reference.dtype if reference is not None else torch.get_default_dtype()
    device = reference.device if reference is not None else None
    with torch.no_grad():
        state = layer.init_state(params, shape, device=device, dtype=dtype)
    return torch.zeros(shape, dtype=dtype, device=device), state


def _example_inputs(layer: Layer, params: Params, step_shape: Sequence[int], streams: int):
    x, state = _example_state(layer, params, step_shape, streams)
    return x, flatten_state(state)


def _dynamic_shapes(n_leaves: int, dynamic_streams: bool):
    if not dynamic_streams:
        return None
    streams = torch.export.Dim("streams", min=1)
    if n_leaves == 0:  # no varargs: the inputs are just (x,)
        return ({0: streams},)
    return ({0: streams}, tuple({0: streams} for _ in range(n_leaves)))


def export_step(layer: Layer, params: Params = None, step_shape: Sequence[int] = None, *,
                dynamic_streams: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of ``(x, *flat_state) -> (y, valid, *flat_next_state)`` (a `StepModule`).

    ``step_shape`` is ``(B, C, *S)``; with ``dynamic_streams`` (default) ``B`` is the dynamic
    dim ``"streams"`` (any positive number) on ``x`` and every state leaf, and the example
    inputs use 2 streams whatever ``B`` is (a size-1 example would specialise). Run it with
    ``program.module()(x, *flat_state)``. ``export_step(net, step_shape)`` exports a ``cofunc.nn``
    module with its own params.
    """
    layer, params, step_shape = resolve_layer("export_step", layer, params, step_shape)
    module = StepModule(layer, params, step_shape).eval()
    streams = 2 if dynamic_streams else int(step_shape[0])
    x, leaves = _example_inputs(layer, params, step_shape, streams)
    with torch.no_grad():
        return torch.export.export(module, (x, *leaves), dynamic_shapes=_dynamic_shapes(len(leaves), dynamic_streams))


def onnx_names(layer: Layer, state) -> Tuple[List[str], List[str]]:
    """The exported step's input and output names for a state of ``layer``:
    ``(["x", "state.<path>", ...], ["y", "valid", "next_state.<path>", ...])``, one
    ``<path>`` per state leaf in `flatten_state` order (its `state_names` name). The prefixes
    keep state names apart from the params' initializers (``state_dict`` names).

    Example:
        >>> import cofunc
        >>> layer = cofunc.seq({"conv": cofunc.conv1d(2, 2, 3)})
        >>> cofunc.onnx_names(layer, layer.init_state(layer.init_params(), (1, 2)))
        (['x', 'state.conv.buffer', 'state.conv.count'], ['y', 'valid', 'next_state.conv.buffer', 'next_state.conv.count'])
    """
    names = state_names(layer, state)
    return ["x"] + [f"state.{n}" for n in names], ["y", "valid"] + [f"next_state.{n}" for n in names]


def export_onnx(layer: Layer, params: Params = None, step_shape: Sequence[int] = None,
                path: Union[str, os.PathLike, None] = None, *,
                dynamic_streams: bool = True, opset_version: Optional[int] = None,
                external_data: bool = False, optimize: bool = False):
    """Write the step to ``path`` as an ONNX model; returns torch's ``ONNXProgram``.

    Inputs ``x`` and ``state.<path>``, outputs ``y``, ``valid`` (bool) and ``next_state.<path>``
    (`onnx_names`: one ``<path>`` per state leaf, its `state_names` name, in `flatten_state`
    order), dim 0 symbolic (``"streams"``) unless ``dynamic_streams=False``.
    Uses ``torch.onnx.export(..., dynamo=True)`` (needs the ``onnx`` and ``onnxscript``
    packages). The params are initializers named by their ``state_dict`` names; with
    ``external_data=False`` (default) they are stored inside the one ``.onnx`` file.
    ``optimize=True`` runs onnxscript's graph optimizer on the model: it costs a third more
    export time (CoX3D-S: 151 s of CPU instead of 112 s) for what onnxruntime's own graph
    optimizations, applied when a session loads the model, mostly do anyway, so it is off by
    default.

    Run with onnxruntime::

        session = onnxruntime.InferenceSession(path)
        state = layer.init_state(params, (B, C, *S))
        inputs, _ = onnx_names(layer, state)
        flat = [t.numpy() for t in flatten_state(state)]
        for frame in frames:
            y, valid, *flat = session.run(None, {"x": frame, **dict(zip(inputs[1:], flat))})

    ``export_onnx(net, step_shape, path)`` exports a ``cofunc.nn`` module with its own params.
    """
    if not isinstance(layer, Layer) and path is None and step_shape is not None and not isinstance(params, dict):
        params, step_shape, path = None, params, step_shape  # export_onnx(net, step_shape, path)
    layer, params, step_shape = resolve_layer("export_onnx", layer, params, step_shape)
    if path is None:
        raise ConfigurationError("export_onnx: `path` (where to write the .onnx file) is required")
    module = StepModule(layer, params, step_shape).eval()
    streams = 2 if dynamic_streams else int(step_shape[0])
    x, state = _example_state(layer, params, step_shape, streams)
    leaves = flatten_state(state)
    input_names, output_names = onnx_names(layer, state)
    with warnings.catch_warnings():
        # Every state leaf shares the one "streams" dim; torch warns once per extra use of it.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
        with torch.no_grad():
            return torch.onnx.export(
                module, (x, *leaves), os.fspath(path), dynamo=True, input_names=input_names,
                output_names=output_names, dynamic_shapes=_dynamic_shapes(len(leaves), dynamic_streams),
                opset_version=opset_version, external_data=external_data, optimize=optimize, verbose=False,
            )


__all__ = [
    "StepModule",
    "compile_step",
    "export_onnx",
    "export_step",
    "flatten_state",
    "onnx_names",
    "state_names",
    "state_spec",
    "step_fn",
    "unflatten_state",
]
