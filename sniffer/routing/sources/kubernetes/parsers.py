"""Decoding: an object's raw JSON reduced to the record routing keeps of it.

This module owns one parser per kind (`parse_<kind>`, as client-go's decoders), each
reading only the fields routing needs, interning the strings that repeat, sharing the
immutable parts most objects have alike, and raising `MalformedObject` for a field in
the wrong shape. It must never do I/O, keep a reference to the raw object, or read
Secrets.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import datetime

from sniffer.routing.sources.kubernetes.fields import (
    JSON,
    MalformedObject,
    interned,
    json_list,
    json_map,
    opt_interned,
    shared,
)
from sniffer.routing.sources.kubernetes.kinds import (
    ALPN_ANNOTATION,
    DEFAULT_CLASS_ANNOTATION,
    GATEWAY_GROUP,
    INGRESS_CLASS_ANNOTATION,
    NAMESPACE_ANNOTATION_PREFIX,
    SERVICE_NAME_LABEL,
)
from sniffer.routing.sources.kubernetes.limits import limit_annotations
from sniffer.routing.sources.kubernetes.records import (
    BackendRef,
    EndpointSliceRec,
    GatewayClassRec,
    GatewayListenerRec,
    GatewayRec,
    IngressClassRec,
    IngressRec,
    IngressRule,
    LabelSelector,
    NamespaceRec,
    ParentRef,
    PortRef,
    ReferenceGrantRec,
    ServicePort,
    ServiceRec,
    SliceTarget,
    TLSRouteRec,
)
from sniffer.routing.sources.kubernetes.signatures import (
    conditions_sig,
    gateway_status_sig,
    route_parents_sig,
)


def port_ref(value: object) -> PortRef:
    if isinstance(value, bool):
        raise MalformedObject("port must be a number or a name")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value) if value.isdigit() else sys.intern(value)
    raise MalformedObject("port must be a number or a name")


def parse_time(stamp: object) -> float:
    """RFC 3339 `creationTimestamp` to unix seconds (0.0 when absent)."""
    if not stamp:
        return 0.0
    if not isinstance(stamp, str):
        raise MalformedObject("creationTimestamp is not a string")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def object_key(obj: JSON) -> tuple[str, str]:
    """(namespace, name) an informer files the object under; the namespace interned."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise MalformedObject("metadata.name missing")
    ns = meta.get("namespace") or ""
    if not isinstance(ns, str):
        raise MalformedObject("metadata.namespace is not a string")
    return sys.intern(ns), meta["name"]


def _meta(obj: JSON) -> tuple[str, str, JSON]:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise MalformedObject("metadata.name missing")
    # Namespaces repeat in every record: interned. Names are unique: not interned
    # (an intern-table entry per object would cost more than it saves), except where
    # another kind repeats them (`Kind.shared_names`, applied by the informer's key).
    return interned(meta.get("namespace") or ""), str(meta["name"]), meta


def _annotations(meta: JSON) -> JSON:
    ann = meta.get("annotations")
    return ann if isinstance(ann, Mapping) else {}


def _alpn_annotation(ann: JSON) -> str | None:
    value = ann.get(ALPN_ANNOTATION)
    return interned(value) if isinstance(value, str) else None


def parse_label_selector(value: object, what: str) -> LabelSelector:
    sel = json_map(value, what)
    labels = []
    for k, v in json_map(sel.get("matchLabels"), f"{what}.matchLabels").items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise MalformedObject(f"{what}.matchLabels must map strings to strings")
        labels.append((interned(k), interned(v)))
    exprs = []
    for e in json_list(sel.get("matchExpressions"), f"{what}.matchExpressions"):
        e = json_map(e, f"{what}.matchExpressions[]")
        values = tuple(
            interned(v) for v in json_list(e.get("values"), f"{what}.matchExpressions[].values")
        )
        exprs.append((interned(e.get("key") or ""), interned(e.get("operator") or ""), values))
    return LabelSelector(tuple(sorted(labels)), tuple(exprs))


def parse_ingress_class(obj: JSON) -> IngressClassRec:
    _, name, meta = _meta(obj)
    spec = json_map(obj.get("spec"), "spec")
    default = _annotations(meta).get(DEFAULT_CLASS_ANNOTATION) == "true"
    return IngressClassRec(name, interned(spec.get("controller") or ""), default)


def _ingress_backend(backend: object) -> tuple[str | None, PortRef | None, str | None]:
    b = json_map(backend, "backend")
    if b.get("resource") is not None:
        return None, None, "resource backends are not supported (TCP routing needs a Service)"
    svc = json_map(b.get("service"), "backend.service")
    name = svc.get("name")
    port = json_map(svc.get("port"), "backend.service.port")
    if not isinstance(name, str) or not name:
        return None, None, "backend.service.name missing"
    ref = port.get("number") if port.get("number") is not None else port.get("name")
    if ref is None:
        return interned(name), None, "backend.service.port missing"
    return interned(name), port_ref(ref), None


def parse_ingress(obj: JSON) -> IngressRec:
    ns, name, meta = _meta(obj)
    spec = json_map(obj.get("spec"), "spec")
    default_service: str | None = None
    default_port: PortRef | None = None
    if spec.get("defaultBackend") is not None:
        default_service, default_port, _ = _ingress_backend(spec["defaultBackend"])
    rules = []
    for rule in json_list(spec.get("rules"), "spec.rules"):
        rule = json_map(rule, "spec.rules[]")
        host = opt_interned(rule.get("host"))
        paths = json_list(json_map(rule.get("http"), "http").get("paths"), "http.paths")
        service: str | None = None
        port: PortRef | None = None
        ignored: list[str] = []
        unsupported: str | None = None
        root_seen = False
        for p in paths:
            p = json_map(p, "paths[]")
            path = p.get("path") or ""
            if path not in ("", "/"):
                ignored.append(str(path))
                continue
            if root_seen:
                continue
            root_seen = True
            service, port, unsupported = _ingress_backend(p.get("backend"))
        if not root_seen:
            unsupported = (
                "no backend for path '/' (TCP routing has no paths)"
                if paths
                else "rule has no http"
            )
        rules.append(IngressRule(host, service, port, tuple(ignored), unsupported))
    ann = _annotations(meta)
    class_ann = ann.get(INGRESS_CLASS_ANNOTATION)
    return IngressRec(
        ns,
        name,
        parse_time(meta.get("creationTimestamp")),
        opt_interned(spec.get("ingressClassName")),
        interned(class_ann) if isinstance(class_ann, str) else None,
        default_service,
        default_port,
        tuple(rules),
        _alpn_annotation(ann),
    )


def parse_service(obj: JSON, http_port_annotation: str, keep_cluster_ip: bool = True) -> ServiceRec:
    _, _, meta = _meta(obj)
    spec = json_map(obj.get("spec"), "spec")
    stype = interned(spec.get("type") or "ClusterIP")
    cip = spec.get("clusterIP")
    cluster_ip = cip if isinstance(cip, str) and cip and cip != "None" else None
    ports = []
    for p in json_list(spec.get("ports"), "spec.ports"):
        p = json_map(p, "spec.ports[]")
        number = p.get("port")
        if not isinstance(number, int):
            raise MalformedObject("spec.ports[].port is not a number")
        target = p.get("targetPort")
        ports.append(
            shared(
                ServicePort(
                    interned(p.get("name") or ""),
                    number,
                    number if target is None else port_ref(target),
                    interned(p.get("protocol") or "TCP"),
                )
            )
        )
    ann = _annotations(meta)
    http = ann.get(http_port_annotation)
    rec = ServiceRec(
        stype,
        cluster_ip if keep_cluster_ip else None,
        opt_interned(spec.get("externalName")) if stype == "ExternalName" else None,
        shared(tuple(ports)),
        port_ref(http.strip()) if isinstance(http, str) and http.strip() else None,
        limit_annotations(
            (k, v) for k, v in ann.items() if isinstance(k, str) and isinstance(v, str)
        ),
    )
    # Records without a ClusterIP or external name repeat across the cluster (a few
    # layouts); the others are unique and would only fill the shared table.
    return shared(rec) if rec.cluster_ip is None and rec.external_name is None else rec


def _framing_free(value: str, what: str, reserved: str = "\t\n") -> str:
    """`value` if it holds none of the characters the slice cache's text reserves (see
    `slices.py`; the API server's own validation allows none of them either)."""
    if any(c in value for c in reserved):
        raise MalformedObject(f"{what} holds a tab, newline or comma")
    return value


def parse_endpoint_slice(obj: JSON) -> EndpointSliceRec:
    _, name, meta = _meta(obj)
    _framing_free(name, "metadata.name")
    labels = json_map(meta.get("labels"), "metadata.labels")
    svc = labels.get(SERVICE_NAME_LABEL)
    ports = []
    for p in json_list(obj.get("ports"), "ports"):
        p = json_map(p, "ports[]")
        if isinstance(p.get("port"), int):
            pname = interned(p.get("name") or "")
            ports.append((_framing_free(pname, "ports[].name", "\t\n,"), int(p["port"])))
    addresses: list[str] = []
    for ep in json_list(obj.get("endpoints"), "endpoints"):
        ep = json_map(ep, "endpoints[]")
        if json_map(ep.get("conditions"), "conditions").get("ready") is False:
            continue
        addrs = json_list(ep.get("addresses"), "endpoints[].addresses")
        # All addresses of one endpoint are the same pod (the API calls them fungible).
        if addrs and isinstance(addrs[0], str) and not any(c in addrs[0] for c in ",\t\n"):
            addresses.append(addrs[0])
    target = SliceTarget(interned(svc) if isinstance(svc, str) else None, tuple(sorted(ports)))
    return EndpointSliceRec(shared(target), ",".join(sorted(addresses)))


def _generation(meta: JSON) -> int:
    gen = meta.get("generation")
    return gen if isinstance(gen, int) else 0


def parse_gateway_class(obj: JSON) -> GatewayClassRec:
    _, name, meta = _meta(obj)
    spec = json_map(obj.get("spec"), "spec")
    status = json_map(obj.get("status"), "status")
    return GatewayClassRec(
        name,
        interned(spec.get("controllerName") or ""),
        _generation(meta),
        conditions_sig(json_list(status.get("conditions"), "status.conditions")),
    )


def parse_gateway(obj: JSON) -> GatewayRec:
    ns, name, meta = _meta(obj)
    spec = json_map(obj.get("spec"), "spec")
    listeners = []
    for lis in json_list(spec.get("listeners"), "spec.listeners"):
        lis = json_map(lis, "spec.listeners[]")
        tls = json_map(lis.get("tls"), "tls")
        allowed = json_map(lis.get("allowedRoutes"), "allowedRoutes")
        kinds = tuple(
            (interned(k.get("group", GATEWAY_GROUP) or ""), interned(k.get("kind") or ""))
            for k in json_list(allowed.get("kinds"), "allowedRoutes.kinds")
            if isinstance(k, Mapping)
        )
        port = lis.get("port")
        if not isinstance(port, int):
            raise MalformedObject("spec.listeners[].port is not a number")
        namespaces = json_map(allowed.get("namespaces"), "namespaces")
        selector = namespaces.get("selector")
        listeners.append(
            GatewayListenerRec(
                interned(lis.get("name") or ""),
                port,
                interned(lis.get("protocol") or ""),
                opt_interned(tls.get("mode", "Terminate") if lis.get("tls") is not None else None),
                opt_interned(lis.get("hostname")),
                interned(namespaces.get("from") or "Same"),
                kinds,
                None
                if selector is None
                else parse_label_selector(selector, "allowedRoutes.namespaces.selector"),
            )
        )
    status = json_map(obj.get("status"), "status")
    return GatewayRec(
        ns,
        name,
        interned(spec.get("gatewayClassName") or ""),
        tuple(listeners),
        _generation(meta),
        gateway_status_sig(status),
    )


def parse_tls_route(obj: JSON, controller: str) -> TLSRouteRec:
    ns, name, meta = _meta(obj)
    spec = json_map(obj.get("spec"), "spec")
    hostnames = tuple(interned(h) for h in json_list(spec.get("hostnames"), "spec.hostnames"))
    parents = []
    for ref in json_list(spec.get("parentRefs"), "spec.parentRefs"):
        ref = json_map(ref, "spec.parentRefs[]")
        port = ref.get("port")
        parents.append(
            ParentRef(
                interned(ref.get("group", GATEWAY_GROUP) or ""),
                interned(ref.get("kind") or "Gateway"),
                interned(ref.get("namespace") or ns),
                interned(ref.get("name") or ""),
                opt_interned(ref.get("sectionName")),
                port if isinstance(port, int) else None,
            )
        )
    backends = []
    for rule in json_list(spec.get("rules"), "spec.rules"):
        for ref in json_list(json_map(rule, "spec.rules[]").get("backendRefs"), "backendRefs"):
            ref = json_map(ref, "backendRefs[]")
            port = ref.get("port")
            weight = ref.get("weight", 1)
            backends.append(
                BackendRef(
                    interned(ref.get("group") or ""),
                    interned(ref.get("kind") or "Service"),
                    interned(ref.get("namespace") or ns),
                    interned(ref.get("name") or ""),
                    port if isinstance(port, int) else None,
                    weight if isinstance(weight, int) and weight >= 0 else 1,
                )
            )
    status = json_map(obj.get("status"), "status")
    return TLSRouteRec(
        ns,
        name,
        parse_time(meta.get("creationTimestamp")),
        hostnames,
        tuple(parents),
        tuple(backends),
        _generation(meta),
        route_parents_sig(json_list(status.get("parents"), "status.parents"), controller),
        _alpn_annotation(_annotations(meta)),
    )


def parse_reference_grant(obj: JSON) -> ReferenceGrantRec:
    ns, name, _ = _meta(obj)
    spec = json_map(obj.get("spec"), "spec")
    from_ = tuple(
        (
            interned(f.get("group") or ""),
            interned(f.get("kind") or ""),
            interned(f.get("namespace") or ""),
        )
        for f in json_list(spec.get("from"), "spec.from")
        if isinstance(f, Mapping)
    )
    to = tuple(
        (interned(t.get("group") or ""), interned(t.get("kind") or ""), opt_interned(t.get("name")))
        for t in json_list(spec.get("to"), "spec.to")
        if isinstance(t, Mapping)
    )
    return ReferenceGrantRec(ns, name, from_, to)


def _string_pairs(value: object, what: str, prefix: str = "") -> tuple[tuple[str, str], ...]:
    pairs = []
    for k, v in json_map(value, what).items():
        if not isinstance(k, str) or not k.startswith(prefix):
            continue
        if not isinstance(v, str):
            raise MalformedObject(f"{what}[{k!r}] is not a string")
        pairs.append((interned(k), interned(v)))
    return tuple(sorted(pairs))


def parse_namespace(obj: JSON) -> NamespaceRec:
    _, name, meta = _meta(obj)
    return NamespaceRec(
        sys.intern(name),
        _string_pairs(meta.get("labels"), "metadata.labels"),
        _string_pairs(meta.get("annotations"), "metadata.annotations", NAMESPACE_ANNOTATION_PREFIX),
    )
