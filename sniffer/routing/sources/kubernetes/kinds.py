"""The Kubernetes kinds sniffer reads, and the small records it keeps of each object.

This module owns three things: where each kind lives in the API (group, versions,
plural), the exact RBAC the source needs (`RBAC_RULES`, compared against the shipped
ClusterRole), and the parsers that reduce an object's raw JSON to a slotted record of
only the fields routing needs. Records compare equal when nothing routing-relevant
changed, which is what makes resync-style no-op events free. This module must never do
I/O, hold a raw object after parsing, or read Secrets.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sniffer.routing.sources.kubernetes.limits import limit_annotations

_T = TypeVar("_T")

JSON = Mapping[str, Any]
PortRef = int | str
"""A Service port as written: a number or a port name."""

GATEWAY_GROUP = "gateway.networking.k8s.io"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
ALPN_ANNOTATION = "sniffer.dev/alpn"
"""On an Ingress or TLSRoute: a comma list of ALPN protocols its routes are for."""


@dataclass(frozen=True, slots=True)
class Kind:
    """Where one resource lives in the API; `versions` are tried in order by discovery."""

    name: str
    """Singular kind, for logs, metrics and `source` strings (e.g. "TLSRoute")."""
    group: str
    plural: str
    versions: tuple[str, ...]
    namespaced: bool = True
    shared_names: bool = False
    """Names repeat across namespaces and in other kinds (a Service's name is every one of
    its slices' label): interned. Other names are unique (an intern-table entry per
    object would cost more than it saves)."""
    filed_by_name: bool = False
    """Cluster-scoped objects that describe a namespace (a Namespace) are filed under
    their own name instead of "": a change then dirties the namespace it describes."""

    def bucket(self, namespace: str, name: str) -> str:
        """The cache bucket (namespace key) an object of this kind is filed under."""
        return sys.intern(name) if self.filed_by_name else namespace

    def path(self, version: str, namespace: str | None = None, name: str | None = None) -> str:
        base = "/api/" + version if not self.group else f"/apis/{self.group}/{version}"
        if namespace is not None and self.namespaced:
            base += f"/namespaces/{namespace}"
        base += "/" + self.plural
        if name is not None:
            base += "/" + name
        return base


INGRESS = Kind("Ingress", "networking.k8s.io", "ingresses", ("v1",))
INGRESS_CLASS = Kind("IngressClass", "networking.k8s.io", "ingressclasses", ("v1",), False)
SERVICE = Kind("Service", "", "services", ("v1",), shared_names=True)
ENDPOINT_SLICE = Kind("EndpointSlice", "discovery.k8s.io", "endpointslices", ("v1",))
GATEWAY_CLASS = Kind("GatewayClass", GATEWAY_GROUP, "gatewayclasses", ("v1", "v1beta1"), False)
GATEWAY = Kind("Gateway", GATEWAY_GROUP, "gateways", ("v1", "v1beta1"))
TLS_ROUTE = Kind("TLSRoute", GATEWAY_GROUP, "tlsroutes", ("v1", "v1alpha3", "v1alpha2"))
REFERENCE_GRANT = Kind("ReferenceGrant", GATEWAY_GROUP, "referencegrants", ("v1", "v1beta1"))
NAMESPACE = Kind("Namespace", "", "namespaces", ("v1",), False, filed_by_name=True)

ALL_KINDS = (
    INGRESS_CLASS,
    INGRESS,
    SERVICE,
    ENDPOINT_SLICE,
    GATEWAY_CLASS,
    GATEWAY,
    TLS_ROUTE,
    REFERENCE_GRANT,
    NAMESPACE,
)

_READ = ("get", "list", "watch")
RBAC_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("networking.k8s.io", "ingresses", _READ),
    ("networking.k8s.io", "ingressclasses", _READ),
    ("", "services", _READ),
    ("discovery.k8s.io", "endpointslices", _READ),
    (GATEWAY_GROUP, "gatewayclasses", _READ),
    (GATEWAY_GROUP, "gateways", _READ),
    (GATEWAY_GROUP, "tlsroutes", _READ),
    (GATEWAY_GROUP, "referencegrants", _READ),
    # Namespace labels (`allowedRoutes.namespaces.from: Selector`) and `sniffer.dev/*`
    # annotations (per-tenant limits); only the informer's list and watch.
    ("", "namespaces", ("list", "watch")),
    # Status writes are merge patches (the TLSRoute one carries a resourceVersion
    # precondition so other controllers' parent entries are never overwritten).
    (GATEWAY_GROUP, "gatewayclasses/status", ("patch",)),
    (GATEWAY_GROUP, "gateways/status", ("patch",)),
    (GATEWAY_GROUP, "tlsroutes/status", ("patch",)),
)
"""(api_group, resource, verbs) for exactly the calls this package makes. Never Secrets."""


class MalformedObject(ValueError):
    """An object lacks a field routing needs or has it in the wrong shape."""


def _s(value: object) -> str:
    """Intern short repeated strings (namespaces, names, port names) across records."""
    if not isinstance(value, str):
        raise MalformedObject(f"expected a string, got {type(value).__name__}")
    return sys.intern(value)


def _opt_s(value: object) -> str | None:
    return None if value is None else _s(value)


def _port_ref(value: object) -> PortRef:
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
    return _s(meta.get("namespace") or ""), str(meta["name"]), meta


def _annotations(meta: JSON) -> JSON:
    ann = meta.get("annotations")
    return ann if isinstance(ann, Mapping) else {}


def _alpn_annotation(ann: JSON) -> str | None:
    value = ann.get(ALPN_ANNOTATION)
    return _s(value) if isinstance(value, str) else None


def _list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedObject(f"{what} is not a list")
    return value


def _map(value: object, what: str) -> JSON:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedObject(f"{what} is not an object")
    return value


# -- records ------------------------------------------------------------------------------
# Every record is keyed by (namespace, name) in its informer; they only hold what a
# translation reads. `compare=False` fields (status signatures, resourceVersions) change
# without making the object's namespace dirty.


@dataclass(frozen=True, slots=True)
class IngressClassRec:
    name: str
    controller: str
    is_default: bool


@dataclass(frozen=True, slots=True)
class IngressRule:
    host: str | None
    service: str | None
    port: PortRef | None
    ignored_paths: tuple[str, ...] = ()
    unsupported: str | None = None
    """Why the rule's backend cannot be used (a `resource` backend, no root path)."""


@dataclass(frozen=True, slots=True)
class IngressRec:
    namespace: str
    name: str
    created: float
    class_name: str | None
    class_annotation: str | None
    default_service: str | None
    default_port: PortRef | None
    rules: tuple[IngressRule, ...]
    alpn_annotation: str | None = None
    """`sniffer.dev/alpn` as written; validated by the translation, which reports it."""


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    target: PortRef


@dataclass(frozen=True, slots=True)
class ServiceRec:
    """A Service, keyed by (namespace, name) in its informer and not holding them.

    Without its name most Services of a cluster look alike (same type, same port layout),
    so identical records are one shared object (see `parse_service`): in endpoints mode a
    Service costs the cache its dict slot and nothing else.
    """

    type: str
    cluster_ip: str | None
    """None for headless Services (`clusterIP: None`) and ExternalName ones."""
    external_name: str | None
    ports: tuple[ServicePort, ...]
    http_port: PortRef | None
    """The http-port annotation's value: where plaintext HTTP listeners send this host."""
    limit_annotations: tuple[tuple[str, str], ...] = ()
    """(key, value) of its `sniffer.dev/` limit annotations (see kubernetes/limits.py)."""


@dataclass(frozen=True, slots=True)
class SliceTarget:
    """What an EndpointSlice serves: its Service and ports (shared by most slices)."""

    service: str | None
    ports: tuple[tuple[str, int], ...]
    """(port name, port number) of the slice."""


@dataclass(frozen=True, slots=True)
class EndpointSliceRec:
    """An EndpointSlice, keyed by (namespace, name) in its informer and not holding them.

    Slices are the most numerous objects of a cluster, so the record is two references:
    the shared `SliceTarget` and one string of addresses.
    """

    target: SliceTarget
    addresses: str
    """First address of every endpoint whose `conditions.ready` is not false, sorted and
    comma-joined: one string instead of a tuple of strings is half the memory, and only
    the few slices a route reads are ever split."""

    @property
    def service(self) -> str | None:
        return self.target.service

    @property
    def ports(self) -> tuple[tuple[str, int], ...]:
        return self.target.ports

    def address_list(self) -> list[str]:
        return self.addresses.split(",") if self.addresses else []


@dataclass(frozen=True, slots=True)
class GatewayClassRec:
    name: str
    controller: str
    generation: int = field(compare=False, default=0)
    status_sig: int = field(compare=False, default=0)


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes LabelSelector (`matchLabels` and `matchExpressions`, ANDed)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    """(key, operator, values); an operator other than In, NotIn, Exists, DoesNotExist
    makes the selector match nothing (the API would have rejected it)."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for key, op, values in self.expressions:
            if op == "In":
                ok = key in labels and labels[key] in values
            elif op == "NotIn":
                ok = key not in labels or labels[key] not in values
            elif op == "Exists":
                ok = key in labels
            elif op == "DoesNotExist":
                ok = key not in labels
            else:
                ok = False
            if not ok:
                return False
        return True


def parse_label_selector(value: object, what: str) -> LabelSelector:
    sel = _map(value, what)
    labels = []
    for k, v in _map(sel.get("matchLabels"), f"{what}.matchLabels").items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise MalformedObject(f"{what}.matchLabels must map strings to strings")
        labels.append((_s(k), _s(v)))
    exprs = []
    for e in _list(sel.get("matchExpressions"), f"{what}.matchExpressions"):
        e = _map(e, f"{what}.matchExpressions[]")
        values = tuple(_s(v) for v in _list(e.get("values"), f"{what}.matchExpressions[].values"))
        exprs.append((_s(e.get("key") or ""), _s(e.get("operator") or ""), values))
    return LabelSelector(tuple(sorted(labels)), tuple(exprs))


@dataclass(frozen=True, slots=True)
class GatewayListenerRec:
    name: str
    port: int
    protocol: str
    tls_mode: str | None
    hostname: str | None
    allowed_from: str
    """`allowedRoutes.namespaces.from`: Same (default), All or Selector."""
    allowed_kinds: tuple[tuple[str, str], ...]
    """(group, kind) pairs; empty means the protocol's default (TLSRoute for TLS)."""
    selector: LabelSelector | None = None
    """`allowedRoutes.namespaces.selector`, read when `allowed_from` is Selector."""


@dataclass(frozen=True, slots=True)
class GatewayRec:
    namespace: str
    name: str
    class_name: str
    listeners: tuple[GatewayListenerRec, ...]
    generation: int = field(compare=False, default=0)
    status_sig: int = field(compare=False, default=0)


@dataclass(frozen=True, slots=True)
class ParentRef:
    group: str
    kind: str
    namespace: str
    name: str
    section: str | None
    port: int | None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"group": self.group, "kind": self.kind, "name": self.name}
        out["namespace"] = self.namespace
        if self.section is not None:
            out["sectionName"] = self.section
        if self.port is not None:
            out["port"] = self.port
        return out


@dataclass(frozen=True, slots=True)
class BackendRef:
    group: str
    kind: str
    namespace: str
    name: str
    port: int | None
    weight: int


@dataclass(frozen=True, slots=True)
class TLSRouteRec:
    namespace: str
    name: str
    created: float
    hostnames: tuple[str, ...]
    parents: tuple[ParentRef, ...]
    backends: tuple[BackendRef, ...]
    generation: int = field(compare=False, default=0)
    status_sig: int = field(compare=False, default=0)
    """Hash of the parent statuses sniffer's controller last wrote (see `status.py`)."""
    alpn_annotation: str | None = None
    """`sniffer.dev/alpn` as written; validated by the translation, which reports it."""


@dataclass(frozen=True, slots=True)
class ReferenceGrantRec:
    namespace: str
    name: str
    from_: tuple[tuple[str, str, str], ...]
    """(group, kind, namespace) allowed to refer."""
    to: tuple[tuple[str, str, str | None], ...]
    """(group, kind, name or None for all) that may be referred to."""


NAMESPACE_ANNOTATION_PREFIX = "sniffer.dev/"
"""Namespace annotations kept in `NamespaceRec` (per-tenant settings); others are dropped."""


@dataclass(frozen=True, slots=True)
class NamespaceRec:
    """A Namespace, filed under its own name: its labels and `sniffer.dev/*` annotations."""

    name: str
    labels: tuple[tuple[str, str], ...]
    """(key, value) sorted by key: what label selectors (`from: Selector`) match."""
    annotations: tuple[tuple[str, str], ...]
    """(key, value) of the `sniffer.dev/` annotations only, sorted by key."""

    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def annotation(self, key: str) -> str | None:
        """The value of annotation `key` (a `sniffer.dev/` one), or None."""
        return next((v for k, v in self.annotations if k == key), None)


Record = (
    IngressClassRec
    | IngressRec
    | ServiceRec
    | EndpointSliceRec
    | GatewayClassRec
    | GatewayRec
    | TLSRouteRec
    | ReferenceGrantRec
    | NamespaceRec
)


# -- parsers ------------------------------------------------------------------------------


def parse_ingress_class(obj: JSON) -> IngressClassRec:
    _, name, meta = _meta(obj)
    spec = _map(obj.get("spec"), "spec")
    default = _annotations(meta).get(DEFAULT_CLASS_ANNOTATION) == "true"
    return IngressClassRec(name, _s(spec.get("controller") or ""), default)


def _ingress_backend(backend: object) -> tuple[str | None, PortRef | None, str | None]:
    b = _map(backend, "backend")
    if b.get("resource") is not None:
        return None, None, "resource backends are not supported (TCP routing needs a Service)"
    svc = _map(b.get("service"), "backend.service")
    name = svc.get("name")
    port = _map(svc.get("port"), "backend.service.port")
    if not isinstance(name, str) or not name:
        return None, None, "backend.service.name missing"
    ref = port.get("number") if port.get("number") is not None else port.get("name")
    if ref is None:
        return _s(name), None, "backend.service.port missing"
    return _s(name), _port_ref(ref), None


def parse_ingress(obj: JSON) -> IngressRec:
    ns, name, meta = _meta(obj)
    spec = _map(obj.get("spec"), "spec")
    default_service: str | None = None
    default_port: PortRef | None = None
    if spec.get("defaultBackend") is not None:
        default_service, default_port, _ = _ingress_backend(spec["defaultBackend"])
    rules = []
    for rule in _list(spec.get("rules"), "spec.rules"):
        rule = _map(rule, "spec.rules[]")
        host = _opt_s(rule.get("host"))
        paths = _list(_map(rule.get("http"), "http").get("paths"), "http.paths")
        service: str | None = None
        port: PortRef | None = None
        ignored: list[str] = []
        unsupported: str | None = None
        root_seen = False
        for p in paths:
            p = _map(p, "paths[]")
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
        _opt_s(spec.get("ingressClassName")),
        _s(class_ann) if isinstance(class_ann, str) else None,
        default_service,
        default_port,
        tuple(rules),
        _alpn_annotation(ann),
    )


_SHARED: dict[object, object] = {}
"""Identical immutable parts (port lists) shared by every record that has them.

Most Services of a cluster have one of a few port layouts; sharing them is what keeps
the cache near the size of the names it must hold. Bounded by the layouts in use.
"""


def _shared(value: _T) -> _T:
    held = _SHARED.get(value)
    if held is None:
        if len(_SHARED) < 100_000:
            _SHARED[value] = value
        return value
    return held  # type: ignore[return-value]


def parse_service(obj: JSON, http_port_annotation: str, keep_cluster_ip: bool = True) -> ServiceRec:
    _, _, meta = _meta(obj)
    spec = _map(obj.get("spec"), "spec")
    stype = _s(spec.get("type") or "ClusterIP")
    cip = spec.get("clusterIP")
    cluster_ip = cip if isinstance(cip, str) and cip and cip != "None" else None
    ports = []
    for p in _list(spec.get("ports"), "spec.ports"):
        p = _map(p, "spec.ports[]")
        number = p.get("port")
        if not isinstance(number, int):
            raise MalformedObject("spec.ports[].port is not a number")
        target = p.get("targetPort")
        ports.append(
            _shared(
                ServicePort(
                    _s(p.get("name") or ""), number, number if target is None else _port_ref(target)
                )
            )
        )
    ann = _annotations(meta)
    http = ann.get(http_port_annotation)
    rec = ServiceRec(
        stype,
        cluster_ip if keep_cluster_ip else None,
        _opt_s(spec.get("externalName")) if stype == "ExternalName" else None,
        _shared(tuple(ports)),
        _port_ref(http.strip()) if isinstance(http, str) and http.strip() else None,
        limit_annotations(
            (k, v) for k, v in ann.items() if isinstance(k, str) and isinstance(v, str)
        ),
    )
    # Records without a ClusterIP or external name repeat across the cluster (a few
    # layouts); the others are unique and would only fill the shared table.
    return _shared(rec) if rec.cluster_ip is None and rec.external_name is None else rec


def parse_endpoint_slice(obj: JSON) -> EndpointSliceRec:
    _, _, meta = _meta(obj)
    labels = _map(meta.get("labels"), "metadata.labels")
    svc = labels.get(SERVICE_NAME_LABEL)
    ports = []
    for p in _list(obj.get("ports"), "ports"):
        p = _map(p, "ports[]")
        if isinstance(p.get("port"), int):
            ports.append((_s(p.get("name") or ""), int(p["port"])))
    addresses: list[str] = []
    for ep in _list(obj.get("endpoints"), "endpoints"):
        ep = _map(ep, "endpoints[]")
        if _map(ep.get("conditions"), "conditions").get("ready") is False:
            continue
        addrs = _list(ep.get("addresses"), "endpoints[].addresses")
        # All addresses of one endpoint are the same pod (the API calls them fungible).
        if addrs and isinstance(addrs[0], str) and "," not in addrs[0]:
            addresses.append(addrs[0])
    target = SliceTarget(_s(svc) if isinstance(svc, str) else None, tuple(sorted(ports)))
    return EndpointSliceRec(_shared(target), ",".join(sorted(addresses)))


def _generation(meta: JSON) -> int:
    gen = meta.get("generation")
    return gen if isinstance(gen, int) else 0


def _conditions_sig(entries: list[Any]) -> int:
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


def parse_gateway_class(obj: JSON) -> GatewayClassRec:
    _, name, meta = _meta(obj)
    spec = _map(obj.get("spec"), "spec")
    status = _map(obj.get("status"), "status")
    return GatewayClassRec(
        name,
        _s(spec.get("controllerName") or ""),
        _generation(meta),
        _conditions_sig(_list(status.get("conditions"), "status.conditions")),
    )


def gateway_status_sig(status: JSON) -> int:
    listeners = []
    for lis in _list(status.get("listeners"), "status.listeners"):
        lis = _map(lis, "status.listeners[]")
        kinds = tuple(
            (k.get("group"), k.get("kind"))
            for k in _list(lis.get("supportedKinds"), "supportedKinds")
            if isinstance(k, Mapping)
        )
        listeners.append(
            (
                lis.get("name"),
                lis.get("attachedRoutes"),
                kinds,
                _conditions_sig(_list(lis.get("conditions"), "conditions")),
            )
        )
    return hash((_conditions_sig(_list(status.get("conditions"), "conditions")), tuple(listeners)))


def parse_gateway(obj: JSON) -> GatewayRec:
    ns, name, meta = _meta(obj)
    spec = _map(obj.get("spec"), "spec")
    listeners = []
    for lis in _list(spec.get("listeners"), "spec.listeners"):
        lis = _map(lis, "spec.listeners[]")
        tls = _map(lis.get("tls"), "tls")
        allowed = _map(lis.get("allowedRoutes"), "allowedRoutes")
        kinds = tuple(
            (_s(k.get("group", GATEWAY_GROUP) or ""), _s(k.get("kind") or ""))
            for k in _list(allowed.get("kinds"), "allowedRoutes.kinds")
            if isinstance(k, Mapping)
        )
        port = lis.get("port")
        if not isinstance(port, int):
            raise MalformedObject("spec.listeners[].port is not a number")
        namespaces = _map(allowed.get("namespaces"), "namespaces")
        selector = namespaces.get("selector")
        listeners.append(
            GatewayListenerRec(
                _s(lis.get("name") or ""),
                port,
                _s(lis.get("protocol") or ""),
                _opt_s(tls.get("mode", "Terminate") if lis.get("tls") is not None else None),
                _opt_s(lis.get("hostname")),
                _s(namespaces.get("from") or "Same"),
                kinds,
                None
                if selector is None
                else parse_label_selector(selector, "allowedRoutes.namespaces.selector"),
            )
        )
    status = _map(obj.get("status"), "status")
    return GatewayRec(
        ns,
        name,
        _s(spec.get("gatewayClassName") or ""),
        tuple(listeners),
        _generation(meta),
        gateway_status_sig(status),
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
        key = parent_ref_key(_map(p.get("parentRef"), "parentRef"))
        rows.append((repr(key), _conditions_sig(_list(p.get("conditions"), "conditions"))))
    return hash(tuple(sorted(rows)))


def parse_tls_route(obj: JSON, controller: str) -> TLSRouteRec:
    ns, name, meta = _meta(obj)
    spec = _map(obj.get("spec"), "spec")
    hostnames = tuple(_s(h) for h in _list(spec.get("hostnames"), "spec.hostnames"))
    parents = []
    for ref in _list(spec.get("parentRefs"), "spec.parentRefs"):
        ref = _map(ref, "spec.parentRefs[]")
        port = ref.get("port")
        parents.append(
            ParentRef(
                _s(ref.get("group", GATEWAY_GROUP) or ""),
                _s(ref.get("kind") or "Gateway"),
                _s(ref.get("namespace") or ns),
                _s(ref.get("name") or ""),
                _opt_s(ref.get("sectionName")),
                port if isinstance(port, int) else None,
            )
        )
    backends = []
    for rule in _list(spec.get("rules"), "spec.rules"):
        for ref in _list(_map(rule, "spec.rules[]").get("backendRefs"), "backendRefs"):
            ref = _map(ref, "backendRefs[]")
            port = ref.get("port")
            weight = ref.get("weight", 1)
            backends.append(
                BackendRef(
                    _s(ref.get("group") or ""),
                    _s(ref.get("kind") or "Service"),
                    _s(ref.get("namespace") or ns),
                    _s(ref.get("name") or ""),
                    port if isinstance(port, int) else None,
                    weight if isinstance(weight, int) and weight >= 0 else 1,
                )
            )
    status = _map(obj.get("status"), "status")
    return TLSRouteRec(
        ns,
        name,
        parse_time(meta.get("creationTimestamp")),
        hostnames,
        tuple(parents),
        tuple(backends),
        _generation(meta),
        route_parents_sig(_list(status.get("parents"), "status.parents"), controller),
        _alpn_annotation(_annotations(meta)),
    )


def parse_reference_grant(obj: JSON) -> ReferenceGrantRec:
    ns, name, _ = _meta(obj)
    spec = _map(obj.get("spec"), "spec")
    from_ = tuple(
        (_s(f.get("group") or ""), _s(f.get("kind") or ""), _s(f.get("namespace") or ""))
        for f in _list(spec.get("from"), "spec.from")
        if isinstance(f, Mapping)
    )
    to = tuple(
        (_s(t.get("group") or ""), _s(t.get("kind") or ""), _opt_s(t.get("name")))
        for t in _list(spec.get("to"), "spec.to")
        if isinstance(t, Mapping)
    )
    return ReferenceGrantRec(ns, name, from_, to)


def _string_pairs(value: object, what: str, prefix: str = "") -> tuple[tuple[str, str], ...]:
    pairs = []
    for k, v in _map(value, what).items():
        if not isinstance(k, str) or not k.startswith(prefix):
            continue
        if not isinstance(v, str):
            raise MalformedObject(f"{what}[{k!r}] is not a string")
        pairs.append((_s(k), _s(v)))
    return tuple(sorted(pairs))


def parse_namespace(obj: JSON) -> NamespaceRec:
    _, name, meta = _meta(obj)
    return NamespaceRec(
        sys.intern(name),
        _string_pairs(meta.get("labels"), "metadata.labels"),
        _string_pairs(meta.get("annotations"), "metadata.annotations", NAMESPACE_ANNOTATION_PREFIX),
    )
