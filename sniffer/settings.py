"""The settings machinery every layer shares: a field with its help and range, checked once.

This module owns `setting()` (a dataclass field carrying its help text, its inclusive
range and, where it differs from the field's name, its command-line flag), `check_ranges`
(called by each settings class when it is made, so a value out of range raises
`SettingError` naming the flag and the range at start-up, never in the data path), and
what the CLI reads from a settings class instead of restating it (`default_of`,
`flag_help`). It must never import anything of sniffer: the data plane (`proxy/`) and the
route sources (`routing/`) both build on it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

_INF = math.inf


class SettingError(ValueError):
    """A setting out of its range; the message names the flag and the range."""


def setting(
    default: Any,
    help: str,
    low: float | None = None,
    high: float = _INF,
    *,
    flag: str | None = None,
) -> Any:
    """A dataclass field with its help text and, for numbers, its inclusive range;
    `flag` names its command-line flag when that is not the field's name."""
    return field(default=default, metadata={"help": help, "range": (low, high), "flag": flag})


def flag_of(f: dataclasses.Field[Any]) -> str:
    """The command-line flag of settings field `f` (`--max-hello-bytes`)."""
    return "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(low: float, high: float) -> str:
    return f"{_num(low)}..{_num(high)}" if high != _INF else f"at least {_num(low)}"


def check_ranges(obj: Any) -> None:
    """Raise `SettingError` for the first field of `obj` outside its declared range."""
    for f in dataclasses.fields(obj):
        low, high = f.metadata.get("range", (None, _INF))
        if low is None:
            continue
        value = getattr(obj, f.name)
        if not low <= value <= high:
            raise SettingError(f"{flag_of(f)} must be {_range_text(low, high)}, got {value!r}")


def _field(cls: type, name: str) -> dataclasses.Field[Any]:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(name)


def default_of(cls: type, name: str) -> Any:
    """The default of field `name` of settings class `cls` (a CLI flag's default)."""
    return _field(cls, name).default


def flag_help(cls: type, name: str) -> str:
    """The help text of field `name`, with its range when it has one."""
    f = _field(cls, name)
    low, high = f.metadata.get("range", (None, _INF))
    text: str = f.metadata["help"]
    return text if low is None else f"{text} [{_range_text(low, high)}]"
