"""The route controller: merge every source's latest spec into one live `RouteTable`.

Sources publish already-debounced specs; the controller compiles the table, hands it
to its subscribers (the in-process data plane, the worker supervisor) and answers the
publishing source with the table's conflicts (reported on its objects). It owns the
table-level metrics. It never does network I/O of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sniffer.observe import metrics
from sniffer.routing.diff import changes
from sniffer.routing.model import Conflict
from sniffer.routing.sources import Publish, RouteSource, Update
from sniffer.routing.table import (
    NO_LIMIT_DEFAULTS,
    LimitDefaults,
    RouteTable,
    TableSpec,
    routed_backends,
)

log = logging.getLogger("sniffer.routes")

Subscriber = Callable[[RouteTable], None]


class RouteController:
    def __init__(
        self, sources: Sequence[RouteSource], limits: LimitDefaults = NO_LIMIT_DEFAULTS
    ) -> None:
        self.sources = tuple(sources)
        self.limits = limits
        """Limit defaults under whatever the sources set (from `serve` flags)."""
        self.table = RouteTable.empty()
        self._specs: dict[str, TableSpec] = {}
        self._subscribers: list[Subscriber] = []
        self._version = 0

    @property
    def ready(self) -> bool:
        return all(s.synced for s in self.sources)

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)
        fn(self.table)

    def endpoint_counts(self) -> list[tuple[str, str, int]]:
        """(backend, tenant, ready endpoints) of every routed backend, for /metrics."""
        return [(b.name, b.tenant, len(b.endpoints)) for b in routed_backends(self.table)]

    def health(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "table_version": self.table.version,
            "sources": {s.name: s.health() for s in self.sources},
        }

    def _publisher(self, source: RouteSource) -> Publish:
        def publish(update: Update) -> tuple[Conflict, ...]:
            self._specs[source.name] = update.spec
            return self._rebuild(update.oldest_event).conflicts

        return publish

    def _rebuild(self, oldest_event: float | None) -> RouteTable:
        started = time.perf_counter()
        spec = TableSpec()
        for src in self.sources:
            part = self._specs.get(src.name)
            if part is not None:
                spec = spec.merged(part)
        spec = _reusing(spec.merged(TableSpec(limits=self.limits)), self.table)
        self._version += 1
        table = RouteTable.build(spec, version=self._version, previous=self.table)
        metrics.REBUILD_SECONDS.observe(time.perf_counter() - started)
        metrics.REBUILDS.inc()
        previous, self.table = self.table, table
        for fn in self._subscribers:
            fn(table)
        if oldest_event is not None:
            metrics.UPDATE_LAG.observe(max(0.0, time.monotonic() - oldest_event))
        self._export(table)
        before = set(previous.conflicts)
        for c in table.conflicts:
            if c in before:
                continue  # said when it appeared; a rebuild must not repeat every conflict
            log.warning(
                "route conflict on %s (listener %s): %s wins over %s",
                c.host,
                c.listener,
                c.winner,
                c.loser,
            )
        return table

    def _export(self, table: RouteTable) -> None:
        metrics.ROUTES.set(len(table.routes))
        metrics.BACKENDS.set(len(table.backends))
        metrics.CONFLICTS.set(len(table.conflicts))
        metrics.LAST_RELOAD.set(table.built_at)

    async def run(self) -> None:
        """Run every source until cancelled; a source that crashes is logged and restarted."""
        async with asyncio.TaskGroup() as tg:
            for src in self.sources:
                tg.create_task(self._run_source(src))

    async def _run_source(self, src: RouteSource) -> None:
        publish = self._publisher(src)
        delay = 1.0
        while True:
            try:
                await src.run(publish)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("route source %s failed; restarting in %.0fs", src.name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


def _reusing(spec: TableSpec, previous: RouteTable) -> TableSpec:
    """`spec` with every backend and route equal to one of `previous` replaced by that
    very object. A source that re-reads everything (the routes file) then changes only
    what changed: the workers receive a delta of references (see
    `RouteTable.delta_from`) instead of every route again, which at 10,000 routes was a
    730 KB frame whose unpickling held a worker's event loop for over 10 ms.

    Objects `previous` holds already (a Kubernetes rebuild reuses every namespace it did
    not re-translate) are recognised by identity; only the others are compared by value,
    against the objects of `previous` the spec no longer holds: hashing all 10,000 routes
    on every rebuild was a third of a rebuild's time."""
    if not previous.routes and not previous.backends:
        return spec
    return dataclasses.replace(
        spec,
        backends=_same_objects(spec.backends, tuple(previous.backends.values())),
        routes=_same_objects(spec.routes, previous.routes),
    )


_T = TypeVar("_T")


def _same_objects(new: tuple[_T, ...], old: tuple[_T, ...]) -> tuple[_T, ...]:
    """`new` with each item equal to an item of `old` replaced by that item of `old`.

    Only the items that are not `old`'s (see `diff.changes`) are hashed, and only a
    replacement walks `new`."""
    gone, came = changes(old, new)
    if not gone or not came:
        return new
    by_value = {x: x for x in gone}
    swaps = {id(x): y for x in came if (y := by_value.get(x)) is not None}
    if not swaps:
        return new
    return tuple(swaps.get(id(x), x) for x in new)
