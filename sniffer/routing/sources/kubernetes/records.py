"""The records sniffer keeps of each Kubernetes object: only the fields routing reads.

This module owns the API types of the cache (as client-go's typed objects, but slotted
and reduced): one frozen record per kind, keyed by (namespace, name) in its informer.
Records compare equal when nothing routing-relevant changed, which is what makes
resync-style no-op events free; `compare=False` fields (status signatures, generations)
change without making the object's namespace dirty. It must never parse raw JSON (see
`parsers`), do I/O, or hold anything routing does not read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PortRef = int | str
"""A Service port as written: a number or a port name."""


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
