"""Status written back to the Gateway API objects sniffer serves, off the hot path.

This module owns the task that writes the status of TLSRoutes (one entry per parent
Gateway of sniffer's class with `Accepted` and `ResolvedRefs`, shaped in `desired`; the
hostnames lost come from the conflicts of the table the controller built, never from a
table of its own), Gateways (listener status with attached routes) and sniffer's
GatewayClass, following the API conventions: a round first plans its writes from the
informers' caches without awaiting (so no live cache is iterated across an `await`),
then writes only what differs
from the object (compared by signature, ignoring timestamps, against the informer's copy
and again against a fresh read), keeps each condition's `lastTransitionTime` unless its
`status` changes, sets `observedGeneration` from the object's generation, and patches
with the read's resourceVersion as a precondition (409: read again and retry; 429/5xx:
back off), so other controllers' parent entries survive. A failed round is retried after
a backoff. Only the holder of the status Lease writes (`may_write`).

A round plans the TLSRoutes of the namespaces that can have changed since the last
round that planned them (the source's re-translated ones, those whose objects' status
or generation changed under us, those whose lost hostnames changed, those with a write
whose echo never came within the write memory) and every Gateway and the GatewayClass
(few); a failed round, an exception or a leadership change plans everything again. What
it plans equals what a plan of everything would. It must never block or delay a table
publish, and never write anything but the status subresource.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sniffer.observe import metrics
from sniffer.routing import model
from sniffer.routing.sources.kubernetes.api import (
    ApiError,
    ApiUnavailable,
    Backoff,
    Conflict,
    KubeApi,
    NotFound,
)
from sniffer.routing.sources.kubernetes.desired import (
    condition_json,
    desired_gateway_status,
    desired_route_parents,
    hostnames_lost,
    keep_transition_times,
    now_stamp,
)
from sniffer.routing.sources.kubernetes.gateway import gateway_is_ours
from sniffer.routing.sources.kubernetes.kinds import GATEWAY, GATEWAY_CLASS, TLS_ROUTE, Kind
from sniffer.routing.sources.kubernetes.outcomes import Condition, NamespaceResult
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.sources.kubernetes.signatures import (
    conditions_sig,
    gateway_status_sig,
    parent_ref_key,
    route_parents_sig,
)
from sniffer.routing.sources.kubernetes.view import ClusterView
from sniffer.routing.table import Listener

log = logging.getLogger("sniffer.kubernetes.status")

# A write we made shows up as a watch event shortly after; until then the cache still
# holds the old status, and this long we trust our own write instead of repeating it.
_WRITE_MEMORY_SECONDS = 30.0

Key = tuple[str, str, str]
"""(kind, namespace, name)."""

Latest = tuple[ClusterView, Mapping[str, NamespaceResult], Sequence[model.Conflict]]
"""The newest view, per-namespace results and the conflicts of the table built from them."""

Lost = dict[str, list[tuple[str, str]]]
"""Loser source ("TLSRoute ns/name") -> [(host, winner source)], see `hostnames_lost`."""

AttachKey = tuple[str, str, str]
"""(gateway namespace, gateway name, listener name)."""

_ROUTE_SOURCE = "TLSRoute "


def _loser_namespaces(before: Lost, after: Lost) -> set[str]:
    """Namespaces of the TLSRoutes whose lost hostnames (or their winners) differ."""
    out: set[str] = set()
    for source in before.keys() | after.keys():
        if before.get(source) != after.get(source) and source.startswith(_ROUTE_SOURCE):
            out.add(source[len(_ROUTE_SOURCE) :].split("/", 1)[0])
    return out


def _entries(status: object, key: str) -> list[Any]:
    value = status.get(key) if isinstance(status, Mapping) else None
    return value if isinstance(value, list) else []


@dataclass(slots=True)
class PlannedWrite:
    """One object whose wished-for status differs from its informer copy."""

    kind: Kind
    namespace: str
    name: str
    sig: int
    desired: dict[str, Any]
    """TLSRoute: {"parents": our entries}; Gateway, GatewayClass: the whole status."""

    @property
    def key(self) -> Key:
        return (self.kind.name, self.namespace, self.name)


class StatusWriter:
    """Computes wished-for status after each rebuild and writes differences in the background."""

    def __init__(
        self,
        api: KubeApi,
        settings: KubernetesSettings,
        versions: Mapping[str, str],
        listeners: tuple[Listener, ...],
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self._api = api
        self._settings = settings
        self._versions = versions
        self._listeners = listeners
        self._may_write = may_write
        self._wake = asyncio.Event()
        self._latest: Latest | None = None
        self._pending = False
        self._written: dict[Key, tuple[int, float]] = {}
        """Writes not yet seen echoed in the cache: key -> (signature, when), oldest first."""
        # what the next round plans: TLSRoutes of these namespaces (or of all)
        self._dirty: set[str] = set()
        self._all_dirty = True
        # what the last planned round used, to plan the next one from the difference
        self._lost: Lost = {}
        self._attached: dict[AttachKey, int] = {}
        self._attached_of: dict[str, Mapping[AttachKey, int]] = {}
        """Namespace -> the attachments of its result counted in `_attached`."""
        self._counters: dict[tuple[str, str], Any] = {}
        self.writes = 0
        self.failures = 0
        self.rounds_failed = 0
        self.last_error: str | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    def submit(
        self,
        view: ClusterView,
        results: Mapping[str, NamespaceResult],
        conflicts: Sequence[model.Conflict],
        dirty: Collection[str] | None = None,
    ) -> None:
        """Remember the newest view and the conflicts of the table the controller built
        from it, and the namespaces re-translated since the last submit (None: all);
        cheap, called on the publish path."""
        self._latest = (view, results, conflicts)
        if dirty is None:
            self._all_dirty, self._dirty = True, set()
        elif not self._all_dirty:  # (a standby, planning nothing, keeps no growing set)
            self._dirty.update(dirty)
        self._pending = True
        self.idle.clear()
        self._wake.set()

    def touch(self, kind: Kind, namespace: str) -> None:
        """An object's status or generation changed in the cache (our write's echo, another
        controller's edit): plan it again (Gateways and the GatewayClass always are)."""
        if kind is TLS_ROUTE and not self._all_dirty:
            self._dirty.add(namespace)
        if self._latest is not None:
            self._pending = True
            self.idle.clear()
            self._wake.set()

    def leadership(self, leading: bool) -> None:
        """The Lease was won (write what differs, trusting no earlier memory) or lost."""
        self._written.clear()
        self._all_dirty, self._dirty = True, set()
        if leading and self._latest is not None:
            self._pending = True
            self.idle.clear()
        self._wake.set()

    def unwritten(self) -> list[PlannedWrite]:
        """What a plan of everything, trusting no memory of writes, calls for against the
        newest view: empty once every status it calls for is written and seen in the
        caches (tests check incremental rounds by it)."""
        if self._latest is None:
            return []
        scratch = StatusWriter(self._api, self._settings, self._versions, self._listeners)
        return scratch.plan(*self._latest)

    def health(self) -> dict[str, object]:
        return {
            "writes": self.writes,
            "failures": self.failures,
            "rounds_failed": self.rounds_failed,
            "pending": self._pending,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        backoff = Backoff(self._settings.backoff_initial, self._settings.backoff_max)
        while True:
            try:
                async with asyncio.timeout(self._until_forgotten()):
                    await self._wake.wait()
            except TimeoutError:
                self._forget_expired()
            self._wake.clear()
            if not self._pending or self._latest is None or not self._may_write():
                self.idle.set()  # nothing to do here: a standby writes nothing
                continue
            self._pending = False
            dirty, self._dirty = (None if self._all_dirty else self._dirty), set()
            self._all_dirty = False
            try:
                ok = await self._round(*self._latest, dirty)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a status bug must never stop routing
                self.last_error = repr(exc)
                log.exception("status round failed")
                ok = False
            if ok:
                backoff.reset()
                if not self._pending:
                    self.last_error = None
                    self.idle.set()
                continue
            # Retry the round (with the newest view by then, planning everything: nothing
            # it planned is lost) after a backoff that ends early when the API server
            # answers again after an outage.
            self._all_dirty = True
            self.rounds_failed += 1
            self._pending = True
            await self._api.back_off(backoff)
            self._wake.set()

    def _until_forgotten(self) -> float | None:
        """Seconds until the oldest remembered write expires (None: none is held)."""
        for _, at in self._written.values():  # oldest first
            return max(0.0, at + _WRITE_MEMORY_SECONDS - time.monotonic())
        return None

    def _forget_expired(self) -> None:
        """Writes whose echo never came (another write raced ours, a watch missed it):
        forget them and plan their objects again, so that a needed write is not lost."""
        now = time.monotonic()
        while self._written:
            key, (_, at) = next(iter(self._written.items()))
            if now - at < _WRITE_MEMORY_SECONDS:
                break
            del self._written[key]
            if key[0] == TLS_ROUTE.name:
                self._dirty.add(key[1])
            if self._latest is not None:
                self._pending = True
                self.idle.clear()
                self._wake.set()

    def _fresh(self, key: Key, sig: int, current: int) -> bool:
        """True when the object already carries (or we just wrote) this signature."""
        if sig == current:
            self._written.pop(key, None)
            return True
        held = self._written.get(key)
        return (
            held is not None
            and held[0] == sig
            and time.monotonic() - held[1] < _WRITE_MEMORY_SECONDS
        )

    def plan(
        self,
        view: ClusterView,
        results: Mapping[str, NamespaceResult],
        conflicts: Sequence[model.Conflict],
        dirty: Collection[str] | None = None,
    ) -> list[PlannedWrite]:
        """Every write the view calls for, looking at the TLSRoutes of the `dirty`
        namespaces only (None: of all), which must include every namespace whose result
        changed since the last plan; synchronous, so the caches cannot change under it."""
        controller = self._settings.controller_name
        stamp = now_stamp()
        lost = hostnames_lost(conflicts)
        namespaces: Collection[str]
        if dirty is None:
            namespaces = view.namespaces()
            self._count_attached(results, None)
        else:
            namespaces = set(dirty) | _loser_namespaces(self._lost, lost)
            self._count_attached(results, namespaces)
        self._lost = lost
        attached = self._attached
        out: list[PlannedWrite] = []

        def want(kind: Kind, ns: str, name: str, sig: int, current: int, body: Any) -> None:
            if not self._fresh((kind.name, ns, name), sig, current):
                out.append(PlannedWrite(kind, ns, name, sig, body))

        # GatewayClass: accept ours.
        gc = view.gateway_classes().get(self._settings.gateway_class)
        if gc is not None and gc.controller == controller:
            conds = [
                condition_json(
                    Condition("Accepted", True, "Accepted", "Handled by sniffer"),
                    gc.generation,
                    stamp,
                )
            ]
            body = {"conditions": conds}
            want(GATEWAY_CLASS, "", gc.name, conditions_sig(conds), gc.status_sig, body)

        # Gateways of our class.
        for gw in view.all_gateways():
            if not gateway_is_ours(view, self._settings, gw):
                continue
            status = desired_gateway_status(
                view, self._listeners, gw.namespace, gw.name, attached, stamp
            )
            if status is not None:
                sig = gateway_status_sig(status)
                want(GATEWAY, gw.namespace, gw.name, sig, gw.status_sig, status)

        # TLSRoutes: every route in the cache, so parents we no longer serve are cleared.
        for ns in sorted(namespaces):
            ns_res = results.get(ns)
            for rt in list(view.tls_routes(ns).values()):
                outcomes = ns_res.route_status.get(rt.name, ()) if ns_res is not None else ()
                entries = desired_route_parents(
                    outcomes,
                    lost.get(f"TLSRoute {ns}/{rt.name}", []),
                    controller,
                    rt.generation,
                    stamp,
                )
                sig = route_parents_sig(entries, controller)
                want(TLS_ROUTE, ns, rt.name, sig, rt.status_sig, {"parents": entries})
        return out

    def _count_attached(
        self, results: Mapping[str, NamespaceResult], namespaces: Collection[str] | None
    ) -> None:
        """Routes attached per Gateway listener, summed anew (None) or updated for the
        results of `namespaces` only (the others are the ones counted before)."""
        if namespaces is None:
            self._attached, self._attached_of = {}, {}
            namespaces = results.keys()
        attached, counted = self._attached, self._attached_of
        for ns in namespaces:
            res = results.get(ns)
            now: Mapping[AttachKey, int] = res.attachments if res is not None else {}
            was = counted.get(ns)
            if was is now:
                continue
            for k, n in (was or {}).items():
                left = attached[k] - n
                if left:
                    attached[k] = left
                else:
                    del attached[k]
            for k, n in now.items():
                attached[k] = attached.get(k, 0) + n
            if now:
                counted[ns] = now
            else:
                counted.pop(ns, None)

    async def _round(
        self,
        view: ClusterView,
        results: Mapping[str, NamespaceResult],
        conflicts: Sequence[model.Conflict],
        dirty: Collection[str] | None = None,
    ) -> bool:
        """Plan, then write; True when every planned write landed (or was not needed)."""
        ok = True
        for w in self.plan(view, results, conflicts, dirty):
            if not self._may_write():
                # Leadership lost: the new leader writes from its own view; should this
                # process lead again, it plans everything.
                self._all_dirty = True
                return True
            ok = await self._write(w) and ok
        return ok

    def _path(self, kind: Kind, ns: str | None, name: str) -> str:
        return kind.path(self._versions[kind.name], ns, name)

    def _count(self, kind: Kind, result: str) -> None:
        counter = self._counters.get((kind.name, result))
        if counter is None:
            counter = self._counters[(kind.name, result)] = metrics.STATUS_WRITES.labels(
                kind.name, result
            )
        counter.inc()

    def _body(self, w: PlannedWrite, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """The status to patch onto the fresh `obj`, or None when it already holds it."""
        controller = self._settings.controller_name
        status = obj.get("status")
        status = status if isinstance(status, Mapping) else {}
        if w.kind is TLS_ROUTE:
            parents = _entries(status, "parents")
            if route_parents_sig(parents, controller) == w.sig:
                return None
            ours = {
                parent_ref_key(p.get("parentRef") or {}): p
                for p in parents
                if isinstance(p, Mapping) and p.get("controllerName") == controller
            }
            entries: list[dict[str, Any]] = copy.deepcopy(w.desired["parents"])
            for e in entries:
                prev = ours.get(parent_ref_key(e["parentRef"]))
                if prev is not None:
                    keep_transition_times(e["conditions"], prev.get("conditions"))
            others = [
                p
                for p in parents
                if isinstance(p, Mapping) and p.get("controllerName") != controller
            ]
            return {"parents": others + entries}
        if w.kind is GATEWAY:
            if gateway_status_sig(status) == w.sig:
                return None
            body = copy.deepcopy(w.desired)
            keep_transition_times(body["conditions"], status.get("conditions"))
            held = {
                lis.get("name"): lis
                for lis in _entries(status, "listeners")
                if isinstance(lis, Mapping)
            }
            for lis in body["listeners"]:
                prev = held.get(lis["name"])
                if prev is not None:
                    keep_transition_times(lis["conditions"], prev.get("conditions"))
            return body
        if conditions_sig(_entries(status, "conditions")) == w.sig:
            return None
        body = copy.deepcopy(w.desired)
        keep_transition_times(body["conditions"], status.get("conditions"))
        return body

    async def _write(self, w: PlannedWrite) -> bool:
        """Read, compare, patch with the read's resourceVersion; retry conflicts and
        server-side errors up to `status_retry_limit` times. True when done or moot."""
        path = self._path(w.kind, w.namespace or None, w.name)
        backoff = Backoff(self._settings.backoff_initial, self._settings.backoff_max)
        last: ApiError | None = None
        for _ in range(self._settings.status_retry_limit):
            if not self._may_write():
                return True
            try:
                obj = await self._api.get(path)
                body = self._body(w, obj)
                if body is not None:
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    patch = {"metadata": {"resourceVersion": rv}, "status": body}
                    await self._api.merge_patch_status(path, patch)
                    self.writes += 1
                    self._count(w.kind, "ok")
            except NotFound:
                return True  # deleted meanwhile: nothing to report on
            except Conflict as exc:
                self._count(w.kind, "conflict")
                last = exc
                continue  # changed since our read: read again
            except ApiUnavailable as exc:
                self._count(w.kind, "error")
                last = exc
                await self._api.back_off(backoff)
                continue
            except ApiError as exc:
                self._count(w.kind, "error")
                self._failed(w.key, exc)
                return False
            self._written.pop(w.key, None)  # re-inserted last: the dict stays oldest first
            self._written[w.key] = (w.sig, time.monotonic())
            return True
        self._failed(w.key, last or ApiError(0, "Retries", "gave up"))
        return False

    def _failed(self, key: Key, exc: ApiError) -> None:
        self.failures += 1
        self.last_error = f"{key[0]} {key[1]}/{key[2]}: {exc}"
        log.warning("status write failed: %s", self.last_error)
