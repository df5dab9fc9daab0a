"""Data-plane tallies as plain ints: what the hot path touches instead of prometheus.

Each process keeps one `DataPlaneStats`; every method is a dict bump or two. Open
connections report their byte counts only when a snapshot is taken, so relaying a
chunk costs an integer add and nothing else. `Snapshot`s are picklable and merge by
addition, which is how worker processes' figures reach the control process's
`/metrics`. This module must not import prometheus_client: workers stay small.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from sniffer.observe.counting import count

# Buckets: connections live from milliseconds (health checks) to hours (websockets).
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, 14400.0)
# Backend dials on a LAN take sub-millisecond to a few ms; the timeout caps at seconds.
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0)
# A hello arrives in one read (microseconds) or dribbles in over a slow link.
SNIFF_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0)
# Timer lateness: a healthy loop is late by well under a millisecond; the goal for
# sniffer's own stalls is 10 ms, and a starved CPU shows up in the tail.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _Hist:
    """A fixed-bucket histogram as plain ints: `observe` is a bisect and two adds."""

    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value


class BackendTally:
    """Everything counted for one (backend, tenant): one dict lookup per connection."""

    __slots__ = (
        "active",
        "connect_times",
        "dgrams_down",
        "dgrams_up",
        "down",
        "durations",
        "errors",
        "key",
        "limited",
        "routed",
        "up",
    )

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.routed: dict[str, int] = {}
        """Connections routed here, by listener."""
        self.active = 0
        self.up = 0
        self.down = 0
        self.dgrams_up = 0
        self.dgrams_down = 0
        """Datagrams relayed (QUIC flows), each way, of flows closed so far."""
        self.errors: dict[str, int] = {}
        self.limited: dict[str, int] = {}
        """Connections refused by a limit, by limit (tenant_max_connections, ...)."""
        self.durations = _Hist(DURATION_BUCKETS)
        self.connect_times = _Hist(CONNECT_BUCKETS)


class ListenerTally:
    __slots__ = (
        "accepted",
        "bound",
        "dropped",
        "ech",
        "failovers",
        "name",
        "protocol",
        "rebinds",
        "refused",
        "sniff_times",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.accepted = 0
        self.refused: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        """QUIC datagrams dropped unrelayed, by reason (not a client Initial, ...)."""
        self.rebinds = 0
        """QUIC flows moved to a new client address by the server's connection ID."""
        self.failovers = 0
        """QUIC flows moved to the next endpoint after an ICMP refusal, before any answer."""
        self.bound = False
        """This process holds the listener's socket (QUIC: worker 0 alone)."""
        self.protocol = ""
        """tls, http or quic: a label of the listener gauges (dashboards select by it)."""
        self.sniff_times = _Hist(SNIFF_BUCKETS)
        self.ech: dict[str, int] = {}
        """Routed hellos carrying an encrypted_client_hello extension, by tenant."""

    def refuse(self, reason: str) -> None:
        count(self.refused, reason)

    def count_ech(self, tenant: str) -> None:
        count(self.ech, tenant)


class Dropping(Protocol):
    """The access log, as far as the stats care."""

    dropped: int


class Counts(Protocol):
    """A relay's live byte counts (`sniffer.proxy.relay.Relay`)."""

    @property
    def bytes_up(self) -> int: ...

    @property
    def bytes_down(self) -> int: ...


class KernelTally(Protocol):
    """What the stats read of the kernel relay engine (`sniffer.proxy.kernel.relay`)."""

    handed: int
    fallbacks: dict[str, int]
    refill: bool

    @property
    def carried(self) -> int: ...


class OpenConnection(Protocol):
    """What the stats need from a connection: its backend's tally, its relay's live
    counts while open, and its final counts once closed."""

    tally: BackendTally | None
    bytes_up: int
    bytes_down: int

    @property
    def relay(self) -> Counts | None: ...

    @property
    def ltally(self) -> ListenerTally: ...


class OpenFlow(Protocol):
    """A live QUIC flow: its tally, its listener's, its byte and datagram counts."""

    tally: BackendTally | None
    bytes_up: int
    bytes_down: int
    dgrams_up: int
    dgrams_down: int

    @property
    def ltally(self) -> ListenerTally: ...


@dataclass(slots=True)
class Snapshot:
    """Picklable totals of one process; counters only grow, gauges are current."""

    counters: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)
    gauges: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)
    hists: dict[tuple[str, tuple[str, ...]], tuple[tuple[float, ...], list[int], float]] = field(
        default_factory=dict
    )


class DataPlaneStats:
    """Per-process tallies of the data plane.

    A connection looks its listener's and its backend's tally objects up once and then
    bumps their attributes directly; nothing here is touched per read.
    """

    def __init__(self, worker: str = "0") -> None:
        self.worker = worker
        """The `worker` label of per-process series (the worker's index)."""
        self.access_log: Dropping | None = None
        self.loop_lag = _Hist(LAG_BUCKETS)
        """Lateness of a periodic timer: how long the event loop was busy elsewhere."""
        self.listeners: dict[str, ListenerTally] = {}
        self.backends: dict[tuple[str, str], BackendTally] = {}
        self.kernel: KernelTally | None = None
        """The kernel relay engine, when the process runs one."""
        self.open: Collection[OpenConnection] = ()
        """The data plane's own set of connections (those not relaying have no tally);
        read only when a snapshot folds in the bytes of connections still open."""
        self.open_flows: Iterable[OpenFlow] = ()
        """The QUIC flows of the data plane, read the same way."""
        self.table_version = -1
        """Version of the route table this data plane has installed."""

    def listener(self, name: str) -> ListenerTally:
        t = self.listeners.get(name)
        if t is None:
            t = self.listeners[name] = ListenerTally(name)
        return t

    def backend(self, key: tuple[str, str]) -> BackendTally:
        t = self.backends.get(key)
        if t is None:
            t = self.backends[key] = BackendTally(key)
        return t

    def prune(self, live: Callable[[tuple[str, str]], bool]) -> None:
        """Forget backends that left the route table (`live((name, tenant))` is false)
        once nothing is open to them. Asks only about the backends this process has
        series for, not every backend of the table (6,000 at 2,000 tenants).

        Tenants come and go for weeks in one process: keeping every series ever seen
        would grow /metrics without bound.
        """
        for key in [k for k, t in self.backends.items() if t.active == 0 and not live(k)]:
            del self.backends[key]

    def opened(self, listener: str, conn: OpenConnection, dial: float) -> None:
        t = conn.tally
        assert t is not None
        t.routed[listener] = t.routed.get(listener, 0) + 1  # count(), inlined: per connection
        t.active += 1
        t.connect_times.observe(dial)

    def closed(self, conn: OpenConnection, seconds: float) -> None:
        t = conn.tally
        if t is None:
            return
        t.up += conn.bytes_up
        t.down += conn.bytes_down
        t.active -= 1
        t.durations.observe(seconds)

    def snapshot(self) -> Snapshot:
        """Copy everything out (picklable), the bytes of open connections added to
        those of closed ones; nothing is written on a connection."""
        live: dict[BackendTally, list[int]] = {}
        per_listener: dict[ListenerTally, int] = {}
        for conn in self.open:
            lt = conn.ltally
            per_listener[lt] = per_listener.get(lt, 0) + 1
            t = conn.tally
            relay = conn.relay
            if t is not None and relay is not None:
                sums = live.get(t)
                if sums is None:
                    sums = live[t] = [0, 0]
                sums[0] += relay.bytes_up
                sums[1] += relay.bytes_down
        live_dgrams: dict[BackendTally, list[int]] = {}
        for flow in self.open_flows:
            lt = flow.ltally
            per_listener[lt] = per_listener.get(lt, 0) + 1
            t = flow.tally
            if t is not None:
                sums = live.get(t)
                if sums is None:
                    sums = live[t] = [0, 0]
                sums[0] += flow.bytes_up
                sums[1] += flow.bytes_down
                sums = live_dgrams.get(t)
                if sums is None:
                    sums = live_dgrams[t] = [0, 0]
                sums[0] += flow.dgrams_up
                sums[1] += flow.dgrams_down
        snap = Snapshot()
        c, g, h = snap.counters, snap.gauges, snap.hists
        add_runtime(snap, self.worker, self.table_version)
        g[("sniffer_open_connections", (self.worker,))] = len(self.open)
        if self.access_log is not None:
            c[("sniffer_access_log_dropped", ())] = self.access_log.dropped
        kernel = self.kernel
        g[("sniffer_kernel_relay_enabled", ())] = 0 if kernel is None else 1
        g[("sniffer_kernel_relay_refill", ())] = 1 if kernel is not None and kernel.refill else 0
        if kernel is not None:
            c[("sniffer_kernel_relay_connections", ())] = kernel.handed
            c[("sniffer_kernel_relay_bytes", ())] = kernel.carried
            for reason, n in kernel.fallbacks.items():
                c[("sniffer_kernel_relay_fallbacks", (reason,))] = n
        if any(self.loop_lag.counts):
            h[("sniffer_event_loop_lag_seconds", (self.worker,))] = _hist_copy(self.loop_lag)
        for lis, lt in self.listeners.items():
            c[("sniffer_accepted_connections", (lis,))] = lt.accepted
            if lt.protocol:  # a listener this process opened or tried to
                g[("sniffer_listener_open", (lis, lt.protocol))] = per_listener.get(lt, 0)
                g[("sniffer_listener_bound", (lis, lt.protocol))] = 1 if lt.bound else 0
            for reason, n in lt.refused.items():
                c[("sniffer_refused_connections", (lis, reason))] = n
            for tenant, n in lt.ech.items():
                c[("sniffer_ech_connections", (lis, tenant))] = n
            for reason, n in lt.dropped.items():
                c[("sniffer_dropped_datagrams", (lis, reason))] = n
            if (
                lt.protocol == "quic" or lt.rebinds or lt.failovers
            ):  # from 0: rate() sees a first one
                c[("sniffer_quic_rebinds", (lis,))] = lt.rebinds
                c[("sniffer_quic_failovers", (lis,))] = lt.failovers
            if lt.sniff_times.total or any(lt.sniff_times.counts):
                h[("sniffer_sniff_duration_seconds", (lis,))] = _hist_copy(lt.sniff_times)
        for key, bt in self.backends.items():
            for lis, n in bt.routed.items():
                c[("sniffer_connections", (lis, *key))] = n
            for reason, n in bt.errors.items():
                c[("sniffer_backend_connect_errors", (*key, reason))] = n
            for limit, n in bt.limited.items():
                c[("sniffer_limited_connections", (*key, limit))] = n
            if not bt.routed:
                continue  # only dial errors so far: no traffic series yet
            g[("sniffer_connections_active", key)] = bt.active
            up, down = live.get(bt, (0, 0))
            c[("sniffer_bytes", (*key, "client_to_backend"))] = bt.up + up
            c[("sniffer_bytes", (*key, "backend_to_client"))] = bt.down + down
            d_up, d_down = live_dgrams.get(bt, (0, 0))
            if bt.dgrams_up or bt.dgrams_down or d_up or d_down:
                c[("sniffer_datagrams", (*key, "client_to_backend"))] = bt.dgrams_up + d_up
                c[("sniffer_datagrams", (*key, "backend_to_client"))] = bt.dgrams_down + d_down
            h[("sniffer_connection_duration_seconds", key)] = _hist_copy(bt.durations)
            h[("sniffer_backend_connect_duration_seconds", key)] = _hist_copy(bt.connect_times)
        return snap


def add_runtime(snap: Snapshot, worker: str, table_version: int) -> None:
    """This process's runtime figures into `snap`, labelled `worker` ("control" for the
    control process): what a leak or a stuck rollout shows in first. A few C calls, no
    walk of the heap (gc.get_objects would cost milliseconds per snapshot), so that the
    once-a-second worker snapshot stays cheap."""
    g, c = snap.gauges, snap.counters
    with contextlib.suppress(RuntimeError):  # no running loop: a snapshot taken outside one
        g[("sniffer_process_asyncio_tasks", (worker,))] = len(asyncio.all_tasks())
    # pymalloc blocks in use: every Python object and buffer, tracked by the GC or not.
    g[("sniffer_process_allocated_blocks", (worker,))] = sys.getallocatedblocks()
    for gen, (pending, st) in enumerate(zip(gc.get_count(), gc.get_stats(), strict=True)):
        labels = (worker, str(gen))
        g[("sniffer_process_gc_objects", labels)] = pending
        c[("sniffer_process_gc_collections", labels)] = st["collections"]
    # Objects moved out of the collector's reach by gc.freeze() (the data plane freezes
    # after each table install): cyclic garbage among them is never freed, so this must
    # not grow with installs. Counting walks that list once (~1 ms per 300k objects).
    g[("sniffer_process_gc_objects", (worker, "permanent"))] = gc.get_freeze_count()
    g[("sniffer_route_table_version", (worker,))] = table_version


def _hist_copy(h: _Hist) -> tuple[tuple[float, ...], list[int], float]:
    return (h.buckets, list(h.counts), h.total)


# Where (backend, tenant) sits in the labels of each per-backend series of a Snapshot.
_BACKEND_AT = {
    "sniffer_connections": 1,  # (listener, backend, tenant)
    "sniffer_backend_connect_errors": 0,  # (backend, tenant, reason)
    "sniffer_limited_connections": 0,  # (backend, tenant, limit)
    "sniffer_connections_active": 0,
    "sniffer_bytes": 0,  # (backend, tenant, direction)
    "sniffer_datagrams": 0,  # (backend, tenant, direction)
    "sniffer_connection_duration_seconds": 0,
    "sniffer_backend_connect_duration_seconds": 0,
}


def backends_in(snap: Snapshot) -> set[tuple[str, str]]:
    """The (backend, tenant) pairs a snapshot has series for."""
    out: set[tuple[str, str]] = set()
    for series in (snap.counters, snap.gauges, snap.hists):
        for name, labels in series:
            at = _BACKEND_AT.get(name)
            if at is not None:
                out.add((labels[at], labels[at + 1]))
    return out


def without_backends(snap: Snapshot, gone: set[tuple[str, str]]) -> Snapshot:
    """`snap` less every series of the (backend, tenant) pairs in `gone`."""

    def keep(key: tuple[str, tuple[str, ...]]) -> bool:
        at = _BACKEND_AT.get(key[0])
        return at is None or (key[1][at], key[1][at + 1]) not in gone

    return Snapshot(
        {k: v for k, v in snap.counters.items() if keep(k)},
        {k: v for k, v in snap.gauges.items() if keep(k)},
        {k: v for k, v in snap.hists.items() if keep(k)},
    )


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    out = Snapshot()
    for snap in snapshots:
        for k, v in snap.counters.items():
            out.counters[k] = out.counters.get(k, 0) + v
        for k, v in snap.gauges.items():
            out.gauges[k] = out.gauges.get(k, 0) + v
        for k, (buckets, counts, total) in snap.hists.items():
            held = out.hists.get(k)
            if held is None:
                out.hists[k] = (buckets, list(counts), total)
            else:
                merged = [a + b for a, b in zip(held[1], counts, strict=True)]
                out.hists[k] = (buckets, merged, held[2] + total)
    return out
