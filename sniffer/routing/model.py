"""The route model: listeners, backends, endpoints, routes, limits and a table's spec.

This module owns the immutable value types every source produces and the data plane
reads, and their validation (`validate_alpn`). It must never index, look up or encode
them (`sniffer.routing.table`, `sniffer.routing.codec`) or do I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from sniffer.routing.address import join_host_port

ProxyProtocol = Literal["none", "v1", "v2"]
Protocol = Literal["tls", "http", "quic"]


LIMIT_FIELDS = ("max_connections", "connections_per_second", "burst", "max_pending_dials")
"""Every limit a scope can set; which scopes honour which is in `SCOPE_FIELDS`."""
SCOPE_FIELDS = {
    "tenant": ("max_connections", "connections_per_second", "burst"),
    "backend": LIMIT_FIELDS,
    "client": ("max_connections",),
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits set at one place (a default, a tenant, a backend); None leaves it to the
    next place out (backend/tenant override -> default -> unlimited)."""

    max_connections: int | None = None
    connections_per_second: float | None = None
    burst: int | None = None
    """Token-bucket size for `connections_per_second` (default: one second's worth)."""
    max_pending_dials: int | None = None
    """Dials in flight to a backend: a blackholed backend cannot hold every slot."""
    source: str = ""
    """Where these were set, for `route-table` (file:line, Namespace x, flag)."""

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in LIMIT_FIELDS)

    def values(self) -> dict[str, float]:
        return {f: v for f in LIMIT_FIELDS if (v := getattr(self, f)) is not None}

    def under(self, outer: Limits) -> Limits:
        """These limits with `outer`'s filling every field left unset (source: ours)."""
        got = {f: getattr(self, f) for f in LIMIT_FIELDS}
        for f, v in got.items():
            if v is None:
                got[f] = getattr(outer, f)
        return Limits(**got, source=self.source or outer.source)


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class LimitDefaults:
    """The `limits:` section: what applies where no tenant or backend says otherwise."""

    tenant: Limits = NO_LIMITS
    backend: Limits = NO_LIMITS
    client: Limits = NO_LIMITS

    def under(self, outer: LimitDefaults) -> LimitDefaults:
        return LimitDefaults(
            self.tenant.under(outer.tenant),
            self.backend.under(outer.backend),
            self.client.under(outer.client),
        )


NO_LIMIT_DEFAULTS = LimitDefaults()


@dataclass(frozen=True, slots=True)
class EffectiveLimit:
    """One limit in force and where it came from."""

    value: float
    source: str


class MatchKind(StrEnum):
    EXACT = "exact"
    WILDCARD = "wildcard"
    DEFAULT = "default"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    text: str = field(init=False, repr=False, compare=False)
    """`host:port` (`[host]:port` for IPv6), made once: every access-log line prints it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", join_host_port(self.host, self.port))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    """Unique key: the file's backend name, or `namespace/service:port` from Kubernetes."""
    tenant: str
    """Metric label: the Service's namespace, or the file's `tenant:` (default: the name)."""
    endpoints: tuple[Endpoint, ...]
    """Ready endpoints in dial order; empty means the route exists but cannot be served."""
    proxy_protocol: ProxyProtocol = "none"
    """PROXY header sent to the backend before the client's bytes."""
    source: str = ""
    """Where it came from, for `route-table` (file:line or Kind ns/name)."""
    limits: Limits = NO_LIMITS
    """This backend's own limits (file `limits:`, Service annotations)."""


@dataclass(frozen=True, slots=True)
class WeightedBackend:
    backend: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    host: str
    port: int
    protocol: Protocol
    default_backend: str | None = None
    proxy_protocol_in: bool = False
    public_port: int | None = None
    """The port clients connect to when it differs from the bound one (a hostPort or
    NAT maps 443 onto 8443): Gateway listeners are matched against this port."""
    deny_ja4: frozenset[str] = frozenset()
    """JA4 fingerprints refused on this listener (reason `ja4_denied`); TLS and QUIC
    (a QUIC hello's JA4 starts with `q`)."""

    @property
    def serves_port(self) -> int:
        return self.public_port if self.public_port is not None else self.port

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class Route:
    host: str
    """Normalised hostname; a wildcard starts with `*.`."""
    backends: tuple[WeightedBackend, ...]
    listeners: frozenset[str] | None = None
    """Listener names the route serves; None means every listener."""
    multi_label: bool = True
    """Wildcard reach: True matches one or more labels (Gateway API), False one (Ingress)."""
    source: str = ""
    precedence: tuple[float, str] = (0.0, "")
    """Conflict order: (creation time, namespace/name); the smallest wins."""
    alpn: tuple[str, ...] = ()
    """ALPN protocol names: the route matches only a client offering one of them, and
    then wins over the route without `alpn` for the same hostname. Empty: any client."""

    @property
    def is_wildcard(self) -> bool:
        return self.host.startswith("*.")


@dataclass(frozen=True, slots=True)
class Conflict:
    host: str
    listener: str
    winner: str
    loser: str


@dataclass(frozen=True, slots=True)
class Match:
    kind: MatchKind
    route: Route | None
    backends: tuple[WeightedBackend, ...]
    alpn: frozenset[str] = frozenset()
    """The route's ALPN names as a set, for the lookup's intersection test."""

    def explain(self, host: str | None, listener: str, alpn: tuple[str, ...] = ()) -> str:
        """Why this match, in words (for `route-table --host`; never on the hot path)."""
        offered = f" for ALPN {', '.join(p for p in alpn if p in self.alpn)}" if self.alpn else ""
        if self.kind is MatchKind.EXACT:
            return f"exact route {host}{offered}"
        if self.kind is MatchKind.WILDCARD:
            assert self.route is not None
            reach = "one or more labels" if self.route.multi_label else "exactly one label"
            return f"wildcard {self.route.host} ({reach}) matches {host}{offered}"
        missing = f"no route for {host!r}" if host else "no name sent"
        if self.kind is MatchKind.DEFAULT:
            return f"{missing}; listener {listener!r} default backend"
        return f"{missing} and listener {listener!r} has no default backend"


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What a source produces; `RouteTable.build` compiles it."""

    listeners: tuple[Listener, ...] = ()
    backends: tuple[Backend, ...] = ()
    routes: tuple[Route, ...] = ()
    limits: LimitDefaults = NO_LIMIT_DEFAULTS
    tenant_limits: tuple[tuple[str, Limits], ...] = ()
    """Per-tenant overrides by tenant name (file `tenants:`, Namespace annotations)."""

    def merged(self, other: TableSpec) -> TableSpec:
        """Combine two sources; on a name clash for listeners/backends/tenants the first
        wins, and a default limit the first leaves unset comes from the second."""
        if not (self.listeners or self.backends or self.routes or self.tenant_limits):
            return dataclasses.replace(other, limits=self.limits.under(other.limits))
        if not (other.listeners or other.backends or other.routes or other.tenant_limits):
            return dataclasses.replace(self, limits=self.limits.under(other.limits))
        names = {lis.name for lis in self.listeners}
        bnames = {b.name for b in self.backends}
        tnames = {name for name, _ in self.tenant_limits}
        return TableSpec(
            listeners=self.listeners + tuple(x for x in other.listeners if x.name not in names),
            backends=self.backends + tuple(b for b in other.backends if b.name not in bnames),
            routes=self.routes + other.routes,
            limits=self.limits.under(other.limits),
            tenant_limits=self.tenant_limits
            + tuple(t for t in other.tenant_limits if t[0] not in tnames),
        )


def validate_alpn(names: Iterable[str]) -> tuple[str, ...]:
    """Route ALPN names as configured: printable ASCII, 1-255 bytes (RFC 7301 §3.1's
    ProtocolName<1..2^8-1>), duplicates dropped; raises ValueError naming the bad one."""
    out: list[str] = []
    for name in names:
        name = name.strip()
        if not 0 < len(name) < 256 or not name.isascii() or not name.isprintable():
            raise ValueError(f"ALPN name {name!r} is not 1-255 printable ASCII characters")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("empty ALPN list")
    return tuple(out)
