"""QUIC listeners: route UDP flows by the SNI of their Initial packets, relay datagrams.

`QuicListener` is the `asyncio.DatagramProtocol` of one `quic` listener's UDP socket. A
flow is keyed by the client's address; while it sniffs, its datagrams are fed to a
`sniffer.wire.quic.InitialReader` and held (bounded); once the hello is read it is
routed by the same table, limits and deny lists as a TLS connection, gets one connected
UDP socket towards the chosen endpoint, and every held and later datagram is relayed
unchanged both ways. Nothing here decrypts past the client's Initial packets.

Three rules a relay of QUIC must keep:
- Anti-amplification (RFC 9000 §8.1): until the client's address is validated, no more
  than 3x what it sent goes back to it. The edge cannot read the server's decision, so
  it takes the client's proof of receipt that is visible: a Handshake or 1-RTT packet
  from the client (only a client that received the server's Initial can send one).
- NAT rebinding: the server's connection IDs, in clear in its long-header packets, are
  remembered; a datagram from an unknown address whose DCID is one of them moves the
  flow to the new address (the server sees nothing change: its peer is the flow's socket).
- Refusals are a server Initial carrying CONNECTION_CLOSE (``refusal_datagram``), so a
  client fails at once instead of timing out.
- A dead endpoint shows only as ICMP port unreachable on the flow's connected socket:
  before the endpoint answered anything, the flow moves to the next endpoint and what
  was sent is replayed there in order (`Flow.unanswered`, bounded as `Flow.held`).

This module never blocks, never reads more than a datagram's header on the relay path,
and ends a flow only through `Flow.close`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, cast

from sniffer.observe.counting import count
from sniffer.observe.stats import BackendTally, ListenerTally
from sniffer.proxy.admission import Ticket
from sniffer.proxy.connection import _choose
from sniffer.proxy.phases import CLOSED, CLOSING, DIALING, RELAYING, SNIFFING, Phase
from sniffer.routing.table import Backend, Endpoint, Listener, MatchKind, join_host_port
from sniffer.wire.errors import (
    ALERT_HANDSHAKE_FAILURE,
    ALERT_INTERNAL_ERROR,
    ALERT_UNRECOGNIZED_NAME,
    HelloRejected,
    WireError,
)
from sniffer.wire.ja4 import ja4_quic
from sniffer.wire.quic import (
    HANDSHAKE,
    InitialReader,
    QuicHello,
    load_crypto,
    long_header_cids,
    packet_type,
    refusal_datagram,
    version_negotiation,
)
from sniffer.wire.sentinels import NEED_DATA
from sniffer.wire.tls import ClientHello

if TYPE_CHECKING:
    from sniffer.proxy.server import DataPlane

log = logging.getLogger("sniffer.proxy")

__all__ = ["AMPLIFICATION", "Flow", "QuicListener"]

AMPLIFICATION = 3
"""RFC 9000 §8.1: bytes towards an unvalidated client per byte received from it."""
MAX_HELD_DATAGRAMS = 16
MAX_HELD_BYTES = 16 * 1024
"""Datagrams held per flow before it is routed (the hello's, and 0-RTT that came with or
after it): a client's first flight (2-3 datagrams, a few of 0-RTT) fits; a sniffing flow
then holds at most this plus the reader's `--max-hello-bytes`, however many a spoofing
flooder opens (their number is bounded by `--max-connections`)."""
MAX_SERVER_CIDS = 8
"""Server connection IDs remembered per flow (for NAT rebinding): its Initial and
Handshake packets carry one, a Retry another."""
REFUSED_LINGER = 3.0
"""Seconds a refused flow is remembered, so the rest of its hello (a second datagram,
retransmissions) is dropped, counted, instead of starting a new flow."""
DRAIN_IDLE = 5.0
"""While draining, a flow silent this long is taken as finished (QUIC's close is
encrypted: the edge never sees it)."""


class Flow:
    """One client address's QUIC connection through one listener."""

    __slots__ = (
        "backend",
        "bytes_down",
        "bytes_up",
        "client_addr",
        "client_key",
        "dgrams_down",
        "dgrams_up",
        "dial_held",
        "endpoint",
        "held",
        "held_bytes",
        "hello",
        "host",
        "idle_mark",
        "idle_ticks",
        "initial",
        "listener",
        "outcome",
        "owner",
        "reader",
        "route",
        "routed_at",
        "serial",
        "server_cids",
        "started",
        "state",
        "tally",
        "ticket",
        "tries",
        "unanswered",
        "upstream",
        "validated",
        "version",
    )

    def __init__(self, owner: QuicListener, addr: tuple[str, int], reader: InitialReader) -> None:
        # shared state
        self.owner = owner
        self.listener = owner.listener
        # per-flow state
        self.client_addr: tuple[str, int] | None = addr
        self.state: Phase = SNIFFING
        self.reader: InitialReader | None = reader
        self.initial: QuicHello | None = None
        """The hello and the connection IDs of the client's first Initial, once read."""
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.unanswered: list[bytes] | None = None
        """What went to the endpoint before it answered anything, in order (bounded as
        `held`): replayed to the next endpoint if this one proves dead (ICMP)."""
        self.tries = 0
        """Endpoints dialled so far (failover stops when every one has been tried)."""
        self.upstream: asyncio.DatagramTransport | None = None
        self.validated = False
        self.server_cids: list[bytes] = []
        self.version = 0
        self.host: str | None = None
        self.hello: ClientHello | None = None
        self.route = ""
        self.backend: Backend | None = None
        self.endpoint: Endpoint | None = None
        self.tally: BackendTally | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.dgrams_up = 0
        self.dgrams_down = 0
        self.idle_mark = -1
        self.idle_ticks = 0
        self.outcome = ""
        self.started = time.monotonic()
        self.routed_at = 0.0
        self.serial = next(owner.plane.serials)
        # what this flow holds of its limits (sniffer.proxy.admission)
        self.ticket: Ticket | None = None
        self.dial_held = False
        self.client_key: tuple[str, str] | None = None

    def hold(self, data: bytes) -> None:
        """Keep a datagram that came before the flow could be relayed (bounded)."""
        if len(self.held) >= MAX_HELD_DATAGRAMS or self.held_bytes + len(data) > MAX_HELD_BYTES:
            self.owner.drop("held_overflow")
            return
        self.held.append(data)
        self.held_bytes += len(data)

    @property
    def ltally(self) -> ListenerTally:
        return self.owner.tally

    def keep(self, data: bytes) -> None:
        """Keep a datagram sent to an endpoint that has not answered yet (bounded: past
        the bound a failover replays the first ones; the client retransmits the rest)."""
        kept = self.unanswered
        assert kept is not None
        if len(kept) < MAX_HELD_DATAGRAMS and self.held_bytes + len(data) <= MAX_HELD_BYTES:
            kept.append(data)
            self.held_bytes += len(data)

    def close(self, outcome: str) -> None:
        """End the flow: give back its limits, count it, log it. Idempotent."""
        if self.state is CLOSED:
            return
        was_relaying = self.routed_at > 0.0  # counted active (a failover dials again)
        self.state = CLOSED
        if not self.outcome:
            self.outcome = outcome
        owner = self.owner
        owner.forget(self)
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        if self.ticket is not None:
            owner.plane.admission.release(self)
        self.held = []
        self.unanswered = None
        self.reader = None
        now = time.monotonic()
        tally = self.tally
        if was_relaying and tally is not None:
            tally.active -= 1
            tally.up += self.bytes_up
            tally.down += self.bytes_down
            tally.dgrams_up += self.dgrams_up
            tally.dgrams_down += self.dgrams_down
            tally.durations.observe(now - self.routed_at)
        access_log = owner.plane.access_log
        if access_log is not None:
            access_log(self.log_line(now))

    def log_line(self, now: float) -> str:
        """The access-log line: the TCP line's fields, `protocol` and datagram counts."""
        hello = self.hello
        backend = self.backend
        client = self.client_addr
        alpn = list(hello.alpn[:8]) if hello is not None else []
        line = {
            "id": f"{self.owner.plane.id_prefix}{self.serial:x}",
            "protocol": "quic",
            "client": join_host_port(client[0], client[1]) if client else None,
            "listener": self.listener.name,
            "sni": self.host,
            "route": self.route or None,
            "backend": backend.name if backend else None,
            "tenant": backend.tenant if backend else None,
            "endpoint": self.endpoint.text if self.endpoint else None,
            "bytes_in": self.bytes_up,
            "bytes_out": self.bytes_down,
            "datagrams_in": self.dgrams_up,
            "datagrams_out": self.dgrams_down,
            "duration": round(now - self.started, 6),
            "outcome": self.outcome,
            "alpn": alpn,
            "ja4": ja4_quic(hello) if hello is not None else None,
            "ech": bool(hello is not None and hello.has_ech),
            "quic_version": f"{self.version:#010x}" if self.version else None,
        }
        return json.dumps(line, separators=(",", ":")) + "\n"


class Upstream(asyncio.DatagramProtocol):
    """The flow's connected socket towards its endpoint: the server's datagrams."""

    __slots__ = ("flow", "transport")

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flow = self.flow
        if flow.state is not RELAYING:
            return
        owner = flow.owner
        if not flow.validated:
            if flow.bytes_down + len(data) > AMPLIFICATION * flow.bytes_up:
                owner.drop("amplification_limit")
                return
            if flow.unanswered is not None:  # the endpoint is alive: no failover now
                flow.unanswered = None
                flow.held_bytes = 0
            if data[0] & 0x80:
                owner.learn_server_cid(flow, data)
        flow.bytes_down += len(data)
        flow.dgrams_down += 1
        transport = owner.transport
        if transport is not None:
            transport.sendto(data, flow.client_addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: nothing listens on the endpoint (yet).
        flow = self.flow
        if flow.upstream is not self.transport or flow.state is not RELAYING:
            return  # a late error of a socket the flow has left
        refused = isinstance(exc, ConnectionRefusedError)
        if flow.tally is not None:
            count(flow.tally.errors, "refused" if refused else "error")
        if refused and flow.unanswered is not None:
            flow.owner.fail_over(flow)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class QuicListener(asyncio.DatagramProtocol):
    """One `quic` listener: its UDP socket, its flows, and the connection IDs that find
    a flow again after NAT rebinding."""

    def __init__(self, plane: DataPlane, listener: Listener, tally: ListenerTally) -> None:
        load_crypto()  # now, not on the first datagram (a process without QUIC never does)
        # shared server state
        self.plane = plane
        self.listener = listener
        self.tally = tally
        self.settings = plane.settings
        # per-listener state
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], Flow] = {}
        self.by_cid: dict[bytes, Flow] = {}
        self.cid_lengths: tuple[int, ...] = ()
        """Lengths of the server CIDs known: a short header does not say its DCID's."""
        self.closing: dict[tuple[str, int], float] = {}
        """Refused client addresses -> until when their datagrams are dropped."""

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about a datagram we sent a client: nothing to do

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flow = self.flows.get(addr)
        if flow is not None:
            flow.bytes_up += len(data)
            flow.dgrams_up += 1
            if flow.state is RELAYING:
                if not flow.validated and data:
                    self._check_validated(flow, data)
                    if flow.unanswered is not None:
                        flow.keep(data)
                upstream = flow.upstream
                assert upstream is not None
                upstream.sendto(data)
            elif flow.state is SNIFFING:
                self._sniff(flow, data)
            else:  # DIALING: the socket is being made
                flow.hold(data)
            return
        if self.closing and addr in self.closing:
            self.drop("refused_flow")
            return
        if data and self.by_cid:
            moved = self._rebound(data, addr)
            if moved is not None:
                self.datagram_received(data, addr)
                return
        self._new_flow(data, addr)

    # -- new flows -----------------------------------------------------------------------

    def _new_flow(self, data: bytes, addr: tuple[str, int]) -> None:
        plane = self.plane
        if plane.draining:
            self.drop("draining")
            return
        now = time.monotonic()
        reader = InitialReader(self.settings.max_hello_bytes, now + self.settings.hello_timeout)
        try:
            result = reader.feed(data, now)
        except HelloRejected as exc:
            if reader.started:  # a readable Initial with a bad hello: answer it
                self.tally.accepted += 1
                self._answer(reader, addr, exc.reason, exc.alert)
                self.tally.refuse(exc.reason)
            else:
                self.drop(exc.reason)
            return
        except WireError as exc:
            self.drop(exc.reason)
            if exc.reason == "unsupported_version" and self.transport is not None:
                answer = version_negotiation(data, os.urandom(1)[0])
                if answer is not None:
                    self.transport.sendto(answer, addr)
            return
        if plane.open_count() >= plane.max_connections:
            self.tally.refuse("overloaded")
            return
        self.tally.accepted += 1
        flow = Flow(self, addr, reader)
        flow.bytes_up = len(data)
        flow.dgrams_up = 1
        flow.version = reader.version
        self.flows[addr] = flow
        plane.flow_opened()
        if result is NEED_DATA:
            flow.hold(data)
            return
        flow.held.append(data)
        flow.held_bytes = len(data)
        assert isinstance(result, QuicHello)
        self._route(flow, result)

    def _sniff(self, flow: Flow, data: bytes) -> None:
        reader = flow.reader
        assert reader is not None
        try:
            result = reader.feed(data, time.monotonic())
        except HelloRejected as exc:
            self._refuse(flow, exc.reason, exc.alert)
            return
        except WireError as exc:
            # This datagram only; the flow goes on. Not relayed either: what the edge
            # cannot read with the Initial keys, the server cannot either.
            self.drop(exc.reason)
            return
        flow.hold(data)
        if result is not NEED_DATA:
            assert isinstance(result, QuicHello)
            self._route(flow, result)

    def hello_timed_out(self, flow: Flow) -> None:
        if flow.state is SNIFFING:
            self._refuse(flow, "hello_timeout", None)

    # -- routing -------------------------------------------------------------------------

    def _route(self, flow: Flow, got: QuicHello) -> None:
        plane = self.plane
        hello = got.hello
        flow.reader = None
        flow.initial = got
        flow.hello = hello
        flow.host = hello.sni
        flow.version = got.version
        self.tally.sniff_times.observe(time.monotonic() - flow.started)
        table = plane.table
        name = self.listener.name
        deny = table.denied_ja4 and table.deny_ja4(name)
        if deny and ja4_quic(hello) in deny:
            self._refuse(flow, "ja4_denied", ALERT_HANDSHAKE_FAILURE, got)
            return
        match = table.lookup(name, flow.host, hello.alpn)
        if match.kind is MatchKind.NONE:
            reason = "unknown_name" if flow.host else "no_name"
            self._refuse(flow, reason, ALERT_UNRECOGNIZED_NAME, got)
            return
        flow.route = match.route.host if match.route is not None else "(default)"
        chosen = _choose(match.backends)
        backend = table.backends.get(chosen.backend) if chosen is not None else None
        if backend is None:
            self._refuse(flow, "no_backend", ALERT_INTERNAL_ERROR, got)
            return
        flow.backend = backend
        if hello.has_ech:
            self.tally.count_ech(backend.tenant)
        tally = plane.stats.backend((backend.name, backend.tenant))
        if not backend.endpoints:
            count(tally.errors, "no_endpoints")
            self._refuse(flow, "no_endpoints", ALERT_INTERNAL_ERROR, got)
            return
        refusal = plane.admission.admit(flow, backend)
        if refusal is not None:
            count(tally.limited, refusal[1])
            self._refuse(flow, refusal[0], ALERT_INTERNAL_ERROR, got)
            return
        flow.tally = tally
        flow.state = DIALING
        eps = backend.endpoints
        ep = eps[plane.next_index(backend.name, len(eps))]
        flow.tries = 1
        plane.loop.create_task(self._connect(flow, ep))

    def fail_over(self, flow: Flow) -> None:
        """The endpoint refused (ICMP port unreachable on the flow's connected socket)
        before answering anything: dial the backend's next endpoint and replay what the
        client sent, in order; with every endpoint tried, refuse the flow."""
        backend, ep, kept = flow.backend, flow.endpoint, flow.unanswered
        assert backend is not None and ep is not None and kept is not None
        if flow.upstream is not None:
            flow.upstream.close()
            flow.upstream = None
        eps = backend.endpoints
        if flow.tries >= len(eps):
            self._refuse(flow, "backend_unavailable", ALERT_INTERNAL_ERROR)
            return
        flow.tries += 1
        i = eps.index(ep) if ep in eps else -1
        flow.held, flow.unanswered = kept, None
        flow.state = DIALING
        self.tally.failovers += 1
        self.plane.loop.create_task(self._connect(flow, eps[(i + 1) % len(eps)]))

    async def _connect(self, flow: Flow, ep: Endpoint) -> None:
        """One connected UDP socket towards `ep`; connecting a UDP socket sends nothing,
        so this cannot hang: an endpoint that is down shows as ICMP errors later."""
        plane = self.plane
        began = time.monotonic()
        family = socket.AF_INET6 if ":" in ep.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((ep.host, ep.port))
            transport, _ = await plane.loop.create_datagram_endpoint(
                lambda: Upstream(flow), sock=sock
            )
        except OSError as exc:
            sock.close()
            assert flow.tally is not None
            count(flow.tally.errors, "error")
            log.warning("UDP socket to %s failed: %s", ep, exc)
            self._refuse(flow, "backend_unavailable", ALERT_INTERNAL_ERROR)
            return
        if flow.state is not DIALING:
            transport.close()
            return
        flow.upstream = transport
        flow.endpoint = ep
        flow.state = RELAYING
        if not flow.routed_at:  # the first endpoint (not a failover)
            flow.routed_at = time.monotonic()
            if flow.dial_held and flow.ticket is not None:
                flow.dial_held = False
                flow.ticket.backend.pending -= 1
            tally = flow.tally
            assert tally is not None
            count(tally.routed, self.listener.name)
            tally.active += 1
            tally.connect_times.observe(flow.routed_at - began)
        held = flow.held
        flow.held = []
        flow.unanswered = held  # kept (same bytes, same bound) until the endpoint answers
        for data in held:
            if not flow.validated:
                self._check_validated(flow, data)
            flow.upstream.sendto(data)

    # -- refusals, drops -----------------------------------------------------------------

    def _refuse(
        self, flow: Flow, reason: str, alert: int | None, got: QuicHello | None = None
    ) -> None:
        """Answer with CONNECTION_CLOSE in a server Initial (when there is an alert and
        the Initial was readable), count the reason, remember the address a while."""
        if flow.state >= CLOSING:
            return
        reader = flow.reader
        addr = flow.client_addr
        assert addr is not None
        self.tally.refuse(reason)
        got = got or flow.initial
        if alert is not None and self.transport is not None:
            if got is not None:
                self._send_close(got.version, got.dcid, got.scid, addr, reason, alert)
            elif reader is not None and reader.started:
                self._send_close(reader.version, reader.dcid, reader.scid, addr, reason, alert)
        flow.outcome = reason
        flow.close(reason)
        self.closing[addr] = time.monotonic() + REFUSED_LINGER

    def _answer(
        self, reader: InitialReader, addr: tuple[str, int], reason: str, alert: int | None
    ) -> None:
        if alert is not None and self.transport is not None:
            self._send_close(reader.version, reader.dcid, reader.scid, addr, reason, alert)
        self.closing[addr] = time.monotonic() + REFUSED_LINGER

    def _send_close(
        self,
        version: int,
        dcid: bytes,
        scid: bytes,
        addr: tuple[str, int],
        reason: str,
        alert: int,
    ) -> None:
        assert self.transport is not None
        self.transport.sendto(
            refusal_datagram(version, dcid, scid, alert, os.urandom(8), reason), addr
        )

    def drop(self, reason: str) -> None:
        """A datagram dropped unrelayed, counted by reason."""
        count(self.tally.dropped, reason)

    # -- validation, connection IDs, rebinding -------------------------------------------

    @staticmethod
    def _check_validated(flow: Flow, data: bytes) -> None:
        """A client Handshake or 1-RTT packet proves it received the server's Initial."""
        first = data[0]
        if not first & 0x80 or packet_type(first, flow.version) == HANDSHAKE:
            flow.validated = True

    def learn_server_cid(self, flow: Flow, data: bytes) -> None:
        cids = long_header_cids(data)
        if cids is None:
            return
        scid = cids[2]
        if not scid or scid in flow.server_cids or len(flow.server_cids) >= MAX_SERVER_CIDS:
            return
        flow.server_cids.append(scid)
        self.by_cid[scid] = flow
        if len(scid) not in self.cid_lengths:
            self.cid_lengths = (*self.cid_lengths, len(scid))

    def _rebound(self, data: bytes, addr: tuple[str, int]) -> Flow | None:
        """The flow a datagram from a new address belongs to, by its DCID, moved there."""
        flow = None
        if data[0] & 0x80:
            cids = long_header_cids(data)
            if cids is not None:
                flow = self.by_cid.get(cids[1])
        else:
            for n in self.cid_lengths:
                flow = self.by_cid.get(data[1 : 1 + n])
                if flow is not None:
                    break
        if flow is None or flow.state is not RELAYING:
            return None
        old = flow.client_addr
        if old is not None:
            self.flows.pop(old, None)
        flow.client_addr = addr
        self.flows[addr] = flow
        self.tally.rebinds += 1
        return flow

    def forget(self, flow: Flow) -> None:
        addr = flow.client_addr
        if addr is not None and self.flows.get(addr) is flow:
            del self.flows[addr]
        for cid in flow.server_cids:
            if self.by_cid.get(cid) is flow:
                del self.by_cid[cid]
        self.plane.flow_closed()

    # -- sweeps and shutdown -------------------------------------------------------------

    def sweep(self, now: float, idle_ticks_needed: int, draining_ticks: int) -> None:
        """Time out slow hellos, forget idle flows and old refusals (called by the plane
        every sweep interval; idle is judged by unchanged datagram counts)."""
        for addr in [a for a, until in self.closing.items() if until <= now]:
            del self.closing[addr]
        needed = (
            min(idle_ticks_needed, draining_ticks) if self.plane.draining else idle_ticks_needed
        )
        for flow in list(self.flows.values()):
            if flow.state is SNIFFING:
                reader = flow.reader
                if reader is not None and now > reader.deadline:
                    self.hello_timed_out(flow)
                continue
            if flow.state is not RELAYING:
                continue
            mark = flow.dgrams_up + flow.dgrams_down
            if mark != flow.idle_mark:
                flow.idle_mark = mark
                flow.idle_ticks = 0
                continue
            flow.idle_ticks += 1
            if flow.idle_ticks >= needed:
                flow.close("drained" if self.plane.draining else "idle_timeout")

    def close_all(self, outcome: str) -> None:
        for flow in list(self.flows.values()):
            flow.close(outcome)
        if self.transport is not None:
            self.transport.close()
