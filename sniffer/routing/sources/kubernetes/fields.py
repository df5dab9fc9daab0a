"""Reading fields of an object's raw JSON: the shape checks every decoder shares.

This module owns `MalformedObject` (a field in the wrong shape: the object is reported
and ignored, never half-read) and the small accessors that raise it, used by the parsers
and by the status signatures alike. It must never do I/O or know any kind.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

JSON = Mapping[str, Any]


class MalformedObject(ValueError):
    """An object lacks a field routing needs or has it in the wrong shape."""


def interned(value: object) -> str:
    """Intern short repeated strings (namespaces, names, port names) across records."""
    if not isinstance(value, str):
        raise MalformedObject(f"expected a string, got {type(value).__name__}")
    return sys.intern(value)


def opt_interned(value: object) -> str | None:
    return None if value is None else interned(value)


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
