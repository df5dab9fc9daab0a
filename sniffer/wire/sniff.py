"""The sniff phase of a connection as one sans-I/O object: bytes in, one event out.

This module owns everything between a connection's first byte and the name it is routed
by: the inbound PROXY header (consumed, never replayed), the whole-hello fast path (one
read holding the whole ClientHello needs no reader), the choice of reader (TLS or HTTP)
and the translation of every wire outcome into one of three events, the way h11's
`Connection.next_event` turns bytes into events:

- ``NEED_DATA``: feed more bytes;
- ``Sniffed(host, hello, proxy_header, replay)``: route it; ``replay`` is every byte the
  client sent after the PROXY header, to be written to the backend unaltered;
- ``Refused(reason, alert, http_status)``: answer (TLS alert or HTTP status, see
  `sniffer.wire.answers`), count ``reason`` and close.

It must never do I/O, read a clock or raise from ``feed``: the hello timeout and the
routing decision belong to the data plane. Its limits are checked where settings are
made (`sniffer.proxy.settings`), so constructing it never raises either.
"""

from __future__ import annotations

from typing import NamedTuple

from sniffer.wire.errors import WireError
from sniffer.wire.http import HttpHeadReader, HttpRequestHead
from sniffer.wire.proxy_protocol import ProxyHeader, ProxyHeaderReader
from sniffer.wire.sentinels import NEED_DATA, NOT_HTTP, NOT_TLS, NeedData
from sniffer.wire.tls import ClientHello, ClientHelloReader, parse_whole_hello

__all__ = ["NEED_DATA", "Refused", "SniffLimits", "Sniffed", "Sniffer", "sniff_whole"]


class Sniffed(NamedTuple):
    """The connection's name is known: route it."""

    host: str | None
    """The SNI or Host (normalised), None when the client sent none."""
    hello: ClientHello | None
    """The whole parsed ClientHello (ALPN, JA4 inputs, ECH), None on HTTP listeners."""
    proxy_header: ProxyHeader | None
    """The inbound PROXY header, on a `proxy_protocol_in` listener."""
    replay: bytes | bytearray
    """Every byte read after the PROXY header: the backend gets exactly these first."""

    @property
    def alpn(self) -> tuple[str, ...]:
        """The ALPN protocols the client offered (none off TLS)."""
        return () if self.hello is None else self.hello.alpn


class Refused(NamedTuple):
    """The client's bytes cannot be routed: answer, count ``reason``, close."""

    reason: str
    """The snake_case label of `sniffer_refused_connections_total{reason}`."""
    alert: int | None
    """The TLS alert to send (TLS listeners); None: just close."""
    http_status: int | None
    """The HTTP status to write (HTTP listeners); None: just close."""


class SniffLimits(NamedTuple):
    """What a listener's sniffers need to know: made once per listener, shared."""

    tls: bool
    """TLS listener (ClientHello) or plaintext HTTP (request head)."""
    proxy_protocol_in: bool
    """A PROXY v1/v2 header from a load balancer comes first."""
    max_hello_bytes: int
    max_http_head_bytes: int


_NOT_TLS = Refused("not_tls", None, None)
_NOT_HTTP = Refused("not_http", None, None)
_new_tuple = tuple.__new__


def sniff_whole(data: bytes, limits: SniffLimits) -> Sniffed | Refused | None:
    """The common case alone: a connection's first read holding its whole TLS hello.

    The event that read decides, or None when it is anything else (a split hello, HTTP,
    a PROXY header first, not TLS at all): then a `Sniffer(limits, whole_tried=True)`
    takes the read. A connection whose hello comes whole (nearly all) makes no
    `Sniffer` at all.
    """
    if limits[0] and not limits[1]:
        try:
            whole = parse_whole_hello(data, limits[2])
        except WireError as exc:
            return _refused(exc)
        if whole is not None:
            return _new_tuple(Sniffed, (whole[0], whole, None, data))
    return None


class Sniffer:
    """Feed a connection's first reads; get ``NEED_DATA`` until one event decides it.

    After a ``Sniffed`` or ``Refused``, the same event is returned on every later feed.
    The common case, a TLS hello whole in the first read, touches nothing but this
    object (see `sniff_whole`); anything else is handed to an incremental reader made on
    first need.
    """

    __slots__ = ("_event", "_limits", "_reader")

    def __init__(self, limits: SniffLimits, whole_tried: bool = False) -> None:
        """`whole_tried`: `sniff_whole` already found the first read not a whole hello."""
        self._limits = limits
        self._event: Sniffed | Refused | None = None
        self._reader: _Incremental | None = _Incremental(limits) if whole_tried else None

    @property
    def pending(self) -> bytes | bytearray:
        """Bytes fed after the PROXY header and not yet given out in a `Sniffed`."""
        return b"" if self._reader is None else self._reader.pending

    def feed(self, data: bytes) -> NeedData | Sniffed | Refused:
        event = self._event
        if event is not None:
            return event
        reader = self._reader
        if reader is None:
            # The fast path: one read, one record, the whole hello, nothing held.
            event = sniff_whole(data, self._limits)
            if event is not None:
                self._event = event
                return event
            reader = self._reader = _Incremental(self._limits)
        result = reader.feed(data)
        if result is not NEED_DATA:
            self._event = result
        return result


def _refused(exc: WireError) -> Refused:
    return Refused(exc.reason, exc.alert, exc.http_status)


class _Incremental:
    """The sniff phase across several reads: PROXY header, then a TLS or HTTP reader."""

    __slots__ = ("header", "limits", "pending", "proxy", "reader")

    def __init__(self, limits: SniffLimits) -> None:
        self.limits = limits
        self.proxy: ProxyHeaderReader | None = (
            ProxyHeaderReader() if limits.proxy_protocol_in else None
        )
        self.header: ProxyHeader | None = None
        self.pending: bytes | bytearray = b""
        self.reader: ClientHelloReader | HttpHeadReader | None = None

    def feed(self, data: bytes) -> NeedData | Sniffed | Refused:
        if self.proxy is not None:
            after = self._after_proxy_header(data)
            if not isinstance(after, bytes):
                return after
            if not after:
                return NEED_DATA
            data = after
            if self.limits.tls:  # the header's read may also hold the whole hello
                try:
                    whole = parse_whole_hello(data, self.limits.max_hello_bytes)
                except WireError as exc:
                    return _refused(exc)
                if whole is not None:
                    return Sniffed(whole.sni, whole, self.header, data)
        self._hold(data)
        return self._read(data)

    def _hold(self, data: bytes) -> None:
        """Keep `data` for the replay, in a bytearray: many small reads stay linear."""
        pending = self.pending
        if type(pending) is bytes:
            self.pending = bytearray(pending) + data
        else:
            pending += data

    def _after_proxy_header(self, data: bytes) -> bytes | NeedData | Refused:
        """Feed the PROXY reader: the bytes after a complete header, or an event."""
        assert self.proxy is not None
        self._hold(data)
        try:
            header = self.proxy.feed(data)
        except WireError as exc:
            return Refused(exc.reason, None, None if self.limits.tls else 400)
        if header is NEED_DATA:
            return NEED_DATA
        self.proxy = None
        self.header = header
        # The LB's header is not the client's: consume it, replay only what follows.
        rest = bytes(self.pending[header.length :])
        self.pending = b""
        return rest

    def _read(self, data: bytes) -> NeedData | Sniffed | Refused:
        reader = self.reader
        if reader is None:
            limits = self.limits
            reader = self.reader = (
                ClientHelloReader(limits.max_hello_bytes)
                if limits.tls
                else HttpHeadReader(limits.max_http_head_bytes)
            )
        try:
            result = reader.feed(data)
        except WireError as exc:
            return _refused(exc)
        if result is NEED_DATA:
            return NEED_DATA
        if result is NOT_TLS:
            return _NOT_TLS
        if result is NOT_HTTP:
            return _NOT_HTTP
        replay, self.pending = self.pending, b""
        if isinstance(result, ClientHello):
            return Sniffed(result.sni, result, self.header, replay)
        assert isinstance(result, HttpRequestHead)
        return Sniffed(result.host, None, self.header, replay)
