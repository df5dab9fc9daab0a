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
from collections.abc import Iterable, Mapping
from itertools import chain, compress, repeat
from operator import attrgetter, is_not

from sniffer.routing.sources.kubernetes.gateway import translate_tls_routes
from sniffer.routing.sources.kubernetes.ingress import translate_ingresses
from sniffer.routing.sources.kubernetes.limits import limits_from_annotations
from sniffer.routing.sources.kubernetes.outcomes import NamespaceResult, Work
from sniffer.routing.sources.kubernetes.services import Backends
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.sources.kubernetes.view import ClusterView
from sniffer.routing.table import NO_LIMITS, Limits, Listener, TableSpec


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


def keep_unchanged(new: NamespaceResult, old: NamespaceResult) -> NamespaceResult:
    """`new` with every route and backend equal to one of `old` replaced by `old`'s very
    object: downstream (the table build, the delta to the workers) then tells what
    changed by identity, without comparing 10,000 routes by value."""
    if new.routes == old.routes:
        new.routes = old.routes
    elif old.routes:
        held = {r: r for r in old.routes}
        new.routes = tuple(held.get(r, r) for r in new.routes)
    for name, b in new.backends.items():
        was = old.backends.get(name)
        if was is not None and was is not b and was == b:
            new.backends[name] = was
    return new


_BACKENDS = attrgetter("backends")
_DEFAULTS = attrgetter("defaults")
_ROUTES = attrgetter("routes")
_LIMITS = attrgetter("tenant_limits")


class AssemblyMemo:
    """What `assemble` can keep between calls: the sorted namespaces and backend names,
    sorted again only when the set of them changed (at 2,000 tenants sorting both took
    a third of an assembly, and one changed namespace rarely adds a name)."""

    __slots__ = ("backend_names", "namespaces")

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.backend_names: list[str] = []


def _sorted(keys: Iterable[str], held: list[str]) -> list[str]:
    """`sorted(keys)`, or `held` when it already is exactly that."""
    now = set(keys)
    if len(now) == len(held) and now.issuperset(held):
        return held
    return sorted(now)


def assemble(
    listeners: tuple[Listener, ...],
    results: Mapping[str, NamespaceResult],
    memo: AssemblyMemo | None = None,
) -> TableSpec:
    """Concatenate the namespaces' results (in namespace order) into one spec; on a
    backend name two namespaces produce the first namespace's wins; the oldest Ingress
    default wins. Every walk over all namespaces here runs in C (`map`, `chain`,
    `compress`): at 10,000 tenants the Python loops it had were most of a publish."""
    memo = memo or AssemblyMemo()
    order = memo.namespaces = _sorted(results, memo.namespaces)
    ordered = list(map(results.__getitem__, order))
    # The first namespace's backend, written last, wins.
    backends = dict(chain.from_iterable(map(dict.items, map(_BACKENDS, reversed(ordered)))))
    names = memo.backend_names = _sorted(backends, memo.backend_names)
    best: dict[str, tuple[tuple[float, str], str]] = {}
    for cand in chain.from_iterable(map(_DEFAULTS, ordered)):
        for proto, b_name in (
            ("tls", cand.tls_backend),
            ("http", cand.http_backend),
            ("quic", cand.quic_backend),
        ):
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
    limits = list(map(_LIMITS, ordered))
    held_limits = compress(zip(order, limits, strict=True), map(is_not, limits, repeat(NO_LIMITS)))
    return TableSpec(
        listeners=out_listeners,
        backends=tuple(map(backends.__getitem__, names)),
        routes=tuple(chain.from_iterable(map(_ROUTES, ordered))),
        tenant_limits=tuple((ns, lim) for ns, lim in held_limits if not lim.is_empty()),
    )
