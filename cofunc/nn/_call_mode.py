"""``call_mode``: which computation calling a continual module runs.

Modes are ``"forward"`` (the clip), ``"forward_step"`` and ``"forward_steps"``. A mode set with
``with call_mode(...)`` wins over a module's own ``call_mode`` attribute; contexts nest as a
stack (the innermost wins, leaving restores the outer one). The stack lives in a context variable,
so each thread and each asyncio task has its own: a task inside ``call_mode("forward_step")``
never changes what another task sees (a task started inside the block inherits its mode).
"""

from __future__ import annotations

import contextvars
from typing import Optional, Tuple, Union

from .._errors import ConfigurationError

CALL_MODES = ("forward", "forward_steps", "forward_step")  # co's order: 0, 1, 2

# An immutable tuple per context: entering pushes by setting a longer tuple, leaving sets the
# shorter one back, so no token has to travel with the (reusable, shared) context objects.
_modes: contextvars.ContextVar[Tuple[str, ...]] = contextvars.ContextVar("cofunc_call_modes", default=())


class _ContextStack:
    """The current context's stack of modes, with a list's ``append`` and ``pop``."""

    def append(self, mode: str) -> None:
        _modes.set(_modes.get() + (mode,))

    def pop(self) -> str:
        stack = _modes.get()
        _modes.set(stack[:-1])
        return stack[-1]

    def __len__(self) -> int:
        return len(_modes.get())


_context_stack = _ContextStack()


def _stack() -> _ContextStack:
    return _context_stack


def normalise_call_mode(mode: Union[str, int, "call_mode"]) -> str:
    """Accept co's spellings: a mode name, its index (0, 1, 2), or a `call_mode` object."""
    if isinstance(mode, call_mode):
        return mode.mode
    if isinstance(mode, bool):
        raise ConfigurationError(f"call_mode: expected one of {CALL_MODES} or 0, 1, 2, got {mode!r}")
    if isinstance(mode, int):
        if 0 <= mode < len(CALL_MODES):
            return CALL_MODES[mode]
    elif isinstance(mode, str):
        name = mode.lower()
        if name in CALL_MODES:
            return name
    raise ConfigurationError(f"call_mode: expected one of {CALL_MODES} or 0, 1, 2, got {mode!r}")


def current_call_mode() -> Optional[str]:
    """The innermost active ``with call_mode(...)`` mode of this context (thread or task), or None."""
    stack = _modes.get()
    return stack[-1] if stack else None


class call_mode:
    """Select the call mode of every continual module called inside a ``with`` block.

    Example:
        >>> import torch, cofunc.nn as cn
        >>> conv = cn.Conv1d(1, 1, 3)
        >>> with cn.call_mode("forward_step"):
        ...     y = conv(torch.ones(1, 1))  # warming up: None
        >>> y is None
        True
    """

    def __init__(self, mode: Union[str, int]):
        self.mode = normalise_call_mode(mode)

    def __enter__(self) -> "call_mode":
        _stack().append(self.mode)
        return self

    def __exit__(self, *exc) -> None:
        _stack().pop()

    def __eq__(self, other) -> bool:
        try:
            return self.mode == normalise_call_mode(other)
        except ConfigurationError:
            return NotImplemented

    def __hash__(self) -> int:
        return hash(self.mode)

    def __repr__(self) -> str:
        return f"call_mode({self.mode!r})"
