"""Ingress through the real client and the API test server: life cycle, classes, ports."""

from __future__ import annotations

from sniffer.routing.table import Endpoint, MatchKind
from tests.kubeapi import objects as o

T0 = "2024-01-01T00:00:00Z"
T1 = "2024-06-01T00:00:00Z"


def _tenant(server, ns="team-a", svc="web", addrs=("10.0.0.1",), **svc_kw):
    server.create(o.service(ns, svc, **svc_kw))
    server.create(o.endpoint_slice(ns, svc, list(addrs)))


async def test_objects_appear_change_and_disappear(api_server, harness_factory):
    h = harness_factory()
    await h.start()
    assert h.spec.routes == ()
    _tenant(api_server)
    api_server.create(o.ingress("team-a", "web", [("a.example.com", "web", 443)]))
    await h.routes_to("a.example.com", "team-a/web:443")
    assert h.backend("team-a/web:443").endpoints == (Endpoint("10.0.0.1", 8443),)
    assert h.spec.routes[0].source == "Ingress team-a/web"
    assert h.spec.routes[0].multi_label is False

    # Endpoints change (a pod comes, one is not ready) -> the backend follows.
    api_server.update(
        o.endpoint_slice("team-a", "web", ["10.0.0.2", "10.0.0.3"], not_ready=["10.0.0.1"])
    )
    await h.until(
        lambda: (
            h.backend("team-a/web:443").endpoints
            == (Endpoint("10.0.0.2", 8443), Endpoint("10.0.0.3", 8443))
        )
    )

    # The rule changes host.
    api_server.update(o.ingress("team-a", "web", [("b.example.com", "web", 443)]))
    await h.routes_to("b.example.com", "team-a/web:443")
    assert h.lookup("a.example.com")[0] is MatchKind.NONE

    # The Ingress goes away.
    api_server.delete("Ingress", "team-a", "web")
    await h.routes_to("b.example.com", None)
    assert h.spec.routes == ()


async def test_k8sniff_annotation_and_classes(api_server, harness_factory):
    _tenant(api_server)
    api_server.create(
        o.ingress(
            "team-a",
            "k8sniff",
            [("old.example.com", "web", 443)],
            class_name=None,
            class_annotation="sniffer",
        )
    )
    api_server.create(
        o.ingress("team-a", "nginx", [("nginx.example.com", "web", 443)], class_name="nginx")
    )
    api_server.create(
        o.ingress("team-a", "classless", [("none.example.com", "web", 443)], class_name=None)
    )
    h = harness_factory()
    await h.start()
    assert h.lookup("old.example.com")[1] == "team-a/web:443"
    assert h.lookup("nginx.example.com")[0] is MatchKind.NONE
    assert h.lookup("none.example.com")[0] is MatchKind.NONE
    # Our IngressClass becoming the cluster default adopts class-less Ingresses.
    api_server.create(o.ingress_class("sniffer", default=True))
    await h.routes_to("none.example.com", "team-a/web:443")


async def test_http_port_annotation_paths_and_named_ports(api_server, harness_factory):
    _tenant(
        api_server,
        ports=(("https", 443, "tls"), ("http", 80, 8080)),
        annotations={"sniffer.dev/http-port": "http"},
    )
    api_server.update(
        o.endpoint_slice("team-a", "web", ["10.0.0.1"], ports=(("https", 8443), ("http", 8080)))
    )
    _tenant(api_server, svc="plain", addrs=("10.0.1.1",))
    api_server.create(
        o.ingress(
            "team-a",
            "web",
            [("a.example.com", "web", "https"), ("p.example.com", "plain", 443)],
            paths=("/", "/api"),
        )
    )
    h = harness_factory()
    await h.start()
    # TLS listener: the rule's port, by name, resolved through the slice's named port.
    assert h.lookup("a.example.com")[1] == "team-a/web:https"
    assert h.backend("team-a/web:https").endpoints == (Endpoint("10.0.0.1", 8443),)
    # HTTP listener: only the annotated Service, on the annotated port.
    assert h.lookup("a.example.com", "http-80")[1] == "team-a/web:http"
    assert h.backend("team-a/web:http").endpoints == (Endpoint("10.0.0.1", 8080),)
    assert h.lookup("p.example.com", "http-80")[0] is MatchKind.NONE
    assert any("'/api' ignored" in p for p in h.source.problems())


async def test_default_backend_oldest_ingress_wins(api_server, harness_factory):
    _tenant(api_server, "team-a")
    _tenant(api_server, "team-b", addrs=("10.0.9.9",))
    api_server.create(o.ingress("team-b", "young", [], default=("web", 443), created=T1))
    api_server.create(o.ingress("team-a", "old", [], default=("web", 443), created=T0))
    h = harness_factory()
    await h.start()
    m = h.table.lookup("tls-443", "anything.example.com")
    assert m.kind is MatchKind.DEFAULT and m.backends[0].backend == "team-a/web:443"
    api_server.delete("Ingress", "team-a", "old")
    await h.until(lambda: h.table.lookup("tls-443", "x.y").backends[0].backend == "team-b/web:443")


async def test_ingress_wildcard_matches_one_label(api_server, harness_factory):
    _tenant(api_server)
    api_server.create(o.ingress("team-a", "wild", [("*.a.example.com", "web", 443)]))
    h = harness_factory()
    await h.start()
    assert h.lookup("x.a.example.com") == (MatchKind.WILDCARD, "team-a/web:443")
    assert h.lookup("y.x.a.example.com")[0] is MatchKind.NONE


async def test_conflict_oldest_then_name(api_server, harness_factory):
    for ns in ("team-a", "team-b", "team-c"):
        _tenant(api_server, ns)
    api_server.create(o.ingress("team-b", "x", [("same.example.com", "web", 443)], created=T1))
    api_server.create(o.ingress("team-c", "x", [("same.example.com", "web", 443)], created=T0))
    api_server.create(o.ingress("team-a", "x", [("tie.example.com", "web", 443)], created=T1))
    api_server.create(o.ingress("team-b", "y", [("tie.example.com", "web", 443)], created=T1))
    h = harness_factory()
    await h.start()
    assert h.lookup("same.example.com")[1] == "team-c/web:443"  # oldest
    assert h.lookup("tie.example.com")[1] == "team-a/web:443"  # same age: ns/name order
    losers = {(c.host, c.loser) for c in h.table.conflicts}
    assert ("same.example.com", "Ingress team-b/x") in losers
    assert ("tie.example.com", "Ingress team-b/y") in losers
    # The winner goes: the loser takes over.
    api_server.delete("Ingress", "team-c", "x")
    await h.routes_to("same.example.com", "team-b/web:443")


async def test_service_shapes_externalname_headless_missing(api_server, harness_factory):
    api_server.create(
        o.service(
            "team-a",
            "ext",
            (("https", 443, 443),),
            type="ExternalName",
            external_name="backend.example.net",
        )
    )
    _tenant(api_server, svc="headless", cluster_ip=None, addrs=("10.0.0.7",))
    api_server.create(
        o.ingress(
            "team-a",
            "x",
            [
                ("ext.example.com", "ext", 443),
                ("hl.example.com", "headless", 443),
                ("gone.example.com", "missing", 443),
            ],
        )
    )
    h = harness_factory(backend_mode="clusterip")
    await h.start()
    assert h.backend("team-a/ext:443").endpoints == (Endpoint("backend.example.net", 443),)
    # Headless in clusterip mode falls back to its endpoints.
    assert h.backend("team-a/headless:443").endpoints == (Endpoint("10.0.0.7", 8443),)
    # A missing Service: the route exists, nothing to dial, the problem is reported.
    assert h.lookup("gone.example.com")[1] == "team-a/missing:443"
    assert h.backend("team-a/missing:443").endpoints == ()
    assert any("Service team-a/missing not found" in p for p in h.source.problems())


async def test_clusterip_mode_dials_cluster_ip(api_server, harness_factory):
    _tenant(api_server, cluster_ip="10.96.3.4")
    api_server.create(o.ingress("team-a", "x", [("a.example.com", "web", 443)]))
    h = harness_factory(backend_mode="clusterip")
    await h.start()
    assert h.backend("team-a/web:443").endpoints == (Endpoint("10.96.3.4", 443),)


async def test_noop_updates_cost_nothing_and_rebuilds_are_incremental(api_server, harness_factory):
    for ns in ("team-a", "team-b"):
        _tenant(api_server, ns)
        api_server.create(o.ingress(ns, "x", [(f"{ns}.example.com", "web", 443)]))
    h = harness_factory()
    await h.start()
    published, translated = h.source.publishes, h.source.namespaces_translated
    # A label-only change of a Service: a new resourceVersion, nothing routing reads.
    svc = o.service("team-a", "web")
    svc["metadata"]["labels"] = {"tier": "front"}
    api_server.update(svc)
    # The same Ingress written again: the server does not even bump the version.
    api_server.update(o.ingress("team-a", "x", [("team-a.example.com", "web", 443)]))
    # Then a real change in team-b only; once it is live, the no-ops are known to be past.
    api_server.update(o.endpoint_slice("team-b", "web", ["10.0.0.9"]))
    await h.until(lambda: h.backend("team-b/web:443").endpoints == (Endpoint("10.0.0.9", 8443),))
    assert h.source.publishes == published + 1
    assert h.source.namespaces_translated == translated + 1


async def test_pagination_uses_limit_and_continue(api_server, harness_factory):
    for i in range(30):
        _tenant(api_server, f"ns-{i:02d}")
        api_server.create(o.ingress(f"ns-{i:02d}", "x", [(f"h{i}.example.com", "web", 443)]))
    h = harness_factory(page_size=7)
    await h.start()
    assert len(h.spec.routes) == 30
    lists = [q for m, p, q in api_server.requests if p.endswith("/services") and "watch" not in q]
    assert sum("continue=" in q for q in lists) >= 4
    assert all("limit=7" in q for q in lists)
