"""ALPN routes and JA4 deny lists in the route model: precedence, conflicts, the routes
file, and every way a table travels (pickle, delta, /routes JSON)."""

from __future__ import annotations

import pickle

import pytest

from sniffer.routing.sources.file import RoutesFileError, parse_routes
from sniffer.routing.table import (
    Backend,
    Listener,
    MatchKind,
    Route,
    RouteTable,
    TableSpec,
    WeightedBackend,
    validate_alpn,
)

FP = "t13d1516h2_8daaf6152771_e5627efa2ab1"


def route(
    host: str, target: str, alpn: tuple[str, ...] = (), multi: bool = True, order: int = 0
) -> Route:
    return Route(
        host,
        (WeightedBackend(target),),
        None,
        multi,
        f"src-{target}-{order}",
        (0.0, f"{order:04d}"),
        alpn,
    )


def table(*routes: Route, default: str | None = None) -> RouteTable:
    names = {w.backend for r in routes for w in r.backends} | ({default} if default else set())
    return RouteTable.build(
        TableSpec(
            (Listener("tls", "127.0.0.1", 443, "tls", default, deny_ja4=frozenset({FP})),),
            tuple(Backend(n, n, ()) for n in sorted(names)),
            routes,
        )
    )


def hit(t: RouteTable, host: str, alpn: tuple[str, ...] = ()) -> str | None:
    m = t.lookup("tls", host, alpn)
    return m.backends[0].backend if m.backends else None


def test_alpn_route_precedence_at_each_hostname() -> None:
    t = table(
        route("a.example", "tenant"),
        route("a.example", "solver", ("acme-tls/1",)),
        route("*.w.example", "wild"),
        route("*.w.example", "wild-acme", ("acme-tls/1",)),
        route("only.example", "solver", ("acme-tls/1",)),
        route("*.one.example", "one-acme", ("acme-tls/1",), multi=False),
        default="dflt",
    )
    assert hit(t, "a.example", ("acme-tls/1",)) == "solver"
    assert hit(t, "a.example", ("h2", "acme-tls/1")) == "solver"  # any offered name
    assert hit(t, "a.example", ("h2",)) == "tenant"
    assert hit(t, "a.example") == "tenant"
    assert hit(t, "x.y.w.example", ("acme-tls/1",)) == "wild-acme"
    assert hit(t, "x.y.w.example", ("h2",)) == "wild"
    # Same hostname only: an exact route without ALPN still beats a wildcard ALPN route.
    t2 = table(route("x.w.example", "exact"), route("*.w.example", "wild-acme", ("acme-tls/1",)))
    assert hit(t2, "x.w.example", ("acme-tls/1",)) == "exact"
    # An ALPN route alone: other clients fall through to the default.
    assert hit(t, "only.example", ("acme-tls/1",)) == "solver"
    assert t.lookup("tls", "only.example", ("h2",)).kind is MatchKind.DEFAULT
    # Wildcard reach still applies to ALPN routes.
    assert hit(t, "x.one.example", ("acme-tls/1",)) == "one-acme"
    assert hit(t, "x.y.one.example", ("acme-tls/1",)) == "dflt"
    why = t.lookup("tls", "a.example", ("h2", "acme-tls/1")).explain(
        "a.example", "tls", ("h2", "acme-tls/1")
    )
    assert why == "exact route a.example for ALPN acme-tls/1"


def test_alpn_conflicts_and_coexistence() -> None:
    t = table(
        route("a.example", "first", ("acme-tls/1",), order=1),
        route("a.example", "second", ("acme-tls/1",), order=2),
        route("a.example", "h3", ("h3", "h2"), order=3),
    )
    assert hit(t, "a.example", ("acme-tls/1",)) == "first"
    assert hit(t, "a.example", ("h2",)) == "h3"
    assert [(c.host, c.winner, c.loser) for c in t.conflicts] == [
        ("a.example", "src-first-1", "src-second-2")
    ]


def test_alpn_and_deny_lists_survive_pickle_delta_and_json() -> None:
    t = table(route("a.example", "tenant"), route("a.example", "solver", ("acme-tls/1",)))
    for copy in (
        pickle.loads(pickle.dumps(t)),
        RouteTable.from_dict(t.to_dict()),
        RouteTable.empty().apply(t.delta_from(RouteTable.empty())),
    ):
        assert hit(copy, "a.example", ("acme-tls/1",)) == "solver"
        assert hit(copy, "a.example", ("h2",)) == "tenant"
        assert copy.deny_ja4("tls") == frozenset({FP})
        assert copy.listeners[0].deny_ja4 == frozenset({FP})
    assert t.deny_ja4("nope") == frozenset()


def test_validate_alpn() -> None:
    assert validate_alpn([" acme-tls/1", "h2", "h2"]) == ("acme-tls/1", "h2")
    for bad in ([], [""], ["a b\x00"], ["é"], ["x" * 256]):
        with pytest.raises(ValueError):
            validate_alpn(bad)


FILE = f"""\
listeners:
  - name: tls
    address: 127.0.0.1:8443
    protocol: tls
    deny_ja4: ["{FP}"]
backends:
  - name: tenant
    endpoints: ["10.0.0.5:443"]
  - name: solver
    endpoints: ["10.0.0.9:443"]
routes:
  - host: a.example
    backend: tenant
  - host: a.example
    backend: solver
    alpn: [acme-tls/1]
"""


def test_routes_file_alpn_and_deny_ja4() -> None:
    spec = parse_routes(FILE)
    assert spec.listeners[0].deny_ja4 == frozenset({FP})
    assert [r.alpn for r in spec.routes] == [(), ("acme-tls/1",)]
    t = RouteTable.build(spec)
    assert hit(t, "a.example", ("acme-tls/1",)) == "solver" and not t.conflicts


def test_routes_file_rejects_bad_alpn_and_fingerprints() -> None:
    bad = (
        FILE.replace(f'["{FP}"]', '["t13d_nope"]')
        .replace("alpn: [acme-tls/1]", 'alpn: ["", 3]')
        .replace("protocol: tls", "protocol: tls")
    )
    with pytest.raises(RoutesFileError) as info:
        parse_routes(bad, "r.yaml")
    text = str(info.value)
    assert "r.yaml:5: listeners[0].deny_ja4[0]: 't13d_nope' is not a JA4 fingerprint" in text
    assert "routes[1].alpn" in text
    http = FILE.replace("protocol: tls", "protocol: http")
    with pytest.raises(RoutesFileError, match="tls and quic listeners only"):
        parse_routes(http)
