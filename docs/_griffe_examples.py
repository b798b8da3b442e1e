"""A griffe extension for the API reference: cofunc's docstrings title their doctests
``Example:``; griffe's Google parser knows only ``Examples:`` as the section that renders them as
code, so the singular title is read as the plural one."""

from __future__ import annotations

import re
from typing import Any

import griffe

_TITLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _TITLE.sub(r"\1Examples:", obj.docstring.value)
