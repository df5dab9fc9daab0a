"""The data plane's settings, each checked once, when the settings object is made.

This module owns `ProxySettings` (what every connection of a process obeys) and
`WorkerSettings` (what the control process hands a worker process), their defaults,
their help text and their ranges (declared with `sniffer.settings`); the CLI reads its
flag defaults and help from here instead of restating them. A value out of range raises
`SettingError` naming the flag and the range, at start-up: nothing in the data path may
raise from a setting. Ranges that the wire readers enforce come from `sniffer.wire`. It
must never do I/O or import anything of sniffer but `sniffer.wire` and `sniffer.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sniffer.settings import SettingError, check_ranges, setting
from sniffer.wire.http import DEFAULT_MAX_HEAD_BYTES, MAX_HEAD_BYTES_LIMIT, MIN_HEAD_BYTES
from sniffer.wire.tls import DEFAULT_MAX_HELLO_BYTES, MAX_HELLO_BYTES_LIMIT, MIN_HELLO_BYTES_LIMIT

__all__ = ["KERNEL_RELAY_MODES", "MIN_ACCESS_LOG_BUFFER", "ProxySettings", "WorkerSettings"]

MIN_ACCESS_LOG_BUFFER = 4096
"""Bytes of access log a process holds at least (one long line must fit)."""


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
    quic_idle_timeout: float = setting(
        120.0,
        "Seconds without a datagram either way before a QUIC flow is forgotten"
        " (above QUIC's usual 30-60 s idle timeouts).",
        0.001,
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
        "off",
        "Relay routed pairs in the kernel (BPF sockmap): auto (where the kernel and the"
        " capabilities allow it, else user space, saying why), on (refuse to start"
        " without it), off (the default until a stream repeated by the kernel path is"
        " explained: see the README).",
    )
    """`off` by default: about one 1 GiB TLS download in 15-40 relayed by the kernel at
    once came out with 64-128 KiB repeated (the README's kernel relay section)."""

    kernel_relay_after: float = setting(
        1.0,
        "Seconds a pair relays in user space before it moves to the kernel relay (between"
        " this and twice this), so that a short connection never pays for the hand-off;"
        " 0 = at once (a pair whose backend has already answered: once nothing is queued).",
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
