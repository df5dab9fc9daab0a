"""Read the head of a plaintext HTTP/1.x request far enough to learn its Host.

This module owns HTTP/1.x request-head syntax as far as routing needs it (RFC 9112 §2-3,
§5, RFC 9110 §7.2): the request line, header field syntax and the one Host. It must
never do I/O, rewrite or consume bytes for the caller (the backend gets the request
exactly as sent), or look past the blank line that ends the head.

Choices a router has to make, made here once:
- Line endings are CRLF only. A bare LF or bare CR anywhere in the head is a 400: RFC 9112
  §2.2 allows either answer, and a proxy that splits lines differently from the backend
  behind it is how request smuggling starts.
- Leading empty lines are not skipped: a connection whose first byte is not a method
  token is ``NOT_HTTP``.
- A Host that is an IP literal (``10.0.0.1:80``, ``[::1]``) gives ``host=None``: routes
  are by name, so the router treats it like a request without a name. An empty Host
  value (legal when the target has no authority) also gives ``host=None``.
- The absolute-form target's authority wins over Host (RFC 9112 §3.2.2), but an HTTP/1.1
  request must still carry exactly one Host (RFC 9112 §3.2).
- CONNECT's authority-form target is not used for routing; Host is.
"""

from __future__ import annotations

from dataclasses import dataclass

from sniffer.wire.errors import BadHttpHead, InvalidHostname
from sniffer.wire.hostname import normalize_hostname
from sniffer.wire.reader import StickyReader
from sniffer.wire.sentinels import NEED_DATA, NOT_HTTP, NeedData, NotHTTP

__all__ = [
    "DEFAULT_MAX_HEAD_BYTES",
    "MAX_HEAD_BYTES_LIMIT",
    "MIN_HEAD_BYTES",
    "NEED_DATA",
    "NOT_HTTP",
    "HttpHeadReader",
    "HttpRequestHead",
    "NeedData",
    "NotHTTP",
]

# 8 KiB, the request-head limit of nginx's default large_client_header_buffers line and
# of most servers: what a connection may make us hold before a backend is chosen.
DEFAULT_MAX_HEAD_BYTES = 8192
MIN_HEAD_BYTES = 64
MAX_HEAD_BYTES_LIMIT = 1 << 20

# RFC 9110 §5.6.2 tchar. Methods and field names are tokens.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Longest registered method is UPDATEREDIRECTREF (17). Not finding the SP after a token
# this long is enough to say the stream is not HTTP without waiting for more.
_MAX_METHOD = 20
# Bytes a request-target may hold: anything but controls, SP and DEL.
_TARGET_BYTES = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
_DIGITS = b"0123456789"


@dataclass(frozen=True, slots=True)
class HttpRequestHead:
    """The routing-relevant facts of an HTTP/1.x request head."""

    method: str
    target: str
    """request-target as sent (latin-1 decoded)."""
    version: str
    """``HTTP/1.0`` or ``HTTP/1.1``."""
    host: str | None
    """Normalised host name (no port); None when absent, empty or an IP literal."""


def _bad(message: str, status: int = 400) -> BadHttpHead:
    return BadHttpHead(message, reason="bad_http", http_status=status)


def _host_from_authority(value: bytes, where: str) -> str | None:
    """``host[:port]`` or ``[v6]:port`` to a normalised name, None for IP literals/empty."""
    if not value:
        return None
    if value[0] == 0x5B:  # "["
        close = value.find(b"]")
        if close < 0:
            raise _bad(f"{where} {value!r}: unterminated IPv6 literal")
        rest = value[close + 1 :]
        if rest and (rest[0] != 0x3A or rest[1:].translate(None, _DIGITS) or len(rest) > 6):
            raise _bad(f"{where} {value!r}: bad port")
        inner = value[1:close]
        if b":" not in inner or inner.translate(None, b"0123456789abcdefABCDEF:.%"):
            raise _bad(f"{where} {value!r}: bad IPv6 literal")
        return None
    colon = value.find(b":")
    if colon >= 0:
        port = value[colon + 1 :]
        if len(port) > 5 or port.translate(None, _DIGITS) or (port and int(port) > 65535):
            raise _bad(f"{where} {value!r}: bad port")
        value = value[:colon]
    try:
        return normalize_hostname(value)
    except InvalidHostname as exc:
        if exc.problem == "ip_literal":
            return None
        raise _bad(f"{where} refused: {exc.message}") from None


def _absolute_form_authority(target: bytes) -> bytes | None:
    """The authority of an absolute-form target (``scheme://authority/...``), else None."""
    sep = target.find(b"://")
    if sep <= 0 or not target[:1].isalpha() or target[:sep].translate(None, _TCHAR):
        return None
    authority = target[sep + 3 :]
    for stop in (b"/", b"?", b"#"):
        cut = authority.find(stop)
        if cut >= 0:
            authority = authority[:cut]
    if not authority:
        raise _bad(f"absolute-form target {target!r} has no authority")
    if b"@" in authority:
        # RFC 9110 §4.2.4: userinfo in an http(s) URI is to be treated as an error; it
        # is also the classic way to make a URL's host look like something else.
        raise _bad(f"absolute-form target {target!r} has userinfo")
    return authority


def parse_request_head(head: bytes) -> HttpRequestHead:
    """Parse ``head`` (request line and fields, without the final CRLFCRLF)."""
    if b"\x00" in head:
        raise _bad("NUL byte in request head")
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        raise _bad("bare CR or LF in request head (CRLF required)")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not all(parts):
        raise _bad(f"request line {lines[0][:100]!r} is not 'method SP target SP version'")
    method, target, version = parts
    if method.translate(None, _TCHAR):
        raise _bad(f"method {method!r} is not a token")
    if target.translate(None, _TARGET_BYTES):
        raise _bad("control character in request-target")
    if (
        len(version) != 8
        or version[:5] != b"HTTP/"
        or version[6] != 0x2E
        or version[5] not in _DIGITS
        or version[7] not in _DIGITS
    ):
        raise _bad(f"bad HTTP-version {version[:16]!r}")
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise _bad(f"unsupported {version.decode('ascii')}", status=505)

    host_value: bytes | None = None
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0 or line[:colon].translate(None, _TCHAR):
            # Also catches obs-fold (a line starting with SP/HTAB, RFC 9112 §5.2) and
            # whitespace before the colon (RFC 9112 §5.1: MUST be rejected with 400).
            raise _bad(f"malformed header line {line[:100]!r}")
        if colon == 4 and line[:4].lower() == b"host":
            if host_value is not None:
                raise _bad("more than one Host header")
            host_value = line[5:].strip(b" \t")
    if host_value is None and version == b"HTTP/1.1":
        raise _bad("HTTP/1.1 request without Host")

    authority = _absolute_form_authority(target)
    if authority is not None:
        host = _host_from_authority(authority, "request-target authority")
    elif host_value is not None:
        host = _host_from_authority(host_value, "Host")
    else:
        host = None
    return HttpRequestHead(
        method=method.decode("ascii"),
        target=target.decode("latin-1"),
        version=version.decode("ascii"),
        host=host,
    )


class HttpHeadReader(StickyReader[HttpRequestHead | NotHTTP]):
    """Incremental, sans-I/O reader of the request head at the start of a connection.

    ``feed`` each chunk read; it returns ``NEED_DATA`` until the blank line ending the
    head is in, then the ``HttpRequestHead``; ``NOT_HTTP`` as soon as the first bytes
    cannot be a method token; raises ``BadHttpHead`` (400, 431 or 505). The search for
    the end resumes where the previous feed stopped, so 1-byte reads stay linear. Once an
    outcome is reached it is returned (or raised) again on every later ``feed``.
    """

    __slots__ = ("_buf", "_method_ok", "_scanned", "max_bytes")

    def __init__(self, max_bytes: int = DEFAULT_MAX_HEAD_BYTES) -> None:
        if not MIN_HEAD_BYTES <= max_bytes <= MAX_HEAD_BYTES_LIMIT:
            raise ValueError(
                f"max_bytes must be in [{MIN_HEAD_BYTES}, {MAX_HEAD_BYTES_LIMIT}], got {max_bytes}"
            )
        super().__init__()
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for the end of the head
        self._method_ok = False

    def _release(self) -> None:
        self._buf = bytearray()

    def _step(self, data: bytes | bytearray | memoryview) -> HttpRequestHead | NeedData | NotHTTP:
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data if isinstance(data, bytes) else bytes(data)
        if not self._method_ok:
            space = buf.find(b" ", 0, _MAX_METHOD + 1)
            token = buf[: _MAX_METHOD + 1] if space < 0 else buf[:space]
            if space == 0 or token.translate(None, _TCHAR) or len(token) > _MAX_METHOD:
                return NOT_HTTP
            self._method_ok = space > 0
        # Only the first max_bytes are ever looked at, so the answer (head, 400 or 431)
        # is the same however the stream was cut into reads.
        cap = self.max_bytes
        start = self._scanned - 3 if self._scanned > 3 else 0
        end = buf.find(b"\r\n\r\n", start, cap)
        if end < 0:
            if buf.find(b"\n\n", start, cap) >= 0:
                raise _bad("request head ends with bare LF (CRLF required)")
            if len(buf) > cap:
                raise self._too_large()
            if buf is not self._buf:
                self._buf += buf
            self._scanned = len(buf)
            return NEED_DATA
        return parse_request_head(bytes(buf[:end]))

    def _too_large(self) -> BadHttpHead:
        return BadHttpHead(
            f"request head exceeds {self.max_bytes} bytes",
            reason="http_head_too_large",
            http_status=431,
        )
