"""Data-plane tallies as plain ints: what the hot path touches instead of prometheus.

Each process keeps one `DataPlaneStats`; every method is a dict bump or two. Open
connections report their byte counts only when a snapshot is taken, so relaying a
chunk costs an integer add and nothing else. `Snapshot`s are picklable and merge by
addition, which is how worker processes' figures reach the control process's
`/metrics`. This module must not import prometheus_client: workers stay small.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

# Buckets: connections live from milliseconds (health checks) to hours (websockets).
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, 14400.0)
# Backend dials on a LAN take sub-millisecond to a few ms; the timeout caps at seconds.
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0)
# A hello arrives in one read (microseconds) or dribbles in over a slow link.
SNIFF_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0)

class _Hist:
    """A fixed-bucket histogram as plain ints: `observe` is a bisect and two adds."""

    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value


class OpenConnection(Protocol):
    """What the stats need from a live connection to report its bytes while open."""

    stats_key: tuple[str, str] | None
    bytes_up: int
    bytes_down: int
    reported_up: int
    reported_down: int


@dataclass(slots=True)
class Snapshot:
    """Picklable totals of one process; counters only grow, gauges are current."""

    counters: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)
    gauges: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)
    hists: dict[tuple[str, tuple[str, ...]], tuple[tuple[float, ...], list[int], float]] = field(
        default_factory=dict
    )


class DataPlaneStats:
    """Per-process tallies of the data plane; every method is O(1) and allocation-light."""

    def __init__(self) -> None:
        self.accepted: dict[str, int] = {}
        self.refused: dict[tuple[str, str], int] = {}
        self.routed: dict[tuple[str, str, str], int] = {}
        self.active: dict[tuple[str, str], int] = {}
        self.bytes_up: dict[tuple[str, str], int] = {}
        self.bytes_down: dict[tuple[str, str], int] = {}
        self.connect_errors: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str], _Hist] = {}
        self.connect_times: dict[tuple[str, str], _Hist] = {}
        self.sniff_times: dict[str, _Hist] = {}
        self.open: set[OpenConnection] = set()

    def accept(self, listener: str) -> None:
        self.accepted[listener] = self.accepted.get(listener, 0) + 1

    def refuse(self, listener: str, reason: str) -> None:
        key = (listener, reason)
        self.refused[key] = self.refused.get(key, 0) + 1

    def sniffed(self, listener: str, seconds: float) -> None:
        h = self.sniff_times.get(listener)
        if h is None:
            h = self.sniff_times[listener] = _Hist(SNIFF_BUCKETS)
        h.observe(seconds)

    def connect_failed(self, key: tuple[str, str], reason: str) -> None:
        k = (key[0], key[1], reason)
        self.connect_errors[k] = self.connect_errors.get(k, 0) + 1

    def opened(
        self, listener: str, key: tuple[str, str], conn: OpenConnection, dial: float
    ) -> None:
        rk = (listener, key[0], key[1])
        self.routed[rk] = self.routed.get(rk, 0) + 1
        self.active[key] = self.active.get(key, 0) + 1
        h = self.connect_times.get(key)
        if h is None:
            h = self.connect_times[key] = _Hist(CONNECT_BUCKETS)
        h.observe(dial)
        self.open.add(conn)

    def closed(self, conn: OpenConnection, seconds: float) -> None:
        key = conn.stats_key
        if key is None:
            return
        self.open.discard(conn)
        self._fold_bytes(conn)
        self.active[key] -= 1
        h = self.durations.get(key)
        if h is None:
            h = self.durations[key] = _Hist(DURATION_BUCKETS)
        h.observe(seconds)

    def _fold_bytes(self, conn: OpenConnection) -> None:
        key = conn.stats_key
        assert key is not None
        up = conn.bytes_up - conn.reported_up
        down = conn.bytes_down - conn.reported_down
        if up:
            self.bytes_up[key] = self.bytes_up.get(key, 0) + up
            conn.reported_up = conn.bytes_up
        if down:
            self.bytes_down[key] = self.bytes_down.get(key, 0) + down
            conn.reported_down = conn.bytes_down

    def snapshot(self) -> Snapshot:
        """Fold open connections' bytes in, then copy everything out (picklable)."""
        for conn in self.open:
            self._fold_bytes(conn)
        snap = Snapshot()
        c, g, h = snap.counters, snap.gauges, snap.hists
        for lis, n in self.accepted.items():
            c[("sniffer_accepted_connections", (lis,))] = n
        for (lis, reason), n in self.refused.items():
            c[("sniffer_refused_connections", (lis, reason))] = n
        for labels, n in self.routed.items():
            c[("sniffer_connections", labels)] = n
        for key, n in self.active.items():
            g[("sniffer_connections_active", key)] = n
        for key, n in self.bytes_up.items():
            c[("sniffer_bytes", (*key, "client_to_backend"))] = n
        for key, n in self.bytes_down.items():
            c[("sniffer_bytes", (*key, "backend_to_client"))] = n
        for labels, n in self.connect_errors.items():
            c[("sniffer_backend_connect_errors", labels)] = n
        for key, hist in self.durations.items():
            h[("sniffer_connection_duration_seconds", key)] = _hist_copy(hist)
        for key, hist in self.connect_times.items():
            h[("sniffer_backend_connect_duration_seconds", key)] = _hist_copy(hist)
        for lis, hist in self.sniff_times.items():
            h[("sniffer_sniff_duration_seconds", (lis,))] = _hist_copy(hist)
        return snap


def _hist_copy(h: _Hist) -> tuple[tuple[float, ...], list[int], float]:
    return (h.buckets, list(h.counts), h.total)


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
