"""Errors raised when a client's bytes cannot be used to pick a backend.

This module owns the one error root of the wire layer, ``WireError``. Every rejection
carries what the data plane needs to answer and count it: a snake_case ``reason`` (the
metric label), the TLS alert description to send, or the HTTP status to write. It must
never describe I/O failures (timeouts, resets): those belong to ``sniffer.proxy``.
"""

from __future__ import annotations

__all__ = [
    "ALERT_DECODE_ERROR",
    "ALERT_HANDSHAKE_FAILURE",
    "ALERT_INTERNAL_ERROR",
    "ALERT_UNRECOGNIZED_NAME",
    "BadHttpHead",
    "BadProxyHeader",
    "HelloRejected",
    "InvalidHostname",
    "WireError",
]

# TLS AlertDescription values (RFC 8446 §6, RFC 6066 §3) the sniffer sends.
ALERT_HANDSHAKE_FAILURE = 40  # a JA4 on the listener's deny list
ALERT_DECODE_ERROR = 50  # any malformed record or ClientHello
ALERT_INTERNAL_ERROR = 80  # no backend, no endpoint, a limit, every dial failed
ALERT_UNRECOGNIZED_NAME = 112  # an unusable or unknown name


class WireError(Exception):
    """The peer sent bytes the wire layer refuses.

    ``reason`` is a stable snake_case label for metrics and logs; ``alert`` is the TLS
    alert description to send back (``None``: just close); ``http_status`` is the status
    line to write on a plaintext listener (``None``: just close).
    """

    reason: str
    alert: int | None
    http_status: int | None

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        alert: int | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.alert = alert
        self.http_status = http_status

    def __str__(self) -> str:
        return f"{self.message} ({self.reason})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, reason={self.reason!r}, "
            f"alert={self.alert!r}, http_status={self.http_status!r})"
        )


class HelloRejected(WireError):
    """The TLS record layer or the ClientHello is malformed, too large, or unroutable."""


class BadHttpHead(WireError):
    """The plaintext HTTP/1.x request head is malformed or too large."""


class BadProxyHeader(WireError):
    """The inbound PROXY protocol header (v1 or v2) is malformed or unsupported."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="bad_proxy_header")


class InvalidHostname(WireError, ValueError):
    """A hostname (SNI, Host header, route host) is not a valid DNS name.

    ``problem`` names what is wrong (``empty``, ``empty_label``, ``label_too_long``,
    ``name_too_long``, ``control_char``, ``non_ascii``, ``bad_char``, ``ip_literal``,
    ``bad_wildcard``); callers build their own ``reason`` from it, e.g. ``sni_ip_literal``.
    It is also a ``ValueError`` so configuration code can catch it without knowing the
    wire layer.
    """

    problem: str

    def __init__(self, message: str, *, problem: str) -> None:
        super().__init__(message, reason=f"hostname_{problem}")
        self.problem = problem
