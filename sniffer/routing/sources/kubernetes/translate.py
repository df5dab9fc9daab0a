"""Translate cached records into routes and backends, one namespace at a time.

This module owns the assembly: a namespace's translation (its Ingresses, see `ingress`;
its TLSRoutes, see `gateway`; the Services they reach, see `services`; its tenant limits)
into one `NamespaceResult`, and the concatenation of every namespace's result into one
`TableSpec` (the oldest Ingress default backend wins). Everything here is a pure function
of a `ClusterView`, so the source can recompute only the namespaces that changed and
`compute_spec` can run it once. It must never do I/O or touch metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from sniffer.routing.sources.kubernetes.gateway import translate_tls_routes
from sniffer.routing.sources.kubernetes.ingress import translate_ingresses
from sniffer.routing.sources.kubernetes.limits import limits_from_annotations
from sniffer.routing.sources.kubernetes.outcomes import NamespaceResult, Work
from sniffer.routing.sources.kubernetes.services import Backends
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.sources.kubernetes.view import ClusterView
from sniffer.routing.table import NO_LIMITS, Backend, Limits, Listener, Route, TableSpec


def translate_namespace(
    view: ClusterView,
    settings: KubernetesSettings,
    listeners: tuple[Listener, ...],
    ns: str,
) -> NamespaceResult:
    problems: list[str] = []
    w = Work(view, settings, listeners, ns, Backends(view, settings, problems), problems)
    translate_ingresses(w)
    route_status, attachments = translate_tls_routes(w)
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
