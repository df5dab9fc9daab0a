"""The status sniffer wishes each Gateway API object carried, as the API's JSON.

This module owns the shape of what the status writer writes, computed from the
translation's outcomes without I/O: a TLSRoute's parent entries (`Accepted` turned into
`HostnameConflict` for hostnames an older route holds), a Gateway's conditions and
listener status with attached routes, the conditions' JSON (observedGeneration, a
`lastTransitionTime` kept unless the status flips). It must never do I/O, read a clock
other than for the stamp of a new condition, or decide when to write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sniffer.routing.model import Conflict
from sniffer.routing.sources.kubernetes.gateway import listener_problem
from sniffer.routing.sources.kubernetes.kinds import GATEWAY_GROUP
from sniffer.routing.sources.kubernetes.outcomes import Condition, ParentOutcome
from sniffer.routing.sources.kubernetes.view import ClusterView
from sniffer.routing.table import Listener


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition_json(c: Condition, generation: int, stamp: str) -> dict[str, Any]:
    return {
        "type": c.type,
        "status": "True" if c.status else "False",
        "reason": c.reason,
        "message": c.message[:32768],
        "observedGeneration": generation,
        "lastTransitionTime": stamp,
    }


def hostnames_lost(conflicts: Iterable[Conflict]) -> dict[str, list[tuple[str, str]]]:
    """Loser source -> [(host, winner source)] for every hostname it lost."""
    out: dict[str, list[tuple[str, str]]] = {}
    for c in conflicts:
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
                    condition_json(accepted, generation, stamp),
                    condition_json(o.resolved, generation, stamp),
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
                "conditions": [condition_json(c, gen, stamp) for c in conds],
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
        "conditions": [condition_json(c, gen, stamp) for c in conds],
        "listeners": out_listeners,
    }


def keep_transition_times(new: list[dict[str, Any]], old: object) -> None:
    """Carry each condition's `lastTransitionTime` over from `old` unless its `status`
    changed (the API conventions: the time says when the status last flipped)."""
    held = {
        c.get("type"): c
        for c in (old if isinstance(old, list) else ())
        if isinstance(c, Mapping) and c.get("lastTransitionTime")
    }
    for c in new:
        prev = held.get(c["type"])
        if prev is not None and prev.get("status") == c["status"]:
            c["lastTransitionTime"] = prev["lastTransitionTime"]
