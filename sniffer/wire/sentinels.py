"""The non-result outcomes of the wire readers: "feed me more" and "not my protocol".

Each is a one-member enum so that ``result is NEED_DATA`` is both the fastest possible
test and one that mypy narrows on. Like h11's ``NEED_DATA``, needing more bytes is an
ordinary outcome, never an exception.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["NEED_DATA", "NOT_HTTP", "NOT_TLS", "NeedData", "NotHTTP", "NotTLS"]


class NeedData(enum.Enum):
    """The message is incomplete: feed more bytes (keep every byte already fed)."""

    NEED_DATA = "need_data"

    def __repr__(self) -> str:
        return "NEED_DATA"


class NotTLS(enum.Enum):
    """The stream does not start with a TLS handshake record (first byte is not 0x16)."""

    NOT_TLS = "not_tls"

    def __repr__(self) -> str:
        return "NOT_TLS"


class NotHTTP(enum.Enum):
    """The stream does not start with an HTTP/1.x request method token."""

    NOT_HTTP = "not_http"

    def __repr__(self) -> str:
        return "NOT_HTTP"


NEED_DATA: Final = NeedData.NEED_DATA
NOT_TLS: Final = NotTLS.NOT_TLS
NOT_HTTP: Final = NotHTTP.NOT_HTTP
