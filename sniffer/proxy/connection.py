"""One client connection: sniff, route, dial, then hand the pair to the relay.

`ClientConnection` is the `asyncio.Protocol` of the accepted socket until the hand-off.
`data_received` only feeds the sans-I/O `Sniffer` of `sniffer.wire` and acts on what it
returns. Every byte read while sniffing is kept in `self.pending` and written to the
backend, unaltered, before anything else (after our own PROXY header when the backend
asks for one); then the plane's `RelayEngine` (`sniffer.proxy.relay`) moves the bytes and
tells the connection when the pair has ended. The dial is `sniffer.proxy.dial`, the
answers to a refusal `sniffer.proxy.refusals`, the access-log record
`sniffer.proxy.record`. A connection never copies relayed bytes itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Protocol

from sniffer.observe.counting import count
from sniffer.proxy.dial import Dial, proxy_header
from sniffer.proxy.phases import CLOSED, CLOSING, DIALING, RELAYING, SNIFFING, Phase
from sniffer.proxy.record import record
from sniffer.proxy.refusals import (
    BACKEND_UNAVAILABLE,
    HELLO_TIMEOUT,
    JA4_DENIED,
    NO_BACKEND,
    NO_ENDPOINTS,
    NO_NAME,
    REFUSALS,
    UNKNOWN_NAME,
    Answer,
    of_sniffer,
)
from sniffer.routing.table import MatchKind
from sniffer.wire.ja4 import ja4
from sniffer.wire.sniff import NEED_DATA, Refused, Sniffed, Sniffer, SniffLimits, sniff_whole

if TYPE_CHECKING:
    import itertools
    from collections.abc import Callable

    from sniffer.observe.accesslog import AccessRecord
    from sniffer.observe.stats import BackendTally, DataPlaneStats, ListenerTally
    from sniffer.proxy.admission import Admission, Ticket
    from sniffer.proxy.relay import Relay, RelayEngine
    from sniffer.proxy.relay.userspace import Pump
    from sniffer.proxy.settings import ProxySettings
    from sniffer.routing.table import Backend, Endpoint, Listener, RouteTable, WeightedBackend
    from sniffer.wire.sentinels import NeedData
    from sniffer.wire.tls import ClientHello


class Plane(Protocol):
    """All a connection may see of its data plane (`sniffer.proxy.server.DataPlane`).

    The plane, in turn, ends a connection only through `ClientConnection.close_for`,
    times it out through `hello_timed_out` / `dial_timed_out_now`, and reads its
    `state`, `started`, `dial_began` and `relay` in its sweeps; the stats read the
    byte counts and `tally` and never write on a connection.
    """

    # read-only shared state
    settings: ProxySettings
    loop: asyncio.AbstractEventLoop
    table: RouteTable
    """The current route table: read once per connection, when it is routed."""
    stats: DataPlaneStats
    admission: Admission
    access_log: Callable[[AccessRecord | str], None] | None
    relay_engine: RelayEngine
    """Moves the bytes of every routed pair of this process (picked once)."""
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
        "dialer",
        "endpoint",
        "hello",
        "host",
        "idle_mark",
        "limits",
        "lingering",
        "listener",
        "local_addr",
        "ltally",
        "outcome",
        "pending",
        "relay",
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
        self.relay: Relay | None = None
        """The pair's relay, from the hand-off on (it then owns both transports)."""
        self.state: Phase = SNIFFING
        """Where this connection is; the moves are `sniffer.proxy.phases.TRANSITIONS`."""
        self.limits = limits or sniff_limits(listener, state.settings)
        self.sniffer: Sniffer | None = None
        """Made only when the first read is not a whole hello (see `sniff_whole`)."""
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
        self.dialer: Dial | None = None
        """The dial, from routing until it connects or fails."""
        self.dial_began = 0.0
        self.bytes_up = 0
        """Bytes relayed client -> backend (the replay included), set when it closes; the
        relay counts them while open."""
        self.bytes_down = 0
        self.client_eof = False
        self.outcome = ""
        self.started = time.monotonic()
        self.routed_at = 0.0
        self.idle_mark = -1
        # what this connection holds of its limits (sniffer.proxy.admission)
        self.ticket: Ticket | None = None
        self.dial_held = False
        self.client_key: tuple[str, str] | None = None

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, only duck-alike.)
        self.transport = transport  # type: ignore[assignment]
        shared = self.state_shared
        if shared.draining:
            transport.abort()  # type: ignore[attr-defined]
            return
        if len(shared.connections) >= shared.max_connections:
            # At the process limit: closed at once (not left in the backlog), counted;
            # the connections already open are untouched.
            self.state = CLOSED
            self.outcome = "overloaded"
            self.ltally.refuse("overloaded")
            transport.abort()  # type: ignore[attr-defined]
            return
        shared.connections.add(self)
        self.ltally.accepted += 1
        peer = transport.get_extra_info("peername")
        self.client_addr = (peer[0], peer[1]) if peer else None
        transport.set_write_buffer_limits(shared.settings.write_buffer_high)  # type: ignore[attr-defined]
        # The hello deadline is kept by the plane's sweep over this (small) set: a set
        # add and discard cost a tenth of a timer's arm and cancel.
        shared.sniffing.add(self)

    def data_received(self, data: bytes) -> None:
        # (Once relaying, the relay's protocol gets the client's bytes, not this one.)
        state = self.state
        if state is SNIFFING:
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
        if self.state is DIALING:
            return True  # half-closed after the hello: deliver it, then the FIN
        if self.state is SNIFFING:
            self.outcome = "client_closed"
            self.ltally.refuse(self.outcome)
        self._finish(self.outcome or "client_closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is SNIFFING and not self.outcome:
            self.outcome = "client_reset" if exc else "client_closed"
            self.ltally.refuse(self.outcome)
        self._finish(self.outcome or ("client_reset" if exc else "closed"))
        # The transport holds us and we hold it: break the cycle so a closed connection
        # is freed by reference counting at once instead of waiting for (and costing) a
        # cyclic garbage collection.
        self.transport = None

    # -- sniffing and routing ------------------------------------------------------------

    def _sniff(self, data: bytes) -> None:
        sniffer = self.sniffer
        event: NeedData | Sniffed | Refused | None
        if sniffer is not None:
            event = sniffer.feed(data)
        else:  # the first read: nearly always the whole hello, decided without a Sniffer
            event = sniff_whole(data, self.limits)
            if event is None:
                sniffer = self.sniffer = Sniffer(self.limits, whole_tried=True)
                event = sniffer.feed(data)
        if event is NEED_DATA:
            return
        if type(event) is Refused:
            self._refuse(of_sniffer(event))
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
            self._refuse(HELLO_TIMEOUT)

    def _route(self) -> None:
        shared = self.state_shared
        shared.sniffing.discard(self)
        self.ltally.sniff_times.observe(time.monotonic() - self.started)
        table = shared.table
        hello = self.hello
        deny = table.denied_ja4 and table.deny_ja4(self.listener.name)
        if deny and hello is not None and ja4(hello) in deny:
            self._refuse(JA4_DENIED)
            return
        match = table.lookup(self.listener.name, self.host, () if hello is None else hello.alpn)
        if match.kind is MatchKind.NONE:
            self._refuse(UNKNOWN_NAME if self.host else NO_NAME)
            return
        self.route = match.route.host if match.route is not None else "(default)"
        backends = match.backends  # one backend, nearly always: no call for the choice
        chosen = backends[0] if len(backends) == 1 and backends[0].weight else _choose(backends)
        backend = table.backends.get(chosen.backend) if chosen is not None else None
        if backend is None:
            self._refuse(NO_BACKEND)
            return
        self.backend = backend
        if hello is not None and hello.has_ech:
            self.ltally.count_ech(backend.tenant)
        tally = shared.stats.backend((backend.name, backend.tenant))
        if not backend.endpoints:
            count(tally.errors, "no_endpoints")
            self._refuse(NO_ENDPOINTS)
            return
        # Admission (sniffer.proxy.admission): every limit checked before the dial; a
        # refusal answers at once (TLS internal_error / 503 with Retry-After).
        refusal = shared.admission.admit(self, backend)
        if refusal is not None:
            count(tally.limited, refusal[1])
            self._refuse(REFUSALS[refusal[0]])
            return
        self.tally = tally
        self.state = DIALING
        Dial(self, backend, tally)  # (it sets `self.dialer` before its first attempt)

    # -- the dial's reports (sniffer.proxy.dial) ----------------------------------------

    def dial_timed_out_now(self) -> None:
        """The plane's sweep found this dial attempt past the connect timeout."""
        if self.dialer is not None:
            self.dialer.time_out()

    def dial_failed(self) -> None:
        """Every endpoint failed: answer (which releases the ticket)."""
        self.dialer = None
        self.tally = None
        self._refuse(BACKEND_UNAVAILABLE)

    def dialed(self, endpoint: Endpoint, pump: Pump, began: float, now: float) -> None:
        """Connected (the attempt began at `began`, answered at `now`): write our PROXY
        header and the replay, then hand the pair over."""
        shared = self.state_shared
        backend = self.backend
        assert backend is not None
        self.endpoint = endpoint
        self.state = RELAYING
        self.dialer = None
        if self.dial_held:  # connected: free the dial slot `Admission.admit` took
            self.dial_held = False
            self.ticket.backend.pending -= 1  # type: ignore[union-attr]
        self.routed_at = now
        shared.stats.opened(self.listener.name, self, now - began)
        out = pump.backend
        assert out is not None
        version = backend.proxy_protocol
        if version != "none":
            dst = self.local_addr
            if dst is None:  # looked up only when needed: most backends want no PROXY header
                sock = self.transport.get_extra_info("sockname") if self.transport else None
                dst = (sock[0], sock[1]) if sock else None
            out.write(proxy_header(version, self.client_addr, dst, self.host, self.conn_id))
        pending = self.pending
        self.pending = b""
        out.write(pending)
        self.relay = shared.relay_engine.start(pump, len(pending), self.client_eof)

    # -- refusing and closing ------------------------------------------------------------

    def _refuse(self, answer: Answer) -> None:
        """Answer in the listener's protocol, count the reason, and close lingeringly."""
        if self.state >= CLOSING:
            return
        if self.ticket is not None:
            self.state_shared.admission.release(self)
        self.state_shared.sniffing.discard(self)
        self.outcome = answer.reason
        self.ltally.refuse(answer.reason)
        self.state = CLOSING
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = answer.tls if self.listener.protocol == "tls" else answer.http
        if data:
            transport.write(data)
        if self.client_eof or answer.retry_after is not None:
            # The client already half-closed: nothing more will come, and uvloop must not
            # be asked for write_eof() on a transport that saw EOF (it can double-free).
            # A limit refusal (its whole hello was read) closes at once too: a flood of
            # refused clients must not hold a descriptor each for the linger.
            transport.close()
            return
        # Half-close and linger briefly so the client reads our answer instead of an RST
        # caused by bytes it sent that we never read.
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
        # A relay closes its pair itself before it reports the end (or was aborted).
        if self.relay is None and self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if self.dialer is not None:  # the client left mid-dial: stop dialing
            self.dialer.cancel()
            self.dialer = None
        if self.ticket is not None:
            shared.admission.release(self)
        now = time.monotonic()
        if was_relaying:
            relay = self.relay
            assert relay is not None
            self.bytes_up = relay.bytes_up
            self.bytes_down = relay.bytes_down
            shared.stats.closed(self, now - self.routed_at)
        if shared.access_log is not None:
            shared.access_log(record(self, now))

    relay_closed = _finish
    """The relay's report that the pair has ended (`sniffer.proxy.relay.RelayOwner`)."""

    def close_for(self, reason: str) -> None:
        """The data plane's one way to end a connection: drop it now (both sides), with
        `reason` as its outcome (`idle_timeout`, `draining`, `drain_timeout`)."""
        self.outcome = reason
        self.abort()

    def abort(self) -> None:
        """Drop the connection now, keeping the outcome it has (`aborted` if none)."""
        if self.relay is not None:
            self.relay.abort()
        elif self.transport is not None:
            self.transport.abort()
        self._finish(self.outcome or "aborted")

    @property
    def conn_id(self) -> str:
        """Unique across the pod's processes and restarts (see `DataPlane.id_prefix`)."""
        return f"{self.state_shared.id_prefix}{self.serial:x}"


def _choose(backends: tuple[WeightedBackend, ...]) -> WeightedBackend | None:
    if len(backends) == 1:
        return backends[0] if backends[0].weight > 0 else None
    live = [b for b in backends if b.weight > 0]
    if not live:
        return None
    return random.choices(live, weights=[b.weight for b in live])[0]
