"""``Sequential``: co's sequential container."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .._seq import Seq
from ._module import ContinualModule, _forward_mode


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
        from ._convert import continual

        if len(args) == 1 and isinstance(args[0], OrderedDict):
            args = (OrderedDict((k, continual(m)) for k, m in args[0].items()),)
        else:
            args = tuple(continual(m) for m in args)
        super().__init__(*args)
        self._infer_broadcasts()

    def _infer_broadcasts(self):
        """A ``Broadcast()`` followed by a ``Parallel`` copies its input once per branch (co)."""
        from ._containers import Broadcast, Parallel

        modules = list(self._modules.values())
        for module, following in zip(modules, modules[1:]):
            if isinstance(module, Broadcast) and module.num_streams is None and isinstance(following, Parallel):
                module.num_streams = len(following._modules)

    def __setattr__(self, name, value):
        if isinstance(value, nn.Module) and not isinstance(value, ContinualModule) and name in getattr(self, "_modules", {}):
            from ._convert import continual

            value = continual(value)
        super().__setattr__(name, value)

    def append(self, module: nn.Module) -> "Sequential":
        from ._convert import continual

        out = super().append(continual(module))
        self._infer_broadcasts()
        return out

    @property
    def layer(self) -> Seq:
        children = tuple((name, m.layer) for name, m in self._modules.items())
        cached = self.__dict__.get("_co_layer")
        if cached is None or cached[0] != tuple(id(layer) for _, layer in children):
            cached = (tuple(id(layer) for _, layer in children), Seq(children))
            self.__dict__["_co_layer"] = cached
        return cached[1]


    def clean_state(self):
        super().clean_state()
        for m in self._modules.values():
            m.clean_state()

    def forward(self, input):
        with _forward_mode:
            for module in self._modules.values():
                input = module(input)
                if isinstance(module, nn.RNNBase):  # pass on the output, not the hidden state (co)
                    input = input[0]
            return input
