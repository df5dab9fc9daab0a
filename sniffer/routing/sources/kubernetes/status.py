"""Status written back to the Gateway API objects sniffer serves, off the hot path.

This module owns the task that writes the status of TLSRoutes (one entry per parent
Gateway of sniffer's class with `Accepted` and `ResolvedRefs`, shaped in `desired`; the
hostnames lost come from the conflicts of the table the controller built, never from a
table of its own), Gateways (listener status with attached routes) and sniffer's
GatewayClass, following the API conventions: a round first plans every write from the
informers' caches without awaiting (so no live cache is iterated across an `await`),
then writes only what differs
from the object (compared by signature, ignoring timestamps, against the informer's copy
and again against a fresh read), keeps each condition's `lastTransitionTime` unless its
`status` changes, sets `observedGeneration` from the object's generation, and patches
with the read's resourceVersion as a precondition (409: read again and retry; 429/5xx:
back off), so other controllers' parent entries survive. A failed round is retried after
a backoff. Only the holder of the status Lease writes (`may_write`). It must never block
or delay a table publish, and never write anything but the status subresource.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
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
    ) -> None:
        """Remember the newest view and the conflicts of the table the controller built
        from it; cheap, called on the publish path."""
        self._latest = (view, results, conflicts)
        self._pending = True
        self.idle.clear()
        self._wake.set()

    def leadership(self, leading: bool) -> None:
        """The Lease was won (write what differs, trusting no earlier memory) or lost."""
        self._written.clear()
        if leading and self._latest is not None:
            self._pending = True
            self.idle.clear()
        self._wake.set()

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
            await self._wake.wait()
            self._wake.clear()
            if not self._pending or self._latest is None or not self._may_write():
                self.idle.set()  # nothing to do here: a standby writes nothing
                continue
            self._pending = False
            try:
                ok = await self._round(*self._latest)
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
            # Retry the round (with the newest view by then) after a backoff that ends
            # early when the API server answers again after an outage.
            self.rounds_failed += 1
            self._pending = True
            await self._api.back_off(backoff)
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
    ) -> list[PlannedWrite]:
        """Every write the view calls for; synchronous, so the caches cannot change under it."""
        controller = self._settings.controller_name
        stamp = now_stamp()
        lost = hostnames_lost(conflicts)
        attached: dict[tuple[str, str, str], int] = {}
        for res in results.values():
            for k, n in res.attachments.items():
                attached[k] = attached.get(k, 0) + n
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
        for ns in sorted(view.namespaces()):
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

    async def _round(
        self,
        view: ClusterView,
        results: Mapping[str, NamespaceResult],
        conflicts: Sequence[model.Conflict],
    ) -> bool:
        """Plan, then write; True when every planned write landed (or was not needed)."""
        ok = True
        for w in self.plan(view, results, conflicts):
            if not self._may_write():
                return True  # leadership lost: the new leader writes from its own view
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
            self._written[w.key] = (w.sig, time.monotonic())
            return True
        self._failed(w.key, last or ApiError(0, "Retries", "gave up"))
        return False

    def _failed(self, key: Key, exc: ApiError) -> None:
        self.failures += 1
        self.last_error = f"{key[0]} {key[1]}/{key[2]}: {exc}"
        log.warning("status write failed: %s", self.last_error)
