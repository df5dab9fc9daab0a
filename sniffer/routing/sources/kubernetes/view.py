"""The cluster as the translation reads it: every informer's cache, typed per kind.

This module owns `ClusterView`, the one read-only window the translation and the status
writer have on the caches: a namespace -> name -> record mapping per kind, each typed by
its record, empty for a kind the cluster does not serve. It must never copy a cache
(the mappings it holds are live), write to one, or do I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from sniffer.routing.sources.kubernetes.records import (
    EndpointSliceRec,
    GatewayClassRec,
    GatewayRec,
    IngressClassRec,
    IngressRec,
    NamespaceRec,
    ReferenceGrantRec,
    ServiceRec,
    TLSRouteRec,
)
from sniffer.routing.sources.kubernetes.slices import SliceBucket

R = TypeVar("R")

Store = Mapping[str, Mapping[str, R]]
"""One kind's cache: namespace ("" for cluster-scoped kinds) -> name -> record."""


def _held(store: Store[R] | None) -> Store[R]:
    # `is None`, not falsiness: a live store that is empty now fills up later.
    return {} if store is None else store


def _bucket(store: Store[R], namespace: str) -> Mapping[str, R]:
    return store.get(namespace) or {}


class ClusterView:
    """Read access to every informer's cache, typed per kind (empty for absent kinds)."""

    __slots__ = (
        "_gateway_classes",
        "_gateways",
        "_grants",
        "_ingress_classes",
        "_ingresses",
        "_namespaces",
        "_services",
        "_slices",
        "_tls_routes",
    )

    def __init__(
        self,
        *,
        ingress_classes: Store[IngressClassRec] | None = None,
        ingresses: Store[IngressRec] | None = None,
        services: Store[ServiceRec] | None = None,
        slices: Store[EndpointSliceRec] | None = None,
        gateway_classes: Store[GatewayClassRec] | None = None,
        gateways: Store[GatewayRec] | None = None,
        tls_routes: Store[TLSRouteRec] | None = None,
        grants: Store[ReferenceGrantRec] | None = None,
        namespaces: Store[NamespaceRec] | None = None,
    ) -> None:
        self._ingress_classes = _held(ingress_classes)
        self._ingresses = _held(ingresses)
        self._services = _held(services)
        self._slices = _held(slices)
        self._gateway_classes = _held(gateway_classes)
        self._gateways = _held(gateways)
        self._tls_routes = _held(tls_routes)
        self._grants = _held(grants)
        self._namespaces = _held(namespaces)

    def ingress_classes(self) -> Mapping[str, IngressClassRec]:
        return _bucket(self._ingress_classes, "")

    def ingresses(self, ns: str) -> Mapping[str, IngressRec]:
        return _bucket(self._ingresses, ns)

    def services(self, ns: str) -> Mapping[str, ServiceRec]:
        return _bucket(self._services, ns)

    def slices(self, ns: str) -> Mapping[str, EndpointSliceRec]:
        return _bucket(self._slices, ns)

    def slices_of(self, ns: str, service: str) -> list[EndpointSliceRec]:
        """The slices of Service `ns/service` (labelled `kubernetes.io/service-name`)."""
        bucket = _bucket(self._slices, ns)
        if isinstance(bucket, SliceBucket):
            return bucket.of_service(service)
        return [s for s in bucket.values() if s.service == service]

    def gateway_classes(self) -> Mapping[str, GatewayClassRec]:
        return _bucket(self._gateway_classes, "")

    def gateways(self, ns: str) -> Mapping[str, GatewayRec]:
        return _bucket(self._gateways, ns)

    def all_gateways(self) -> list[GatewayRec]:
        return [g for bucket in self._gateways.values() for g in bucket.values()]

    def tls_routes(self, ns: str) -> Mapping[str, TLSRouteRec]:
        return _bucket(self._tls_routes, ns)

    def grants(self, ns: str) -> Mapping[str, ReferenceGrantRec]:
        return _bucket(self._grants, ns)

    def namespace(self, ns: str) -> NamespaceRec | None:
        """The Namespace object `ns` (labels, `sniffer.dev/*` annotations), if cached."""
        return _bucket(self._namespaces, ns).get(ns)

    def namespaces(self) -> set[str]:
        """Namespaces holding an Ingress or a TLSRoute: the ones that make routes."""
        return set(self._ingresses) | set(self._tls_routes)
