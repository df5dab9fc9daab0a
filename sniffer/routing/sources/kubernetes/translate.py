"""Translate cached records into routes and backends, one namespace at a time.

This module owns the meaning of the objects: which Ingresses are sniffer's, how a rule or
a TLSRoute becomes `Route`s on which listeners, how a Service port becomes a `Backend`
(EndpointSlices or ClusterIP), how Gateway listeners (kinds, `allowedRoutes.namespaces`
including a selector on the route namespace's labels), hostnames and ReferenceGrants gate
a TLSRoute, and the per-parent outcome its status reports. Everything here is a pure
function of a `ClusterView`, so the source can recompute only the namespaces that changed
and `compute_spec` can run it once. It must never do I/O or touch metrics.

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

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from sniffer.observe.counting import count
from sniffer.routing.sources.kubernetes.kinds import (
    ALPN_ANNOTATION,
    GATEWAY_GROUP,
    BackendRef,
    EndpointSliceRec,
    GatewayClassRec,
    GatewayListenerRec,
    GatewayRec,
    IngressClassRec,
    IngressRec,
    NamespaceRec,
    ParentRef,
    PortRef,
    ReferenceGrantRec,
    ServiceRec,
    TLSRouteRec,
)
from sniffer.routing.sources.kubernetes.limits import limits_from_annotations
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.table import (
    NO_LIMITS,
    Backend,
    Endpoint,
    Limits,
    Listener,
    Route,
    TableSpec,
    WeightedBackend,
    validate_alpn,
)
from sniffer.wire.hostname import normalize_route_host

Store = Mapping[str, Mapping[str, object]]


class ClusterView:
    """Read access to every informer's cache, typed per kind (empty for absent kinds)."""

    def __init__(self, stores: Mapping[str, Store]) -> None:
        self._stores = stores

    def _bucket(self, kind: str, namespace: str) -> Mapping[str, object]:
        store = self._stores.get(kind)
        return (store.get(namespace) if store is not None else None) or {}

    def ingress_classes(self) -> Mapping[str, IngressClassRec]:
        return self._bucket("IngressClass", "")  # type: ignore[return-value]

    def ingresses(self, ns: str) -> Mapping[str, IngressRec]:
        return self._bucket("Ingress", ns)  # type: ignore[return-value]

    def services(self, ns: str) -> Mapping[str, ServiceRec]:
        return self._bucket("Service", ns)  # type: ignore[return-value]

    def slices(self, ns: str) -> Mapping[str, EndpointSliceRec]:
        return self._bucket("EndpointSlice", ns)  # type: ignore[return-value]

    def gateway_classes(self) -> Mapping[str, GatewayClassRec]:
        return self._bucket("GatewayClass", "")  # type: ignore[return-value]

    def gateways(self, ns: str) -> Mapping[str, GatewayRec]:
        return self._bucket("Gateway", ns)  # type: ignore[return-value]

    def all_gateways(self) -> list[GatewayRec]:
        store = self._stores.get("Gateway") or {}
        return [g for bucket in store.values() for g in bucket.values()]  # type: ignore[misc]

    def tls_routes(self, ns: str) -> Mapping[str, TLSRouteRec]:
        return self._bucket("TLSRoute", ns)  # type: ignore[return-value]

    def grants(self, ns: str) -> Mapping[str, ReferenceGrantRec]:
        return self._bucket("ReferenceGrant", ns)  # type: ignore[return-value]

    def namespace(self, ns: str) -> NamespaceRec | None:
        """The Namespace object `ns` (labels, `sniffer.dev/*` annotations), if cached."""
        return self._bucket("Namespace", ns).get(ns)  # type: ignore[return-value]

    def namespaces(self) -> set[str]:
        out: set[str] = set()
        for kind in ("Ingress", "TLSRoute"):
            out.update(self._stores.get(kind) or ())
        return out


# -- outcomes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ParentOutcome:
    """What one TLSRoute parent (a Gateway of sniffer's class) thinks of the route."""

    ref: ParentRef
    accepted: Condition
    resolved: Condition
    hosts: tuple[str, ...] = ()
    """Route hosts this parent made live (for conflict messages)."""


@dataclass(frozen=True, slots=True)
class DefaultCandidate:
    precedence: tuple[float, str]
    tls_backend: str | None
    http_backend: str | None


@dataclass(slots=True)
class NamespaceResult:
    """Everything one namespace contributes; cached until the namespace is dirty again."""

    routes: tuple[Route, ...] = ()
    backends: dict[str, Backend] = field(default_factory=dict)
    defaults: tuple[DefaultCandidate, ...] = ()
    problems: tuple[str, ...] = ()
    deps: frozenset[str] = frozenset()
    """Other namespaces this one read (cross-namespace backendRefs and their grants)."""
    route_status: dict[str, tuple[ParentOutcome, ...]] = field(default_factory=dict)
    """TLSRoute name -> outcome per parent of sniffer's (for status writes)."""
    attachments: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """(gateway namespace, gateway name, listener name) -> routes attached."""
    tenant_limits: Limits = NO_LIMITS
    """The tenant's (this namespace's) limits, from its Namespace's annotations."""

    def same_routing(self, other: NamespaceResult) -> bool:
        return (
            self.routes == other.routes
            and self.backends == other.backends
            and self.defaults == other.defaults
            and self.tenant_limits == other.tenant_limits
        )


# -- helpers ------------------------------------------------------------------------------


def _find_port(svc: ServiceRec, ref: PortRef) -> int | None:
    for p in svc.ports:
        if (p.name == ref) if isinstance(ref, str) else (p.port == ref):
            return p.port
    return None


class _Backends:
    """Resolves Service ports to `Backend`s for one namespace translation (memoised)."""

    def __init__(self, view: ClusterView, settings: KubernetesSettings, problems: list[str]):
        self.view = view
        self.settings = settings
        self.problems = problems
        self.out: dict[str, Backend] = {}
        self._slices: dict[str, dict[str, list[EndpointSliceRec]]] = {}

    def _slices_of(self, ns: str, service: str) -> list[EndpointSliceRec]:
        index = self._slices.get(ns)
        if index is None:
            index = self._slices[ns] = {}
            for s in self.view.slices(ns).values():
                if s.service is not None:
                    index.setdefault(s.service, []).append(s)
        return index.get(service, [])

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
            number = port if isinstance(port, int) else _find_port(svc, port)
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

    def _endpoints(
        self, ns: str, service: str, svc: ServiceRec, port: PortRef, source: str
    ) -> tuple[Endpoint, ...]:
        sp = next(
            (p for p in svc.ports if (p.name == port if isinstance(port, str) else p.port == port)),
            None,
        )
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


def ingress_is_ours(ing: IngressRec, classes: Mapping[str, IngressClassRec], cls: str) -> bool:
    """`ingressClassName`, else the k8sniff-era annotation, else our class being default."""
    if ing.class_name is not None:
        return ing.class_name == cls
    if ing.class_annotation is not None:
        return ing.class_annotation == cls
    ours = classes.get(cls)
    return ours is not None and ours.is_default


def _wild_covers(wild: str, name: str) -> bool:
    suffix = wild[1:]  # ".a.com"
    return name.endswith(suffix) and len(name) > len(suffix)


def intersect_hostnames(route: str, listener: str | None) -> str | None:
    """The hostname a route serves through a listener (Gateway API rules), or None."""
    if listener is None or route == listener:
        return route
    r_wild, l_wild = route.startswith("*."), listener.startswith("*.")
    if r_wild and l_wild:
        if route[1:].endswith(listener[1:]):
            return route
        if listener[1:].endswith(route[1:]):
            return listener
        return None
    if r_wild:
        return listener if _wild_covers(route, listener) else None
    if l_wild:
        return route if _wild_covers(listener, route) else None
    return None


def _cond(kind: str, ok: bool, reason: str, message: str) -> Condition:
    return Condition(kind, ok, reason, message)


# -- the translation ----------------------------------------------------------------------


def translate_namespace(
    view: ClusterView,
    settings: KubernetesSettings,
    listeners: tuple[Listener, ...],
    ns: str,
) -> NamespaceResult:
    problems: list[str] = []
    w = _Work(view, settings, listeners, ns, _Backends(view, settings, problems), problems)
    _translate_ingresses(w)
    route_status, attachments = _translate_tls_routes(w)
    tenant_limits = _tenant_limits(view, ns, problems)
    return NamespaceResult(
        routes=tuple(w.routes),
        backends=w.backends.out,
        defaults=tuple(w.defaults),
        problems=tuple(problems),
        deps=frozenset(w.deps - {ns}),
        route_status=route_status,
        attachments=attachments,
        tenant_limits=tenant_limits,
    )


@dataclass(slots=True)
class _Work:
    """One namespace's translation: what every step reads, and what they add to."""

    view: ClusterView
    settings: KubernetesSettings
    listeners: tuple[Listener, ...]
    ns: str
    backends: _Backends
    problems: list[str]
    routes: list[Route] = field(default_factory=list)
    defaults: list[DefaultCandidate] = field(default_factory=list)
    deps: set[str] = field(default_factory=set)
    """Namespaces whose objects this one's routes read (ReferenceGrants, Services)."""


def _translate_ingresses(w: _Work) -> None:
    """The namespace's Ingresses (of our class) into `routes` and default candidates."""
    view, settings, listeners, ns = w.view, w.settings, w.listeners, w.ns
    backends, routes, defaults, problems = w.backends, w.routes, w.defaults, w.problems
    tls_names = frozenset(lis.name for lis in listeners if lis.protocol == "tls")
    http_names = frozenset(lis.name for lis in listeners if lis.protocol == "http")
    # Ingress: one-label wildcards, the rule's port on TLS listeners, the annotated port
    # on HTTP listeners.
    classes = view.ingress_classes()
    services = view.services(ns)
    for ing in sorted(view.ingresses(ns).values(), key=lambda i: (i.created, i.name)):
        if not ingress_is_ours(ing, classes, settings.ingress_class):
            continue
        source = f"Ingress {ns}/{ing.name}"
        prec = (ing.created, f"{ns}/{ing.name}")
        alpn = _alpn(ing.alpn_annotation, source, problems)
        if alpn is None:
            continue
        if ing.default_service is not None and ing.default_port is not None:
            tls_b = backends.resolve(ns, ing.default_service, ing.default_port, source)
            svc = services.get(ing.default_service)
            http_b = (
                backends.resolve(ns, ing.default_service, svc.http_port, source)
                if svc is not None and svc.http_port is not None
                else None
            )
            defaults.append(DefaultCandidate(prec, tls_b, http_b))
        for rule in ing.rules:
            for path in rule.ignored_paths:
                problems.append(
                    f"{source}: host {rule.host or '*'} path {path!r} ignored "
                    "(TCP routing has no paths)"
                )
            if rule.unsupported is not None or rule.service is None or rule.port is None:
                problems.append(f"{source}: host {rule.host or '*'}: {rule.unsupported}")
                continue
            tls_b = backends.resolve(ns, rule.service, rule.port, source)
            svc = services.get(rule.service)
            http_b = (
                backends.resolve(ns, rule.service, svc.http_port, source)
                if svc is not None and svc.http_port is not None
                else None
            )
            if rule.host is None:
                # A rule without a host applies to every name: the listener default.
                defaults.append(DefaultCandidate(prec, tls_b, http_b))
                continue
            try:
                host = normalize_route_host(rule.host)
            except ValueError as exc:
                problems.append(f"{source}: host {rule.host!r}: {exc}")
                continue
            if tls_names:
                routes.append(
                    Route(host, (WeightedBackend(tls_b),), tls_names, False, source, prec, alpn)
                )
            if http_names and http_b is not None:
                routes.append(
                    Route(host, (WeightedBackend(http_b),), http_names, False, source, prec)
                )


def _translate_tls_routes(
    w: _Work,
) -> tuple[dict[str, tuple[ParentOutcome, ...]], dict[tuple[str, str, str], int]]:
    """The namespace's TLSRoutes into `routes`; their status per parent and how many
    routes attach to each Gateway listener."""
    view, settings, listeners, ns = w.view, w.settings, w.listeners, w.ns
    backends, routes, deps, problems = w.backends, w.routes, w.deps, w.problems
    # Gateway API TLSRoute: multi-label wildcards, weights, status per parent.
    route_status: dict[str, tuple[ParentOutcome, ...]] = {}
    attachments: dict[tuple[str, str, str], int] = {}
    tls_by_port: dict[int, list[str]] = {}
    for lis in listeners:
        if lis.protocol == "tls":
            # A hostPort may map the Gateway's 443 onto a bound 8443: match what clients use.
            tls_by_port.setdefault(lis.serves_port, []).append(lis.name)
    for rt in sorted(view.tls_routes(ns).values(), key=lambda r: (r.created, r.name)):
        source = f"TLSRoute {ns}/{rt.name}"
        prec = (rt.created, f"{ns}/{rt.name}")
        alpn = _alpn(rt.alpn_annotation, source, problems)
        weighted, resolved = _tls_backends(view, settings, rt, backends, deps, source)
        hosts: dict[str, set[str]] = {}
        outcomes: list[ParentOutcome] = []
        for parent in rt.parents:
            outcome = _attach(view, settings, rt, parent, resolved, tls_by_port, hosts, attachments)
            if outcome is not None:
                outcomes.append(outcome)
                if not outcome.accepted.status:
                    problems.append(
                        f"{source}: parent {parent.namespace}/{parent.name}: "
                        f"{outcome.accepted.reason}: {outcome.accepted.message}"
                    )
        if not resolved.status:
            problems.append(f"{source}: {resolved.reason}: {resolved.message}")
        if outcomes:
            route_status[rt.name] = tuple(outcomes)
        if weighted and alpn is not None:
            for host, names in sorted(hosts.items()):
                routes.append(Route(host, weighted, frozenset(names), True, source, prec, alpn))
    return route_status, attachments


def _tenant_limits(view: ClusterView, ns: str, problems: list[str]) -> Limits:
    """The tenant's limits from its Namespace's annotations."""
    tenant_limits = NO_LIMITS
    namespace = view.namespace(ns)
    if namespace is not None and namespace.annotations:
        tenant_limits, bad = limits_from_annotations(
            namespace.annotations, "tenant", f"Namespace {ns}"
        )
        problems.extend(bad)
    return tenant_limits


def _alpn(annotation: str | None, source: str, problems: list[str]) -> tuple[str, ...] | None:
    """The object's `sniffer.dev/alpn` list; None (and a problem) when it is unusable.

    An object with a bad list is not routed at all: routing it without the list would
    take every client of its hostnames, not only the protocols it asked for.
    """
    if annotation is None:
        return ()
    try:
        return validate_alpn(annotation.split(","))
    except ValueError as exc:
        problems.append(f"{source}: annotation {ALPN_ANNOTATION}: {exc}; not routed")
        return None


def _tls_backends(
    view: ClusterView,
    settings: KubernetesSettings,
    rt: TLSRouteRec,
    backends: _Backends,
    deps: set[str],
    source: str,
) -> tuple[tuple[WeightedBackend, ...], Condition]:
    weighted: list[WeightedBackend] = []
    resolved = _cond("ResolvedRefs", True, "ResolvedRefs", "All references resolved")

    def fail(reason: str, message: str) -> None:
        nonlocal resolved
        if resolved.status:  # the first failure names the condition
            resolved = _cond("ResolvedRefs", False, reason, message)

    for ref in rt.backends:
        where = f"{ref.namespace}/{ref.name}"
        if ref.group not in ("", "core") or ref.kind != "Service":
            fail(
                "InvalidKind",
                f"backendRef {ref.group or 'core'}/{ref.kind} {where} is not a Service",
            )
            # The invalid ref keeps its share of connections, which are refused (spec).
            weighted.append(
                WeightedBackend(
                    backends.empty(f"invalid:{ref.kind} {where}", rt.namespace, source), ref.weight
                )
            )
            continue
        if ref.namespace != rt.namespace:
            deps.add(ref.namespace)
            if not _granted(view, rt, ref):
                fail(
                    "RefNotPermitted",
                    f"no ReferenceGrant in {ref.namespace} allows Service {where}",
                )
                weighted.append(
                    WeightedBackend(
                        backends.empty(f"forbidden:{where}", rt.namespace, source), ref.weight
                    )
                )
                continue
        if ref.port is None:
            fail("BackendNotFound", f"backendRef Service {where} needs a port")
            weighted.append(
                WeightedBackend(backends.empty(f"{where}:?", ref.namespace, source), ref.weight)
            )
            continue
        svc = view.services(ref.namespace).get(ref.name)
        if svc is None:
            fail("BackendNotFound", f"Service {where} not found")
        elif svc.type != "ExternalName" and _find_port(svc, ref.port) is None:
            fail("BackendNotFound", f"Service {where} has no port {ref.port}")
        weighted.append(
            WeightedBackend(backends.resolve(ref.namespace, ref.name, ref.port, source), ref.weight)
        )
    return tuple(weighted), resolved


def _granted(view: ClusterView, rt: TLSRouteRec, ref: BackendRef) -> bool:
    for grant in view.grants(ref.namespace).values():
        if not any(
            g == GATEWAY_GROUP and k == "TLSRoute" and n == rt.namespace for g, k, n in grant.from_
        ):
            continue
        if any(
            g in ("", "core") and k == "Service" and n in (None, ref.name) for g, k, n in grant.to
        ):
            return True
    return False


def gateway_is_ours(view: ClusterView, settings: KubernetesSettings, gw: GatewayRec) -> bool:
    gc = view.gateway_classes().get(gw.class_name)
    return (
        gc is not None
        and gw.class_name == settings.gateway_class
        and gc.controller == settings.controller_name
    )


def listener_problem(
    lis: GatewayListenerRec, tls_ports: Mapping[int, object]
) -> tuple[str, str] | None:
    """Why sniffer cannot serve a Gateway listener: (reason, message), or None."""
    if lis.protocol != "TLS":
        return "UnsupportedProtocol", f"protocol {lis.protocol} is not served; use TLS"
    if lis.tls_mode != "Passthrough":
        return "UnsupportedValue", "sniffer never terminates TLS: set tls.mode Passthrough"
    if lis.port not in tls_ports:
        return "PortUnavailable", f"sniffer does not listen for TLS on port {lis.port}"
    return None


def _kind_allowed(lis: GatewayListenerRec) -> bool:
    return not lis.allowed_kinds or any(
        g == GATEWAY_GROUP and k == "TLSRoute" for g, k in lis.allowed_kinds
    )


def _namespace_allowed(view: ClusterView, gw: GatewayRec, lis: GatewayListenerRec, ns: str) -> bool:
    """`allowedRoutes.namespaces`: All, Same (the default), or Selector on the route
    namespace's labels (a namespace not in the cache matches no selector)."""
    if lis.allowed_from == "All":
        return True
    if lis.allowed_from == "Same":
        return ns == gw.namespace
    if lis.allowed_from == "Selector" and lis.selector is not None:
        rec = view.namespace(ns)
        return rec is not None and lis.selector.matches(rec.label_map())
    return False


def _listener_admits(view: ClusterView, gw: GatewayRec, lis: GatewayListenerRec, ns: str) -> bool:
    """A TLS listener that allows TLSRoutes from namespace `ns`."""
    return lis.protocol == "TLS" and _kind_allowed(lis) and _namespace_allowed(view, gw, lis, ns)


def _attach(
    view: ClusterView,
    settings: KubernetesSettings,
    rt: TLSRouteRec,
    parent: ParentRef,
    resolved: Condition,
    tls_by_port: Mapping[int, list[str]],
    hosts: dict[str, set[str]],
    attachments: dict[tuple[str, str, str], int],
) -> ParentOutcome | None:
    """Attach `rt` to one parent Gateway: its hostnames into `hosts`, a count per Gateway
    listener into `attachments`, and the parent's status; None when not ours to judge."""
    if parent.group != GATEWAY_GROUP or parent.kind != "Gateway":
        return None
    gw = view.gateways(parent.namespace).get(parent.name)
    if gw is None or not gateway_is_ours(view, settings, gw):
        return None  # not ours to judge (or not there): another controller may own it

    def reject(reason: str, message: str) -> ParentOutcome:
        return ParentOutcome(parent, _cond("Accepted", False, reason, message), resolved)

    usable = _usable_listeners(view, gw, parent, rt.namespace, tls_by_port)
    if isinstance(usable, tuple):
        return reject(*usable)
    route_hosts, bad = _route_hostnames(rt)
    if bad and not route_hosts:
        return reject("UnsupportedValue", "; ".join(bad))
    made = _intersect(gw, usable, route_hosts, tls_by_port, hosts, attachments)
    if isinstance(made, tuple):
        return reject(*made)
    if not made:
        return reject(
            "NoMatchingListenerHostname",
            "no route hostname intersects a listener hostname of the Gateway",
        )
    return ParentOutcome(
        parent,
        _cond("Accepted", True, "Accepted", "Route is accepted"),
        resolved,
        tuple(sorted(set(made))),
    )


def _usable_listeners(
    view: ClusterView,
    gw: GatewayRec,
    parent: ParentRef,
    namespace: str,
    tls_by_port: Mapping[int, list[str]],
) -> list[GatewayListenerRec] | tuple[str, str]:
    """The Gateway listeners the parent ref names that admit the route and that sniffer
    serves, or the (reason, message) of the rejection."""
    candidates = [
        lis
        for lis in gw.listeners
        if (parent.section is None or lis.name == parent.section)
        and (parent.port is None or lis.port == parent.port)
    ]
    if not candidates:
        return ("NoMatchingParent", "no listener of the Gateway matches sectionName/port")
    allowed = [lis for lis in candidates if _listener_admits(view, gw, lis, namespace)]
    if not allowed:
        return (
            "NotAllowedByListeners",
            "no TLS listener of the Gateway allows TLSRoutes from namespace " + namespace,
        )
    usable = [lis for lis in allowed if listener_problem(lis, tls_by_port) is None]
    if not usable:
        reason, message = listener_problem(allowed[0], tls_by_port) or ("", "")
        return ("NotAllowedByListeners", f"listener {allowed[0].name}: {message} ({reason})")
    return usable


def _route_hostnames(rt: TLSRouteRec) -> tuple[list[str], list[str]]:
    """The route's hostnames normalised, and the problems of those that are not names."""
    route_hosts: list[str] = []
    bad: list[str] = []
    for h in rt.hostnames:
        try:
            route_hosts.append(normalize_route_host(h))
        except ValueError as exc:
            bad.append(str(exc))
    return route_hosts, bad


def _intersect(
    gw: GatewayRec,
    usable: list[GatewayListenerRec],
    route_hosts: list[str],
    tls_by_port: Mapping[int, list[str]],
    hosts: dict[str, set[str]],
    attachments: dict[tuple[str, str, str], int],
) -> list[str] | tuple[str, str]:
    """Route hostnames intersected with each listener's: the names made (also added to
    `hosts` and counted in `attachments`), or a rejection (reason, message)."""
    made: list[str] = []
    for lis in usable:
        lis_host = None
        if lis.hostname:
            try:
                lis_host = normalize_route_host(lis.hostname)
            except ValueError:
                continue
        candidates_h = route_hosts or ([lis_host] if lis_host else [])
        if not candidates_h:
            return (
                "UnsupportedValue",
                f"no hostnames on the route or listener {lis.name}: sniffer routes by name",
            )
        matched = False
        for rh in candidates_h:
            host = intersect_hostnames(rh, lis_host)
            if host is None:
                continue
            matched = True
            hosts.setdefault(host, set()).update(tls_by_port[lis.port])
            made.append(host)
        if matched:
            count(attachments, (gw.namespace, gw.name, lis.name))
    return made


# -- assembly -----------------------------------------------------------------------------


def assemble(listeners: tuple[Listener, ...], results: Mapping[str, NamespaceResult]) -> TableSpec:
    """Concatenate the namespaces' results into one spec; oldest Ingress default wins."""
    routes: list[Route] = []
    backends: dict[str, Backend] = {}
    best: dict[str, tuple[tuple[float, str], str]] = {}
    for ns in sorted(results):
        res = results[ns]
        routes.extend(res.routes)
        for name, b in res.backends.items():
            backends.setdefault(name, b)
        for cand in res.defaults:
            for proto, b_name in (("tls", cand.tls_backend), ("http", cand.http_backend)):
                if b_name is None:
                    continue
                held = best.get(proto)
                if held is None or cand.precedence < held[0]:
                    best[proto] = (cand.precedence, b_name)
    out_listeners = tuple(
        lis
        if lis.default_backend is not None or lis.protocol not in best
        else dataclasses.replace(lis, default_backend=best[lis.protocol][1])
        for lis in listeners
    )
    return TableSpec(
        listeners=out_listeners,
        backends=tuple(backends[n] for n in sorted(backends)),
        routes=tuple(routes),
        tenant_limits=tuple(
            (ns, results[ns].tenant_limits)
            for ns in sorted(results)
            if not results[ns].tenant_limits.is_empty()
        ),
    )
