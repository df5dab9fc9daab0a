"""What translating one namespace produces, and the working state its steps share.

This module owns the translation's result types: a condition, a TLSRoute parent's
outcome (what its status reports), an Ingress default-backend candidate and the
`NamespaceResult` the source caches per namespace; and `Work`, what the Ingress and
Gateway API steps of one namespace read and add to. It must never do I/O or touch metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sniffer.routing.sources.kubernetes.kinds import ALPN_ANNOTATION
from sniffer.routing.sources.kubernetes.records import ParentRef
from sniffer.routing.sources.kubernetes.services import Backends
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.sources.kubernetes.view import ClusterView
from sniffer.routing.table import NO_LIMITS, Backend, Limits, Listener, Route, validate_alpn


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


@dataclass(slots=True)
class Work:
    """One namespace's translation: what every step reads, and what they add to."""

    view: ClusterView
    settings: KubernetesSettings
    listeners: tuple[Listener, ...]
    ns: str
    backends: Backends
    problems: list[str]
    routes: list[Route] = field(default_factory=list)
    defaults: list[DefaultCandidate] = field(default_factory=list)
    deps: set[str] = field(default_factory=set)
    """Namespaces whose objects this one's routes read (ReferenceGrants, Services)."""


def alpn_of(annotation: str | None, source: str, problems: list[str]) -> tuple[str, ...] | None:
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
