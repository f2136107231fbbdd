"""Dataclasses from parsed JSON or YAML mappings, checked field by field.

The one validator behind records (`rank.records.from_dict`, which adds file and line) and configs
(`align.config_loader.build`, which adds the YAML line or the override). Supported annotations: dataclasses,
`X | None` and unions, `list[X]`, `dict[K, V]`, `Literal[...]`, `int`, `float` (an int is accepted),
`str`, `bool`, `Any`. An unknown key is an error with the closest known one; a missing required field
and a `__post_init__` that raises TypeError/ValueError are errors naming the field. A dataclass with a
class attribute `SHORTHAND = "field"` also accepts a plain string for `{field: string}` (a model entry
written as just its name).

    from rank.typed import FieldError, build
    build(Lineage, {"round": "one"})   # FieldError: round: expected an integer, got str 'one'

Standard library only (sandbox workers import rank.records).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from rank.plugins import suggest

T = TypeVar("T")


class FieldError(ValueError):
    """A value that does not fit its annotation; `field` is the dotted path ('lineage.round', 'tests[0]')."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.message = field, message


def _got(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against annotation `tp` (nested dataclasses built); raises FieldError(where, ...)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in typing.get_args(tp):
                return None
            raise FieldError(where, "may not be null")
        errors = []
        for a in args:
            try:
                return coerce(value, a, where)
            except FieldError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise FieldError(where, f"{value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and getattr(tp, "SHORTHAND", None):   # `student: name` means {ref: name}
            value = {tp.SHORTHAND: value}
        if not isinstance(value, dict):
            raise FieldError(where, f"expected a mapping, got {_got(value)}")
        return build(tp, value, where=f"{where}.")
    if origin is list:
        if not isinstance(value, list):
            raise FieldError(where, f"expected a list, got {_got(value)}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise FieldError(where, f"expected a mapping, got {_got(value)}")
        _, inner = typing.get_args(tp) or (Any, Any)
        return {k: coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(where, f"expected a number, got {_got(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(where, f"expected an integer, got {_got(value)}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise FieldError(where, f"expected {tp.__name__}, got {_got(value)}")
    return value


def build(cls: type[T], data: dict, where: str = "") -> T:
    """Dataclass `cls` from mapping `data`; `where` prefixes field paths (e.g. 'sample.')."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise FieldError(f"{where}{key}", f"unknown key{suggest(str(key), fields)}; "
                                              f"known keys of {cls.__name__}: {', '.join(fields)}")
    for name, f in fields.items():
        if name not in data and f.init and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            raise FieldError(f"{where}{name}", f"missing (required by {cls.__name__})")
    kwargs = {k: coerce(v, hints[k], f"{where}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:   # __post_init__ checks
        if isinstance(e, FieldError):
            raise
        raise FieldError(where.rstrip(".") or cls.__name__, str(e)) from None
