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

__all__ = ["NEED_DATA", "Refused", "Sniffed", "Sniffer"]


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


_NOT_TLS = Refused("not_tls", None, None)
_NOT_HTTP = Refused("not_http", None, None)


class Sniffer:
    """Feed a connection's first reads; get ``NEED_DATA`` until one event decides it.

    After a ``Sniffed`` or ``Refused``, the same event is returned on every later feed.
    """

    __slots__ = ("_event", "_header", "_max_bytes", "_pending", "_proxy", "_reader", "_tls")

    def __init__(
        self, tls: bool, proxy_protocol_in: bool, max_hello_bytes: int, max_http_head_bytes: int
    ) -> None:
        self._tls = tls
        self._max_bytes = max_hello_bytes if tls else max_http_head_bytes
        # Made on first use: most hellos arrive whole in one read and need no reader.
        self._reader: ClientHelloReader | HttpHeadReader | None = None
        self._proxy: ProxyHeaderReader | None = ProxyHeaderReader() if proxy_protocol_in else None
        self._header: ProxyHeader | None = None
        self._pending: bytes | bytearray = b""
        self._event: Sniffed | Refused | None = None

    @property
    def pending(self) -> bytes | bytearray:
        """Bytes fed after the PROXY header and not yet given out in a `Sniffed`."""
        return self._pending

    def feed(self, data: bytes) -> NeedData | Sniffed | Refused:
        event = self._event
        if event is not None:
            return event
        if self._proxy is not None:
            data = self._after_proxy_header(data)
            if not data:
                return self._event or NEED_DATA
        if self._reader is None and not self._pending and self._tls:
            # The fast path: one read, one record, the whole hello, nothing held.
            try:
                whole = parse_whole_hello(data, self._max_bytes)
            except WireError as exc:
                return self._refuse(exc)
            if whole is not None:
                event = self._event = Sniffed(whole[0], whole, self._header, data)
                return event
        self._hold(data)
        return self._read(data)

    def _hold(self, data: bytes) -> None:
        """Keep `data` for the replay, in a bytearray: many small reads stay linear."""
        pending = self._pending
        if type(pending) is bytes:
            self._pending = bytearray(pending) + data
        else:
            pending += data

    def _after_proxy_header(self, data: bytes) -> bytes:
        """Feed the PROXY reader; the bytes after a complete header (b"" until then)."""
        assert self._proxy is not None
        self._hold(data)
        try:
            header = self._proxy.feed(data)
        except WireError as exc:
            self._event = Refused(exc.reason, None, None if self._tls else 400)
            return b""
        if header is NEED_DATA:
            return b""
        self._proxy = None
        self._header = header
        # The LB's header is not the client's: consume it, replay only what follows.
        rest = bytes(self._pending[header.length :])
        self._pending = b""
        return rest

    def _read(self, data: bytes) -> NeedData | Sniffed | Refused:
        reader = self._reader
        if reader is None:
            reader = self._reader = (
                ClientHelloReader(self._max_bytes) if self._tls else HttpHeadReader(self._max_bytes)
            )
        try:
            result = reader.feed(data)
        except WireError as exc:
            return self._refuse(exc)
        if result is NEED_DATA:
            return NEED_DATA
        if result is NOT_TLS:
            self._event = _NOT_TLS
            return _NOT_TLS
        if result is NOT_HTTP:
            self._event = _NOT_HTTP
            return _NOT_HTTP
        replay, self._pending = self._pending, b""
        if isinstance(result, ClientHello):
            event = Sniffed(result.sni, result, self._header, replay)
        else:
            assert isinstance(result, HttpRequestHead)
            event = Sniffed(result.host, None, self._header, replay)
        self._event = event
        return event

    def _refuse(self, exc: WireError) -> Refused:
        event = self._event = Refused(exc.reason, exc.alert, exc.http_status)
        return event
