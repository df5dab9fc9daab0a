"""One client connection: sniff, route, dial, pump.

`ClientConnection` is the `asyncio.Protocol` of the accepted socket and
`UpstreamConnection` that of the backend socket. `data_received` only feeds the
sans-I/O readers of `sniffer.wire` and acts on what they return. Every byte read while
sniffing is kept in `self.pending` and written to the backend, unaltered, before
anything else (after our own PROXY header when the backend asks for one).

Flow control is symmetric and tiny: when one side's write buffer passes its high-water
mark, the other side stops reading until it drains, so a connection's memory is bounded
by two write buffers, whatever the speed difference of the peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from typing import TYPE_CHECKING, Any, cast

from sniffer.routing.table import Backend, Endpoint, Listener, MatchKind, WeightedBackend
from sniffer.wire.errors import WireError
from sniffer.wire.http import HttpHeadReader, HttpRequestHead
from sniffer.wire.proxy_protocol import ProxyHeader, ProxyHeaderReader, encode_v1, encode_v2
from sniffer.wire.sentinels import NEED_DATA, NOT_HTTP, NOT_TLS
from sniffer.wire.tls import ClientHello, ClientHelloReader

if TYPE_CHECKING:
    from sniffer.proxy.server import DataPlane

log = logging.getLogger("sniffer.proxy")

_ALERT_INTERNAL_ERROR = 80
_ALERT_UNRECOGNIZED_NAME = 112

# States of a client connection, in order.
SNIFFING, DIALING, RELAYING, CLOSING, CLOSED = range(5)

_HTTP_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def tls_alert(description: int) -> bytes:
    """A fatal TLS alert record; clients show e.g. `unrecognized_name` to the user."""
    return bytes((21, 3, 3, 0, 2, 2, description))


def http_error(status: int, detail: str) -> bytes:
    body = f"{status} {_HTTP_REASONS.get(status, 'Error')}: {detail}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_HTTP_REASONS.get(status, 'Error')}\r\n"
        f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode()
    return head + body


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "alpn",
        "backend",
        "bytes_down",
        "bytes_up",
        "client_addr",
        "client_eof",
        "endpoint",
        "hello_timer",
        "host",
        "idle_mark",
        "lingering",
        "listener",
        "local_addr",
        "outcome",
        "paused_by_upstream",
        "pending",
        "proxy_reader",
        "reader",
        "reported_down",
        "reported_up",
        "route",
        "routed_at",
        "started",
        "state",
        "state_shared",
        "stats_key",
        "transport",
        "upstream",
        "upstream_eof",
    )

    def __init__(self, state: DataPlane, listener: Listener) -> None:
        # shared server state
        self.state_shared = state
        self.listener = listener
        # per-connection state
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamConnection | None = None
        self.state = SNIFFING
        self.pending = bytearray()
        self.reader: ClientHelloReader | HttpHeadReader = (
            ClientHelloReader(state.settings.max_hello_bytes)
            if listener.protocol == "tls"
            else HttpHeadReader(state.settings.max_http_head_bytes)
        )
        self.proxy_reader: ProxyHeaderReader | None = (
            ProxyHeaderReader() if listener.proxy_protocol_in else None
        )
        self.hello_timer: asyncio.TimerHandle | None = None
        self.lingering: asyncio.TimerHandle | None = None
        self.client_addr: tuple[str, int] | None = None
        self.local_addr: tuple[str, int] | None = None
        self.host: str | None = None
        self.alpn: tuple[str, ...] = ()
        self.route = ""
        self.backend: Backend | None = None
        self.endpoint: Endpoint | None = None
        self.stats_key: tuple[str, str] | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.reported_up = 0
        self.reported_down = 0
        self.paused_by_upstream = False
        self.client_eof = False
        self.upstream_eof = False
        self.outcome = ""
        self.started = time.monotonic()
        self.routed_at = 0.0
        self.idle_mark = -1

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-alike.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        shared = self.state_shared
        if shared.draining:
            transport.abort()
            return
        shared.connections.add(self)
        shared.stats.accept(self.listener.name)
        peer = transport.get_extra_info("peername")
        self.client_addr = (peer[0], peer[1]) if peer else None
        sock = transport.get_extra_info("sockname")
        self.local_addr = (sock[0], sock[1]) if sock else None
        transport.set_write_buffer_limits(shared.settings.write_buffer_high)
        self.hello_timer = shared.loop.call_later(
            shared.settings.hello_timeout, self._hello_timed_out
        )

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == RELAYING:
            self.bytes_up += len(data)
            upstream = self.upstream
            assert upstream is not None and upstream.transport is not None
            upstream.transport.write(data)
        elif state == SNIFFING:
            self._sniff(data)
        elif state == DIALING:
            self.pending += data
            if len(self.pending) > self.state_shared.settings.write_buffer_high:
                assert self.transport is not None
                self.transport.pause_reading()
        # CLOSING: a refused client still talking; discard until it goes away.

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.state == RELAYING:
            upstream = self.upstream
            assert upstream is not None and upstream.transport is not None
            if self.upstream_eof:
                self._finish("closed")
                return False
            if upstream.transport.can_write_eof():
                upstream.transport.write_eof()
            return True
        if self.state == DIALING:
            return True  # half-closed after the hello: deliver it, then the FIN
        if self.state == SNIFFING:
            self.outcome = "client_closed"
            self.state_shared.stats.refuse(self.listener.name, self.outcome)
        self._finish(self.outcome or "client_closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == SNIFFING and not self.outcome:
            self.outcome = "client_reset" if exc else "client_closed"
            self.state_shared.stats.refuse(self.listener.name, self.outcome)
        self._finish(self.outcome or ("client_reset" if exc else "closed"))

    def pause_writing(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.closed:
            upstream.transport.resume_reading()

    # -- sniffing ------------------------------------------------------------------------

    def _sniff(self, data: bytes) -> None:
        if self.proxy_reader is not None:
            self.pending += data
            try:
                header = self.proxy_reader.feed(data)
            except WireError as exc:
                self._refuse(exc.reason, None, 400 if self.listener.protocol == "http" else None)
                return
            if header is NEED_DATA:
                return
            assert isinstance(header, ProxyHeader)
            self.proxy_reader = None
            if header.source is not None:
                self.client_addr = header.source
            if header.destination is not None:
                self.local_addr = header.destination
            # The LB's header is not the client's: consume it, replay only what follows.
            data = bytes(self.pending[header.length :])
            self.pending = bytearray()
            if not data:
                return
        self.pending += data
        try:
            result = self.reader.feed(data)
        except WireError as exc:
            self._refuse(exc.reason, exc.alert, exc.http_status)
            return
        if result is NEED_DATA:
            return
        if result is NOT_TLS:
            self._refuse("not_tls", None, None)
            return
        if result is NOT_HTTP:
            self._refuse("not_http", None, None)
            return
        if isinstance(result, ClientHello):
            self.host = result.sni
            self.alpn = result.alpn
        else:
            assert isinstance(result, HttpRequestHead)
            self.host = result.host
        self._route()

    def _hello_timed_out(self) -> None:
        self.hello_timer = None
        if self.state == SNIFFING:
            self._refuse(
                "hello_timeout", None, 408 if self.listener.protocol == "http" else None
            )

    # -- routing and dialing -------------------------------------------------------------

    def _route(self) -> None:
        shared = self.state_shared
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        shared.stats.sniffed(self.listener.name, time.monotonic() - self.started)
        table = shared.table
        match = table.lookup(self.listener.name, self.host)
        if match.kind is MatchKind.NONE:
            self._refuse("unknown_name" if self.host else "no_name", _ALERT_UNRECOGNIZED_NAME, 421)
            return
        self.route = match.route.host if match.route is not None else "(default)"
        chosen = _choose(match.backends)
        backend = table.backends.get(chosen.backend) if chosen is not None else None
        if backend is None:
            self._refuse("no_backend", _ALERT_INTERNAL_ERROR, 503)
            return
        self.backend = backend
        self.stats_key = (backend.name, backend.tenant)
        if not backend.endpoints:
            shared.stats.connect_failed(self.stats_key, "no_endpoints")
            self.stats_key = None
            self._refuse("no_endpoints", _ALERT_INTERNAL_ERROR, 503)
            return
        self.state = DIALING
        shared.loop.create_task(self._dial(backend))

    async def _dial(self, backend: Backend) -> None:
        shared = self.state_shared
        eps = backend.endpoints
        n = len(eps)
        start = shared.next_index(backend.name, n)
        key = self.stats_key
        assert key is not None
        for i in range(n):
            if self.state != DIALING:
                return  # the client went away while we dialed
            ep = eps[(start + i) % n]
            began = time.monotonic()
            try:
                async with asyncio.timeout(shared.settings.connect_timeout):
                    transport, upstream = await shared.loop.create_connection(
                        lambda: UpstreamConnection(self), ep.host, ep.port
                    )
            except TimeoutError:
                shared.stats.connect_failed(key, "timeout")
                log.warning("connect to %s (%s) timed out", ep, backend.name)
                continue
            except ConnectionRefusedError:
                shared.stats.connect_failed(key, "refused")
                continue
            except OSError as exc:
                reason = "unreachable" if exc.errno in _UNREACHABLE else "error"
                shared.stats.connect_failed(key, reason)
                log.warning("connect to %s (%s) failed: %s", ep, backend.name, exc)
                continue
            if self.state != DIALING:
                transport.close()
                return
            self.endpoint = ep
            self._relay(upstream, time.monotonic() - began)
            return
        self.stats_key = None
        self._refuse("backend_unavailable", _ALERT_INTERNAL_ERROR, 502)

    def _relay(self, upstream: UpstreamConnection, dial_seconds: float) -> None:
        shared = self.state_shared
        assert self.backend is not None and self.stats_key is not None
        self.upstream = upstream
        self.state = RELAYING
        self.routed_at = time.monotonic()
        shared.stats.opened(self.listener.name, self.stats_key, self, dial_seconds)
        ut = upstream.transport
        assert ut is not None
        mode = self.backend.proxy_protocol
        if mode != "none":
            src = self.client_addr
            dst = self.local_addr
            header = (
                encode_v2(src, dst) if mode == "v2" else encode_v1(src, dst)
            ) if src and dst else b""
            if header:
                ut.write(header)
        pending = self.pending
        self.pending = bytearray()
        self.bytes_up = len(pending)
        ut.write(pending)
        assert self.transport is not None
        if self.client_eof:
            if ut.can_write_eof():
                ut.write_eof()
        else:
            self.transport.resume_reading()

    # -- refusing and closing ------------------------------------------------------------

    def _refuse(self, reason: str, alert: int | None, http_status: int | None) -> None:
        """Answer in the listener's protocol, count the reason, and close lingeringly."""
        if self.state >= CLOSING:
            return
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        self.outcome = reason
        self.state_shared.stats.refuse(self.listener.name, reason)
        self.state = CLOSING
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.listener.protocol == "tls":
            if alert is not None:
                transport.write(tls_alert(alert))
        elif http_status is not None:
            transport.write(http_error(http_status, reason.replace("_", " ")))
        # Half-close and linger briefly so the client reads our answer instead of an RST
        # caused by bytes it sent that we never read.
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self.lingering = self.state_shared.loop.call_later(2.0, transport.close)

    def _finish(self, outcome: str) -> None:
        if self.state == CLOSED:
            return
        was_relaying = self.state == RELAYING
        self.state = CLOSED
        if not self.outcome:
            self.outcome = outcome
        shared = self.state_shared
        shared.connections.discard(self)
        if shared.draining and not shared.connections:
            shared.drained.set()
        for timer in (self.hello_timer, self.lingering):
            if timer is not None:
                timer.cancel()
        self.hello_timer = self.lingering = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        upstream = self.upstream
        if upstream is not None:
            upstream.close()
        now = time.monotonic()
        if was_relaying:
            shared.stats.closed(self, now - self.routed_at)
        if shared.access_log is not None:
            shared.access_log(self, now)

    def abort(self) -> None:
        """Drop the connection now (drain grace expired, idle timeout)."""
        if self.transport is not None:
            self.transport.abort()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.abort()
        self._finish(self.outcome or "aborted")

    # -- upstream events -----------------------------------------------------------------

    def on_upstream_data(self, data: bytes) -> None:
        self.bytes_down += len(data)
        transport = self.transport
        assert transport is not None
        transport.write(data)

    def on_upstream_eof(self) -> bool:
        self.upstream_eof = True
        transport = self.transport
        if self.client_eof or transport is None or transport.is_closing():
            self._finish("closed")
            return False
        if transport.can_write_eof():
            transport.write_eof()
        return True

    def on_upstream_lost(self, exc: Exception | None) -> None:
        if self.state == RELAYING:
            self._finish("backend_reset" if exc else "closed")

    def log_record(self, now: float) -> dict[str, Any]:
        return {
            "client": _fmt(self.client_addr),
            "listener": self.listener.name,
            "sni" if self.listener.protocol == "tls" else "host": self.host,
            "route": self.route or None,
            "backend": self.backend.name if self.backend is not None else None,
            "tenant": self.backend.tenant if self.backend is not None else None,
            "endpoint": str(self.endpoint) if self.endpoint is not None else None,
            "bytes_in": self.bytes_up,
            "bytes_out": self.bytes_down,
            "duration": round(now - self.started, 6),
            "outcome": self.outcome,
        }


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("client", "closed", "transport")

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(self.client.state_shared.settings.write_buffer_high)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.client.on_upstream_data(data)

    def eof_received(self) -> bool:
        return self.client.on_upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.on_upstream_lost(exc)

    def pause_writing(self) -> None:
        t = self.client.transport
        if t is not None:
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.client.transport
        if t is not None and self.client.state == RELAYING and not self.client.client_eof:
            t.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


_UNREACHABLE = {101, 113, 110}  # ENETUNREACH, EHOSTUNREACH, ETIMEDOUT


def _choose(backends: tuple[WeightedBackend, ...]) -> WeightedBackend | None:
    if len(backends) == 1:
        return backends[0] if backends[0].weight > 0 else None
    live = [b for b in backends if b.weight > 0]
    if not live:
        return None
    return random.choices(live, weights=[b.weight for b in live])[0]


def _fmt(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
