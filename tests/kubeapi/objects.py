"""Builders of the Kubernetes objects tests create, and a synthetic multi-tenant cluster.

Owns object shapes only (plain dicts as the API would return them); never talks to a
server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

GW = "gateway.networking.k8s.io"
Obj = dict[str, Any]


def _meta(name: str, namespace: str | None, created: str | None = None, **extra: Any) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if created is not None:
        meta["creationTimestamp"] = created
    meta.update({k: v for k, v in extra.items() if v})
    return meta


def service(
    ns: str,
    name: str,
    ports: Sequence[tuple[str, int, int | str] | tuple[str, int, int | str, str]] = (
        ("https", 443, 8443),
    ),
    *,
    type: str = "ClusterIP",
    cluster_ip: str | None = "10.96.0.10",
    external_name: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Obj:
    spec: Obj = {
        "type": type,
        "ports": [
            {
                "name": x[0],
                "port": x[1],
                "targetPort": x[2],
                "protocol": x[3] if len(x) > 3 else "TCP",
            }
            for x in ports
        ],
    }
    if type == "ExternalName":
        spec["externalName"] = external_name
    else:
        spec["clusterIP"] = cluster_ip if cluster_ip is not None else "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, ns, annotations=annotations),
        "spec": spec,
    }


def endpoint_slice(
    ns: str,
    service_name: str,
    addresses: Sequence[str],
    ports: Sequence[tuple[str, int]] = (("https", 8443),),
    *,
    name: str | None = None,
    not_ready: Sequence[str] = (),
) -> Obj:
    eps = [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]
    eps += [{"addresses": [a], "conditions": {"ready": False}} for a in not_ready]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _meta(
            name or f"{service_name}-abc12",
            ns,
            labels={"kubernetes.io/service-name": service_name},
        ),
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
        "endpoints": eps,
    }


def ingress(
    ns: str,
    name: str,
    rules: Sequence[tuple[str | None, str, int | str]],
    *,
    class_name: str | None = "sniffer",
    class_annotation: str | None = None,
    default: tuple[str, int | str] | None = None,
    created: str | None = None,
    paths: Sequence[str] = ("/",),
) -> Obj:
    def backend(svc: str, port: int | str) -> Obj:
        return {
            "service": {
                "name": svc,
                "port": {"number": port} if isinstance(port, int) else {"name": port},
            }
        }

    spec: Obj = {
        "rules": [
            ({"host": host} if host else {})
            | {
                "http": {
                    "paths": [
                        {"path": p, "pathType": "Prefix", "backend": backend(svc, port)}
                        for p in paths
                    ]
                }
            }
            for host, svc, port in rules
        ]
    }
    if class_name:
        spec["ingressClassName"] = class_name
    if default:
        spec["defaultBackend"] = backend(*default)
    ann = {"kubernetes.io/ingress.class": class_annotation} if class_annotation else None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(name, ns, created, annotations=ann),
        "spec": spec,
    }


def namespace(
    name: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> Obj:
    """A Namespace; the API server's `kubernetes.io/metadata.name` label is added as the
    real one does."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": _meta(
            name,
            None,
            labels={"kubernetes.io/metadata.name": name} | (labels or {}),
            annotations=annotations,
        ),
    }


def ingress_class(name: str = "sniffer", *, default: bool = False) -> Obj:
    ann = {"ingressclass.kubernetes.io/is-default-class": "true"} if default else None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": _meta(name, None, annotations=ann),
        "spec": {"controller": "sniffer.dev/ingress-controller"},
    }


def gateway_class(name: str = "sniffer", controller: str = "sniffer.dev/gateway-controller") -> Obj:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "GatewayClass",
        "metadata": _meta(name, None),
        "spec": {"controllerName": controller},
    }


def gateway(
    ns: str,
    name: str,
    listeners: Sequence[Obj] | None = None,
    *,
    class_name: str = "sniffer",
) -> Obj:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "Gateway",
        "metadata": _meta(name, ns),
        "spec": {
            "gatewayClassName": class_name,
            "listeners": list(listeners) if listeners is not None else [tls_listener()],
        },
    }


def tls_listener(
    name: str = "tls",
    port: int = 443,
    *,
    hostname: str | None = None,
    mode: str = "Passthrough",
    allowed_from: str = "All",
    protocol: str = "TLS",
    kinds: Sequence[str] | None = None,
) -> Obj:
    lis: Obj = {
        "name": name,
        "port": port,
        "protocol": protocol,
        "allowedRoutes": {"namespaces": {"from": allowed_from}},
    }
    if protocol in ("TLS", "HTTPS"):
        lis["tls"] = {"mode": mode}
    if hostname:
        lis["hostname"] = hostname
    if kinds is not None:
        lis["allowedRoutes"]["kinds"] = [{"group": GW, "kind": k} for k in kinds]
    return lis


def tls_route(
    ns: str,
    name: str,
    hostnames: Sequence[str],
    backends: Sequence[Obj],
    *,
    parents: Sequence[Obj] | None = None,
    created: str | None = None,
    version: str = "v1",
) -> Obj:
    spec: Obj = {
        "parentRefs": list(parents) if parents is not None else [parent_ref("edge", "infra")],
        "rules": [{"backendRefs": list(backends)}],
    }
    if hostnames:
        spec["hostnames"] = list(hostnames)
    return {
        "apiVersion": f"{GW}/{version}",
        "kind": "TLSRoute",
        "metadata": _meta(name, ns, created),
        "spec": spec,
    }


def parent_ref(name: str, namespace: str | None = None, section: str | None = None) -> Obj:
    ref: Obj = {"group": GW, "kind": "Gateway", "name": name}
    if namespace:
        ref["namespace"] = namespace
    if section:
        ref["sectionName"] = section
    return ref


def backend_ref(
    name: str,
    port: int | None = 443,
    *,
    weight: int | None = None,
    namespace: str | None = None,
    kind: str | None = None,
    group: str | None = None,
) -> Obj:
    ref: Obj = {"name": name}
    if port is not None:
        ref["port"] = port
    if weight is not None:
        ref["weight"] = weight
    if namespace:
        ref["namespace"] = namespace
    if kind:
        ref["kind"] = kind
    if group is not None:
        ref["group"] = group
    return ref


def reference_grant(ns: str, name: str, from_ns: str, to_name: str | None = None) -> Obj:
    to: Obj = {"group": "", "kind": "Service"}
    if to_name:
        to["name"] = to_name
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "ReferenceGrant",
        "metadata": _meta(name, ns),
        "spec": {
            "from": [{"group": GW, "kind": "TLSRoute", "namespace": from_ns}],
            "to": [to],
        },
    }


def synthetic_cluster(
    tenants: int,
    services: int = 60,
    hosts: int = 5,
    *,
    gateway_ns: str = "infra",
    gateway_port: int = 443,
) -> Iterator[Obj]:
    """Tenants alternate Ingress / TLSRoute; each has `services` Services and slices.

    The TLSRoutes attach to one Gateway whose TLS listener is on `gateway_port` (the port
    the router under test listens on, or they are rejected with PortUnavailable).
    """
    if tenants:
        yield gateway_class()
        yield gateway(gateway_ns, "edge", [tls_listener(port=gateway_port)])
    for t in range(tenants):
        ns = f"tenant-{t:05d}"
        for s in range(services):
            a, b = divmod(t * services + s, 250)
            yield service(ns, f"svc-{s:02d}", cluster_ip=f"10.96.{a % 250}.{b + 1}")
            # Loopback endpoints nobody listens on: a benchmark probing a route through
            # the router is refused at once and never dials off the machine.
            yield endpoint_slice(
                ns,
                f"svc-{s:02d}",
                [f"127.{100 + (a // 250) % 100}.{a % 250}.{b + 1}"],
                name=f"svc-{s:02d}-x1",
            )
        names = [f"h{h}.{ns}.example.com" for h in range(hosts)]
        if t % 2 == 0:
            yield ingress(ns, "edge", [(n, f"svc-{i:02d}", 443) for i, n in enumerate(names)])
        else:
            yield tls_route(
                ns,
                "edge",
                names,
                [backend_ref("svc-00", 443)],
                parents=[parent_ref("edge", gateway_ns)],
            )
