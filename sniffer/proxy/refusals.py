"""Every refusal the data plane answers, in one table: reason -> TLS alert, HTTP status,
Retry-After.

A refused client gets one answer in its listener's protocol (a fatal TLS alert, or an
HTTP error response on a plaintext listener; nothing where the table says None) and the
reason is counted as `sniffer_refused_connections_total{reason}`. The bytes are encoded
once per reason when this module loads (and once per distinct refusal of the sniffer,
whose readers in `sniffer.wire` pick the alert/status of bad bytes), never per refused
connection. A refusal with a Retry-After is a limit: the client is closed at once rather
than left lingering. This module never writes to a socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sniffer.proxy.admission import BACKEND_LIMIT, CLIENT_LIMIT, RATE_LIMITED, TENANT_LIMIT
from sniffer.wire.answers import http_error, tls_alert
from sniffer.wire.errors import (
    ALERT_HANDSHAKE_FAILURE,
    ALERT_INTERNAL_ERROR,
    ALERT_UNRECOGNIZED_NAME,
)
from sniffer.wire.sniff import Refused

__all__ = ["REFUSALS", "Answer", "answer", "of_sniffer"]


@dataclass(frozen=True, slots=True)
class Answer:
    """One refusal: its reason and what each kind of listener writes back."""

    reason: str
    """The `reason` label (and the access log's `outcome`)."""
    alert: int | None
    """The TLS alert description a `tls` listener sends; None: just close."""
    http_status: int | None
    """The status an `http` listener answers with; None: just close."""
    retry_after: int | None
    """Seconds in the HTTP answer's Retry-After; set for limits (closed at once)."""
    tls: bytes
    """The encoded alert (b"": nothing)."""
    http: bytes
    """The encoded HTTP response (b"": nothing)."""


def answer(
    reason: str, alert: int | None, http_status: int | None, retry_after: int | None = None
) -> Answer:
    return Answer(
        reason,
        alert,
        http_status,
        retry_after,
        b"" if alert is None else tls_alert(alert),
        b""
        if http_status is None
        else http_error(http_status, reason.replace("_", " "), retry_after),
    )


HELLO_TIMEOUT: Final = answer("hello_timeout", None, 408)
"""No complete hello/request head within hello_timeout (a TLS client just gets closed)."""
JA4_DENIED: Final = answer("ja4_denied", ALERT_HANDSHAKE_FAILURE, None)
UNKNOWN_NAME: Final = answer("unknown_name", ALERT_UNRECOGNIZED_NAME, 421)
NO_NAME: Final = answer("no_name", ALERT_UNRECOGNIZED_NAME, 421)
"""No SNI / Host and no default backend on the listener."""
NO_BACKEND: Final = answer("no_backend", ALERT_INTERNAL_ERROR, 503)
"""The route's backends are all weighted 0 or missing from the table."""
NO_ENDPOINTS: Final = answer("no_endpoints", ALERT_INTERNAL_ERROR, 503)
BACKEND_UNAVAILABLE: Final = answer("backend_unavailable", ALERT_INTERNAL_ERROR, 502)
"""Every endpoint of the backend failed to connect."""

REFUSALS: Final[dict[str, Answer]] = {
    a.reason: a
    for a in (
        HELLO_TIMEOUT,
        JA4_DENIED,
        UNKNOWN_NAME,
        NO_NAME,
        NO_BACKEND,
        NO_ENDPOINTS,
        BACKEND_UNAVAILABLE,
        # Admission (sniffer.proxy.admission): the walls between tenants.
        *(
            answer(limit, ALERT_INTERNAL_ERROR, 503, retry_after=1)
            for limit in (TENANT_LIMIT, BACKEND_LIMIT, CLIENT_LIMIT, RATE_LIMITED)
        ),
    )
}
"""Every reason the data plane itself refuses for, by reason."""

_OF_SNIFFER: dict[Refused, Answer] = {}


def of_sniffer(refused: Refused) -> Answer:
    """The answer to a refusal of the sniffer (bad bytes: `not_tls`, `bad_hello`, ...),
    whose reader chose the alert and status; encoded once per distinct refusal."""
    out = _OF_SNIFFER.get(refused)
    if out is None:
        if len(_OF_SNIFFER) > 1_000:  # a bounded vocabulary; stay bounded regardless
            _OF_SNIFFER.clear()
        out = _OF_SNIFFER[refused] = answer(*refused)
    return out
