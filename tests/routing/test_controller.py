"""A publish is answered with the conflicts of the table the controller built from it.

The Kubernetes source reports them on its objects (a TLSRoute's `HostnameConflict`)
instead of building a table of its own: they must be those of the table the data plane
serves, every source's routes merged.
"""

from __future__ import annotations

from sniffer.routing.controller import RouteController
from sniffer.routing.model import Conflict
from sniffer.routing.sources import Update
from sniffer.routing.table import Backend, Endpoint, Listener, Route, TableSpec, WeightedBackend
from tests.support.sources import IdleSource

TLS = Listener("tls", "127.0.0.1", 1, "tls")


def _spec(backend: str, host: str, source: str, created: float) -> TableSpec:
    b = Backend(backend, "t", (Endpoint("127.0.0.1", 2),))
    route = Route(host, (WeightedBackend(backend),), None, True, source, (created, source))
    return TableSpec(listeners=(TLS,), backends=(b,), routes=(route,))


def test_publish_answers_with_the_conflicts_of_the_merged_table() -> None:
    older, younger = IdleSource(), IdleSource()
    older.name, younger.name = "file", "kubernetes"
    controller = RouteController([older, younger])  # type: ignore[list-item]
    publish_older = controller._publisher(older)  # type: ignore[arg-type]
    publish_younger = controller._publisher(younger)  # type: ignore[arg-type]

    assert publish_older(Update(_spec("a", "app.example", "Ingress ns/old", 1.0))) == ()
    lost = publish_younger(Update(_spec("b", "app.example", "TLSRoute ns/new", 2.0)))
    assert lost == (Conflict("app.example", "tls", "Ingress ns/old", "TLSRoute ns/new"),)
    assert lost == controller.table.conflicts

    # The older route gone, the younger one holds the name: no conflict to report.
    assert publish_older(Update(TableSpec(listeners=(TLS,)))) == ()
    assert controller.table.lookup("tls", "app.example").backends[0].backend == "b"
