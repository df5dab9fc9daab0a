"""Signatures of Gateway API status: what sniffer wrote, hashed without timestamps.

This module owns the comparison behind every status write: a status (or the part of it
sniffer's controller owns) reduced to a hash of what matters (condition types, statuses,
reasons, messages, observedGeneration; never lastTransitionTime). The parsers keep it
of the informer's copy, the status writer computes it of what it wishes and of a fresh
read, and a write happens only when they differ. It must never do I/O or write anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sniffer.routing.sources.kubernetes.fields import JSON, json_list, json_map
from sniffer.routing.sources.kubernetes.kinds import GATEWAY_GROUP


def conditions_sig(entries: list[Any]) -> int:
    """Hash of conditions (type, status, reason, message, observedGeneration) in order."""
    rows = []
    for c in entries:
        if isinstance(c, Mapping):
            rows.append(
                (
                    c.get("type"),
                    c.get("status"),
                    c.get("reason"),
                    c.get("message"),
                    c.get("observedGeneration"),
                )
            )
    return hash(tuple(rows))


def gateway_status_sig(status: JSON) -> int:
    """Hash of a Gateway's status: its conditions, and per listener its name, attached
    routes, supported kinds and conditions."""
    listeners = []
    for lis in json_list(status.get("listeners"), "status.listeners"):
        lis = json_map(lis, "status.listeners[]")
        kinds = tuple(
            (k.get("group"), k.get("kind"))
            for k in json_list(lis.get("supportedKinds"), "supportedKinds")
            if isinstance(k, Mapping)
        )
        listeners.append(
            (
                lis.get("name"),
                lis.get("attachedRoutes"),
                kinds,
                conditions_sig(json_list(lis.get("conditions"), "conditions")),
            )
        )
    return hash(
        (conditions_sig(json_list(status.get("conditions"), "conditions")), tuple(listeners))
    )


def parent_ref_key(ref: JSON) -> tuple[object, ...]:
    """A status entry's `parentRef` as a comparable key, the API's defaults filled in."""
    return (
        ref.get("group", GATEWAY_GROUP),
        ref.get("kind", "Gateway"),
        ref.get("namespace"),
        ref.get("name"),
        ref.get("sectionName"),
        ref.get("port"),
    )


def route_parents_sig(parents: list[Any], controller: str) -> int:
    """Hash of the `status.parents` entries owned by `controller`, order-independent."""
    rows = []
    for p in parents:
        if not isinstance(p, Mapping) or p.get("controllerName") != controller:
            continue
        key = parent_ref_key(json_map(p.get("parentRef"), "parentRef"))
        rows.append((repr(key), conditions_sig(json_list(p.get("conditions"), "conditions"))))
    return hash(tuple(sorted(rows)))
