"""The one walker of pydantic annotations: which field, section or value type sits at a key of a schema.

Three readers need it: validation messages (placing a pydantic error's ``loc`` in the config, to name the valid
keys beside an unknown one), ``cnnctl tune`` (the field a space's dotted key names, to check its values with the
field's own type) and the custom layers (the keys valid inside a layer); shell completion walks it for ``--set``.
One walker means one answer to "is ``data.normalize`` a section?" everywhere.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo


def kinds(annotation: Any) -> list[Any]:
    """The kinds of value an annotation allows, without ``Annotated`` metadata and None: ``[X]`` for ``X | None``
    (an optional value is no union in pydantic's errors), ``[Literal['auto'], int]`` for ``'auto' | int``."""
    if typing.get_origin(annotation) is Annotated:
        return kinds(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [kind for member in typing.get_args(annotation) if member is not type(None) for kind in kinds(member)]
    return [annotation]


def is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def fields_of(annotation: Any) -> dict[str, FieldInfo]:
    """The keys a mapping given for ``annotation`` may hold: the fields of its section (``EarlyStoppingConfig |
    None`` too, and the ``{mean, std}`` of ``'auto' | 'none' | Normalize``); empty for a plain value or a list,
    which ``--set`` and a space give whole."""
    fields: dict[str, FieldInfo] = {}
    for kind in kinds(annotation):
        if is_model(kind):
            fields.update(kind.model_fields)
    return fields


def inside(annotation: Any, part: str | int) -> Any:
    """The annotation of ``part`` (a key or a list position) inside a value of ``annotation``; None where unknown."""
    if isinstance(part, str):
        field = fields_of(annotation).get(part)
        return field.annotation if field else None
    kind = kinds(annotation)[0]
    args = typing.get_args(kind)
    if typing.get_origin(kind) is list:
        return args[0]
    if typing.get_origin(kind) is tuple and part < len(args):
        return args[part]
    return None


def annotation_at(root: Any, path: Sequence[str | int]) -> Any:
    """The annotation at ``path`` (keys and list positions, as in a pydantic error's ``loc``) inside a value of
    ``root``; None where the schema says nothing."""
    at = root
    for part in path:
        if at is None:
            return None
        at = inside(at, part)
    return at


class UnknownKey(LookupError):
    """A dotted key that leaves the schema: ``part`` is not a key of the section at ``where``.

    ``valid`` holds the keys there, or is None when ``where`` is a value, not a section."""

    def __init__(self, where: str, part: str, valid: tuple[str, ...] | None) -> None:
        super().__init__(f"{where}.{part}" if where else part)
        self.where, self.part, self.valid = where, part, valid


def field_at(root: type[BaseModel], key: str) -> FieldInfo:
    """The pydantic field the dotted ``key`` names in ``root`` (``optimizer.lr`` in Config); UnknownKey otherwise."""
    parts = key.split(".")
    fields: dict[str, FieldInfo] = root.model_fields
    field = None
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        if field is not None and not fields:
            raise UnknownKey(where, part, None)
        if part not in fields:
            raise UnknownKey(where, part, tuple(fields))
        field = fields[part]
        fields = fields_of(field.annotation)
    assert field is not None
    return field
