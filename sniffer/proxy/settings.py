"""The data plane's settings, each checked once, when the settings object is made.

This module owns `ProxySettings` (what every connection of a process obeys) and
`WorkerSettings` (what the control process hands a worker process), their defaults,
their help text and their ranges; the CLI reads its flag defaults and help from here
instead of restating them. A value out of range raises `SettingError` naming the flag
and the range, at start-up: nothing in the data path may raise from a setting. Ranges
that the wire readers enforce come from `sniffer.wire`. It must never do I/O or import
anything of sniffer but `sniffer.wire`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from sniffer.wire.http import DEFAULT_MAX_HEAD_BYTES, MAX_HEAD_BYTES_LIMIT, MIN_HEAD_BYTES
from sniffer.wire.tls import DEFAULT_MAX_HELLO_BYTES, MAX_HELLO_BYTES_LIMIT, MIN_HELLO_BYTES_LIMIT

__all__ = [
    "KERNEL_RELAY_MODES",
    "MIN_ACCESS_LOG_BUFFER",
    "ProxySettings",
    "SettingError",
    "WorkerSettings",
    "check_ranges",
    "default_of",
    "flag_help",
    "setting",
]

_INF = math.inf
MIN_ACCESS_LOG_BUFFER = 4096
"""Bytes of access log a process holds at least (one long line must fit)."""


class SettingError(ValueError):
    """A setting out of its range; the message names the flag and the range."""


def setting(default: Any, help: str, low: float | None = None, high: float = _INF) -> Any:
    """A dataclass field with its help text and, for numbers, its inclusive range."""
    return field(default=default, metadata={"help": help, "range": (low, high)})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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
            raise SettingError(f"{flag(f.name)} must be {_range_text(low, high)}, got {value!r}")


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


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What every connection of one data plane obeys (validated on construction).

    Hello and connect deadlines are enforced by a sweep every eighth of the shorter of
    the two (at most 1 s), so one fires up to that much late; the idle timeout by a sweep
    every eighth of it.
    """

    hello_timeout: float = setting(
        5.0, "Seconds a client has to send its ClientHello or request head.", 0.001
    )
    idle_timeout: float = setting(
        3600.0, "Seconds without a byte either way before a relayed connection closes.", 0.001
    )
    connect_timeout: float = setting(
        5.0, "Seconds to connect to one backend endpoint before trying the next.", 0.001
    )
    max_hello_bytes: int = setting(
        DEFAULT_MAX_HELLO_BYTES,
        "Cap on buffered ClientHello bytes (as Envoy): memory per sniffing client.",
        MIN_HELLO_BYTES_LIMIT,
        MAX_HELLO_BYTES_LIMIT,
    )
    max_http_head_bytes: int = setting(
        DEFAULT_MAX_HEAD_BYTES,
        "Cap on a plaintext request head.",
        MIN_HEAD_BYTES,
        MAX_HEAD_BYTES_LIMIT,
    )
    write_buffer_high: int = setting(
        256 * 1024, "Bytes queued towards one peer before the other side stops reading.", 1
    )
    drain_grace: float = setting(30.0, "Seconds open connections get to finish after SIGTERM.", 0)
    reuse_port: bool = setting(False, "Bind listeners with SO_REUSEPORT (one socket per worker).")
    max_connections: int = setting(
        0,
        "Client connections per worker before new ones are shed at accept"
        " (0 = from RLIMIT_NOFILE).",
        0,
    )

    kernel_relay: str = setting(
        "auto",
        "Relay routed pairs in the kernel (BPF sockmap): auto (where the kernel and the"
        " capabilities allow it, else user space, saying why), on (refuse to start"
        " without it), off.",
    )

    kernel_relay_after: float = setting(
        0.0,
        "Seconds a pair relays in user space before it moves to the kernel relay, so that"
        " a short connection never pays for the hand-off (0 = at once). Experimental: a"
        " bulk download lost bytes once with a move mid-stream.",
        0,
    )

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.kernel_relay not in KERNEL_RELAY_MODES:
            raise SettingError(
                f"--kernel-relay must be one of {', '.join(KERNEL_RELAY_MODES)},"
                f" got {self.kernel_relay!r}"
            )


KERNEL_RELAY_MODES = ("auto", "on", "off")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a worker process is told before its first table (see `sniffer.proxy.ipc`)."""

    index: int = setting(0, "This worker's number, 0-based.", 0)
    workers: int = setting(1, "How many workers share the limits.", 1)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    access_log: bool = setting(True, "JSON access log on stdout.")
    access_log_buffer: int = setting(
        1024 * 1024,
        "Bytes of log held for a slow stdout before dropping lines.",
        MIN_ACCESS_LOG_BUFFER,
    )
    log_level: str = setting("info", "debug, info, warning, error.")

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.index >= self.workers:
            raise SettingError(f"worker index {self.index} not below {self.workers} workers")
