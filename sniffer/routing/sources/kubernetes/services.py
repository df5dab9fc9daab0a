"""Services into backends: which endpoints a route to a Service port dials.

This module owns how a Service port becomes a `Backend` for one namespace translation
(memoised): EndpointSlice addresses by default, the ClusterIP with
`backend_mode="clusterip"`, and the Service's `sniffer.dev/` limit annotations. It must
never do I/O or touch metrics.

Services of other shapes (documented behaviour):
- ExternalName: the backend dials the external DNS name on the referenced port (a
  number, or the port named in the Service's `ports`); resolution happens at dial time.
- Headless (`clusterIP: None`): its EndpointSlices are used as for any Service; with
  `backend_mode="clusterip"` a headless Service falls back to its endpoints.
- Service missing, port unknown, or no ready endpoint: the route still exists and its
  backend has no endpoints, so the data plane refuses (counted) instead of falling
  through to another tenant's route or the default.
"""

from __future__ import annotations

from sniffer.routing.sources.kubernetes.limits import limits_from_annotations
from sniffer.routing.sources.kubernetes.records import (
    EndpointSliceRec,
    PortRef,
    ServicePort,
    ServiceRec,
)
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.sources.kubernetes.view import ClusterView
from sniffer.routing.table import NO_LIMITS, Backend, Endpoint


def find_port(svc: ServiceRec, ref: PortRef) -> int | None:
    sp = _tcp_port(svc, ref)
    return None if sp is None else sp.port


def _tcp_port(svc: ServiceRec, ref: PortRef) -> ServicePort | None:
    """The Service port `ref` names (by name, or by number among its non-UDP ports: a
    Service serving HTTP/3 lists 443 twice, once per protocol)."""
    for p in svc.ports:
        if (p.name == ref) if isinstance(ref, str) else (p.port == ref and p.protocol != "UDP"):
            return p
    return None


def udp_twin(svc: ServiceRec, ref: PortRef) -> ServicePort | None:
    """The UDP port with the number of the TCP port `ref` names: where a quic listener
    sends the names that the TCP port serves (no new CRD, no annotation)."""
    sp = _tcp_port(svc, ref)
    if sp is None:
        return None
    return next((p for p in svc.ports if p.protocol == "UDP" and p.port == sp.port), None)


class Backends:
    """Resolves Service ports to `Backend`s for one namespace translation (memoised)."""

    def __init__(self, view: ClusterView, settings: KubernetesSettings, problems: list[str]):
        self.view = view
        self.settings = settings
        self.problems = problems
        self.out: dict[str, Backend] = {}

    def _slices_of(self, ns: str, service: str) -> list[EndpointSliceRec]:
        return self.view.slices_of(ns, service)

    def empty(self, name: str, tenant: str, source: str) -> str:
        if name not in self.out:
            self.out[name] = Backend(name=name, tenant=tenant, endpoints=(), source=source)
        return name

    def resolve(self, ns: str, service: str, port: PortRef, source: str) -> str:
        name = f"{ns}/{service}:{port}"
        if name in self.out:
            return name
        svc = self.view.services(ns).get(service)
        endpoints: tuple[Endpoint, ...] = ()
        if svc is None:
            self.problems.append(f"{source}: Service {ns}/{service} not found")
        elif svc.type == "ExternalName" and svc.external_name:
            number = port if isinstance(port, int) else find_port(svc, port)
            if number is None:
                self.problems.append(f"{source}: Service {ns}/{service} has no port {port!r}")
            else:
                endpoints = (Endpoint(svc.external_name, number),)
        else:
            endpoints = self._endpoints(ns, service, svc, port, source)
        limits = NO_LIMITS
        if svc is not None and svc.limit_annotations:
            limits, bad = limits_from_annotations(
                svc.limit_annotations, "backend", f"Service {ns}/{service}"
            )
            self.problems.extend(bad)
        self.out[name] = Backend(
            name=name, tenant=ns, endpoints=endpoints, source=source, limits=limits
        )
        return name

    def resolve_udp(self, ns: str, service: str, port: PortRef, source: str) -> str | None:
        """The backend quic listeners use for a route to `service`'s TCP port `port`:
        the Service's UDP port of the same number, or None when it has none (the name
        then has no QUIC route, and clients keep to TCP)."""
        name = f"{ns}/{service}:{port}/udp"
        if name in self.out:
            return name
        svc = self.view.services(ns).get(service)
        if svc is None:
            return None
        twin = udp_twin(svc, port)
        if twin is None:
            return None
        endpoints: tuple[Endpoint, ...]
        if svc.type == "ExternalName" and svc.external_name:
            endpoints = (Endpoint(svc.external_name, twin.port),)
        else:
            endpoints = self._endpoints(ns, service, svc, twin.name or twin.port, source, "UDP")
        limits = NO_LIMITS
        if svc.limit_annotations:
            limits, _ = limits_from_annotations(
                svc.limit_annotations, "backend", f"Service {ns}/{service}"
            )  # problems already reported by the TCP backend of the same Service
        self.out[name] = Backend(
            name=name, tenant=ns, endpoints=endpoints, source=source, limits=limits
        )
        return name

    def _endpoints(
        self,
        ns: str,
        service: str,
        svc: ServiceRec,
        port: PortRef,
        source: str,
        protocol: str = "TCP",
    ) -> tuple[Endpoint, ...]:
        if protocol == "UDP":
            sp = next(
                (p for p in svc.ports if p.protocol == "UDP" and port in (p.name, p.port)), None
            )
        else:
            sp = _tcp_port(svc, port)
        if sp is None:
            self.problems.append(f"{source}: Service {ns}/{service} has no port {port!r}")
            return ()
        if self.settings.backend_mode == "clusterip" and svc.cluster_ip:
            return (Endpoint(svc.cluster_ip, sp.port),)
        seen: set[Endpoint] = set()
        for s in self._slices_of(ns, service):
            number = next((n for (pname, n) in s.ports if pname == sp.name), None)
            if number is None:
                continue
            for addr in s.address_list():
                seen.add(Endpoint(addr, number))
        return tuple(sorted(seen, key=lambda e: (e.host, e.port)))
