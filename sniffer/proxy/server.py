"""The data plane of one process: listening sockets, live connections, table swaps, drain.

`DataPlane` holds the shared server state every `ClientConnection` sees (settings, the
current `RouteTable`, stats, the set of open connections). Installing a new table is a
reference swap plus opening/closing listeners whose set changed: connections already
open keep the backend they were given. It never reads route sources itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import resource
import secrets
import socket
import time
import weakref
from collections.abc import Callable, Iterator
from typing import NamedTuple

from sniffer.observe.accesslog import AccessLog as BufferedAccessLog
from sniffer.observe.accesslog import AccessRecord, forget_names
from sniffer.observe.stats import DataPlaneStats
from sniffer.proxy.admission import Admission
from sniffer.proxy.connection import ClientConnection, sniff_limits
from sniffer.proxy.kernel.relay import KernelRelay, Unavailable
from sniffer.proxy.phases import DIALING, RELAYING, SNIFFING
from sniffer.proxy.quic import DRAIN_IDLE, Flow, QuicListener
from sniffer.proxy.relay import RelayEngine
from sniffer.proxy.relay.kernel import KernelEngine
from sniffer.proxy.relay.userspace import USERSPACE
from sniffer.proxy.settings import ProxySettings
from sniffer.routing.table import Listener, RouteTable, join_host_port

log = logging.getLogger("sniffer.proxy")

__all__ = ["DataPlane", "ListenerKey", "ProxySettings", "connection_limit"]


LAG_INTERVAL = 0.05
"""Seconds between event-loop lag samples: often enough to see a 10 ms stall."""

QUIC_SOCKET_BUFFER = 4 << 20
"""Bytes of socket buffer asked for on a quic listener (capped by the kernel)."""

FD_RESERVE_MIN = 64
"""Descriptors kept back from the data plane (admin endpoint, log pipe, the control
socket, a thread's files) so health checks keep answering at saturation."""


def open_kernel_relay(mode: str, capacity: int) -> KernelRelay | None:
    """The process's kernel relay for `--kernel-relay mode`, or None.

    `auto` says in one log line why it runs the user-space relay instead; `on` raises
    `Unavailable` (the caller refuses to start).
    """
    if mode == "off":
        return None
    try:
        relay = KernelRelay(capacity=capacity)
    except Unavailable as exc:
        if mode == "on":
            raise
        log.warning("kernel relay unavailable (%s): %s; relaying in user space", exc.reason, exc)
        return None
    log.info("kernel relay on: pairs are handed to the kernel after routing; %s", relay.verdict)
    return relay


def connection_limit(nofile: int | None = None) -> int:
    """Client connections one process can hold: each routed one takes two descriptors
    (client and backend), after a reserve of 1/16 of the limit, at least 64."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            nofile = 1 << 20
    reserve = max(FD_RESERVE_MIN, nofile // 16)
    return max(1, (nofile - reserve) // 2)


AccessLog = Callable[[AccessRecord | str], None]
"""Takes a TCP connection's record or a QUIC flow's own line (`sniffer.observe.accesslog`)."""


DEFER_ACCEPT_SECONDS = 1
"""TCP_DEFER_ACCEPT on the data-plane listeners: the kernel hands a connection over with
its first bytes (a TLS or HTTP client, or a load balancer's PROXY header, speaks first),
so accepting and reading the hello take one wake-up, not two, and a client that connects
and says nothing costs no descriptor. One second, the least the kernel takes: a silent
client is accepted after it anyway, and the hello timeout runs from there."""


def _defer_accept(sock: socket.socket) -> None:
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is not None:  # Linux; elsewhere every connection is accepted at once
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, DEFER_ACCEPT_SECONDS)


class _NoTransportRegistry(weakref.WeakValueDictionary[int, object]):
    """uvloop's registry of live transports by descriptor, made to keep nothing."""

    def __setitem__(self, key: int, value: object) -> None:
        pass


def drop_transport_registry(loop: asyncio.AbstractEventLoop) -> bool:
    """Stop uvloop from registering every transport it makes; True if it was found.

    uvloop keeps each transport in a `WeakValueDictionary` by descriptor for one check
    only: `add_reader` and the `sock_*` calls refuse a descriptor a live transport owns.
    Each entry costs a `KeyedRef` built in Python and a Python callback when the
    transport dies: ~5.6k instructions per transport, two transports per connection,
    the largest single item of a connection's work outside sniffer's own code
    (`benchmarks/callgrind_conn.py`). sniffer never passes a transport's own descriptor
    to those calls (the kernel relay watches duplicates it owns), so the check guards
    nothing here; the registry is switched to a subclass that stores nothing. The loop
    holds it in a C field, found through the collector's view of the loop.
    """
    if not type(loop).__module__.startswith("uvloop"):
        return False
    held = gc.get_referents(loop)
    if any(type(obj) is _NoTransportRegistry for obj in held):
        return True  # a second plane on the same loop
    found = [obj for obj in held if type(obj) is weakref.WeakValueDictionary]
    if len(found) != 1:  # not the uvloop this was written for (0.19-0.23): leave it be
        return False
    found[0].clear()  # (what it held was a weak view: nothing else refers to it)
    found[0].__class__ = _NoTransportRegistry
    return True


class ListenerKey(NamedTuple):
    """What makes a listening socket: a table changing any of it reopens the listener."""

    name: str
    host: str
    port: int
    protocol: str
    proxy_protocol_in: bool

    @classmethod
    def of(cls, lis: Listener) -> ListenerKey:
        return cls(lis.name, lis.host, lis.port, lis.protocol, lis.proxy_protocol_in)


class DataPlane:
    def __init__(
        self,
        settings: ProxySettings,
        access_log: AccessLog | None = None,
        stats: DataPlaneStats | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        # settings
        self.settings = settings
        self.access_log = access_log
        self.relay_engine: RelayEngine = USERSPACE
        """Moves the bytes of every routed pair (`sniffer.proxy.relay`): picked once."""
        self.max_connections = settings.max_connections or connection_limit()
        """At this many open client connections new ones are closed at accept."""
        # shared server state
        self.loop = asyncio.get_running_loop()
        drop_transport_registry(self.loop)
        self.table = RouteTable.empty()
        self.stats = stats if stats is not None else DataPlaneStats()
        if isinstance(access_log, BufferedAccessLog):
            self.stats.access_log = access_log
        self.connections: set[ClientConnection] = set()
        self.stats.open = self.connections  # one registry of open connections, not two
        self.sniffing: set[ClientConnection] = set()
        """Connections waiting for their hello: the sweep's hello-timeout candidates."""
        self.dialing: set[ClientConnection] = set()
        """Connections with a dial attempt in flight: the connect-timeout candidates."""
        self.admission = Admission(*share)
        self.quic_here = share[0] == 0
        """QUIC listeners are bound by worker 0 alone (see `_listen_quic`)."""
        """Per-tenant/backend/client counts and buckets; `share` = (worker, workers)."""
        self.id_prefix = f"{secrets.token_hex(8)}-"
        """Random per process start: connection ids (this and a serial) stay unique
        across the pod's workers and restarts with nothing shared or stored."""
        self.serials = itertools.count(1)
        self.draining = False
        self.drained = asyncio.Event()
        """Set when draining and the last connection has closed."""
        self._rr: dict[str, int] = {}
        self._servers: dict[ListenerKey, asyncio.Server] = {}
        self._quic: dict[ListenerKey, QuicListener] = {}
        self._flow_sweeper: asyncio.Task[None] | None = None
        self.flow_total = 0
        """Open QUIC flows of every quic listener (each holds a descriptor)."""
        self.stats.open_flows = _Flows(self._quic)
        self._sweepers: list[asyncio.Task[None]] = []
        self._lag_timer: asyncio.TimerHandle | None = None
        self.listen_errors: dict[str, str] = {}
        self.installed_version = -1
        """Version of the table whose listeners are open (readiness waits for it)."""
        self.kernel = open_kernel_relay(settings.kernel_relay, min(self.max_connections, 16384))
        """The kernel relay (None: every pair is relayed in user space)."""
        if self.kernel is not None:
            self.relay_engine = KernelEngine(
                self.kernel, self.loop, settings.kernel_relay_after, self.connections
            )
        self.stats.kernel = self.kernel

    # -- routing state -----------------------------------------------------------------

    def next_index(self, backend: str, n: int) -> int:
        """Round-robin start for a backend's endpoints (state outside the immutable table)."""
        i = self._rr.get(backend, -1) + 1
        if i >= n:
            i = 0
        self._rr[backend] = i
        return i

    async def install(self, table: RouteTable) -> None:
        """Swap in a new table; open listeners it adds and close those it drops."""
        self.table = table
        self.admission.install(table)
        self.stats.prune(table.has_backend)
        forget_names()
        if len(self._rr) > len(table.backends):  # round-robin places of gone backends
            self._rr = {name: i for name, i in self._rr.items() if name in table.backends}
        if self.draining:
            return
        wanted = {ListenerKey.of(lis): lis for lis in table.listeners}
        for key in list(self._servers):
            if key not in wanted:
                server = self._servers.pop(key)
                server.close()
                self.stats.listener(key.name).bound = False
                log.info("closed listener %s on %s", key.name, join_host_port(key.host, key.port))
        for key in list(self._quic):
            if key not in wanted:
                self._quic.pop(key).close_all("listener_closed")
                self.stats.listener(key.name).bound = False
                log.info("closed listener %s on %s", key.name, join_host_port(key.host, key.port))
        for key, lis in wanted.items():
            if key in self._servers or key in self._quic:
                continue
            if lis.protocol == "quic" and not self.quic_here:
                continue
            try:
                if lis.protocol == "quic":
                    self._quic[key] = await self._listen_quic(lis)
                else:
                    self._servers[key] = await self._listen(lis)
                self.listen_errors.pop(lis.name, None)
                self._mark(lis, bound=True)
                log.info("listening: %s %s on %s", lis.name, lis.protocol, lis.address)
            except OSError as exc:
                self.listen_errors[lis.name] = f"{lis.address}: {exc.strerror or exc}"
                self._mark(lis, bound=False)
                log.error("cannot listen for %s on %s: %s", lis.name, lis.address, exc)
        # The table (tens of thousands of objects at 10,000 routes) and everything else
        # alive now move out of the collector's reach: a full collection walking them
        # took 35-80 ms, every connection of this process waiting meanwhile. Tables hold
        # no reference cycles (reference counting frees a replaced one), and connections
        # break their own cycles when they close, so little is left for the collector.
        gc.freeze()
        if not self._sweepers:
            self._sweepers = [
                self.loop.create_task(self._sweep_idle()),
                self.loop.create_task(self._sweep_deadlines()),
            ]
            self._lag_tick(self.loop.time() + LAG_INTERVAL)
        if self._quic and self._flow_sweeper is None:  # only with QUIC listeners
            self._flow_sweeper = self.loop.create_task(self._sweep_flows())
            self._sweepers.append(self._flow_sweeper)
        self.installed_version = self.stats.table_version = table.version

    def _mark(self, lis: Listener, *, bound: bool) -> None:
        """What the listener gauges (and /healthz) say of `lis` in this process."""
        tally = self.stats.listener(lis.name)
        tally.protocol = lis.protocol
        tally.bound = bound

    async def _listen(self, lis: Listener) -> asyncio.Server:
        family = socket.AF_INET6 if ":" in lis.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.settings.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and lis.host in ("::", ""):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            _defer_accept(sock)
            sock.bind((lis.host, lis.port))
            sock.listen(4096)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        tally = self.stats.listener(lis.name)
        limits = sniff_limits(lis, self.settings)
        return await self.loop.create_server(
            lambda: ClientConnection(self, lis, tally, limits), sock=sock, backlog=4096
        )

    async def _listen_quic(self, lis: Listener) -> QuicListener:
        """A `quic` listener's UDP socket, bound by one process (worker 0) and without
        SO_REUSEPORT: with a socket per worker the kernel would pick one by a hash of the
        4-tuple, and a client whose NAT mapping changed would land, (N-1) times in N, on
        a worker that does not know its connection ID. The server's connection IDs are
        its own choice, so nothing outside the flow table could steer by them; one
        socket keeps every flow where its table is, at the price of QUIC relaying on
        one core (README: HTTP/3, Workers)."""
        family = socket.AF_INET6 if ":" in lis.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6 and lis.host in ("::", ""):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            # Every flow's client datagrams queue on this one socket: ask for a deep
            # queue (the kernel caps it at net.core.rmem_max) so bursts are not lost.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, QUIC_SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, QUIC_SOCKET_BUFFER)
            sock.bind((lis.host, lis.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        tally = self.stats.listener(lis.name)
        _, protocol = await self.loop.create_datagram_endpoint(
            lambda: QuicListener(self, lis, tally), sock=sock
        )
        return protocol

    def open_count(self) -> int:
        """Client connections and QUIC flows open: what `max_connections` bounds."""
        return len(self.connections) + self.flow_total

    def flow_opened(self) -> None:
        self.flow_total += 1

    def flow_closed(self) -> None:
        self.flow_total -= 1
        if self.draining and not self.flow_total and not self.connections:
            self.drained.set()

    def bound_ports(self) -> dict[str, int]:
        """Listener name -> the port actually bound (useful with port 0 in tests)."""
        out: dict[str, int] = {}
        for key, server in self._servers.items():
            for s in server.sockets:
                out[key.name] = s.getsockname()[1]
        for key, quic in self._quic.items():
            if quic.transport is not None:
                out[key.name] = quic.transport.get_extra_info("sockname")[1]
        return out

    # -- timeouts and shutdown ---------------------------------------------------------

    async def _sweep_idle(self) -> None:
        """Close relayed connections with no traffic for idle_timeout.

        A sweep compares each connection's byte count with the previous sweep's, so
        the hot path pays nothing for idle tracking; precision is one sweep interval.
        """
        timeout = self.settings.idle_timeout
        interval = min(max(timeout / 8, 0.05), 30.0)
        ticks_needed = max(1, round(timeout / interval))
        idle_ticks: dict[ClientConnection, int] = {}
        while True:
            await asyncio.sleep(interval)
            for conn in list(self.connections):
                relay = conn.relay
                if conn.state is not RELAYING or relay is None:
                    continue
                mark = relay.bytes_up + relay.bytes_down
                if mark != conn.idle_mark:
                    conn.idle_mark = mark
                    idle_ticks.pop(conn, None)
                    continue
                n = idle_ticks.get(conn, 0) + 1
                if n >= ticks_needed:
                    idle_ticks.pop(conn, None)
                    conn.close_for("idle_timeout")
                else:
                    idle_ticks[conn] = n
            for conn in [c for c in idle_ticks if c.state > RELAYING]:
                del idle_ticks[conn]

    async def _sweep_deadlines(self) -> None:
        """Time out clients slow with their hello and dial attempts slow to connect.

        One periodic pass over the two small sets of connections in those phases
        replaces a timer armed and cancelled per connection (and per dial attempt).
        """
        hello_timeout = self.settings.hello_timeout
        connect_timeout = self.settings.connect_timeout
        interval = min(max(min(hello_timeout, connect_timeout) / 8, 0.01), 1.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if self.sniffing:
                limit = now - hello_timeout
                for conn in [c for c in self.sniffing if c.started <= limit]:
                    conn.hello_timed_out()
            if self.dialing:
                limit = now - connect_timeout
                late = [c for c in self.dialing if c.state is DIALING and c.dial_began <= limit]
                for conn in late:
                    conn.dial_timed_out_now()

    async def _sweep_flows(self) -> None:
        """QUIC flows: hello deadlines, idle timeout (by unchanged datagram counts, so
        the relay path reads no clock), refused addresses forgotten."""
        s = self.settings
        interval = min(max(min(s.hello_timeout, s.quic_idle_timeout) / 8, 0.05), 1.0)
        idle_ticks = max(1, round(s.quic_idle_timeout / interval))
        drain_ticks = max(1, round(DRAIN_IDLE / interval))
        while True:
            await asyncio.sleep(interval)
            if self._quic:
                now = time.monotonic()
                for quic in list(self._quic.values()):
                    quic.sweep(now, idle_ticks, drain_ticks)

    def _lag_tick(self, due: float) -> None:
        """Time how late a periodic timer fires: whatever held the loop (a long callback,
        a table install, a garbage collection, a starved CPU) delayed every connection
        of this process by as much. Exported as sniffer_event_loop_lag_seconds. A bare
        timer callback, not a task: it runs 20 times a second for the process's life."""
        now = self.loop.time()
        self.stats.loop_lag.observe(now - due if now > due else 0.0)
        self._lag_timer = self.loop.call_at(now + LAG_INTERVAL, self._lag_tick, now + LAG_INTERVAL)

    def stop_accepting(self) -> None:
        self.draining = True
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        # Clients that have not been routed yet would otherwise wait out the grace.
        for conn in list(self.connections):
            if conn.state is SNIFFING:
                conn.close_for("draining")
        # QUIC sockets stay open: a flow's client datagrams arrive on them. New flows are
        # dropped (`draining`); flows silent for DRAIN_IDLE are taken as finished.
        for quic in self._quic.values():
            for flow in list(quic.flows.values()):
                if flow.state is SNIFFING:
                    flow.close("draining")

    async def drain(self, grace: float | None = None) -> int:
        """Stop accepting, wait for open connections up to `grace`, then drop the rest.

        Returns how many connections had to be dropped.
        """
        self.stop_accepting()
        grace = self.settings.drain_grace if grace is None else grace
        if self.connections or self.flow_total:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    while self.connections or self.flow_total:
                        self.drained.clear()
                        await self.drained.wait()
        dropped = len(self.connections) + self.flow_total
        for conn in list(self.connections):
            conn.close_for("drain_timeout")
        for quic in self._quic.values():
            quic.close_all("drain_timeout")
        self._quic.clear()
        for task in self._sweepers:
            task.cancel()
        if self._lag_timer is not None:
            self._lag_timer.cancel()
        if self.kernel is not None:
            if isinstance(self.relay_engine, KernelEngine):
                self.relay_engine.close()
            self.kernel.close()
            self.kernel = None
        return dropped


class _Flows:
    """Every open QUIC flow of a plane, for the stats' snapshot (read at scrape time)."""

    __slots__ = ("_quic",)

    def __init__(self, quic: dict[ListenerKey, QuicListener]) -> None:
        self._quic = quic

    def __iter__(self) -> Iterator[Flow]:
        for quic in list(self._quic.values()):
            yield from list(quic.flows.values())
