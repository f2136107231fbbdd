"""One resolver for every extension point: a table of built-ins, or a user's own `package.module:name`.

Used for ranking strategies, losses, generation backends, evolution operators and training
methods. It lives in `rank` (the bottom layer) so that `evol` and `align` share it.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Mapping


class UnknownNameError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def suggest(name: str, choices: list[str] | tuple[str, ...] | Any) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve(table: Mapping[str, Any], name: str, kind: str) -> Any:
    """Return `table[name]`, or import `package.module:attr` when `name` has a colon.

    Raises UnknownNameError naming the kind, the known built-ins and the closest one.
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UnknownNameError(f"{kind} {name!r}: cannot import module {module_name!r}: {e}") from None
        try:
            return getattr(module, attr)
        except AttributeError:
            raise UnknownNameError(f"{kind} {name!r}: module {module_name!r} has no attribute {attr!r}") from None
    if name in table:
        return table[name]
    raise UnknownNameError(
        f"unknown {kind} {name!r}{suggest(name, table)}; built-ins: {', '.join(sorted(table))}; "
        f"or give your own as 'package.module:name'"
    )


def resolve_instance(table: Mapping[str, Any], name: str, kind: str, cls: type, wrap: Any) -> Any:
    """`resolve`, for extension points whose entries are `cls` objects: an instance is returned as it
    is, a plain function is wrapped as `wrap(name, function)`; anything else is a ValueError."""
    found = resolve(table, name, kind)
    if isinstance(found, cls):
        return found
    if callable(found):
        return wrap(name, found)
    raise ValueError(f"{kind} {name!r} is neither a {cls.__name__} nor a function")
