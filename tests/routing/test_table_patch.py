"""A table built from the one before it (only changed hostnames re-indexed) is the
table a full build makes: same lookups for every name, listener and ALPN offer, same
conflicts in the same order."""

from __future__ import annotations

import dataclasses
import random

from sniffer.routing.table import Listener, Route, RouteTable, TableSpec, WeightedBackend

LISTENERS = (
    Listener("tls", "0.0.0.0", 8443, "tls"),
    Listener("tls-b", "0.0.0.0", 9443, "tls"),
    Listener("http", "0.0.0.0", 8080, "http", default_backend="fallback"),
)
HOSTS = [f"h{i}.t{i % 7}.example.com" for i in range(40)] + [
    f"*.t{i}.example.com" for i in range(7)
]
ALPN = [(), (), (), ("h2",), ("http/1.1",), ("h2", "http/1.1")]


def random_route(rnd: random.Random, n: int) -> Route:
    host = rnd.choice(HOSTS)
    return Route(
        host,
        (WeightedBackend(f"b{rnd.randrange(4)}"),),
        listeners=rnd.choice([None, None, frozenset({"tls"}), frozenset({"tls", "tls-b"})]),
        multi_label=rnd.random() < 0.5,
        source=f"r{n}",
        # Few distinct precedences: ties are common, and broken by position in the spec.
        precedence=(float(rnd.randrange(5)), f"ns/o{rnd.randrange(3)}"),
        alpn=rnd.choice(ALPN),
    )


def behaviour(table: RouteTable) -> list[object]:
    """Every lookup a client can make of the hostnames in play, and the conflicts."""
    names = {h.removeprefix("*.") for h in HOSTS}
    names |= {f"x.{n}" for n in names} | {f"y.x.{n}" for n in names} | {"unknown.example.org"}
    out: list[object] = [table.conflicts]
    for lis in LISTENERS:
        for name in sorted(names):
            for alpn in ((), ("h2",), ("http/1.1",), ("acme-tls/1",)):
                out.append((lis.name, name, alpn, table.lookup(lis.name, name, alpn)))
    return out


def test_a_patched_table_is_the_fully_built_one_over_many_random_changes() -> None:
    rnd = random.Random(1)
    made = 0
    for _ in range(30):
        routes = []
        for _ in range(rnd.randrange(0, 60)):
            routes.append(random_route(rnd, made))
            made += 1
        table = RouteTable.build(TableSpec(LISTENERS, routes=tuple(routes)))
        for _ in range(8):
            kept = [r for r in routes if rnd.random() < 0.85]
            # Equal by value but a new object: re-indexed, and must come out the same.
            kept = [dataclasses.replace(r) if rnd.random() < 0.05 else r for r in kept]
            for _ in range(rnd.randrange(0, 6)):
                kept.insert(rnd.randrange(len(kept) + 1), random_route(rnd, made))
                made += 1
            if rnd.random() < 0.2:
                rnd.shuffle(kept)  # same objects, new order: tied routes change winner
            routes = kept
            spec = TableSpec(LISTENERS, routes=tuple(routes))
            patched = RouteTable.build(spec, previous=table)
            full = RouteTable.build(spec)
            assert behaviour(patched) == behaviour(full)
            table = patched  # the next change patches a patched table


def test_a_patch_leaves_the_table_it_started_from_as_it_was() -> None:
    rnd = random.Random(2)
    routes = [random_route(rnd, n) for n in range(400)]
    old = RouteTable.build(TableSpec(LISTENERS, routes=tuple(routes)))
    before = behaviour(old)
    changed = [*routes[:-1], random_route(rnd, 400)]
    new = RouteTable.build(TableSpec(LISTENERS, routes=tuple(changed)), previous=old)
    assert behaviour(old) == before  # a connection still routed by `old` sees no change
    assert behaviour(new) == behaviour(
        RouteTable.build(TableSpec(LISTENERS, routes=tuple(changed)))
    )


def test_new_listeners_or_a_large_change_build_from_scratch() -> None:
    rnd = random.Random(3)
    routes = tuple(random_route(rnd, n) for n in range(200))
    old = RouteTable.build(TableSpec(LISTENERS, routes=routes))
    other = (dataclasses.replace(LISTENERS[2], default_backend="b1"), *LISTENERS[:2])
    for spec in (
        TableSpec(other, routes=routes),
        TableSpec(LISTENERS, routes=tuple(random_route(rnd, 200 + n) for n in range(200))),
    ):
        assert behaviour(RouteTable.build(spec, previous=old)) == behaviour(RouteTable.build(spec))
