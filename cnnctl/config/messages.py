"""Validation errors in words: one line per problem, ``file: section.key: message``.

Each pydantic error is placed in the schema by walking its ``loc`` (``fields``), so an unknown key gets "did you
mean" and the valid keys at its level, a union (``'auto' | int``) reports only the member that took the kind of value
given, and a key set by ``--set`` names that override instead of the file.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from cnnctl.config.fields import fields_of, inside, is_model, kinds
from cnnctl.config.overrides import parse_override
from cnnctl.config.schema import Config
from cnnctl.config.text import clip, short_repr
from cnnctl.registry import closest

MAX_MESSAGE = 1000  # characters of one problem's message; a validator that echoes a huge value is cut here


def _override_origin(dotted: str, source: str, overrides: dict[str, str]) -> str:
    """Where the value at ``dotted`` came from: the ``--set`` that gave it (or a section above it), else the file."""
    def shown(item: str) -> str:
        return f"--set {clip(item)}"

    for key, item in overrides.items():
        if dotted == key or dotted.startswith((key + ".", key + "[")):
            return shown(item)
    below = [item for key, item in overrides.items() if not dotted or key.startswith(dotted + ".")]  # keys hold no [i]
    if below:  # a check over a whole section that an override changed: both had a hand in it
        return f"{source} with {shown(below[-1])}"
    return source


def _member(tag: str, members: list[Any]) -> Any:
    """The union member that pydantic's ``tag`` names: a model by its class name (``Normalize``,
    ``function-after[_same_length(), Normalize]``), a Literal by ``literal[...]``, else the one other member
    (``constrained-int``, ``bool``)."""
    for kind in members:
        if is_model(kind) and re.search(rf"\b{kind.__name__}\b", tag):
            return kind
        if typing.get_origin(kind) is Literal and tag.startswith("literal["):
            return kind
    others = [k for k in members if not is_model(k) and typing.get_origin(k) is not Literal]
    return others[0] if len(others) == 1 else None


@dataclass(frozen=True)
class _Problem:
    """One pydantic error, placed in the config's schema by walking its ``loc`` along the annotations."""

    error: dict[str, Any]
    keys: tuple[Any, ...]  # the user's path: keys and list positions, pydantic's tags of union members left out
    holder: Any  # the annotation of the value holding the last key (the model of an unknown key)
    at: Any  # the annotation at the error's place (the member's, in a union); None where the schema says nothing
    union: tuple[Any, ...] | None = None  # ``loc`` up to the innermost union member's tag, when inside one

    @classmethod
    def place(cls, error: dict[str, Any]) -> _Problem:
        loc = tuple(error["loc"])
        keys: list[Any] = []
        holder, at, union = None, Config, None
        for i, part in enumerate(loc):
            members = kinds(at)
            if len(members) > 1 and isinstance(part, str):  # pydantic names the member it tried: a tag, not a key
                union, at = loc[:i + 1], _member(part, members)
                continue
            keys.append(part)
            holder, at = at, inside(at, part)
        return cls(error, tuple(keys), holder, at, union)

    def took_the_value(self) -> bool:
        """Whether this union member accepted the kind of value given (a mapping for a model, a number for an int,
        a string for a Literal of strings), so that its problem is about the value's content, not its type."""
        err = self.error
        if len(err["loc"]) > len(self.union or ()):
            return True  # a problem inside the value: the member took its shape
        if err["type"] == "literal_error":
            words = typing.get_args(self.at) if typing.get_origin(self.at) is Literal else ()
            return any(type(word) is type(err.get("input")) for word in words)
        return not err["type"].endswith(("_type", "_parsing"))

    def message(self) -> str:
        """The problem in words, without the value."""
        kind = self.error["type"]
        if kind == "extra_forbidden":
            valid = list(fields_of(self.holder))
            hint = closest(str(self.keys[-1]), valid)
            return ("unknown key" + (f"; did you mean {hint!r}?" if hint else ".")
                    + (f" Valid keys: {', '.join(valid)}" if valid else ""))
        if kind == "missing":
            return "required key is missing"
        fields = fields_of(self.at)
        if kind == "model_type" and fields:  # not "a valid dictionary or instance of Normalize": a user writes a mapping
            return f"Input should be a mapping of {', '.join(fields)}"
        return self.error["msg"].removeprefix("Value error, ")


def _reported(problems: list[_Problem]) -> list[_Problem]:
    """The problems worth a line. Of a union's members (``'auto' | int``, ``'auto' | 'none' | {mean, std}``), only
    the one that took the kind of value given: ``threads: 0`` is "greater than or equal to 1", not "should be 'auto'";
    ``normalize: {std: [0]}`` is about std. When no member took it, one line says what each would take."""
    unions: dict[tuple[Any, ...], list[_Problem]] = {}
    for p in problems:
        if p.union is not None:
            unions.setdefault(p.union[:-1], []).append(p)
    reported: list[_Problem] = []
    for p in problems:
        if p.union is None:
            reported.append(p)
            continue
        members = unions.pop(p.union[:-1], [])  # empty: this union was reported with its first member
        took = {m.union for m in members if m.took_the_value()}
        if took:
            reported += [m for m in members if m.union in took]
        elif members:
            words = [m.message().removeprefix("Input should be ") for m in members]
            merged = {**p.error, "type": "union", "msg": "Input should be " + ", or ".join(words)}
            reported.append(_Problem(merged, p.keys, p.holder, p.at))
    return reported


def format_validation_error(error: ValidationError, source: str, overrides: list[str]) -> str:
    """One line per problem: ``file: section.key: message``, naming --set where a key came from one.

    Values are echoed cut short (``short_repr``): a huge or alias-expanded value never becomes a huge message."""
    override_keys = {".".join(parse_override(o)[0]): o for o in overrides}
    lines = []
    for problem in _reported([_Problem.place(e) for e in error.errors()]):
        err = problem.error
        parts = [f"[{p}]" if isinstance(p, int) else clip(str(p), 40) for p in problem.keys]
        dotted = ".".join(parts).replace(".[", "[")
        origin = _override_origin(dotted, source, override_keys)
        msg = problem.message()
        if "input" in err and err["type"] not in ("extra_forbidden", "missing", "value_error"):
            msg += f" (got {short_repr(err['input'])})"  # cnnctl's own messages show the value where it helps
        msg = clip(msg, MAX_MESSAGE)
        lines.append(f"{origin}: {dotted}: {msg}" if dotted else f"{origin}: {msg}")
    return "\n".join(lines)
