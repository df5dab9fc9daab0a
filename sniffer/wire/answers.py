"""The bytes sniffer writes back to a client it refuses: a TLS alert or an HTTP error.

This module owns those two encodings, beside the readers (as h11 keeps `_writers.py`
beside `_readers.py`), and uses the standard library's one table of HTTP reason phrases.
It must never do I/O or decide when to refuse (the data plane does).
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = ["http_error", "reason_phrase", "tls_alert"]


def tls_alert(description: int) -> bytes:
    """A fatal TLS alert record; clients show e.g. `unrecognized_name` to the user."""
    return bytes((21, 3, 3, 0, 2, 2, description))


def reason_phrase(status: int) -> str:
    """The HTTP reason phrase of `status` ("Error" for a status no RFC names)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def http_error(status: int, detail: str, retry_after: int | None = None) -> bytes:
    """A complete `connection: close` response with a one-line text body."""
    phrase = reason_phrase(status)
    body = f"{status} {phrase}: {detail}\n".encode()
    retry = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
        f"{retry}connection: close\r\n\r\n"
    ).encode()
    return head + body
