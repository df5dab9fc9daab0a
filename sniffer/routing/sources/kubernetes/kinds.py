"""The Kubernetes kinds sniffer reads: where each lives in the API, and the RBAC it needs.

This module owns the registry (group, versions, plural and cache filing of each kind,
as client-go's GVR registry), the exact RBAC the source needs (`RBAC_RULES`, compared
against the shipped ClusterRole) and the well-known labels and annotations sniffer reads.
The records kept of each object are in `records`, the decoding in `parsers`, the status
signatures in `signatures`. It must never do I/O, hold an object or read Secrets.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

GATEWAY_GROUP = "gateway.networking.k8s.io"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
ALPN_ANNOTATION = "sniffer.dev/alpn"
"""On an Ingress or TLSRoute: a comma list of ALPN protocols its routes are for."""
NAMESPACE_ANNOTATION_PREFIX = "sniffer.dev/"
"""Namespace annotations kept in `NamespaceRec` (per-tenant settings); others are dropped."""


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
