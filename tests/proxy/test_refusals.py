"""The one table of refusals: each reason's TLS alert, HTTP status and Retry-After."""

from __future__ import annotations

import pytest

from sniffer.proxy import admission
from sniffer.proxy.refusals import REFUSALS, Answer, of_sniffer
from sniffer.wire.answers import tls_alert
from sniffer.wire.sniff import Refused

EXPECTED = {
    # reason: (TLS alert, HTTP status, Retry-After)
    "hello_timeout": (None, 408, None),
    "ja4_denied": (40, None, None),
    "unknown_name": (112, 421, None),
    "no_name": (112, 421, None),
    "no_backend": (80, 503, None),
    "no_endpoints": (80, 503, None),
    "backend_unavailable": (80, 502, None),
    "tenant_limit": (80, 503, 1),
    "backend_limit": (80, 503, 1),
    "client_limit": (80, 503, 1),
    "rate_limited": (80, 503, 1),
}


def test_the_table_is_every_reason_of_the_data_plane() -> None:
    assert {r: (a.alert, a.http_status, a.retry_after) for r, a in REFUSALS.items()} == EXPECTED
    limits = {admission.TENANT_LIMIT, admission.BACKEND_LIMIT, admission.CLIENT_LIMIT}
    assert limits | {admission.RATE_LIMITED} <= set(REFUSALS)


@pytest.mark.parametrize("reason", sorted(EXPECTED))
def test_each_answer_is_encoded_once_as_the_table_says(reason: str) -> None:
    a = REFUSALS[reason]
    alert, status, retry = EXPECTED[reason]
    assert a.tls == (b"" if alert is None else tls_alert(alert))
    if status is None:
        assert a.http == b""
        return
    head, _, body = a.http.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} ".encode())
    assert (f"retry-after: {retry}".encode() in lines) is (retry is not None)
    assert b"connection: close" in lines
    assert reason.replace("_", " ").encode() in body


def test_refusals_of_the_sniffer_are_encoded_once_per_distinct_refusal() -> None:
    event = Refused("bad_hello", 50, None)
    first = of_sniffer(event)
    assert isinstance(first, Answer) and first.tls == tls_alert(50) and first.http == b""
    assert of_sniffer(Refused("bad_hello", 50, None)) is first
    http = of_sniffer(Refused("bad_request", None, 400))
    assert http.tls == b"" and http.http.startswith(b"HTTP/1.1 400 ")
