"""Tables shipped to workers as deltas: what a worker builds must be the table itself."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from sniffer.routing.table import (
    Backend,
    Endpoint,
    Listener,
    Route,
    RouteTable,
    TableSpec,
    WeightedBackend,
)
from tests.support.sources import IdleSource


def tenant(i: int) -> tuple[Backend, tuple[Route, ...]]:
    """One namespace's worth, as the Kubernetes source makes it: a backend, five hosts."""
    b = Backend(
        f"tenant-{i}/router:443",
        f"tenant-{i}",
        tuple(Endpoint(f"10.{i // 250}.{i % 250}.{k}", 8443) for k in range(1, 4)),
        source=f"Service tenant-{i}/router",
    )
    routes = tuple(
        Route(
            f"h{k}.tenant-{i}.example.com" if k else f"*.tenant-{i}.example.com",
            (WeightedBackend(b.name),),
            multi_label=bool(k % 2),
            source=f"TLSRoute tenant-{i}/r",
            precedence=(float(i), f"tenant-{i}/r"),
        )
        for k in range(5)
    )
    return b, routes


LISTENERS = (Listener("tls", "0.0.0.0", 8443, "tls", public_port=443),)


def spec_of(
    parts: list[tuple[Backend, tuple[Route, ...]]], listeners: tuple[Listener, ...]
) -> TableSpec:
    backends = tuple(b for b, _ in parts)
    return TableSpec(listeners, backends, tuple(r for _, rs in parts for r in rs))


def shipped(obj: object) -> object:
    """What the other process gets: a pickle round trip, so no object is shared."""
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def test_a_delta_applied_in_a_worker_builds_the_same_table_and_is_small() -> None:
    parts = [tenant(i) for i in range(300)]
    base = RouteTable.build(spec_of(parts, LISTENERS), version=7)
    # The next rebuild: tenant 5's endpoints changed, tenant 9 left, tenant 300 arrived,
    # the listener got a default backend; every other namespace's objects are reused.
    b5, r5 = parts[5]
    parts[5] = (dataclasses.replace(b5, endpoints=(Endpoint("10.9.9.9", 8443),)), r5)
    del parts[9]
    parts.append(tenant(300))
    listeners = (dataclasses.replace(LISTENERS[0], default_backend=parts[0][0].name),)
    new = RouteTable.build(spec_of(parts, listeners), version=8)

    delta = new.delta_from(base)
    in_worker = shipped(base)
    assert isinstance(in_worker, RouteTable)
    applied = in_worker.apply(shipped(delta))  # type: ignore[arg-type]

    assert applied.to_dict() == new.to_dict()
    for host in (
        "h1.tenant-5.example.com",
        "a.b.tenant-7.example.com",
        "h2.tenant-9.example.com",
        "h3.tenant-300.example.com",
        "x.tenant-0.example.com",
        "nowhere.example",
    ):
        assert applied.lookup("tls", host) == new.lookup("tls", host), host
    # Unchanged objects are the worker's own, not new copies.
    name = parts[0][0].name
    assert applied.backends[name] is in_worker.backends[name]
    # 298 backends (not tenant 5's, nor the new one) and 1,495 routes travel as
    # references: the delta is a fraction of the whole table.
    assert delta.reused == 298 + 299 * 5
    assert len(pickle.dumps(delta)) * 5 < len(pickle.dumps(new))


def test_a_delta_refuses_a_base_it_was_not_made_from() -> None:
    parts = [tenant(i) for i in range(3)]
    base = RouteTable.build(spec_of(parts, LISTENERS), version=1)
    new = RouteTable.build(spec_of(parts[:2], LISTENERS), version=2)
    other = RouteTable.build(spec_of(parts, LISTENERS), version=5)
    with pytest.raises(ValueError, match="version 1 applied to 5"):
        other.apply(new.delta_from(base))


def test_a_reread_file_ships_only_what_changed(tmp_path: object) -> None:
    """The file source re-parses everything; the controller reuses equal objects so the
    delta to the workers carries references, not every route again."""
    from sniffer.routing.controller import RouteController
    from sniffer.routing.sources import Update
    from sniffer.routing.sources.file import parse_routes

    backends = "".join(f"  - {{name: b{i}, endpoints: ['127.0.0.1:2']}}\n" for i in range(50))
    routes = "".join(f"  - {{host: h{i}.example, backend: b{i % 50}}}\n" for i in range(500))
    head = (
        "listeners: [{name: tls, address: '127.0.0.1:1', protocol: tls}]\n"
        "limits: {tenant: {max_connections: 5}}\n"
        f"backends:\n{backends}routes:\n{routes}"
    )

    controller = RouteController([IdleSource()])  # type: ignore[list-item]
    publish = controller._publisher(controller.sources[0])  # type: ignore[arg-type]
    publish(Update(parse_routes(head)))
    first = controller.table
    publish(Update(parse_routes(head + "  - {host: new.example, backend: b0}\n")))
    delta = controller.table.delta_from(first)
    assert delta.reused == 50 + 500  # only the new route travels as fields
    worker_side = first.apply(pickle.loads(pickle.dumps(delta)))
    assert worker_side.to_dict() | {"built_at": 0} == controller.table.to_dict() | {"built_at": 0}
    assert worker_side.effective_limits("tenant", "b1")["max_connections"].value == 5
