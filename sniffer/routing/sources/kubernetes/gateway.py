"""Gateway API into routes: which Gateways are sniffer's, and what a TLSRoute attaches to.

This module owns the Gateway API half of a namespace translation: Gateway listeners
(protocol, Passthrough, port, allowed kinds, `allowedRoutes.namespaces` including a
selector on the route namespace's labels), hostname intersection (multi-label
wildcards), backendRefs and ReferenceGrants, weights, and the per-parent outcome the
status writer reports; and what that writer needs besides (`gateway_is_ours`,
`listener_problem`). It must never do I/O or touch metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

from sniffer.observe.counting import count
from sniffer.routing.sources.kubernetes.kinds import GATEWAY_GROUP
from sniffer.routing.sources.kubernetes.outcomes import Condition, ParentOutcome, Work, alpn_of
from sniffer.routing.sources.kubernetes.records import (
    BackendRef,
    GatewayListenerRec,
    GatewayRec,
    ParentRef,
    TLSRouteRec,
)
from sniffer.routing.sources.kubernetes.services import Backends, find_port
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.sources.kubernetes.view import ClusterView
from sniffer.routing.table import Route, WeightedBackend
from sniffer.wire.hostname import normalize_route_host


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


def translate_tls_routes(
    w: Work,
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
        alpn = alpn_of(rt.alpn_annotation, source, problems)
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


def _tls_backends(
    view: ClusterView,
    settings: KubernetesSettings,
    rt: TLSRouteRec,
    backends: Backends,
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
        elif svc.type != "ExternalName" and find_port(svc, ref.port) is None:
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
