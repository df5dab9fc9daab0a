"""Ingresses into routes: which are sniffer's, and what their rules route.

This module owns the Ingress half of a namespace translation: the class test
(`ingressClassName`, the k8sniff-era annotation, a default IngressClass), one-label
wildcards, the rule's port on TLS listeners and the Service's http-port annotation on
HTTP listeners, and default-backend candidates (a `defaultBackend` or a rule without a
host). It must never do I/O or touch metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

from sniffer.routing.sources.kubernetes.outcomes import DefaultCandidate, Work, alpn_of
from sniffer.routing.sources.kubernetes.records import IngressClassRec, IngressRec, PortRef
from sniffer.routing.table import Route, WeightedBackend
from sniffer.wire.hostname import normalize_route_host


def ingress_is_ours(ing: IngressRec, classes: Mapping[str, IngressClassRec], cls: str) -> bool:
    """`ingressClassName`, else the k8sniff-era annotation, else our class being default."""
    if ing.class_name is not None:
        return ing.class_name == cls
    if ing.class_annotation is not None:
        return ing.class_annotation == cls
    ours = classes.get(cls)
    return ours is not None and ours.is_default


def translate_ingresses(w: Work) -> None:
    """The namespace's Ingresses (of our class) into `routes` and default candidates."""
    view, settings, listeners, ns = w.view, w.settings, w.listeners, w.ns
    routes, defaults, problems = w.routes, w.defaults, w.problems
    tls_names = frozenset(lis.name for lis in listeners if lis.protocol == "tls")
    http_names = frozenset(lis.name for lis in listeners if lis.protocol == "http")
    # Ingress: one-label wildcards, the rule's port on TLS listeners, the annotated port
    # on HTTP listeners.
    classes = view.ingress_classes()
    for ing in sorted(view.ingresses(ns).values(), key=lambda i: (i.created, i.name)):
        if not ingress_is_ours(ing, classes, settings.ingress_class):
            continue
        source = f"Ingress {ns}/{ing.name}"
        prec = (ing.created, f"{ns}/{ing.name}")
        alpn = alpn_of(ing.alpn_annotation, source, problems)
        if alpn is None:
            continue
        if ing.default_service is not None and ing.default_port is not None:
            tls_b, http_b = _resolve(w, ing.default_service, ing.default_port, source)
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
            tls_b, http_b = _resolve(w, rule.service, rule.port, source)
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


def _resolve(w: Work, service: str, port: PortRef, source: str) -> tuple[str, str | None]:
    """The backends of a Service port: for TLS listeners (the port), and for HTTP ones
    (the port its http-port annotation names; None without the annotation)."""
    tls_b = w.backends.resolve(w.ns, service, port, source)
    svc = w.view.services(w.ns).get(service)
    if svc is None or svc.http_port is None:
        return tls_b, None
    return tls_b, w.backends.resolve(w.ns, service, svc.http_port, source)
