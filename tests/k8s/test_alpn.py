"""The `sniffer.dev/alpn` annotation on Ingress and TLSRoute, through the real client and
the API test server: ALPN routes, their precedence, and a bad list reported, not routed."""

from __future__ import annotations

from typing import Any

from sniffer.routing.table import MatchKind
from tests.k8s.conftest import needs_crds
from tests.kubeapi import objects as o

ALPN = "sniffer.dev/alpn"


def annotated(obj: dict[str, Any], value: str) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {})[ALPN] = value
    return obj


def _svc(server: Any, ns: str, name: str, addr: str) -> None:
    server.create(o.service(ns, name))
    server.create(o.endpoint_slice(ns, name, [addr]))


def _pick(h: Any, host: str, alpn: tuple[str, ...]) -> str | None:
    m = h.table.lookup("tls-443", host, alpn)
    return m.backends[0].backend if m.backends else None


async def test_ingress_alpn_annotation_routes_acme_to_the_solver(
    api_server: Any, harness_factory: Any
) -> None:
    h = harness_factory()
    await h.start()
    _svc(api_server, "team-a", "web", "10.0.0.1")
    _svc(api_server, "certs", "solver", "10.0.0.9")
    api_server.create(o.ingress("team-a", "web", [("app.a.example", "web", 443)]))
    api_server.create(
        annotated(
            o.ingress("certs", "acme", [("app.a.example", "solver", 443)]), "acme-tls/1, x-acme"
        )
    )
    await h.until(lambda: bool(h.updates) and _pick(h, "app.a.example", ("x-acme",)) is not None)
    assert _pick(h, "app.a.example", ("acme-tls/1",)) == "certs/solver:443"
    assert _pick(h, "app.a.example", ("x-acme",)) == "certs/solver:443"
    assert _pick(h, "app.a.example", ("h2", "http/1.1")) == "team-a/web:443"
    assert _pick(h, "app.a.example", ()) == "team-a/web:443"
    solver = next(r for r in h.spec.routes if r.source == "Ingress certs/acme")
    assert solver.alpn == ("acme-tls/1", "x-acme")
    # Not a conflict: the same hostname with and without an ALPN list coexist.
    assert h.table.conflicts == ()

    # A bad list: reported, and the object is not routed at all (routing it without its
    # list would take every client of the name).
    api_server.update(
        annotated(o.ingress("certs", "acme", [("app.a.example", "solver", 443)]), "acme-tls/1,")
    )
    await h.until(lambda: _pick(h, "app.a.example", ("acme-tls/1",)) == "team-a/web:443")
    assert any("sniffer.dev/alpn" in p and "Ingress certs/acme" in p for p in h.source.problems())


@needs_crds
async def test_tlsroute_alpn_annotation(api_server: Any, harness_factory: Any) -> None:
    api_server.create(o.gateway_class())
    api_server.create(o.gateway("infra", "edge"))
    _svc(api_server, "team-a", "web", "10.0.0.1")
    _svc(api_server, "certs", "solver", "10.0.0.9")
    h = harness_factory()
    await h.start()
    api_server.create(o.tls_route("team-a", "web", ["*.a.example"], [o.backend_ref("web")]))
    api_server.create(
        annotated(
            o.tls_route("certs", "acme", ["*.a.example"], [o.backend_ref("solver")]),
            "acme-tls/1",
        )
    )
    await h.until(
        lambda: bool(h.updates) and _pick(h, "x.y.a.example", ("acme-tls/1",)) is not None
    )
    assert _pick(h, "x.y.a.example", ("acme-tls/1",)) == "certs/solver:443"
    assert _pick(h, "x.y.a.example", ("h2",)) == "team-a/web:443"
    assert h.lookup("x.y.a.example") == (MatchKind.WILDCARD, "team-a/web:443")
