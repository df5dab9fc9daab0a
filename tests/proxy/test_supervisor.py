"""The supervisor's bookkeeping of dead workers' series (no processes needed)."""

from __future__ import annotations

from sniffer.observe.stats import DataPlaneStats, Snapshot, backends_in, merge
from sniffer.proxy.supervisor import Supervisor
from sniffer.routing.table import Backend, Endpoint, Listener, RouteTable, TableSpec


def snapshot_of(*keys: tuple[str, str]) -> Snapshot:
    stats = DataPlaneStats()
    for key in keys:
        tally = stats.backend(key)
        tally.routed["tls"] = 3
        tally.up = 100
    return stats.snapshot()


def table(version: int, *names: str) -> RouteTable:
    spec = TableSpec(
        (Listener("tls", "127.0.0.1", 8443, "tls"),),
        tuple(Backend(n, f"t-{n}", (Endpoint("127.0.0.1", 9000),)) for n in names),
    )
    return RouteTable.build(spec, version)


def test_a_dead_workers_series_go_with_their_backend_once_no_live_worker_has_them() -> None:
    sup = Supervisor(2, {})
    dead, live = sup.workers
    dead.snapshot = snapshot_of(("a", "t-a"), ("b", "t-b"))
    sup._retire(dead)  # what happens when a worker process dies
    live.snapshot = snapshot_of(("b", "t-b"))  # still relaying a connection to b

    sup.install(table(2, "a"))  # b leaves the table
    total = merge(sup.snapshots())
    assert backends_in(total) == {("a", "t-a"), ("b", "t-b")}  # b's open connection counts
    assert total.counters[("sniffer_connections", ("tls", "b", "t-b"))] == 6

    live.snapshot = snapshot_of()  # that connection closed; the live worker forgot b
    sup.install(table(3, "a"))
    total = merge(sup.snapshots())
    assert backends_in(total) == {("a", "t-a")}  # no series of b left behind
    assert total.counters[("sniffer_connections", ("tls", "a", "t-a"))] == 3  # a's kept
