"""The immutable `RouteTable` snapshot: a spec indexed per listener, and its lookup.

A table is built once from what a source produced (`TableSpec`) and never mutated:
the data plane holds a reference to the current one and a route change swaps it, so a
connection already routed keeps the backend it got. The model is `sniffer.routing.model`,
host:port text `sniffer.routing.address`, every encoding of a table (JSON, pickle, delta)
`sniffer.routing.codec`; the names are re-exported here for the modules that read
tables. This module must never do I/O.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sniffer.routing import codec
from sniffer.routing.address import join_host_port, parse_port, split_host_port
from sniffer.routing.codec import TableDelta
from sniffer.routing.diff import changes
from sniffer.routing.model import (
    LIMIT_FIELDS,
    NO_LIMIT_DEFAULTS,
    NO_LIMITS,
    SCOPE_FIELDS,
    Backend,
    Conflict,
    EffectiveLimit,
    Endpoint,
    LimitDefaults,
    Limits,
    Listener,
    Match,
    MatchKind,
    Protocol,
    ProxyProtocol,
    Route,
    TableSpec,
    WeightedBackend,
    validate_alpn,
)

__all__ = [
    "LIMIT_FIELDS",
    "NO_LIMITS",
    "NO_LIMIT_DEFAULTS",
    "SCOPE_FIELDS",
    "Backend",
    "Conflict",
    "EffectiveLimit",
    "Endpoint",
    "LimitDefaults",
    "Limits",
    "Listener",
    "Match",
    "MatchKind",
    "Protocol",
    "ProxyProtocol",
    "Route",
    "RouteTable",
    "TableDelta",
    "TableSpec",
    "WeightedBackend",
    "join_host_port",
    "parse_port",
    "routed_backends",
    "split_host_port",
    "validate_alpn",
]


_NO_MATCH = Match(MatchKind.NONE, None, ())
_PRECEDENCE = operator.attrgetter("precedence")
_NAME = operator.attrgetter("name")


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
        "_conflicted",
        "_index",
        "_tied",
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
        conflicted: Iterable[tuple[tuple[float, str], Conflict]],
        index: dict[str, _ListenerIndex],
        tied: frozenset[str],
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
        self._conflicted = tuple(sorted(conflicted, key=_conflict_order))
        """(precedence of the losing route, conflict), in the order of `conflicts`."""
        self.conflicts = tuple(c for _, c in self._conflicted)
        """By the losing route's precedence, then hostname, then listener name."""
        self._index = index
        self._tied = tied
        """Hostnames with two routes of equal precedence: which wins is their order in
        the spec, which identities do not show, so a patch always re-indexes them."""
        self.denied_ja4 = any(idx.deny_ja4 for idx in index.values())
        """Whether any listener refuses fingerprints: the data plane's one-test fast path."""
        self.version = version
        self.built_at = built_at

    @classmethod
    def empty(cls) -> RouteTable:
        return cls.build(TableSpec(), version=0)

    @classmethod
    def build(
        cls,
        spec: TableSpec,
        version: int = 1,
        built_at: float | None = None,
        previous: RouteTable | None = None,
    ) -> RouteTable:
        """Index routes per listener; on a duplicate hostname the lowest precedence wins.

        `built_at` (Unix time) defaults to now; a table decoded from another process or
        from `/routes` keeps the time it was first built. With `previous` (the table this
        one replaces), only the hostnames of routes that are not the very objects
        `previous` holds are indexed again (`_patched_index`): one changed namespace of
        10,000 routes costs a few hundred routes' work instead of all of them. The
        result is the same table either way."""
        built = _patched_index(previous, spec) if previous is not None else None
        index, conflicted, tied = built if built is not None else _full_index(spec)
        backends = dict(zip(map(_NAME, spec.backends), spec.backends, strict=True))
        return cls(
            listeners=spec.listeners,
            backends=backends,
            routes=tuple(spec.routes),
            conflicted=conflicted,
            index=index,
            tied=tied,
            version=version,
            built_at=time.time() if built_at is None else built_at,
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

    def has_backend(self, key: tuple[str, str]) -> bool:
        """Whether (name, tenant) is one of this table's backends."""
        b = self.backends.get(key[0])
        return b is not None and b.tenant == key[1]

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

    # -- encodings (sniffer.routing.codec) ---------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return codec.table_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouteTable:
        """Rebuild a table from `to_dict()` output (e.g. fetched from `/routes`)."""
        return codec.table_from_dict(data)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return codec.reduce_table(self)

    def delta_from(self, base: RouteTable) -> TableDelta:
        """This table as a change to `base` (see `codec.delta_from`)."""
        return codec.delta_from(self, base)

    def apply(self, delta: TableDelta) -> RouteTable:
        """The table `delta` describes, reusing this table's objects (its base)."""
        return codec.apply_delta(self, delta)


Conflicted = list[tuple[tuple[float, str], Conflict]]


def _conflict_order(item: tuple[tuple[float, str], Conflict]) -> tuple[Any, ...]:
    precedence, c = item
    return (precedence, c.host, c.listener)


Indexed = tuple[dict[str, _ListenerIndex], Conflicted, frozenset[str]]
"""A table's index, its conflicts, and its hostnames with tied routes."""


def _full_index(spec: TableSpec) -> Indexed:
    index = {lis.name: _ListenerIndex(deny_ja4=lis.deny_ja4) for lis in spec.listeners}
    conflicted: Conflicted = []
    tied = _index_routes(index, sorted(spec.routes, key=_PRECEDENCE), conflicted)
    for lis in spec.listeners:
        if lis.default_backend:
            index[lis.name].fallback = Match(
                MatchKind.DEFAULT, None, (WeightedBackend(lis.default_backend),)
            )
    return index, conflicted, tied


_PATCH_SHARE = 4
"""A change of more than 1/`_PATCH_SHARE` of the routes is built from scratch."""


def _patched_index(previous: RouteTable, spec: TableSpec) -> Indexed | None:
    """`previous`'s index with the hostnames of changed routes indexed again, or None
    when the listeners changed or too much did (a full build is then as cheap).

    Hostnames never interact in the index (each is its own key, in its own bucket), so
    re-indexing every route of each changed hostname, in precedence order, gives what
    a full build gives. Routes are told apart by identity: both tables hold theirs, so
    no two live routes share an `id`. Hostnames with tied routes are always indexed
    again: their winner is decided by their order in the spec."""
    if previous.listeners != spec.listeners:
        return None
    gone, came = changes(previous.routes, spec.routes)
    if not gone and not came and not previous._tied:
        return previous._index, list(previous._conflicted), previous._tied
    if len(gone) + len(came) > max(64, len(spec.routes) // _PATCH_SHARE):
        return None
    hosts = {r.host for r in gone}
    hosts.update(r.host for r in came)
    hosts.update(previous._tied)
    index = {name: _without(idx, hosts) for name, idx in previous._index.items()}
    conflicted = [p for p in previous._conflicted if p[1].host not in hosts]
    touched = (r for r in spec.routes if r.host in hosts)
    tied = _index_routes(index, sorted(touched, key=_PRECEDENCE), conflicted)
    return index, conflicted, tied


def _without(idx: _ListenerIndex, hosts: set[str]) -> _ListenerIndex:
    """A copy of `idx` that knows none of `hosts` (the old index stays as it was)."""
    out = _ListenerIndex(
        idx.exact.copy(),
        idx.wildcard.copy(),
        idx.fallback,
        idx.alpn_exact.copy(),
        idx.alpn_wildcard.copy(),
        idx.deny_ja4,
    )
    for host in hosts:
        if host.startswith("*."):
            out.wildcard.pop(host[2:], None)
            out.alpn_wildcard.pop(host[2:], None)
        else:
            out.exact.pop(host, None)
            out.alpn_exact.pop(host, None)
    return out


def _index_routes(
    index: dict[str, _ListenerIndex], routes: Iterable[Route], conflicted: Conflicted
) -> frozenset[str]:
    """File `routes` (in precedence order) into `index`; the loop of every full build
    (10,000 routes at 2,000 tenants): one Match per route, shared by its listeners.
    Returns the hostnames of which two routes have the same precedence."""
    every = tuple(index)
    last: dict[str, tuple[float, str]] = {}
    tied: set[str] = set()
    for route in routes:
        if last.get(route.host) == route.precedence:
            tied.add(route.host)
        last[route.host] = route.precedence
        targets = every if route.listeners is None else route.listeners
        if route.alpn:
            for name in targets:
                idx = index.get(name)
                if idx is not None:
                    _index_alpn(idx, route, name, conflicted)
            continue
        host = route.host
        wildcard = host.startswith("*.")
        key = host[2:] if wildcard else host
        match: Match | None = None
        for name in targets:
            idx = index.get(name)
            if idx is None:
                continue
            bucket = idx.wildcard if wildcard else idx.exact
            held = bucket.get(key)
            if held is None:
                if match is None:
                    kind = MatchKind.WILDCARD if wildcard else MatchKind.EXACT
                    match = Match(kind, route, route.backends)
                bucket[key] = match
                continue
            won = held.route
            assert won is not None
            if won.backends != route.backends or won.multi_label != route.multi_label:
                conflicted.append(
                    (route.precedence, Conflict(route.host, name, won.source, route.source))
                )
    return frozenset(tied)


def _index_alpn(idx: _ListenerIndex, route: Route, listener: str, conflicted: Conflicted) -> None:
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
                conflicted.append(
                    (route.precedence, Conflict(route.host, listener, won.source, route.source))
                )
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


def routed_backends(table: RouteTable) -> Iterable[Backend]:
    """Backends that some route or default points at (for per-backend gauges)."""
    names: set[str] = set()
    for r in table.routes:
        names.update(w.backend for w in r.backends)
    names.update(lis.default_backend for lis in table.listeners if lis.default_backend)
    return [table.backends[n] for n in sorted(names) if n in table.backends]
