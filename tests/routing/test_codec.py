"""Every encoding of a table (pickle, delta, JSON) keeps every field, by name."""

from __future__ import annotations

import dataclasses
import pickle

from sniffer.routing.table import (
    Backend,
    Endpoint,
    LimitDefaults,
    Limits,
    Listener,
    Route,
    RouteTable,
    TableSpec,
    WeightedBackend,
)

SPEC = TableSpec(
    listeners=(
        Listener(
            "tls",
            "::",
            8443,
            "tls",
            default_backend="b",
            proxy_protocol_in=True,
            public_port=443,
            deny_ja4=frozenset({"t13d190900_9dc949149365_97f8aa674fd9"}),
        ),
    ),
    backends=(
        Backend(
            "b",
            "team-b",
            (Endpoint("10.0.0.1", 443), Endpoint("fd00::1", 8443)),
            proxy_protocol="v2",
            source="file:3",
            limits=Limits(max_connections=5, max_pending_dials=2, source="file:4"),
        ),
    ),
    routes=(
        Route(
            "*.b.example",
            (WeightedBackend("b", 3),),
            listeners=frozenset({"tls"}),
            multi_label=False,
            source="file:9",
            precedence=(2.0, "ns/r"),
            alpn=("acme-tls/1",),
        ),
    ),
    limits=LimitDefaults(
        tenant=Limits(connections_per_second=2.5, burst=4, source="flags"),
        client=Limits(max_connections=7, source="flags"),
    ),
    tenant_limits=(("team-b", Limits(max_connections=9, source="ns annotations")),),
)


def fields_of(table: RouteTable) -> tuple[object, ...]:
    return (
        table.version,
        table.built_at,
        table.listeners,
        tuple(table.backends.values()),
        table.routes,
        table.limits,
        table.tenant_limits,
    )


def test_built_at_is_a_constructor_argument() -> None:
    table = RouteTable.build(SPEC, version=4, built_at=1234.5)
    assert table.built_at == 1234.5
    assert RouteTable.build(SPEC).built_at > 1234.5  # default: now


def test_pickle_delta_and_json_keep_every_field() -> None:
    table = RouteTable.build(SPEC, version=4, built_at=1234.5)
    pickled = pickle.loads(pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL))
    assert fields_of(pickled) == fields_of(table)
    base = RouteTable.build(TableSpec(), version=3, built_at=1.0)
    applied = base.apply(pickle.loads(pickle.dumps(table.delta_from(base))))
    assert fields_of(applied) == fields_of(table)
    from_json = RouteTable.from_dict(table.to_dict())
    assert fields_of(from_json) == fields_of(table)
    # every field of every object took part (none left at its default by accident)
    for obj in (*SPEC.listeners, *SPEC.backends, *SPEC.routes):
        for f in dataclasses.fields(obj):
            if f.init and f.default is not dataclasses.MISSING:
                assert getattr(obj, f.name) != f.default, (type(obj).__name__, f.name)
