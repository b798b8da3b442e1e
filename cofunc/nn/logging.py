"""co's ``getLogger``: a standard logger that can drop repeated messages (``log_once``).

Example:
    >>> from cofunc.nn.logging import getLogger
    >>> log = getLogger("cofunc.example", log_once=True)
    >>> log.name
    'cofunc.example'
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

__all__ = ["getLogger"]


def _once(log: Callable) -> Callable:
    seen = set()

    @functools.wraps(log)
    def wrapped(*args, **kwargs):
        key = (args, repr(sorted(kwargs.items())))
        if key in seen:
            return None
        seen.add(key)
        return log(*args, **kwargs)

    wrapped._cofunc_once = True
    return wrapped


def getLogger(name: str, log_once: bool = False) -> logging.Logger:
    """``logging.getLogger(name)``; with ``log_once``, a message (level, text and arguments)
    is emitted only the first time it is logged."""
    logger = logging.getLogger(name)
    if log_once and not getattr(logger._log, "_cofunc_once", False):
        logger._log = _once(logger._log)
    return logger
