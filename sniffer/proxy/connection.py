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
import errno
import json
import logging
import os
import random
import socket
import struct
import time
from typing import TYPE_CHECKING, Protocol, cast

from sniffer.observe.counting import count
from sniffer.observe.stats import BackendTally, ListenerTally
from sniffer.proxy.admission import Ticket
from sniffer.proxy.phases import CLOSED, CLOSING, DIALING, RELAYING, SNIFFING, Phase
from sniffer.routing.table import (
    Backend,
    Endpoint,
    Listener,
    MatchKind,
    WeightedBackend,
    join_host_port,
)
from sniffer.wire.answers import http_error, tls_alert
from sniffer.wire.errors import (
    ALERT_HANDSHAKE_FAILURE,
    ALERT_INTERNAL_ERROR,
    ALERT_UNRECOGNIZED_NAME,
)
from sniffer.wire.ja4 import ja4
from sniffer.wire.proxy_protocol import encode_v1, encode_v2
from sniffer.wire.sniff import NEED_DATA, Refused, Sniffed, Sniffer, SniffLimits
from sniffer.wire.tls import ClientHello

if TYPE_CHECKING:
    import itertools
    from collections.abc import Callable

    from sniffer.observe.stats import DataPlaneStats
    from sniffer.proxy.admission import Admission
    from sniffer.proxy.kernel.relay import KernelPair, KernelRelay
    from sniffer.proxy.settings import ProxySettings
    from sniffer.routing.table import RouteTable

log = logging.getLogger("sniffer.proxy")


class Plane(Protocol):
    """All a connection may see of its data plane (`sniffer.proxy.server.DataPlane`).

    The plane, in turn, ends a connection only through `ClientConnection.close_for`,
    times it out through `hello_timed_out` / `dial_timed_out_now`, and reads its
    `state`, `started`, `dial_began` and byte counts in its sweeps; the stats read the
    byte counts and `tally` and never write on a connection.
    """

    # read-only shared state
    settings: ProxySettings
    loop: asyncio.AbstractEventLoop
    table: RouteTable
    """The current route table: read once per connection, when it is routed."""
    stats: DataPlaneStats
    admission: Admission
    access_log: Callable[[ClientConnection, float], None] | None
    kernel: KernelRelay | None
    """The kernel relay engine, when this process has one (`--kernel-relay`)."""
    id_prefix: str
    serials: itertools.count[int]
    max_connections: int
    draining: bool
    # the plane's registries, which a connection enters and leaves itself
    connections: set[ClientConnection]
    sniffing: set[ClientConnection]
    """Waiting for their hello: the hello-timeout sweep's candidates."""
    dialing: set[ClientConnection]
    """A dial attempt in flight: the connect-timeout sweep's candidates."""
    drained: asyncio.Event
    """Set by the last connection to close while draining."""

    def next_index(self, backend: str, n: int) -> int:
        """Round-robin start among a backend's `n` endpoints."""
        ...


def sniff_limits(listener: Listener, settings: ProxySettings) -> SniffLimits:
    """What the sniffers of `listener`'s connections need, shared by all of them."""
    return SniffLimits(
        listener.protocol == "tls",
        listener.proxy_protocol_in,
        settings.max_hello_bytes,
        settings.max_http_head_bytes,
    )


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "backend",
        "bytes_down",
        "bytes_up",
        "client_addr",
        "client_eof",
        "client_key",
        "dial_began",
        "dial_held",
        "dial_task",
        "dial_timed_out",
        "endpoint",
        "hello",
        "host",
        "idle_mark",
        "kernel",
        "kernel_base",
        "lingering",
        "listener",
        "local_addr",
        "ltally",
        "outcome",
        "pending",
        "route",
        "routed_at",
        "serial",
        "sniffer",
        "started",
        "state",
        "state_shared",
        "tally",
        "ticket",
        "transport",
        "upstream",
        "upstream_eof",
    )

    def __init__(
        self,
        state: Plane,
        listener: Listener,
        ltally: ListenerTally,
        limits: SniffLimits | None = None,
    ) -> None:
        """`limits`: the listener's `sniff_limits`, made once per listener by the plane."""
        # shared server state
        self.state_shared = state
        self.listener = listener
        self.ltally = ltally
        # per-connection state
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamConnection | None = None
        self.state: Phase = SNIFFING
        """Where this connection is; the moves are `sniffer.proxy.phases.TRANSITIONS`."""
        self.sniffer = Sniffer(limits or sniff_limits(listener, state.settings))
        self.pending: bytes | bytearray = b""
        """What the client sent after its PROXY header, to replay: the sniffed bytes,
        then what arrived while dialing."""
        self.lingering: asyncio.TimerHandle | None = None
        self.client_addr: tuple[str, int] | None = None
        self.local_addr: tuple[str, int] | None = None
        self.host: str | None = None
        # What the ClientHello told beyond the name. Its JA4 is computed when needed (a
        # deny list at routing, the access-log line at close), from a memo per hello.
        self.hello: ClientHello | None = None
        self.serial = next(state.serials)
        """This connection's number in its process: with the process's random prefix,
        the `id` of the access log and of the PROXY v2 PP2_TYPE_UNIQUE_ID TLV."""
        self.route = ""
        self.backend: Backend | None = None
        self.endpoint: Endpoint | None = None
        self.tally: BackendTally | None = None
        self.dial_task: asyncio.Task[None] | None = None
        self.dial_began = 0.0
        self.dial_timed_out = False
        self.bytes_up = 0
        self.bytes_down = 0
        self.client_eof = False
        self.upstream_eof = False
        self.outcome = ""
        self.started = time.monotonic()
        self.routed_at = 0.0
        self.idle_mark = -1
        self.kernel: KernelPair | None = None
        """The pair in the kernel's hands (`sniffer.proxy.kernel`), once handed over."""
        self.kernel_base = 0
        """bytes_up at the hand-off (the replay), to which the pair's own count adds."""
        # what this connection holds of its limits (sniffer.proxy.admission)
        self.ticket: Ticket | None = None
        self.dial_held = False
        self.client_key: tuple[str, str] | None = None

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-alike.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        shared = self.state_shared
        if shared.draining:
            transport.abort()
            return
        if len(shared.connections) >= shared.max_connections:
            self._overloaded(transport)
            return
        shared.connections.add(self)
        self.ltally.accepted += 1
        peer = transport.get_extra_info("peername")
        self.client_addr = (peer[0], peer[1]) if peer else None
        transport.set_write_buffer_limits(shared.settings.write_buffer_high)
        # The hello deadline is kept by the plane's sweep over this (small) set: a set
        # add and discard cost a tenth of a timer's arm and cancel.
        shared.sniffing.add(self)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is RELAYING:
            self.bytes_up += len(data)
            upstream = self.upstream
            assert upstream is not None and upstream.transport is not None
            upstream.transport.write(data)
        elif state is SNIFFING:
            self._sniff(data)
        elif state is DIALING:
            if type(self.pending) is bytes:
                self.pending = bytearray(self.pending)
            self.pending += data
            if len(self.pending) > self.state_shared.settings.write_buffer_high:
                assert self.transport is not None
                self.transport.pause_reading()
        # CLOSING: a refused client still talking; discard until it goes away.

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.state is RELAYING:
            upstream = self.upstream
            assert upstream is not None and upstream.transport is not None
            if self.upstream_eof:
                self._finish("closed")
                return False
            if upstream.transport.can_write_eof():
                upstream.transport.write_eof()
            return True
        if self.state is DIALING:
            return True  # half-closed after the hello: deliver it, then the FIN
        if self.state is SNIFFING:
            self.outcome = "client_closed"
            self.ltally.refuse(self.outcome)
        self._finish(self.outcome or "client_closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.kernel is not None:  # our transport let go of the socket at the hand-off
            self.transport = None
            self.upstream = None  # (the cycle through the upstream, as below)
            return
        if exc is not None and self.state is RELAYING:
            self.outcome = "client_reset"
            upstream = self.upstream
            if upstream is not None and upstream.transport is not None:
                reset(upstream.transport)
        if self.state is SNIFFING and not self.outcome:
            self.outcome = "client_reset" if exc else "client_closed"
            self.ltally.refuse(self.outcome)
        self._finish(self.outcome or ("client_reset" if exc else "closed"))
        # The transport holds us and we hold it (and the upstream, which holds us): break
        # the cycles so a closed connection is freed by reference counting at once instead
        # of waiting for (and costing) a cyclic garbage collection.
        self.transport = None
        self.upstream = None

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
        event = self.sniffer.feed(data)
        if event is NEED_DATA:
            return
        if type(event) is Refused:
            self._refuse(event.reason, event.alert, event.http_status)
            return
        assert type(event) is Sniffed
        self.host, self.hello, header, self.pending = event  # one unpack, not four lookups
        if header is not None:
            if header.source is not None:
                self.client_addr = header.source
            if header.destination is not None:
                self.local_addr = header.destination
        self._route()

    def hello_timed_out(self) -> None:
        """The plane's sweep found this client still sniffing past the hello timeout."""
        if self.state is SNIFFING:
            self._refuse("hello_timeout", None, 408 if self.listener.protocol == "http" else None)

    # -- routing and dialing -------------------------------------------------------------

    def _route(self) -> None:
        shared = self.state_shared
        shared.sniffing.discard(self)
        self.ltally.sniff_times.observe(time.monotonic() - self.started)
        table = shared.table
        hello = self.hello
        deny = table.denied_ja4 and table.deny_ja4(self.listener.name)
        if deny and hello is not None and ja4(hello) in deny:
            self._refuse("ja4_denied", ALERT_HANDSHAKE_FAILURE, None)
            return
        match = table.lookup(self.listener.name, self.host, () if hello is None else hello.alpn)
        if match.kind is MatchKind.NONE:
            self._refuse("unknown_name" if self.host else "no_name", ALERT_UNRECOGNIZED_NAME, 421)
            return
        self.route = match.route.host if match.route is not None else "(default)"
        chosen = _choose(match.backends)
        backend = table.backends.get(chosen.backend) if chosen is not None else None
        if backend is None:
            self._refuse("no_backend", ALERT_INTERNAL_ERROR, 503)
            return
        self.backend = backend
        if hello is not None and hello.has_ech:
            self.ltally.count_ech(backend.tenant)
        tally = shared.stats.backend((backend.name, backend.tenant))
        if not backend.endpoints:
            count(tally.errors, "no_endpoints")
            self._refuse("no_endpoints", ALERT_INTERNAL_ERROR, 503)
            return
        # Admission (sniffer.proxy.admission): every limit checked before the dial; a
        # refusal answers at once (TLS internal_error / 503 with Retry-After).
        refusal = shared.admission.admit(self, backend)
        if refusal is not None:
            count(tally.limited, refusal[1])
            self._refuse(refusal[0], ALERT_INTERNAL_ERROR, 503, retry_after=1)
            return
        self.tally = tally
        self.state = DIALING
        self.dial_task = shared.loop.create_task(self._dial(backend))

    def _overloaded(self, transport: asyncio.Transport) -> None:
        """At the process limit: close at once (not left in the backlog), counted; the
        connections already open are untouched."""
        self.state = CLOSED
        self.outcome = "overloaded"
        self.ltally.refuse("overloaded")
        transport.abort()

    def dial_timed_out_now(self) -> None:
        """The plane's sweep found this dial attempt past the connect timeout.

        The flag tells our cancellation from anyone else's.
        """
        task = self.dial_task
        if task is not None and not task.done():
            self.dial_timed_out = True
            task.cancel()

    async def _dial(self, backend: Backend) -> None:
        shared = self.state_shared
        eps = backend.endpoints
        n = len(eps)
        start = shared.next_index(backend.name, n)
        tally = self.tally
        assert tally is not None
        errors = tally.errors
        loop = shared.loop
        dialing = shared.dialing
        for i in range(n):
            if self.state is not DIALING:
                return  # the client went away while we dialed
            ep = eps[(start + i) % n]
            began = self.dial_began = time.monotonic()
            dialing.add(self)  # the plane's sweep enforces connect_timeout
            try:
                transport, upstream = await loop.create_connection(
                    lambda: UpstreamConnection(self), ep.host, ep.port
                )
            except asyncio.CancelledError:
                if not self.dial_timed_out:
                    raise
                self.dial_timed_out = False
                if self.dial_task is not None:
                    self.dial_task.uncancel()
                count(errors, "timeout")
                log.warning("connect to %s (%s) timed out", ep, backend.name)
                continue
            except ConnectionRefusedError:
                count(errors, "refused")
                continue
            except OSError as exc:
                reason = "unreachable" if exc.errno in _UNREACHABLE else "error"
                count(errors, reason)
                log.warning("connect to %s (%s) failed: %s", ep, backend.name, exc)
                continue
            finally:
                dialing.discard(self)
            if self.state is not DIALING:
                transport.close()
                return
            self.endpoint = ep
            self._relay(upstream, time.monotonic() - began)
            return
        self.tally = None
        self._refuse("backend_unavailable", ALERT_INTERNAL_ERROR, 502)  # releases the ticket

    def _relay(self, upstream: UpstreamConnection, dial_seconds: float) -> None:
        shared = self.state_shared
        assert self.backend is not None
        self.upstream = upstream
        self.state = RELAYING
        self.dial_task = None
        if self.dial_held:  # connected: free the dial slot `Admission.admit` took
            self.dial_held = False
            self.ticket.backend.pending -= 1  # type: ignore[union-attr]
        self.routed_at = time.monotonic()
        shared.stats.opened(self.listener.name, self, dial_seconds)
        ut = upstream.transport
        assert ut is not None
        header = b""
        mode = self.backend.proxy_protocol
        if mode != "none":
            src = self.client_addr
            dst = self.local_addr
            if dst is None:  # looked up only when needed: most backends want no PROXY header
                sock = self.transport.get_extra_info("sockname") if self.transport else None
                dst = (sock[0], sock[1]) if sock else None
            header = (
                (
                    encode_v2(src, dst, self.host, self.conn_id)
                    if mode == "v2"
                    else encode_v1(src, dst)
                )
                if src and dst
                else b""
            )
        pending = self.pending
        self.pending = b""
        self.bytes_up = len(pending)
        kernel = shared.kernel
        if kernel is not None and not self.client_eof and self._to_kernel(kernel, header, pending):
            return
        if header:
            ut.write(header)
        ut.write(pending)
        assert self.transport is not None
        if self.client_eof:
            if ut.can_write_eof():
                ut.write_eof()
        else:
            self.transport.resume_reading()

    def _to_kernel(self, kernel: KernelRelay, header: bytes, pending: bytes | bytearray) -> bool:
        """Give both sockets to the kernel relay, with what the backend must get first.

        False (nothing changed, the user-space relay goes on) when it cannot take them.
        """
        ct = self.transport
        upstream = self.upstream
        ut = upstream.transport if upstream is not None else None
        if ct is None or ut is None:
            return False
        if not kernel.free:
            kernel.fallback("map_full")
            return False
        csock = ct.get_extra_info("socket")
        usock = ut.get_extra_info("socket")
        if csock is None or usock is None:
            kernel.fallback("no_socket")
            return False
        # Our own descriptors of the two sockets: the transports close theirs below.
        try:
            client = socket.socket(fileno=os.dup(csock.fileno()))
        except OSError:
            kernel.fallback("dup")
            return False
        try:
            backend = socket.socket(fileno=os.dup(usock.fileno()))
        except OSError:
            client.close()
            kernel.fallback("dup")
            return False
        client.setblocking(False)
        backend.setblocking(False)
        first = header + pending if header else bytes(pending)
        pair = kernel.handoff(self.state_shared.loop, client, backend, first, self._kernel_done)
        if pair is None:
            client.close()
            backend.close()
            return False
        self.kernel = pair
        self.kernel_base = self.bytes_up
        ct.abort()  # closes the transports' descriptors only: the sockets are ours now
        ut.abort()
        return True

    def _kernel_done(self, pair: KernelPair, outcome: str) -> None:
        self.bytes_up = self.kernel_base + pair.final_up
        self.bytes_down = pair.final_down
        self._finish(outcome)

    def kernel_sync(self) -> None:
        """Bring bytes_up/bytes_down up to date from the kernel's counters (sweeps)."""
        pair = self.kernel
        if pair is not None and not pair.closed:
            self.bytes_up = self.kernel_base + pair.bytes_up
            self.bytes_down = pair.bytes_down

    # -- refusing and closing ------------------------------------------------------------

    def _refuse(
        self,
        reason: str,
        alert: int | None,
        http_status: int | None,
        retry_after: int | None = None,
    ) -> None:
        """Answer in the listener's protocol, count the reason, and close lingeringly."""
        if self.state >= CLOSING:
            return
        if self.ticket is not None:
            self.state_shared.admission.release(self)
        self.state_shared.sniffing.discard(self)
        self.outcome = reason
        self.ltally.refuse(reason)
        self.state = CLOSING
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.listener.protocol == "tls":
            if alert is not None:
                transport.write(tls_alert(alert))
        elif http_status is not None:
            transport.write(http_error(http_status, reason.replace("_", " "), retry_after))
        if self.client_eof or retry_after is not None:
            # The client already half-closed: nothing more will come, and uvloop must not
            # be asked for write_eof() on a transport that saw EOF (it can double-free).
            # A limit refusal (its whole hello was read) closes at once too: a flood of
            # refused clients must not hold a descriptor each for the linger.
            transport.close()
            return
        # Half-close and linger briefly so the client reads our answer instead of an RST
        # caused by bytes it sent that we never read.
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self.lingering = self.state_shared.loop.call_later(2.0, transport.close)

    def _finish(self, outcome: str) -> None:
        if self.state is CLOSED:
            return
        was_relaying = self.state is RELAYING
        self.state = CLOSED
        if not self.outcome:
            self.outcome = outcome
        shared = self.state_shared
        shared.connections.discard(self)
        shared.sniffing.discard(self)
        if shared.draining and not shared.connections:
            shared.drained.set()
        if self.lingering is not None:
            self.lingering.cancel()
            self.lingering = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        upstream = self.upstream
        if upstream is not None:
            upstream.close()
        if self.dial_task is not None:  # the client left mid-dial: stop dialing
            self.dial_task.cancel()
            self.dial_task = None
        if self.ticket is not None:
            shared.admission.release(self)
        now = time.monotonic()
        if was_relaying:
            shared.stats.closed(self, now - self.routed_at)
        if shared.access_log is not None:
            shared.access_log(self, now)

    def close_for(self, reason: str) -> None:
        """The data plane's one way to end a connection: drop it now (both sides), with
        `reason` as its outcome (`idle_timeout`, `draining`, `drain_timeout`)."""
        self.outcome = reason
        self.abort()

    def abort(self) -> None:
        """Drop the connection now, keeping the outcome it has (`aborted` if none)."""
        if self.kernel is not None and not self.kernel.closed:
            self.kernel.abort(self.outcome or "aborted")  # calls _kernel_done
            return
        if self.transport is not None:
            self.transport.abort()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.abort()
        self._finish(self.outcome or "aborted")

    # -- upstream events -----------------------------------------------------------------

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
        if self.state is RELAYING and self.kernel is None:
            if exc is not None and self.transport is not None:
                reset(self.transport)
            self._finish("backend_reset" if exc else "closed")

    @property
    def conn_id(self) -> str:
        """Unique across the pod's processes and restarts (see `DataPlane.id_prefix`).

        `log_line` formats the same two parts itself, in the line's one `%`.
        """
        return f"{self.state_shared.id_prefix}{self.serial:x}"

    def log_line(self, now: float) -> str:
        """The access-log line (JSON and a newline), formatted rather than encoded.

        Hostnames reaching here were normalised by `sniffer.wire.hostname` (only
        [a-z0-9._-]) and addresses are IP literals, so they need no escaping; names from
        the route table go through a small memo of `json.dumps`, which escapes anything
        outside ASCII: the line is ASCII, so its length is its size in bytes.
        """
        client = self.client_addr
        ep = self.endpoint
        tally = self.tally
        host = self.host
        hello = self.hello
        # The memo probe inlined: this runs for every connection.
        facts = _NO_HELLO if hello is None else (_HELLO_JS.get(hello[1:]) or _hello_js(hello))
        if ep is not None and tally is not None and client is not None and host is not None:
            # A relayed connection, nearly every line: the backend's fields come
            # preformatted from its tally, the endpoint's text from the table, and the
            # `_js` memo is probed inline (json.dumps never returns "").
            listener = self.listener.name
            route = self.route
            outcome = self.outcome
            return _ROUTED_LINE % (
                self.state_shared.id_prefix,
                self.serial,
                join_host_port(*client),
                _JS.get(listener) or _js(listener),
                "sni" if self.listener.protocol == "tls" else "host",
                host,
                _JS.get(route) or _js(route),
                tally.log_fields,
                ep.text,
                self.bytes_up,
                self.bytes_down,
                now - self.started,
                _JS.get(outcome) or _js(outcome),
                facts,
            )
        backend = self.backend
        return _LINE % (
            self.state_shared.id_prefix,
            self.serial,
            "null" if client is None else f'"{join_host_port(*client)}"',
            _js(self.listener.name),
            "sni" if self.listener.protocol == "tls" else "host",
            "null" if self.host is None else f'"{self.host}"',
            _js(self.route) if self.route else "null",
            "null" if backend is None else _js(backend.name),
            "null" if backend is None else _js(backend.tenant),
            "null" if ep is None else f'"{ep}"',
            self.bytes_up,
            self.bytes_down,
            now - self.started,
            _js(self.outcome),
            facts,
        )


_LINE = (
    '{"id":"%s%x","client":%s,"listener":%s,"%s":%s,"route":%s,"backend":%s,"tenant":%s,'
    '"endpoint":%s,"bytes_in":%d,"bytes_out":%d,"duration":%.6f,"outcome":%s'
    "%s}\n"
)
_ROUTED_LINE = (
    '{"id":"%s%x","client":"%s","listener":%s,"%s":"%s","route":%s,%s,'
    '"endpoint":"%s","bytes_in":%d,"bytes_out":%d,"duration":%.6f,"outcome":%s'
    "%s}\n"
)
# The offered ALPN list in the log: enough to see what a client wanted, never a
# client-chosen amount of log (a hello may carry hundreds of names of 255 bytes).
_LOG_ALPN_NAMES = 8
_LOG_ALPN_CHARS = 32
_NO_HELLO = ',"alpn":[],"ja4":null,"ech":false'
_HELLO_JS: dict[tuple[object, ...], str] = {}


def _hello_js(hello: ClientHello) -> str:
    """The line's `alpn`, `ja4` and `ech` fields, memoised per distinct hello.

    Everything but the name (`hello[1:]`) is the key: a client sends the same hello
    (but for its name and random bytes) on every connection, so a line costs a dict hit,
    not a JA4 computation. The ALPN list is JSON (ASCII-escaped) and truncated.
    """
    key = hello[1:]
    out = _HELLO_JS.get(key)
    if out is None:
        alpn = hello.alpn
        names = [name[:_LOG_ALPN_CHARS] for name in alpn[:_LOG_ALPN_NAMES]]
        if len(alpn) > _LOG_ALPN_NAMES:
            names.append(f"...{len(alpn) - _LOG_ALPN_NAMES} more")
        if len(_HELLO_JS) > 1_000:  # hostile hellos must not grow it forever
            _HELLO_JS.clear()
        out = _HELLO_JS[key] = (
            f',"alpn":{json.dumps(names)},"ja4":"{ja4(hello)}",'
            f'"ech":{"true" if hello.has_ech else "false"}'
        )
    return out


_JS: dict[str, str] = {}


def _js(value: str) -> str:
    """`json.dumps` memoised for the bounded vocabulary of table names and outcomes."""
    out = _JS.get(value)
    if out is None:
        if len(_JS) > 10_000:  # a table churning through names must not grow this forever
            _JS.clear()
        out = _JS[value] = json.dumps(value)
    return out


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("client", "closed", "transport")

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        # (uvloop already sets TCP_NODELAY on every TCP transport.)
        transport.set_write_buffer_limits(self.client.state_shared.settings.write_buffer_high)

    def data_received(self, data: bytes) -> None:
        # The client's on_upstream_data, inlined: this runs once per chunk relayed.
        client = self.client
        client.bytes_down += len(data)
        transport = client.transport
        assert transport is not None
        transport.write(data)

    def eof_received(self) -> bool:
        return self.client.on_upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.on_upstream_lost(exc)
        self.transport = None  # break the transport <-> protocol cycle (see the client's)

    def pause_writing(self) -> None:
        t = self.client.transport
        if t is not None:
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.client.transport
        if t is not None and self.client.state is RELAYING and not self.client.client_eof:
            t.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ETIMEDOUT}
_LINGER_ZERO = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Close with an RST, as the peer on the other side did: `abort()` alone sends a FIN,
    which a client without its own framing would take for a complete response."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


def _choose(backends: tuple[WeightedBackend, ...]) -> WeightedBackend | None:
    if len(backends) == 1:
        return backends[0] if backends[0].weight > 0 else None
    live = [b for b in backends if b.weight > 0]
    if not live:
        return None
    return random.choices(live, weights=[b.weight for b in live])[0]
