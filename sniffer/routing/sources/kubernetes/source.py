"""The Kubernetes route source: informers in, debounced incremental `TableSpec`s out.

This module owns the source's life cycle: discovery (which TLSRoute version the cluster
serves), one informer per kind (one watch set per process), the dirty-namespace
bookkeeping (an event dirties its namespace and the namespaces that read it; a Namespace
object dirties the namespace it describes; other cluster-wide kinds dirty all), the
debouncer (quiet period, maximum delay), the per-namespace result cache that makes a
rebuild touch only what changed, publishing, handing the status writer each result with
the namespaces re-translated since (and status-only changes, which need no rebuild),
health, and the one-shot `compute_spec`.
It must never build a `RouteTable` for the data plane, touch the controller's metrics
(rebuilds, lag), or drop its last view because the API went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from typing import Any

from sniffer.routing.model import Conflict
from sniffer.routing.sources import Publish, Update
from sniffer.routing.sources.kubernetes.api import ApiError, Backoff, KubeApi, Unauthorized
from sniffer.routing.sources.kubernetes.informer import Informer
from sniffer.routing.sources.kubernetes.kinds import (
    GATEWAY,
    GATEWAY_CLASS,
    INGRESS_CLASS,
    NAMESPACE,
    TLS_ROUTE,
    Kind,
)
from sniffer.routing.sources.kubernetes.leader import LeaderElector
from sniffer.routing.sources.kubernetes.limits import report_limit_problems
from sniffer.routing.sources.kubernetes.outcomes import NamespaceResult
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.sources.kubernetes.status import StatusWriter
from sniffer.routing.sources.kubernetes.translate import (
    AssemblyMemo,
    assemble,
    keep_unchanged,
    translate_namespace,
)
from sniffer.routing.sources.kubernetes.view import ClusterView
from sniffer.routing.sources.kubernetes.watches import Watches, discover
from sniffer.routing.table import Listener, TableSpec

log = logging.getLogger("sniffer.kubernetes")

# Kinds whose change can affect any namespace's routes: they dirty everything (rare).
_GLOBAL_KINDS = frozenset({INGRESS_CLASS.name, GATEWAY_CLASS.name, GATEWAY.name})


def _settle_heap() -> None:
    """After the initial list: give the kernel back the pages it freed, and take the
    caches out of the garbage collector's full scans.

    Decoding the list's pages allocates and frees hundreds of MB in passing; glibc keeps
    the freed pages in the process (a few MiB at 2,000 tenants, of a 64 MiB budget)
    unless asked (where malloc is not glibc's, nothing happens). The caches themselves
    are ~140,000 tracked objects at 2,000 tenants, which every full collection walked:
    150 ms with the event loop held, every few route changes under churn, which was the
    tail of the route update lag. `gc.freeze()` moves what is alive now (after a
    collection) out of the collector's reach; a cached object replaced later is still
    freed by its reference count (the records hold no cycles). `run` unfreezes when the
    source stops."""
    import ctypes

    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class Debouncer:
    """Coalesces pokes: fires after `quiet` s without one, or `max_delay` s after the first."""

    def __init__(self, quiet: float, max_delay: float, burst: int = 50) -> None:
        self.quiet = quiet
        self.max_delay = max_delay
        self.burst = burst
        self._count = 0
        self._first: float | None = None
        self._last = 0.0
        self._poked = asyncio.Event()

    def poke(self, at: float) -> None:
        if self._first is None or at < self._first:
            self._first = at
        self._last = max(self._last, at)
        self._count += 1
        self._poked.set()

    async def wait(self) -> float:
        """Wait for a poke, then for the burst to settle; return the oldest poke's time."""
        await self._poked.wait()
        while True:
            assert self._first is not None
            if self._count < self.burst:
                # A trickle: one quiet period after the first event is enough.
                deadline = self._first + self.quiet
            else:
                # A burst: wait for it to settle, but never past the maximum delay.
                deadline = min(self._last + self.quiet, self._first + self.max_delay)
            delay = deadline - time.monotonic()
            if delay <= 0:
                break
            # A timer, not a stand-in for synchronisation: the quiet period is the point.
            await asyncio.sleep(delay)
        first, self._first = self._first, None
        self._count = 0
        self._poked.clear()
        return first


class KubernetesSource:
    """Routes from Ingresses and TLSRoutes of sniffer's classes (see the package docs)."""

    name = "kubernetes"

    def __init__(
        self,
        settings: KubernetesSettings,
        listeners: tuple[Listener, ...],
        *,
        api: KubeApi | None = None,
    ) -> None:
        # configuration
        self.settings = settings
        self.listeners = listeners
        self._api = api
        # informers and the view over them
        self._informers: dict[str, list[Informer[Any]]] = {}
        self._versions: dict[str, str | None] = {}
        self._discovery_problems: list[str] = []
        self.view = ClusterView()
        # incremental rebuild state
        self._results: dict[str, NamespaceResult] = {}
        self._readers: dict[str, set[str]] = {}
        self._dirty: set[str] = set()
        self._all_dirty = True
        self._status_dirty: set[str] = set()
        """Namespaces re-translated since the status writer last got a result."""
        self._status_all_dirty = True
        self._assembly = AssemblyMemo()
        self._debouncer = Debouncer(
            settings.debounce_quiet, settings.debounce_max_delay, settings.debounce_burst
        )
        self._status: StatusWriter | None = None
        self.elector: LeaderElector | None = None
        # what tests, benchmarks and /readyz look at
        self._synced = False
        self.spec = TableSpec(listeners=listeners)
        self._conflicts: tuple[Conflict, ...] = ()
        """The conflicts of the table the controller built from `spec` (for status)."""
        self.publishes = 0
        self.rebuilds = 0
        self.namespaces_translated = 0
        self.changed = asyncio.Event()
        """Set on every publish and informer state change (tests and benchmarks wait on it)."""
        self._phase = "starting"
        self._last_error: str | None = None
        self._collector_paused = False
        """The garbage collector is paused for the initial list (see `_run`)."""

    # -- RouteSource ----------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced

    def health(self) -> dict[str, object]:
        kinds: dict[str, object] = {}
        up = True
        for name, infs in self._informers.items():
            detail = [inf.health() for inf in infs]
            kinds[name] = detail[0] if len(detail) == 1 else {"namespaces": detail}
            up = up and all(inf.up for inf in infs)
        out: dict[str, object] = {
            "synced": self._synced,
            "phase": self._phase,
            "api_up": up and bool(self._informers),
            "kinds": kinds,
            "versions": dict(self._versions),
            "namespaces_with_routes": len(self._results),
            "routes": len(self.spec.routes),
            "publishes": self.publishes,
            "problems": len(self.problems()),
            "last_error": self._last_error,
        }
        if self._discovery_problems:
            out["discovery"] = list(self._discovery_problems)
        if self._status is not None:
            out["status_writes"] = self._status.health()
        if self.elector is not None:
            out["leader_election"] = self.elector.health()
        return out

    def problems(self) -> list[str]:
        out = list(self._discovery_problems)
        for infs in self._informers.values():
            for inf in infs:
                out.extend(inf.problems.values())
        for ns in sorted(self._results):
            out.extend(self._results[ns].problems)
        return out

    async def run(self, publish: Publish) -> None:
        api = self._api or await KubeApi.connect(self.settings)
        own_api = self._api is None
        try:
            await self._run(api, publish)
        finally:
            gc.unfreeze()
            if own_api:
                await api.close()

    async def _run(self, api: KubeApi, publish: Publish) -> None:
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        self._phase = "discovery"
        while True:
            try:
                self._versions, self._discovery_problems = await discover(api)
                break
            except ApiError as exc:
                self._last_error = f"discovery: {exc}"
                log.warning("API discovery failed: %s; retrying", exc)
                await api.back_off(backoff)
        for p in self._discovery_problems:
            log.warning("%s", p)
        watches = Watches(
            api,
            self.settings,
            self._versions,
            self._on_change,
            self._state_changed,
            self._on_status,
        )
        self._informers, self.view = watches.by_kind, watches.view
        async with asyncio.TaskGroup() as tg:
            for inf in watches.all():
                tg.create_task(inf.run(), name=f"informer-{inf.kind.name}")
            if self.settings.write_status and self._versions.get(TLS_ROUTE.name):
                self._start_status(api, tg)
            self._phase = "initial-list"
            # The first list makes hundreds of thousands of records and no garbage cycle:
            # the collector would only walk the growing cache again and again (a tenth of
            # the sync). Paused until synced, or until an informer backs off (a retry
            # loop may make cycles, and an outage may last); `_settle_heap`
            # collects once at the end.
            self._collector_paused = gc.isenabled()
            gc.disable()
            try:
                for inf in watches.all():
                    await inf.synced.wait()
            finally:
                self._resume_collector()
            self._phase = "watching"
            self._all_dirty = True
            self._rebuild()
            self._publish(publish, None)
            self._synced = True
            _settle_heap()
            log.info(
                "kubernetes: synced %d routes from %d namespaces",
                len(self.spec.routes),
                len(self._results),
            )
            while True:
                oldest = await self._debouncer.wait()
                if self._rebuild():
                    self._publish(publish, oldest)

    def _start_status(self, api: KubeApi, tg: asyncio.TaskGroup) -> None:
        """The status writer, gated by the status Lease when a lease namespace is set."""
        versions = {k: v for k, v in self._versions.items() if v is not None}
        settings = self.settings
        if settings.lease_namespace is None:
            log.info("status: no lease namespace (POD_NAMESPACE): writing without election")
            self._status = StatusWriter(api, settings, versions, self.listeners)
            tg.create_task(self._status.run(), name="status-writer")
            return
        elector = LeaderElector(
            api,
            settings,
            settings.lease_namespace,
            settings.identity or socket.gethostname(),
            lambda leading: writer.leadership(leading),
        )
        writer = StatusWriter(api, settings, versions, self.listeners, lambda: elector.is_leader)
        self.elector, self._status = elector, writer
        tg.create_task(writer.run(), name="status-writer")
        tg.create_task(elector.run(), name="leader-election")

    # -- incremental rebuild -------------------------------------------------------------

    def _on_change(self, kind: Kind, namespace: str, at: float) -> None:
        if kind.name in _GLOBAL_KINDS:
            self._all_dirty = True
        else:
            self._dirty.add(namespace)
            readers = self._readers.get(namespace)
            if readers:
                self._dirty.update(readers)
        self._debouncer.poke(at)

    def _on_status(self, kind: Kind, namespace: str) -> None:
        """Only an object's status or generation changed: routing is the same, so no
        rebuild; the status writer plans its namespace again (restoring what another
        controller wiped, confirming our own write)."""
        if self._status is not None:
            self._status.touch(kind, namespace)

    def _rebuild(self) -> bool:
        """Re-translate dirty namespaces; True when the routing view changed."""
        self.rebuilds += 1
        targets = self.view.namespaces() | set(self._results) if self._all_dirty else self._dirty
        if self._all_dirty:
            self._status_all_dirty = True
        else:
            self._status_dirty.update(targets)
        self._all_dirty = False
        self._dirty = set()
        changed = False
        for ns in targets:
            new = translate_namespace(self.view, self.settings, self.listeners, ns)
            self.namespaces_translated += 1
            old = self._results.get(ns)
            old_deps = old.deps if old is not None else frozenset()
            for dep in old_deps - new.deps:
                readers = self._readers.get(dep)
                if readers is not None:
                    readers.discard(ns)
                    if not readers:
                        del self._readers[dep]
            for dep in new.deps - old_deps:
                self._readers.setdefault(dep, set()).add(ns)
            report_limit_problems(new.problems, old.problems if old is not None else ())
            empty = not (
                new.routes
                or new.backends
                or new.defaults
                or new.problems
                or new.route_status
                or new.attachments
            )
            if empty:
                if old is not None:
                    del self._results[ns]
                    changed = True
                continue
            if old is not None:
                new = keep_unchanged(new, old)
            self._results[ns] = new
            if old is None or not new.same_routing(old):
                changed = True
        if not changed and targets:
            # No new table, but a re-translated namespace's objects changed (a TLSRoute's
            # generation, a parent this controller does not serve): its status may have.
            self._submit_status()
        return changed

    def _publish(self, publish: Publish, oldest: float | None) -> None:
        self.spec = assemble(self.listeners, self._results, self._assembly)
        self._conflicts = publish(Update(self.spec, oldest_event=oldest)) or ()
        self.publishes += 1
        self._submit_status()
        self.changed.set()

    def _state_changed(self) -> None:
        if self._collector_paused and any(
            inf.state == "backoff" for infs in self._informers.values() for inf in infs
        ):
            self._resume_collector()
        self.changed.set()

    def _resume_collector(self) -> None:
        if self._collector_paused:
            self._collector_paused = False
            gc.enable()

    def _submit_status(self) -> None:
        dirty = None if self._status_all_dirty else frozenset(self._status_dirty)
        self._status_dirty = set()
        self._status_all_dirty = False
        if self._status is not None:
            self._status.submit(self.view, dict(self._results), self._conflicts, dirty)

    async def status_idle(self) -> None:
        """Wait until every wished-for status has been written (for tests)."""
        if self._status is not None:
            await self._status.idle.wait()


async def compute_spec(
    settings: KubernetesSettings, listeners: tuple[Listener, ...], *, api: KubeApi | None = None
) -> tuple[TableSpec, list[str]]:
    """List everything once (no watch) and return the spec it implies plus problems."""
    own = api is None
    client = api or await KubeApi.connect(settings)
    try:
        versions, problems = await discover(client)
        watches = Watches(client, settings, versions, lambda k, ns, t: None)
        for inf in watches.all():
            try:
                await inf.list_all("oneshot")
            except Unauthorized as exc:
                if inf.kind is not NAMESPACE:
                    raise
                # A user allowed to read only some namespaces still gets their table;
                # only `from: Selector` listeners need the Namespace objects.
                problems.append(f"Namespaces not readable ({exc}): Selector admits none")
            problems.extend(inf.problems.values())
        view = watches.view
        results: dict[str, NamespaceResult] = {}
        for ns in sorted(view.namespaces()):
            res = translate_namespace(view, settings, listeners, ns)
            results[ns] = res
            problems.extend(res.problems)
        return assemble(listeners, results), problems
    finally:
        if own:
            await client.close()
