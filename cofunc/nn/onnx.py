"""co's ONNX entry points, ``export`` and ``OnnxWrapper``, on torch's current exporter.

co traced its modules' hidden ``_forward_step`` with TorchScript's exporter, which torch no
longer supports for them. cofunc exports the pure step of a module's layer instead
(`cofunc.export_onnx`): inputs ``x`` and ``state.<path>``, outputs ``y``, ``valid`` and
``next_state.<path>``, one ``<path>`` per state leaf (its `cofunc.state_names` name: the
layer's module path and the leaf's field, in `cofunc.flatten_state` order; ``valid`` tells per
stream whether ``y`` is an output), with the number of streams (dim 0) dynamic. Feed each
``next_state.<path>`` back as ``state.<path>`` on the next step.

Example:
    >>> import torch, tempfile, os, cofunc.nn as co
    >>> net = co.Sequential(co.Conv1d(2, 4, 3), torch.nn.ReLU())
    >>> wrapper = co.onnx.OnnxWrapper(net, step_shape=(1, 2))
    >>> wrapper.state_input_names
    ['state.0.buffer', 'state.0.count']
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from .._errors import ConfigurationError
from .._export import StepModule, _example_inputs, _example_state, export_onnx, onnx_names
from .module import ContinualModule

__all__ = ["export", "OnnxWrapper"]


def _step_shape(model: ContinualModule, args) -> Tuple[int, ...]:
    x = args[0] if isinstance(args, (tuple, list)) else args
    if not isinstance(x, Tensor):
        raise ConfigurationError(f"onnx.export: expected a step tensor (B, C, *S) as the first arg, got {type(x).__name__}")
    return tuple(x.shape)


class OnnxWrapper(nn.Module):
    """``forward(x, *flat_state) -> (y, valid, *flat_next_state)``: a module's step as a plain
    function of tensors, ready for ``torch.onnx.export(..., dynamo=True)`` or ``torch.export``.

    ``step_shape`` is the shape of one step ``(B, C, *S)``; `initial_state` gives the fresh
    flat state for ``B`` streams.
    """

    def __init__(self, model: ContinualModule, step_shape: Sequence[int]):
        super().__init__()
        if not isinstance(model, ContinualModule):
            raise ConfigurationError(f"OnnxWrapper: expected a cofunc.nn module, got {type(model).__name__}")
        layer = model._layer_for(len(step_shape) - 1, "forward_step")
        self.step_shape = tuple(step_shape)
        self.step = StepModule(layer, model.params, self.step_shape)

    @property
    def num_states(self) -> int:
        return self.step.spec.num_leaves

    def _names(self):
        cached = self.__dict__.get("_co_onnx_names")
        if cached is None:
            _, state = _example_state(self.step.layer, self.step.params.tree(), self.step_shape, self.step_shape[0])
            cached = onnx_names(self.step.layer, state)
            self.__dict__["_co_onnx_names"] = cached
        return cached

    @property
    def state_input_names(self) -> List[str]:
        """``state.<path>`` for each state leaf (`cofunc.onnx_names`)."""
        return self._names()[0][1:]

    @property
    def state_output_names(self) -> List[str]:
        """``next_state.<path>`` for each state leaf."""
        return self._names()[1][2:]

    def initial_state(self, streams: Optional[int] = None) -> List[Tensor]:
        """The flat fresh state for ``streams`` streams (``step_shape[0]`` by default)."""
        shape = ((streams or self.step_shape[0]),) + self.step_shape[1:]
        _, leaves = _example_inputs(self.step.layer, self.step.params.tree(), shape, shape[0])
        return leaves

    def forward(self, x: Tensor, *flat_state: Tensor):
        return self.step(x, *flat_state)


def export(model: ContinualModule, args: Union[Tuple[Any, ...], Tensor], f: Union[str, os.PathLike],
           export_params: bool = True, verbose: bool = False, training: Any = None,
           input_names: Optional[Sequence[str]] = None, output_names: Optional[Sequence[str]] = None,
           operator_export_type: Any = None, opset_version: Optional[int] = None, do_constant_folding: bool = True,
           keep_initializers_as_inputs: Optional[bool] = None, custom_opsets: Any = None):
    """Export ``model``'s step to the ONNX file ``f`` (co's signature); returns torch's
    ``ONNXProgram``. ``args`` is a step input ``(B, C, *S)`` (or a tuple starting with one): its
    shape is the step shape; the number of streams is dynamic. The graph's inputs are ``x`` and
    ``state.<path>``, its outputs ``y``, ``valid`` and ``next_state.<path>`` (see the module
    notes); ``input_names`` /
    ``output_names`` are accepted for co's signature and must not rename them. Options of
    TorchScript's exporter (``training``, ``operator_export_type``, ``custom_opsets``,
    ``keep_initializers_as_inputs``) do not apply to torch's current exporter and are ignored.
    """
    if not isinstance(model, ContinualModule):
        raise ConfigurationError(f"onnx.export: the model of type {type(model).__name__} should be a cofunc.nn module")
    if not export_params:
        raise ConfigurationError("onnx.export: export_params=False is not supported; the params are the model's initializers")
    step_shape = _step_shape(model, args)
    layer = model._layer_for(len(step_shape) - 1, "forward_step")
    return export_onnx(layer, model.params, step_shape, f, opset_version=opset_version, optimize=do_constant_folding)
