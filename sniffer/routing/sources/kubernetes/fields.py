"""Reading fields of an object's raw JSON: the shape checks every decoder shares.

This module owns `MalformedObject` (a field in the wrong shape: the object is reported
and ignored, never half-read), the small accessors that raise it, used by the parsers
and by the status signatures alike, and the sharing of what repeats across records
(`interned` strings, `shared` immutable parts). It must never do I/O or know any kind.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TypeVar

JSON = Mapping[str, Any]

_T = TypeVar("_T")

_SHARED: dict[object, object] = {}
"""Identical immutable parts (port lists, records) shared by every record that has them.

Most Services of a cluster have one of a few port layouts; sharing them is what keeps
the cache near the size of the names it must hold. Bounded by the layouts in use.
"""


class MalformedObject(ValueError):
    """An object lacks a field routing needs or has it in the wrong shape."""


def interned(value: object) -> str:
    """Intern short repeated strings (namespaces, names, port names) across records."""
    if not isinstance(value, str):
        raise MalformedObject(f"expected a string, got {type(value).__name__}")
    return sys.intern(value)


def opt_interned(value: object) -> str | None:
    return None if value is None else interned(value)


def shared(value: _T) -> _T:
    """The one held copy of an immutable value equal to `value` (as `interned` for
    strings), or `value` itself, now held, while the table has room."""
    held = _SHARED.get(value)
    if held is None:
        if len(_SHARED) < 100_000:
            _SHARED[value] = value
        return value
    return held  # type: ignore[return-value]


def json_list(value: object, what: str) -> list[Any]:
    """`value` as a list ([] when absent); `what` names the field in the error."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedObject(f"{what} is not a list")
    return value


def json_map(value: object, what: str) -> JSON:
    """`value` as an object ({} when absent); `what` names the field in the error."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedObject(f"{what} is not an object")
    return value
