"""Status written back to the Gateway API objects sniffer serves, off the hot path.

This module owns the desired status of TLSRoutes (one entry per parent Gateway of
sniffer's class with `Accepted` and `ResolvedRefs`), Gateways (listener status with
attached routes) and sniffer's GatewayClass, and the task that writes it: only when it
differs from what the object already carries (compared by signature, ignoring
timestamps), coalesced to the latest wish per object, with a resourceVersion
precondition on TLSRoutes so other controllers' parent entries survive. It must never
block or delay a table publish, and never write anything but the status subresource.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sniffer.routing.sources.kubernetes.api import ApiError, Conflict, KubeApi, NotFound
from sniffer.routing.sources.kubernetes.kinds import (
    GATEWAY,
    GATEWAY_CLASS,
    GATEWAY_GROUP,
    TLS_ROUTE,
    Kind,
    _conditions_sig,
    gateway_status_sig,
    route_parents_sig,
)
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.sources.kubernetes.translate import (
    ClusterView,
    Condition,
    NamespaceResult,
    ParentOutcome,
    gateway_is_ours,
    listener_problem,
)
from sniffer.routing.table import Listener, RouteTable, TableSpec

log = logging.getLogger("sniffer.kubernetes.status")

# A write we made shows up as a watch event shortly after; until then the cache still
# holds the old status, and this long we trust our own write instead of repeating it.
_WRITE_MEMORY_SECONDS = 30.0

Key = tuple[str, str, str]
"""(kind, namespace, name)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition_json(c: Condition, generation: int, stamp: str) -> dict[str, Any]:
    return {
        "type": c.type,
        "status": "True" if c.status else "False",
        "reason": c.reason,
        "message": c.message[:32768],
        "observedGeneration": generation,
        "lastTransitionTime": stamp,
    }


def route_conflicts(spec: TableSpec) -> dict[str, list[tuple[str, str]]]:
    """Loser source -> [(host, winner source)] for every hostname it lost."""
    out: dict[str, list[tuple[str, str]]] = {}
    for c in RouteTable.build(spec).conflicts:
        out.setdefault(c.loser, []).append((c.host, c.winner))
    return out


def desired_route_parents(
    outcomes: tuple[ParentOutcome, ...],
    lost: list[tuple[str, str]],
    controller: str,
    generation: int,
    stamp: str,
) -> list[dict[str, Any]]:
    lost_hosts = {h: w for h, w in lost}
    entries = []
    for o in outcomes:
        accepted = o.accepted
        if accepted.status and o.hosts:
            gone = [h for h in o.hosts if h in lost_hosts]
            if gone:
                detail = ", ".join(f"{h} (held by {lost_hosts[h]})" for h in gone)
                if len(gone) == len(o.hosts):
                    accepted = Condition(
                        "Accepted",
                        False,
                        "HostnameConflict",
                        f"every hostname is held by an older route: {detail}",
                    )
                else:
                    accepted = Condition(
                        "Accepted",
                        True,
                        "Accepted",
                        f"Route is accepted; hostnames held by older routes: {detail}",
                    )
        entries.append(
            {
                "parentRef": o.ref.as_json(),
                "controllerName": controller,
                "conditions": [
                    _condition_json(accepted, generation, stamp),
                    _condition_json(o.resolved, generation, stamp),
                ],
            }
        )
    return entries


def desired_gateway_status(
    view: ClusterView,
    listeners: tuple[Listener, ...],
    namespace: str,
    name: str,
    attached: Mapping[tuple[str, str, str], int],
    stamp: str,
) -> dict[str, Any] | None:
    gw = view.gateways(namespace).get(name)
    if gw is None:
        return None
    tls_ports = {lis.serves_port: lis.name for lis in listeners if lis.protocol == "tls"}
    gen = gw.generation
    out_listeners = []
    programmed_any = False
    for lis in gw.listeners:
        problem = listener_problem(lis, tls_ports)
        ok = problem is None
        reason, message = problem or ("Accepted", "Listener is served by sniffer")
        programmed_any = programmed_any or ok
        bad_kinds = [
            k for g, k in lis.allowed_kinds if not (g == GATEWAY_GROUP and k == "TLSRoute")
        ]
        conds = [
            Condition(
                "Accepted",
                ok,
                reason,
                message,
            ),
            Condition(
                "Programmed",
                ok,
                "Programmed" if ok else "Invalid",
                "Listener is live" if ok else "Listener is not served",
            ),
            Condition(
                "ResolvedRefs",
                not bad_kinds,
                "ResolvedRefs" if not bad_kinds else "InvalidRouteKinds",
                "" if not bad_kinds else f"unsupported route kinds: {', '.join(bad_kinds)}",
            ),
            Condition("Conflicted", False, "NoConflicts", "No conflicts"),
        ]
        out_listeners.append(
            {
                "name": lis.name,
                "supportedKinds": (
                    [{"group": GATEWAY_GROUP, "kind": "TLSRoute"}] if lis.protocol == "TLS" else []
                ),
                "attachedRoutes": attached.get((namespace, name, lis.name), 0),
                "conditions": [_condition_json(c, gen, stamp) for c in conds],
            }
        )
    conds = [
        Condition("Accepted", True, "Accepted", "Gateway is served by sniffer"),
        Condition(
            "Programmed",
            programmed_any,
            "Programmed" if programmed_any else "Invalid",
            "Gateway is live" if programmed_any else "no listener can be served",
        ),
    ]
    return {
        "conditions": [_condition_json(c, gen, stamp) for c in conds],
        "listeners": out_listeners,
    }


class StatusWriter:
    """Computes wished-for status after each rebuild and writes differences in the background."""

    def __init__(
        self,
        api: KubeApi,
        settings: KubernetesSettings,
        versions: Mapping[str, str],
        listeners: tuple[Listener, ...],
    ) -> None:
        self._api = api
        self._settings = settings
        self._versions = versions
        self._listeners = listeners
        self._wake = asyncio.Event()
        self._latest: tuple[ClusterView, Mapping[str, NamespaceResult], TableSpec] | None = None
        self._written: dict[Key, tuple[int, float]] = {}
        self.writes = 0
        self.failures = 0
        self.last_error: str | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    def submit(
        self, view: ClusterView, results: Mapping[str, NamespaceResult], spec: TableSpec
    ) -> None:
        """Remember the newest view; cheap, called on the publish path."""
        self._latest = (view, results, spec)
        self.idle.clear()
        self._wake.set()

    def health(self) -> dict[str, object]:
        return {"writes": self.writes, "failures": self.failures, "last_error": self.last_error}

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            latest, self._latest = self._latest, None
            if latest is not None:
                try:
                    await self._sync(*latest)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a status bug must never stop routing
                    self.failures += 1
                    self.last_error = repr(exc)
                    log.exception("status sync failed")
            if self._latest is None:
                self.idle.set()

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

    async def _sync(
        self, view: ClusterView, results: Mapping[str, NamespaceResult], spec: TableSpec
    ) -> None:
        controller = self._settings.controller_name
        stamp = _now()
        lost = route_conflicts(spec)
        attached: dict[tuple[str, str, str], int] = {}
        for res in results.values():
            for k, n in res.attachments.items():
                attached[k] = attached.get(k, 0) + n

        # GatewayClass: accept ours.
        gc = view.gateway_classes().get(self._settings.gateway_class)
        if gc is not None and gc.controller == controller:
            body = {
                "conditions": [
                    _condition_json(
                        Condition("Accepted", True, "Accepted", "Handled by sniffer"),
                        gc.generation,
                        stamp,
                    )
                ]
            }
            sig = _conditions_sig(body["conditions"])
            key = ("GatewayClass", "", gc.name)
            if not self._fresh(key, sig, gc.status_sig):
                await self._patch(GATEWAY_CLASS, None, gc.name, {"status": body}, key, sig)

        # Gateways of our class.
        for gw in view.all_gateways():
            if not gateway_is_ours(view, self._settings, gw):
                continue
            status = desired_gateway_status(
                view, self._listeners, gw.namespace, gw.name, attached, stamp
            )
            if status is None:
                continue
            sig = gateway_status_sig(status)
            key = ("Gateway", gw.namespace, gw.name)
            if not self._fresh(key, sig, gw.status_sig):
                await self._patch(GATEWAY, gw.namespace, gw.name, {"status": status}, key, sig)

        # TLSRoutes: every route in the cache, so parents we no longer serve are cleared.
        for ns in sorted(view.namespaces()):
            ns_res = results.get(ns)
            for rt in view.tls_routes(ns).values():
                outcomes = ns_res.route_status.get(rt.name, ()) if ns_res is not None else ()
                entries = desired_route_parents(
                    outcomes,
                    lost.get(f"TLSRoute {ns}/{rt.name}", []),
                    controller,
                    rt.generation,
                    stamp,
                )
                sig = route_parents_sig(entries, controller)
                key = ("TLSRoute", ns, rt.name)
                if not self._fresh(key, sig, rt.status_sig):
                    await self._write_route(ns, rt.name, entries, key, sig)

    def _path(self, kind: Kind, ns: str | None, name: str) -> str:
        return kind.path(self._versions[kind.name], ns, name)

    async def _patch(
        self, kind: Kind, ns: str | None, name: str, body: dict[str, Any], key: Key, sig: int
    ) -> None:
        try:
            await self._api.merge_patch_status(self._path(kind, ns, name), body)
        except NotFound:
            return
        except ApiError as exc:
            self._failed(key, exc)
            return
        self.writes += 1
        self._written[key] = (sig, time.monotonic())

    async def _write_route(
        self, ns: str, name: str, entries: list[dict[str, Any]], key: Key, sig: int
    ) -> None:
        path = self._path(TLS_ROUTE, ns, name)
        controller = self._settings.controller_name
        for _ in range(max(1, self._settings.status_retry_limit)):
            try:
                obj = await self._api.get(path)
                meta = obj.get("metadata") or {}
                status = obj.get("status") or {}
                others = [
                    p
                    for p in status.get("parents") or []
                    if isinstance(p, Mapping) and p.get("controllerName") != controller
                ]
                body = {
                    "metadata": {"resourceVersion": meta.get("resourceVersion")},
                    "status": {"parents": others + entries},
                }
                await self._api.merge_patch_status(path, body)
            except NotFound:
                return
            except Conflict:
                continue
            except ApiError as exc:
                self._failed(key, exc)
                return
            self.writes += 1
            self._written[key] = (sig, time.monotonic())
            return
        self._failed(key, ApiError(409, "Conflict", "gave up after repeated conflicts"))

    def _failed(self, key: Key, exc: ApiError) -> None:
        self.failures += 1
        self.last_error = f"{key[0]} {key[1]}/{key[2]}: {exc}"
        log.warning("status write failed: %s", self.last_error)
