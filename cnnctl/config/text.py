"""The one way cnnctl cuts text for a message, and shows a value without walking all of it.

A config, a ``--set`` value or a space file may hold a huge value (an alias-expanded list, a megabyte string); a
message echoes it cut short, so that an error is one readable paragraph whatever the input.
"""

from __future__ import annotations

import reprlib
from typing import Any

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 3, 6, 6, 6
_SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 60, 40, 60


def clip(text: str, limit: int = 80, *, quoted: bool = False, counted: bool = True) -> str:
    """``text`` when it fits in ``limit`` characters, else its first ``limit`` characters, ``...`` and its length.

    ``quoted`` shows the text as a Python string literal (a value echoed as ``repr`` would). ``counted=False`` leaves
    the length out, for text that is already a shortened form of a value (reprlib's), whose length says nothing.
    """
    show = repr if quoted else str
    if len(text) <= limit:
        return show(text)
    return f"{show(text[:limit])}..." + (f" ({len(text):,} characters)" if counted else "")


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, never walking all of a huge value; a long string says its length."""
    if isinstance(value, str) and len(value) > limit:
        return clip(value, limit, quoted=True)
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an int past Python's 4300-digit str() limit
        text = f"<{type(value).__name__}>"
    return clip(text, limit, counted=False)
