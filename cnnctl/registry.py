"""One registry per kind (models, datasets, optimizers, schedulers).

Entries are registered with the ``register(name)`` decorator, or declared lazily as ``"module:attr"`` so
that the names are known (and config errors reported) without importing torch.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable
from typing import Any

from cnnctl.errors import CnnctlError, UsageError


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``name``, or None when nothing is close."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``: the one phrasing every message uses."""
    hint = closest(name, choices)
    return f"; did you mean {hint!r}?" if hint else ""


class Registry:
    """Names to builders. A duplicate name is refused; an unknown name lists the known ones."""

    def __init__(self, kind: str, lazy: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        for name, target in (lazy or {}).items():
            self.add(name, target)

    def add(self, name: str, entry: Any) -> None:
        if name in self._entries:
            raise UsageError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def register(self, name: str) -> Callable[[Any], Any]:
        def decorator(obj: Any) -> Any:
            self.add(name, obj)
            return obj

        return decorator

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def unknown(self, name: str) -> str:
        """The sentence for an unknown name: the closest match and the known ones."""
        return f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries) or '.'} Known: {', '.join(self._entries)}."

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise CnnctlError(self.unknown(name))
        entry = self._entries[name]
        if isinstance(entry, str):  # lazy "module:attr"
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry
