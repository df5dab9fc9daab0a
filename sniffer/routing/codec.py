"""Route tables as data: the JSON view (`/routes`, `route-table -o json`), the pickle
sent to worker processes and the `TableDelta` from one table to the next.

This module owns every encoding of a table. Each codec names its fields: the tuples a
pickle or a delta carries are laid out here, written and read by the two halves of one
pair of functions, and objects are rebuilt with keyword arguments, so reordering a
dataclass's fields can never shift a value into the wrong one. It must never do I/O.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from sniffer.routing.address import split_host_port
from sniffer.routing.diff import same_ends
from sniffer.routing.model import (
    LIMIT_FIELDS,
    NO_LIMITS,
    Backend,
    EffectiveLimit,
    Endpoint,
    LimitDefaults,
    Limits,
    Listener,
    ProxyProtocol,
    Route,
    TableSpec,
    WeightedBackend,
)

if TYPE_CHECKING:
    from sniffer.routing.table import RouteTable

__all__ = ["TableDelta", "apply_delta", "delta_from", "table_from_dict", "table_to_dict"]


# -- JSON: /routes, route-table -o json -----------------------------------------------


def table_to_dict(self: RouteTable) -> dict[str, Any]:
    """The table as JSON-ready data (`/routes`); `table_from_dict` reads it back."""
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
            for t in sorted({b.tenant for b in self.backends.values()}.union(self.tenant_limits))
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


def table_from_dict(data: Mapping[str, Any]) -> RouteTable:
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
    from sniffer.routing.table import RouteTable

    return RouteTable.build(
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
        built_at=float(data.get("built_at", time.time())),
    )


# -- pickle: the whole table to a worker ----------------------------------------------


def reduce_table(self: RouteTable) -> tuple[Any, tuple[Any, ...]]:
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
            _defaults_tuple(self.limits),
            tuple((t, _limits_tuple(lim)) for t, lim in self.tenant_limits.items()),
        ),
    )


# -- delta: the table as a change to the one a worker holds ---------------------------


def delta_from(self: RouteTable, base: RouteTable) -> TableDelta:
    """This table as a change to `base`, for a process that holds `base` already.

    Backends and routes that are the very objects `base` holds (a Kubernetes rebuild
    re-translates only the namespaces that changed and reuses the rest) travel as a
    `Splice`: how many lead and trail unchanged, and between them each one's position
    in `base` or, for the others, its fields. At 10,000 routes one changed namespace
    makes a delta of a few hundred bytes, and the worker re-indexes only the hostnames
    of the routes that changed (see `RouteTable.build`).
    """
    return TableDelta(
        base.version,
        self.version,
        self.built_at,
        tuple(map(_listener_tuple, self.listeners)),
        _splice(tuple(base.backends.values()), tuple(self.backends.values()), _backend_tuple),
        _splice(base.routes, self.routes, _route_tuple),
        _defaults_tuple(self.limits),
        tuple((t, _limits_tuple(lim)) for t, lim in self.tenant_limits.items()),
    )


def apply_delta(self: RouteTable, delta: TableDelta) -> RouteTable:
    """The table `delta` describes, reusing the objects of `self` (its base)."""
    if delta.base_version != self.version:
        raise ValueError(f"delta from table version {delta.base_version} applied to {self.version}")
    spec = TableSpec(
        tuple(_listener(*x) for x in delta.listeners),
        _spliced(tuple(self.backends.values()), delta.backends, _backend),
        _spliced(self.routes, delta.routes, _route),
        _defaults(delta.limits),
        tuple((t, _limits(*x)) for t, x in delta.tenant_limits),
    )
    return type(self).build(spec, delta.version, built_at=delta.built_at, previous=self)


class TableDelta(NamedTuple):
    """A table as a change to the one before it (see `RouteTable.delta_from`)."""

    base_version: int
    version: int
    built_at: float
    listeners: tuple[tuple[Any, ...], ...]
    backends: Splice
    routes: Splice
    limits: tuple[tuple[Any, ...], ...] = ((), (), ())
    tenant_limits: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def spans(self) -> int:
        """How many backends and routes lie between the unchanged ends (`Splice`): what
        applying the delta walks, and at most what the table re-indexes."""
        return len(self.backends[1]) + len(self.routes[1])

    @property
    def reused(self) -> int:
        """How many backends and routes travel as a reference to the base."""
        return sum(
            head + tail + sum(type(x) is int for x in middle)
            for head, middle, tail in (self.backends, self.routes)
        )


Splice = tuple[int, tuple[int | tuple[Any, ...], ...], int]
"""(head, middle, tail): the first `head` and last `tail` items are the base's own, in
its first and last places; each item between is its position in the base, or its fields."""


def _splice(
    base: tuple[Any, ...], items: tuple[Any, ...], as_tuple: Callable[[Any], tuple[Any, ...]]
) -> Splice:
    head, tail = same_ends(base, items)
    stop = len(base) - tail
    positions = dict(zip(map(id, base[head:stop]), range(head, stop), strict=True))
    middle = items[head : len(items) - tail]
    found: list[Any] = list(map(positions.get, map(id, middle)))
    at = -1
    with contextlib.suppress(ValueError):
        while True:  # only the items that changed are visited here
            at = found.index(None, at + 1)
            found[at] = as_tuple(middle[at])
    return head, tuple(found), tail


def _spliced(base: tuple[Any, ...], splice: Splice, make: Callable[..., Any]) -> tuple[Any, ...]:
    head, middle, tail = splice
    between = tuple(base[x] if isinstance(x, int) else make(*x) for x in middle)
    return base[:head] + between + base[len(base) - tail :]


# Each pair below lays out one tuple and reads it back by keyword.


def _limits_tuple(lim: Limits) -> tuple[Any, ...]:
    return (*(getattr(lim, f) for f in LIMIT_FIELDS), lim.source)


def _limits(*values: Any) -> Limits:
    return Limits(**dict(zip((*LIMIT_FIELDS, "source"), values, strict=True)))


def _defaults_tuple(d: LimitDefaults) -> tuple[tuple[Any, ...], ...]:
    return (_limits_tuple(d.tenant), _limits_tuple(d.backend), _limits_tuple(d.client))


def _defaults(t: tuple[tuple[Any, ...], ...]) -> LimitDefaults:
    tenant, backend, client = (_limits(*x) if x else NO_LIMITS for x in t)
    return LimitDefaults(tenant=tenant, backend=backend, client=client)


def _listener(
    name: str,
    host: str,
    port: int,
    protocol: Any,
    default_backend: str | None,
    proxy_protocol_in: bool,
    public_port: int | None,
    deny_ja4: frozenset[str],
) -> Listener:
    return Listener(
        name=name,
        host=host,
        port=port,
        protocol=protocol,
        default_backend=default_backend,
        proxy_protocol_in=proxy_protocol_in,
        public_port=public_port,
        deny_ja4=deny_ja4,
    )


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
        None if b.limits.is_empty() else _limits_tuple(b.limits),
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
        name=name,
        tenant=tenant,
        endpoints=tuple(Endpoint(host=h, port=p) for h, p in eps),
        proxy_protocol=pp,
        source=source,
        limits=NO_LIMITS if limits is None else _limits(*limits),
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
        host=host,
        backends=tuple(WeightedBackend(backend=n, weight=w) for n, w in targets),
        listeners=None if only is None else frozenset(only),
        multi_label=multi,
        source=source,
        precedence=precedence,
        alpn=alpn,
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
    from sniffer.routing.table import RouteTable

    spec = TableSpec(
        listeners=tuple(_listener(*x) for x in listeners),
        backends=tuple(_backend(*x) for x in backends),
        routes=tuple(_route(*x) for x in routes),
        limits=_defaults(limits),
        tenant_limits=tuple((t, _limits(*x)) for t, x in tenant_limits),
    )
    return RouteTable.build(spec, version, built_at=built_at)


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
