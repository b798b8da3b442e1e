"""co's containers: ``Sequential``, and the multi-stream ``Broadcast``, ``Parallel``,
``ParallelDispatch``, ``Reduce``, ``BroadcastReduce``, ``Residual`` and ``Conditional``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Sequence, Union

from torch import nn

from .. import _combinators as comb
from .._seq import Seq
from .._errors import ConfigurationError, InputShapeError
from .closure import LayerModule
from .._delay import Delay as DelayLayer
from .convert import continual
from .delay import Delay
from .skip import Skip
from .utils import function_repr
from .module import ContinualModule, _forward_mode


def _children(args, converter):
    if len(args) == 1 and isinstance(args[0], (OrderedDict, dict)):
        return OrderedDict((str(k), converter(m)) for k, m in args[0].items())
    return OrderedDict((str(i), converter(m)) for i, m in enumerate(args))


def _continual(module):
    return continual(module)


class _Branches(ContinualModule):
    """A container whose children are branches named ``"0"``, ``"1"``, ... (or by the user)."""

    def __init__(self, *modules):
        super().__init__()
        for name, module in _children(modules, _continual).items():
            self.add_module(name, module)

    def _branch_layers(self):
        return tuple((name, module._hooked_layer()) for name, module in self._modules.items())

    def _layer_key(self):
        return tuple(id(module._hooked_layer()) for module in self._modules.values())


    def __getitem__(self, index):
        if isinstance(index, str):
            return self._modules[index]
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)


class Broadcast(LayerModule):
    """``x -> [x] * num_streams``; inside a `Sequential` the count may come from the next `Parallel`."""

    def __init__(self, num_streams: Optional[int] = None):
        ContinualModule.__init__(self)
        self.num_streams = num_streams

    def _layer_key(self):
        return self.num_streams

    def _build_layer(self):
        if self.num_streams is None:
            raise ConfigurationError("Broadcast: num_streams is unknown; give it, or follow the Broadcast by a Parallel in a Sequential")
        return comb.broadcast(self.num_streams)

    def forward(self, input):
        return [input] * self.num_streams if self.num_streams else [input]

    # Copying needs no state and no tensor: any value (co broadcasts ints and lists too).
    def forward_step(self, input, update_state=True):
        return self.forward(input)

    def forward_steps(self, input, pad_end=False, update_state=True):
        return self.forward(input)

    def extra_repr(self) -> str:
        return f"{self.num_streams}" if self.num_streams else ""


class Parallel(_Branches):
    """Apply one module per stream of a list; faster branches are delayed to align (``auto_delay``).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> par = cn.Parallel(cn.Conv1d(2, 2, 3), cn.Conv1d(2, 2, 1))
        >>> par.delay
        2
    """

    def __init__(self, *modules, auto_delay: bool = True):
        super().__init__(*modules)
        self.auto_delay = auto_delay

    def _build_layer(self):
        return comb.Parallel(self._branch_layers(), self.auto_delay)

    def forward(self, inputs):
        with _forward_mode:
            return [module(x) for module, x in zip(self._modules.values(), inputs)]

    def forward_step(self, input, update_state=True):
        out = super().forward_step(tuple(input), update_state)
        return None if out is None else list(out)

    def forward_steps(self, input, pad_end=False, update_state=True):
        out = super().forward_steps(tuple(input), pad_end, update_state)
        return None if out is None else list(out)


class ParallelDispatch(LayerModule):
    """Reorder, copy or group streams by index, for example ``[2, 0, [0, 2], 2]``."""

    def __init__(self, dispatch_mapping: Sequence):
        super().__init__(comb.parallel_dispatch(dispatch_mapping))
        self.dispatch_mapping = dispatch_mapping

    def _build_layer(self):
        return comb.parallel_dispatch(self.dispatch_mapping)

    def forward(self, input):
        return _dispatch(self.dispatch_mapping, input)

    # Routing needs no state and no tensor: any values (co dispatches ints and lists too).
    def forward_step(self, input, update_state=True):
        return _dispatch(self.dispatch_mapping, input)

    def forward_steps(self, input, pad_end=False, update_state=True):
        return _dispatch(self.dispatch_mapping, input)

    def extra_repr(self) -> str:
        return f"{self.dispatch_mapping}"


def _dispatch(mapping, inputs):
    if len(inputs) <= _max_index(mapping):
        raise InputShapeError(
            f"ParallelDispatch({mapping}): expected at least {_max_index(mapping) + 1} input streams, got {len(inputs)}"
        )
    return [_dispatch(m, inputs) if isinstance(m, (list, tuple)) else inputs[m] for m in mapping]


def _max_index(mapping) -> int:
    return max((_max_index(m) if isinstance(m, (list, tuple)) else m for m in mapping), default=-1)


def _as_lists(value):
    if isinstance(value, tuple):
        return [_as_lists(v) for v in value]
    return value


class Reduce(LayerModule):
    """Merge a list of streams: ``"sum"``, ``"concat"`` (channels), ``"mul"``, ``"max"`` or a callable."""

    def __init__(self, reduce: Union[str, Callable] = "sum"):
        super().__init__(comb.reduce(reduce))
        self.reduce = reduce

    def _build_layer(self):
        return comb.reduce(self.reduce)

    def forward(self, input):
        return self.layer.forward({}, tuple(input))

    def forward_step(self, input, update_state=True):
        return super().forward_step(tuple(input), update_state)

    def forward_steps(self, input, pad_end=False, update_state=True):
        return super().forward_steps(tuple(input), pad_end, update_state)


class BroadcastReduce(_Branches):
    """``x -> reduce(m_0(x), ..., m_n(x))``; the branches are its children ``"0"``, ``"1"``, ...

    Example:
        >>> import torch, cofunc.nn as cn
        >>> block = cn.BroadcastReduce(cn.Conv1d(3, 4, 3, padding=1), cn.Conv1d(3, 4, 1), reduce="concat")
        >>> block(torch.zeros(1, 3, 5)).shape
        torch.Size([1, 8, 5])
    """

    def __init__(self, *modules, reduce: Union[str, Callable] = "sum", auto_delay: bool = True):
        super().__init__(*modules)
        if len(self._modules) < 2:
            raise ConfigurationError(f"BroadcastReduce: needs at least 2 branches, got {len(self._modules)}")
        self.reduce = reduce
        self.auto_delay = auto_delay

    def _build_layer(self):
        return comb.broadcast_reduce(OrderedDict(self._branch_layers()), reduce=self.reduce, auto_delay=self.auto_delay)

    def extra_repr(self) -> str:
        return f"reduce={function_repr(self.reduce) if callable(self.reduce) else self.reduce}"

    def forward(self, input):
        with _forward_mode:
            outs = tuple(module(input) for module in self._modules.values())
        return self.layer.reducer.forward({}, outs)


class Residual(BroadcastReduce):
    """``x -> reduce(x, module(x))`` with the residual aligned to the module (co's ``Residual``).

    The module is child ``"1"`` (keys ``1.weight``, ...), as in co. ``residual_shrink`` must be
    set for a module that is not padded equally: ``"centered"`` (or True), ``"lagging"`` or
    ``"leading"`` pick the centre, oldest or newest frame of the module's window.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> res = cn.Residual(cn.Conv1d(2, 2, 3, padding=1))
        >>> x = torch.randn(1, 2, 6)
        >>> torch.allclose(res(x), x + res[1](x))
        True
    """

    def __init__(self, module: nn.Module, temporal_fill: Optional[str] = None, reduce: Union[str, Callable] = "sum",
                 residual_shrink: Union[bool, str] = False):
        module = _continual(module)
        self._residual_options = (reduce, residual_shrink)
        layer = comb.residual(module.layer, reduce, residual_shrink)  # validates before building modules
        residual_branch = _aligned_branch(layer.inner.branches[0][1])
        super().__init__(residual_branch, module, reduce=reduce, auto_delay=False)
        self.residual_shrink = residual_shrink

    def _build_layer(self):
        reduce, shrink = self._residual_options
        return comb.residual(self._modules["1"]._hooked_layer(), reduce, shrink)

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def forward(self, input):
        with _forward_mode:
            outs = (self._modules["0"](input), self._modules["1"](input))
        return self.layer.reducer.forward({}, outs)


def _aligned_branch(layer):
    """The module for a residual's aligned branch: co's ``Delay`` or ``Skip`` where it is one."""
    if isinstance(layer, DelayLayer):
        if layer.n == 0 and layer.end == 0:
            return Skip(layer.window - 1)
        if layer.window == 2 * layer.n + 1 or layer.window == layer.n + 1:
            return Delay._from_layer(layer)
    return LayerModule(layer)


class Conditional(_Branches):
    """Run ``on_true`` when ``predicate(module, x)`` holds, else ``on_false`` (identity if None).

    Branches are children ``"0"`` and ``"1"``; as in co, the branch with the smaller delay is
    wrapped as ``Sequential(Delay(difference), branch)`` so that both have the larger delay (its
    ``state_dict`` keys are then ``"0.1.weight"``, ..., as co's).

    Example:
        >>> import torch, cofunc.nn as cn
        >>> soft = cn.Conditional(lambda m, x: not m.training, cn.Lambda(torch.nn.Softmax(dim=1)))
        >>> soft.eval()(torch.zeros(1, 2, 3))[0, :, 0]
        tensor([0.5000, 0.5000])
    """

    def __init__(self, predicate: Callable, on_true: nn.Module, on_false: Optional[nn.Module] = None):
        modules = [continual(m) for m in ((on_true,) if on_false is None else (on_true, on_false))]
        delay = max(m.delay for m in modules)
        modules = [m if m.delay == delay else Sequential(Delay(delay - m.delay), m) for m in modules]
        super().__init__(*modules)
        self.predicate = predicate

    def extra_repr(self) -> str:
        return f"predicate={function_repr(self.predicate)}"

    def _build_layer(self):
        layers = list(self._modules.values())
        return comb.conditional(_Predicate(self), layers[0]._hooked_layer(), layers[1]._hooked_layer() if len(layers) > 1 else None)

    def forward(self, input):
        with _forward_mode:
            if self.predicate(self, input):
                return self._modules["0"](input)
            return self._modules["1"](input) if "1" in self._modules else input


class _Predicate:
    """``predicate(module, x)`` as the core's ``predicate(x)`` (a class, so modules pickle)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x):
        return bool(self.module.predicate(self.module, x))




class Sequential(ContinualModule, nn.Sequential):
    """``torch.nn.Sequential`` whose children step through time together.

    torch.nn children are converted with `continual` as they are added, so the ``state_dict``
    of the equivalent ``torch.nn.Sequential`` loads unchanged. ``forward`` is the torch clip
    computation (training-mode dropout and batch norm included); the step modes run
    `cofunc.seq` over the children's layers.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> net = cn.Sequential(cn.Conv1d(1, 4, 3, padding=2, stride=2), torch.nn.ReLU(), cn.Conv1d(4, 1, 3))
        >>> net.receptive_field, net.padding, net.delay, net.stride
        (7, (2,), 4, (2,))
    """

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            args = (OrderedDict((k, continual(m)) for k, m in args[0].items()),)
        else:
            args = tuple(continual(m) for m in args)
        super().__init__(*args)
        self._infer_broadcasts()

    @staticmethod
    def build_from(module: nn.Sequential) -> "Sequential":
        """The continual equivalent of a ``torch.nn.Sequential`` (children converted with
        `continual`, a copy of their weights)."""
        return continual(module) if isinstance(module, nn.Sequential) and not isinstance(module, Sequential) else Sequential(module)

    def _infer_broadcasts(self):
        """A ``Broadcast()`` followed by a ``Parallel`` copies its input once per branch (co)."""
        modules = list(self._modules.values())
        for module, following in zip(modules, modules[1:]):
            if isinstance(module, Broadcast) and module.num_streams is None and isinstance(following, Parallel):
                module.num_streams = len(following._modules)

    def __setattr__(self, name, value):
        if isinstance(value, nn.Module) and not isinstance(value, ContinualModule) and name in getattr(self, "_modules", {}):
                value = continual(value)
        super().__setattr__(name, value)

    def append(self, module: nn.Module) -> "Sequential":
        out = super().append(continual(module))
        self._infer_broadcasts()
        return out

    def _layer_key(self):
        return tuple(id(m._hooked_layer()) for m in self._modules.values())

    def _build_layer(self) -> Seq:
        return Seq(tuple((name, m._hooked_layer()) for name, m in self._modules.items()))


    def forward(self, input):
        with _forward_mode:
            for module in self._modules.values():
                input = module(input)
                if isinstance(module, nn.RNNBase):  # pass on the output, not the hidden state (co)
                    input = input[0]
            return input


# co's reduce functions (``cofunc.nn.container.reduce_sum`` ...), over a list of tensors.
def reduce_sum(inputs):
    """The elementwise sum of a list of tensors."""
    return comb.reduce("sum").forward({}, tuple(inputs))


def reduce_concat(inputs):
    """The concatenation of a list of tensors on the channel axis (dim 1)."""
    return comb.reduce("concat").forward({}, tuple(inputs))


def reduce_mul(inputs):
    """The elementwise product of a list of tensors."""
    return comb.reduce("mul").forward({}, tuple(inputs))


def reduce_max(inputs):
    """The elementwise maximum of a list of tensors."""
    return comb.reduce("max").forward({}, tuple(inputs))
