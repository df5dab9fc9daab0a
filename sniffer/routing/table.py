"""The route model and the immutable `RouteTable` snapshot.

A table is built once from what a source produced (`TableSpec`) and never mutated:
the data plane holds a reference to the current one and a route change swaps it, so a
connection already routed keeps the backend it got. Tables pickle, so the control
process can ship them to worker processes. This module must never do I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

ProxyProtocol = Literal["none", "v1", "v2"]
Protocol = Literal["tls", "http"]


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

    def as_tuple(self) -> tuple[Any, ...]:
        return (*(getattr(self, f) for f in LIMIT_FIELDS), self.source)

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

    def as_tuple(self) -> tuple[tuple[Any, ...], ...]:
        return (self.tenant.as_tuple(), self.backend.as_tuple(), self.client.as_tuple())

    @classmethod
    def from_tuple(cls, t: tuple[tuple[Any, ...], ...]) -> LimitDefaults:
        return cls(*(Limits(*x) for x in t))

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
    """JA4 fingerprints refused on this listener (reason `ja4_denied`); TLS only."""

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
        offered = (
            f" for ALPN {', '.join(p for p in alpn if p in self.alpn)}" if self.alpn else ""
        )
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


_NO_MATCH = Match(MatchKind.NONE, None, ())


@dataclass(slots=True)
class _ListenerIndex:
    """Matches are built once with the table, so a lookup allocates nothing."""

    exact: dict[str, Match] = field(default_factory=dict)
    wildcard: dict[str, Match] = field(default_factory=dict)
    """Keyed by the suffix after `*.`."""
    fallback: Match = _NO_MATCH
    """The listener's default backend, or no match."""
    alpn_exact: dict[str, tuple[Match, ...]] = field(default_factory=dict)
    """Routes with `alpn`, by hostname, in precedence order; tried before `exact`."""
    alpn_wildcard: dict[str, tuple[Match, ...]] = field(default_factory=dict)
    """Routes with `alpn`, by wildcard suffix; tried before `wildcard`."""
    deny_ja4: frozenset[str] = frozenset()
    """The listener's refused JA4 fingerprints, from this table (an open listening
    socket outlives tables, so connections read the list here, not from its Listener)."""


class RouteTable:
    """An immutable snapshot: listeners, backends, routes and their per-listener indices."""

    __slots__ = (
        "_index",
        "backends",
        "built_at",
        "conflicts",
        "denied_ja4",
        "limits",
        "listeners",
        "routes",
        "tenant_limits",
        "version",
    )

    def __init__(
        self,
        listeners: tuple[Listener, ...],
        backends: Mapping[str, Backend],
        routes: tuple[Route, ...],
        conflicts: tuple[Conflict, ...],
        index: dict[str, _ListenerIndex],
        version: int,
        built_at: float,
        limits: LimitDefaults = NO_LIMIT_DEFAULTS,
        tenant_limits: Mapping[str, Limits] | None = None,
    ) -> None:
        self.limits = limits
        self.tenant_limits = dict(tenant_limits or {})
        self.listeners = listeners
        self.backends = dict(backends)
        self.routes = routes
        self.conflicts = conflicts
        self._index = index
        self.denied_ja4 = any(idx.deny_ja4 for idx in index.values())
        """Whether any listener refuses fingerprints: the data plane's one-test fast path."""
        self.version = version
        self.built_at = built_at

    @classmethod
    def empty(cls) -> RouteTable:
        return cls.build(TableSpec(), version=0)

    @classmethod
    def build(cls, spec: TableSpec, version: int = 1) -> RouteTable:
        """Index routes per listener; on a duplicate hostname the lowest precedence wins."""
        listener_names = [lis.name for lis in spec.listeners]
        index = {lis.name: _ListenerIndex(deny_ja4=lis.deny_ja4) for lis in spec.listeners}
        conflicts: list[Conflict] = []
        for route in sorted(spec.routes, key=lambda r: r.precedence):
            targets = listener_names if route.listeners is None else route.listeners
            for name in targets:
                idx = index.get(name)
                if idx is None:
                    continue
                if route.alpn:
                    _index_alpn(idx, route, name, conflicts)
                    continue
                if route.is_wildcard:
                    bucket, key = idx.wildcard, route.host[2:]
                else:
                    bucket, key = idx.exact, route.host
                held = bucket.get(key)
                if held is None:
                    kind = MatchKind.WILDCARD if route.is_wildcard else MatchKind.EXACT
                    bucket[key] = Match(kind, route, route.backends)
                    continue
                won = held.route
                assert won is not None
                if won.backends != route.backends or won.multi_label != route.multi_label:
                    conflicts.append(Conflict(route.host, name, won.source, route.source))
        for lis in spec.listeners:
            if lis.default_backend:
                index[lis.name].fallback = Match(
                    MatchKind.DEFAULT, None, (WeightedBackend(lis.default_backend),)
                )
        backends = {b.name: b for b in spec.backends}
        return cls(
            listeners=spec.listeners,
            backends=backends,
            routes=tuple(spec.routes),
            conflicts=tuple(conflicts),
            index=index,
            version=version,
            built_at=time.time(),
            limits=spec.limits,
            tenant_limits=dict(spec.tenant_limits),
        )

    # -- limits ------------------------------------------------------------------------

    def tenant_limit_set(self, tenant: str) -> Limits:
        """A tenant's limits with the defaults filled in (values only; see `effective`)."""
        own = self.tenant_limits.get(tenant)
        return own.under(self.limits.tenant) if own is not None else self.limits.tenant

    def effective_limits(self, scope: str, name: str = "") -> dict[str, EffectiveLimit]:
        """Limits in force for a tenant, a backend (by name) or a client address, each
        with where it came from; an unset limit is absent (unlimited)."""
        if scope == "tenant":
            own, default = self.tenant_limits.get(name, NO_LIMITS), self.limits.tenant
        elif scope == "backend":
            b = self.backends.get(name)
            own, default = (b.limits if b is not None else NO_LIMITS), self.limits.backend
        else:
            own, default = NO_LIMITS, self.limits.client
        out: dict[str, EffectiveLimit] = {}
        for f in SCOPE_FIELDS[scope]:
            for where in (own, default):
                value = getattr(where, f)
                if value is not None:
                    out[f] = EffectiveLimit(value, where.source)
                    break
        return out

    def backend_keys(self) -> set[tuple[str, str]]:
        """(name, tenant) of every backend: the key of its metric series."""
        return {(b.name, b.tenant) for b in self.backends.values()}

    def deny_ja4(self, listener: str) -> frozenset[str]:
        """JA4 fingerprints this table refuses on `listener`."""
        idx = self._index.get(listener)
        return idx.deny_ja4 if idx is not None else frozenset()

    def lookup(self, listener: str, host: str | None, alpn: tuple[str, ...] = ()) -> Match:
        """Resolve a normalised hostname on a listener: exact, wildcard, default, none.

        O(labels): one dict probe per suffix of the name, longest first. A client that
        offers ALPN names, on a listener with `alpn` routes, takes `_lookup_alpn`.
        """
        idx = self._index.get(listener)
        if idx is None:
            return _NO_MATCH
        if host:
            if alpn and (idx.alpn_exact or idx.alpn_wildcard):
                return _lookup_alpn(idx, host, alpn)
            match = idx.exact.get(host)
            if match is not None:
                return match
            wildcard = idx.wildcard
            if wildcard:
                dot = host.find(".")
                first = True
                while dot != -1:
                    match = wildcard.get(host[dot + 1 :])
                    if match is not None and (first or match.route.multi_label):  # type: ignore[union-attr]
                        return match
                    first = False
                    dot = host.find(".", dot + 1)
        return idx.fallback

    # -- views for route-table, /routes and the admin endpoint ---------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "built_at": self.built_at,
            "listeners": [
                {
                    "name": lis.name,
                    "address": lis.address,
                    "protocol": lis.protocol,
                    "default_backend": lis.default_backend,
                    "proxy_protocol_in": lis.proxy_protocol_in,
                    "public_port": lis.public_port,
                    "deny_ja4": sorted(lis.deny_ja4),
                }
                for lis in self.listeners
            ],
            "backends": [
                {
                    "name": b.name,
                    "tenant": b.tenant,
                    "endpoints": [str(e) for e in b.endpoints],
                    "proxy_protocol": b.proxy_protocol,
                    "source": b.source,
                    "limits": _limits_view(self.effective_limits("backend", b.name)),
                    "own_limits": _own_limits(b.limits),
                }
                for b in self.backends.values()
            ],
            "limits": {
                "tenant": _own_limits(self.limits.tenant),
                "backend": _own_limits(self.limits.backend),
                "client": _own_limits(self.limits.client),
            },
            "tenants": [
                {
                    "name": t,
                    "limits": _limits_view(self.effective_limits("tenant", t)),
                    "own_limits": _own_limits(self.tenant_limits.get(t)),
                }
                for t in sorted({b.tenant for b in self.backends.values()}.union(
                    self.tenant_limits
                ))
            ],
            "routes": [
                {
                    "host": r.host,
                    "match": "wildcard" if r.is_wildcard else "exact",
                    "wildcard_reach": (
                        ("one_or_more_labels" if r.multi_label else "one_label")
                        if r.is_wildcard
                        else None
                    ),
                    "backends": [{"name": w.backend, "weight": w.weight} for w in r.backends],
                    "listeners": sorted(r.listeners) if r.listeners is not None else None,
                    "source": r.source,
                    "precedence": list(r.precedence),
                    "alpn": list(r.alpn),
                }
                for r in self.routes
            ],
            "conflicts": [
                {"host": c.host, "listener": c.listener, "winner": c.winner, "loser": c.loser}
                for c in self.conflicts
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouteTable:
        """Rebuild a table from `to_dict()` output (e.g. fetched from `/routes`)."""
        listeners = []
        for lis in data.get("listeners", []):
            host, port = split_host_port(lis["address"])
            listeners.append(
                Listener(
                    name=lis["name"],
                    host=host,
                    port=port,
                    protocol=lis["protocol"],
                    default_backend=lis.get("default_backend"),
                    proxy_protocol_in=bool(lis.get("proxy_protocol_in")),
                    public_port=lis.get("public_port"),
                    deny_ja4=frozenset(lis.get("deny_ja4") or ()),
                )
            )
        backends = []
        for b in data.get("backends", []):
            eps = tuple(Endpoint(*split_host_port(e)) for e in b.get("endpoints", []))
            backends.append(
                Backend(
                    name=b["name"],
                    tenant=b.get("tenant", b["name"]),
                    endpoints=eps,
                    proxy_protocol=b.get("proxy_protocol", "none"),
                    source=b.get("source", ""),
                    limits=_limits_from(b.get("own_limits")),
                )
            )
        routes = []
        for r in data.get("routes", []):
            lis_names = r.get("listeners")
            prec = r.get("precedence") or [0.0, ""]
            routes.append(
                Route(
                    host=r["host"],
                    backends=tuple(
                        WeightedBackend(w["name"], int(w.get("weight", 1)))
                        for w in r.get("backends", [])
                    ),
                    listeners=frozenset(lis_names) if lis_names is not None else None,
                    multi_label=r.get("wildcard_reach") != "one_label",
                    source=r.get("source", ""),
                    precedence=(float(prec[0]), str(prec[1])),
                    alpn=tuple(r.get("alpn") or ()),
                )
            )
        lim = data.get("limits") or {}
        table = cls.build(
            TableSpec(
                tuple(listeners),
                tuple(backends),
                tuple(routes),
                LimitDefaults(*(_limits_from(lim.get(k)) for k in ("tenant", "backend", "client"))),
                tuple(
                    (t["name"], _limits_from(t["own_limits"]))
                    for t in data.get("tenants", [])
                    if t.get("own_limits")
                ),
            ),
            version=int(data.get("version", 0)),
        )
        table.built_at = float(data.get("built_at", table.built_at))
        return table

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle as plain tuples and rebuild the indices on arrival.

        Workers receive every table; pickling thousands of slotted dataclasses costs
        ~10x what tuples do, and rebuilding the index is cheaper than shipping it.
        """
        return (
            _unpickle_table,
            (
                self.version,
                self.built_at,
                tuple(map(_listener_tuple, self.listeners)),
                tuple(map(_backend_tuple, self.backends.values())),
                tuple(map(_route_tuple, self.routes)),
                self.limits.as_tuple(),
                tuple((t, lim.as_tuple()) for t, lim in self.tenant_limits.items()),
            ),
        )

    def delta_from(self, base: RouteTable) -> TableDelta:
        """This table as a change to `base`, for a process that holds `base` already.

        Backends and routes that are the very objects `base` holds (a Kubernetes rebuild
        re-translates only the namespaces that changed and reuses the rest) travel as
        their position in `base`; only the others travel as tuples. At 10,000 routes one
        changed namespace makes a delta of 35 KiB instead of a 1.2 MB table, and the
        worker rebuilds only the index (13 ms) instead of decoding everything (85 ms).
        """
        b_pos = {id(b): i for i, b in enumerate(base.backends.values())}
        r_pos = {id(r): i for i, r in enumerate(base.routes)}
        return TableDelta(
            base.version,
            self.version,
            self.built_at,
            tuple(map(_listener_tuple, self.listeners)),
            tuple(_ref_or(b_pos, b, _backend_tuple) for b in self.backends.values()),
            tuple(_ref_or(r_pos, r, _route_tuple) for r in self.routes),
            self.limits.as_tuple(),
            tuple((t, lim.as_tuple()) for t, lim in self.tenant_limits.items()),
        )

    def apply(self, delta: TableDelta) -> RouteTable:
        """The table `delta` describes, reusing this table's objects (its base)."""
        if delta.base_version != self.version:
            raise ValueError(
                f"delta from table version {delta.base_version} applied to {self.version}"
            )
        old_b = tuple(self.backends.values())
        old_r = self.routes
        spec = TableSpec(
            tuple(Listener(*x) for x in delta.listeners),
            tuple(old_b[x] if isinstance(x, int) else _backend(*x) for x in delta.backends),
            tuple(old_r[x] if isinstance(x, int) else _route(*x) for x in delta.routes),
            LimitDefaults.from_tuple(delta.limits),
            tuple((t, Limits(*x)) for t, x in delta.tenant_limits),
        )
        table = RouteTable.build(spec, delta.version)
        table.built_at = delta.built_at
        return table


def _index_alpn(
    idx: _ListenerIndex, route: Route, listener: str, conflicts: list[Conflict]
) -> None:
    """File a route with `alpn` under its hostname, after those of higher precedence.

    Routes of one hostname with different ALPN sets coexist (tried in precedence
    order); the same set pointing elsewhere is a conflict the older route wins.
    """
    bucket, key = (
        (idx.alpn_wildcard, route.host[2:]) if route.is_wildcard else (idx.alpn_exact, route.host)
    )
    names = frozenset(route.alpn)
    held = bucket.get(key, ())
    for match in held:
        won = match.route
        assert won is not None
        if match.alpn == names:
            if won.backends != route.backends or won.multi_label != route.multi_label:
                conflicts.append(Conflict(route.host, listener, won.source, route.source))
            return
    kind = MatchKind.WILDCARD if route.is_wildcard else MatchKind.EXACT
    bucket[key] = (*held, Match(kind, route, route.backends, names))


def _pick_alpn(matches: tuple[Match, ...] | None, alpn: tuple[str, ...]) -> Match | None:
    if matches:
        for match in matches:
            if not match.alpn.isdisjoint(alpn):
                return match
    return None


def _lookup_alpn(idx: _ListenerIndex, host: str, alpn: tuple[str, ...]) -> Match:
    """`lookup` for a client offering ALPN on a listener with `alpn` routes.

    The same walk (exact name, then wildcards longest first, then the default); at each
    hostname a route whose ALPN names meet the client's offer wins over the route
    without `alpn`.
    """
    for candidate in idx.alpn_exact.get(host, ()):
        if not candidate.alpn.isdisjoint(alpn):
            return candidate
    match = idx.exact.get(host)
    if match is not None:
        return match
    dot = host.find(".")
    first = True
    while dot != -1:
        suffix = host[dot + 1 :]
        for match in (_pick_alpn(idx.alpn_wildcard.get(suffix), alpn), idx.wildcard.get(suffix)):
            if match is not None and (first or match.route.multi_label):  # type: ignore[union-attr]
                return match
        first = False
        dot = host.find(".", dot + 1)
    return idx.fallback


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


class TableDelta(NamedTuple):
    """A table as a change to the one before it (see `RouteTable.delta_from`)."""

    base_version: int
    version: int
    built_at: float
    listeners: tuple[tuple[Any, ...], ...]
    backends: tuple[int | tuple[Any, ...], ...]
    """Per backend, in order: its position in the base table, or its fields."""
    routes: tuple[int | tuple[Any, ...], ...]
    """Per route, in order: its position in the base table, or its fields."""
    limits: tuple[tuple[Any, ...], ...] = ((), (), ())
    tenant_limits: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def reused(self) -> int:
        """How many backends and routes travel as a reference to the base."""
        return sum(type(x) is int for x in self.backends) + sum(
            type(x) is int for x in self.routes
        )


def _ref_or(
    positions: dict[int, int], obj: Any, as_tuple: Callable[[Any], tuple[Any, ...]]
) -> int | tuple[Any, ...]:
    i = positions.get(id(obj))
    return as_tuple(obj) if i is None else i


def _listener_tuple(x: Listener) -> tuple[Any, ...]:
    return (
        x.name,
        x.host,
        x.port,
        x.protocol,
        x.default_backend,
        x.proxy_protocol_in,
        x.public_port,
        x.deny_ja4,
    )


def _backend_tuple(b: Backend) -> tuple[Any, ...]:
    return (
        b.name,
        b.tenant,
        tuple((e.host, e.port) for e in b.endpoints),
        b.proxy_protocol,
        b.source,
        None if b.limits.is_empty() else b.limits.as_tuple(),
    )


def _backend(
    name: str,
    tenant: str,
    eps: tuple[tuple[str, int], ...],
    pp: ProxyProtocol,
    source: str,
    limits: tuple[Any, ...] | None = None,
) -> Backend:
    return Backend(
        name,
        tenant,
        tuple(Endpoint(h, p) for h, p in eps),
        pp,
        source,
        NO_LIMITS if limits is None else Limits(*limits),
    )


def _route_tuple(r: Route) -> tuple[Any, ...]:
    return (
        r.host,
        tuple((w.backend, w.weight) for w in r.backends),
        None if r.listeners is None else tuple(r.listeners),
        r.multi_label,
        r.source,
        r.precedence,
        r.alpn,
    )


def _route(
    host: str,
    targets: tuple[tuple[str, int], ...],
    only: tuple[str, ...] | None,
    multi: bool,
    source: str,
    precedence: tuple[float, str],
    alpn: tuple[str, ...] = (),
) -> Route:
    return Route(
        host,
        tuple(WeightedBackend(n, w) for n, w in targets),
        None if only is None else frozenset(only),
        multi,
        source,
        precedence,
        alpn,
    )


def _unpickle_table(
    version: int,
    built_at: float,
    listeners: tuple[tuple[Any, ...], ...],
    backends: tuple[tuple[Any, ...], ...],
    routes: tuple[tuple[Any, ...], ...],
    limits: tuple[tuple[Any, ...], ...] = ((), (), ()),
    tenant_limits: tuple[tuple[str, tuple[Any, ...]], ...] = (),
) -> RouteTable:
    spec = TableSpec(
        tuple(Listener(*x) for x in listeners),
        tuple(_backend(*x) for x in backends),
        tuple(_route(*x) for x in routes),
        LimitDefaults.from_tuple(limits),
        tuple((t, Limits(*x)) for t, x in tenant_limits),
    )
    table = RouteTable.build(spec, version)
    table.built_at = built_at
    return table


def join_host_port(host: str, port: int) -> str:
    """`host:port`, or `[v6]:port`: the inverse of `split_host_port`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` to (host, port); raises ValueError."""
    address = address.strip()
    if address.startswith("["):
        end = address.find("]")
        if end == -1 or address[end + 1 : end + 2] != ":":
            raise ValueError(f"bad address {address!r}: expected [IPv6]:port")
        host, port_s = address[1:end], address[end + 2 :]
    else:
        host, sep, port_s = address.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad address {address!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"bad address {address!r}: write IPv6 as [addr]:port")
    return host, parse_port(port_s, f"bad address {address!r}")


def parse_port(text: str, what: str) -> int:
    """A TCP port, 1-65535; raises ValueError naming `what`."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{what}: port must be 1-65535")
    return int(text)


def routed_backends(table: RouteTable) -> Iterable[Backend]:
    """Backends that some route or default points at (for per-backend gauges)."""
    names: set[str] = set()
    for r in table.routes:
        names.update(w.backend for w in r.backends)
    names.update(lis.default_backend for lis in table.listeners if lis.default_backend)
    return [table.backends[n] for n in sorted(names) if n in table.backends]


def _limits_view(eff: Mapping[str, EffectiveLimit]) -> dict[str, dict[str, Any]]:
    return {f: {"value": e.value, "from": e.source} for f, e in eff.items()}


def _own_limits(lim: Limits | None) -> dict[str, Any] | None:
    if lim is None or lim.is_empty():
        return None
    return {**lim.values(), "source": lim.source}


def _limits_from(data: Mapping[str, Any] | None) -> Limits:
    """Inverse of `_own_limits` (for tables read back from `/routes`)."""
    if not data:
        return NO_LIMITS
    return Limits(**{f: data.get(f) for f in LIMIT_FIELDS}, source=data.get("source", ""))
