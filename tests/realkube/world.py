"""Objects as the real server accepts them, and readers of the status sniffer writes."""

from __future__ import annotations

from typing import Any

from tests.kubeapi import objects as o
from tests.support.realkube import Client

Obj = dict[str, Any]


def service(ns: str, name: str = "web", port: int = 443) -> Obj:
    """A ClusterIP Service (the real server allocates the address: no clusterIP given)."""
    svc = o.service(ns, name, (("https", port, "https"),))
    del svc["spec"]["clusterIP"]
    return svc


def endpoints(ns: str, service_name: str = "web", port: int = 8443) -> Obj:
    """What the EndpointSlice controller would write: one ready endpoint. The real server
    refuses loopback endpoint addresses (422), so this one is a documentation address that
    nothing dials; tests that send traffic use `external_service`."""
    return o.endpoint_slice(ns, service_name, ["192.0.2.10"], ports=(("https", port),))


def external_service(ns: str, name: str, port: int) -> Obj:
    """An ExternalName Service naming 127.0.0.1: how a real server lets a test route to a
    loopback backend (sniffer dials the external name on the referenced port)."""
    return o.service(
        ns, name, (("https", port, port),), type="ExternalName", external_name="127.0.0.1"
    )


def gateway(ns: str, name: str = "edge", listeners: list[Obj] | None = None) -> Obj:
    return o.gateway(ns, name, listeners or [o.tls_listener(allowed_from="All")])


def route(ns: str, name: str, hosts: list[str], gw_ns: str, backend: str = "web") -> Obj:
    return o.tls_route(
        ns, name, hosts, [o.backend_ref(backend)], parents=[o.parent_ref("edge", gw_ns)]
    )


def parent_conditions(obj: Obj | None, gateway: str = "edge") -> dict[str, Obj]:
    """The conditions of the route's status entry for `gateway`, by type."""
    for p in ((obj or {}).get("status") or {}).get("parents") or []:
        if p["parentRef"]["name"] == gateway:
            return {c["type"]: c for c in p.get("conditions") or []}
    return {}


def accepted(admin: Client, ns: str, name: str) -> tuple[str, str, int] | None:
    """(status, reason, observedGeneration) of the route's Accepted condition."""
    c = parent_conditions(admin.get("TLSRoute", ns, name)).get("Accepted")
    return None if c is None else (c["status"], c["reason"], int(c["observedGeneration"]))


def lease_holder(admin: Client, name: str, ns: str = "sniffer-system") -> str:
    lease = admin.get("Lease", ns, name) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")
