"""Watch life cycle under faults: 410 mid-watch, silent streams, outages, bursts."""

from __future__ import annotations

import asyncio

from sniffer.observe import metrics
from sniffer.routing.sources.kubernetes import RBAC_RULES, compute_spec
from sniffer.routing.table import Endpoint, MatchKind
from tests.k8s.conftest import HTTP, TLS
from tests.kubeapi import objects as o


def _tenant(server, ns, host, addr="10.0.0.1"):
    server.create(o.service(ns, "web"))
    server.create(o.endpoint_slice(ns, "web", [addr]))
    server.create(o.ingress(ns, "x", [(host, "web", 443)]))


def _relists(kind, reason):
    value = metrics.REGISTRY.get_sample_value(
        "sniffer_watch_relists_total", {"kind": kind, "reason": reason}
    )
    return value or 0.0


async def test_410_mid_watch_relists_and_catches_up(api_server, harness_factory):
    _tenant(api_server, "team-a", "a.example.com")
    h = harness_factory()
    await h.start()
    before = _relists("Ingress", "gone")
    api_server.send_gone()
    # Changes made while the informers re-list must not be lost.
    _tenant(api_server, "team-b", "b.example.com")
    api_server.delete("Ingress", "team-a", "x")
    await h.routes_to("b.example.com", "team-b/web:443")
    await h.routes_to("a.example.com", None)
    assert _relists("Ingress", "gone") >= before + 1
    assert h.source.health()["kinds"]["Ingress"]["relists"] >= 2


async def test_watch_from_too_old_version_gets_410_then_relists(api_server, harness_factory):
    _tenant(api_server, "team-a", "a.example.com")
    h = harness_factory()
    await h.start()
    api_server.go_silent()  # the streams miss what happens next...
    _tenant(api_server, "team-b", "b.example.com")
    api_server.expire_history()  # ...and the server compacts it away
    api_server.close_watches()  # so streams reopen from a version the server forgot
    await h.routes_to("b.example.com", "team-b/web:443")
    assert h.source.health()["kinds"]["Service"]["relists"] >= 2


async def test_silent_stream_is_detected_and_reopened(api_server, harness_factory):
    _tenant(api_server, "team-a", "a.example.com")
    h = harness_factory(inactivity_timeout=0.5)
    await h.start()
    assert api_server.go_silent() >= 8
    _tenant(api_server, "team-b", "b.example.com")  # sent nowhere: every stream is mute
    await h.until(lambda: h.lookup("b.example.com")[1] == "team-b/web:443", timeout=5)
    errors = h.source.health()["kinds"]["Ingress"]
    assert "inactivity" in (errors["last_error"] or "")


async def test_server_down_keeps_last_table_and_reports(api_server, harness_factory):
    _tenant(api_server, "team-a", "a.example.com")
    h = harness_factory()
    await h.start()
    published = h.source.publishes
    await api_server.go_down()
    await h.until(lambda: not h.source.health()["api_up"])
    health = h.source.health()
    assert health["synced"] is True
    assert any(k["last_error"] for k in health["kinds"].values())
    assert metrics.REGISTRY.get_sample_value("sniffer_watch_up", {"kind": "Ingress"}) == 0
    # Still down after several failed retries: the last table is what is served.
    await h.until(lambda: h.source.health()["kinds"]["Ingress"]["errors"] >= 3)
    assert h.source.publishes == published
    assert h.lookup("a.example.com")[1] == "team-a/web:443"
    # Changes made while sniffer could not see them arrive once the API is back.
    _tenant(api_server, "team-b", "b.example.com")
    await api_server.go_up()
    await h.until(lambda: h.lookup("b.example.com")[1] == "team-b/web:443", timeout=10)
    await h.until(lambda: h.source.health()["api_up"], timeout=10)


async def test_burst_of_1000_events_is_a_handful_of_rebuilds(api_server, harness_factory):
    for i in range(100):
        _tenant(api_server, f"ns-{i:03d}", f"h{i}.example.com")
    h = harness_factory(debounce_quiet=0.1, debounce_max_delay=1.0)
    await h.start()
    published = h.source.publishes
    for round_ in range(10):
        for i in range(100):
            api_server.update(o.endpoint_slice(f"ns-{i:03d}", "web", [f"10.1.{round_}.{i}"]))
    await h.until(lambda: h.backend("ns-099/web:443").endpoints == (Endpoint("10.1.9.99", 8443),))
    await h.until(
        lambda: all(
            h.backend(f"ns-{i:03d}/web:443").endpoints[0].host == f"10.1.9.{i}" for i in range(100)
        )
    )
    bursts = h.source.publishes - published
    assert 1 <= bursts <= 5, bursts
    assert h.updates[-1].oldest_event is not None


async def test_compute_spec_one_shot(api_server, kubeconfig):
    from sniffer.routing.sources.kubernetes import KubernetesSettings

    _tenant(api_server, "team-a", "a.example.com")
    api_server.create(o.ingress("team-a", "bad", [("b.example.com", "missing", 443)]))
    spec, problems = await compute_spec(KubernetesSettings(kubeconfig=str(kubeconfig)), (TLS, HTTP))
    hosts = {r.host: r.source for r in spec.routes}
    assert hosts == {"a.example.com": "Ingress team-a/x", "b.example.com": "Ingress team-a/bad"}
    assert any("missing not found" in p for p in problems)
    assert not any("watch=true" in q for _, _, q in api_server.requests)


async def test_namespace_filter(api_server, harness_factory):
    _tenant(api_server, "team-a", "a.example.com")
    _tenant(api_server, "team-b", "b.example.com")
    h = harness_factory(namespaces=("team-b",))
    await h.start()
    assert h.lookup("a.example.com")[0] is MatchKind.NONE
    assert h.lookup("b.example.com")[1] == "team-b/web:443"


async def test_calls_stay_within_rbac_rules(api_server, harness_factory):
    """Every request the source made is allowed by RBAC_RULES (discovery aside)."""
    api_server.create(o.gateway_class())
    api_server.create(o.gateway("infra", "edge"))
    _tenant(api_server, "team-a", "a.example.com")
    api_server.create(o.tls_route("team-a", "r", ["t.example.com"], [o.backend_ref("web")]))
    h = harness_factory()
    await h.start()
    await h.source.status_idle()
    allowed = {(g, r): set(v) for g, r, v in RBAC_RULES}
    assert not any("secret" in r for _, r, _ in RBAC_RULES)
    for method, path, query in api_server.requests:
        parts = [p for p in path.split("/") if p]
        if parts[0] == "api":
            group, rest = "", parts[2:]
        else:
            group, rest = parts[1], parts[3:]
        if not rest:
            continue  # discovery (non-resource URLs)
        if rest[0] == "namespaces" and len(rest) > 2:
            rest = rest[2:]
        resource = rest[0] + ("/status" if rest[-1] == "status" and len(rest) == 3 else "")
        verb = {
            "GET": "get" if len(rest) > 1 else ("watch" if "watch=true" in query else "list"),
            "PATCH": "patch",
            "PUT": "update",
            "POST": "create",
            "DELETE": "delete",
        }[method]
        assert verb in allowed.get((group, resource), set()), (method, path, query)


async def test_bookmark_moves_the_version_a_rewatch_starts_from(api_server, harness_factory):
    """A BOOKMARK carries the informer past events of other kinds, so after a compaction a
    broken stream reopens from it without a 410 and a full re-list."""
    _tenant(api_server, "team-a", "a.example.com")
    h = harness_factory()
    await h.start()
    ingress = h.source.health()["kinds"]["Ingress"]
    relists, listed_at = ingress["relists"], ingress["resource_version"]
    # Other kinds move the cluster's version on; the Ingress stream hears nothing of it.
    for i in range(3):
        api_server.create(o.service("team-a", f"other-{i}"))
    assert int(listed_at) < api_server.rv
    bookmark = str(api_server.rv)
    api_server.send_bookmarks()

    async with asyncio.timeout(5):  # a bookmark changes no route: nothing to wait on
        while h.source.health()["kinds"]["Ingress"]["resource_version"] != bookmark:
            await asyncio.sleep(0.01)
    # The server forgets everything before the bookmark, then ends every stream.
    api_server.expire_history()
    watches = api_server.watch_opened
    api_server.close_watches()
    _tenant(api_server, "team-b", "b.example.com")
    await h.routes_to("b.example.com", "team-b/web:443")
    assert h.source.health()["kinds"]["Ingress"]["relists"] == relists
    reopened = [
        q
        for m, path, q in list(api_server.requests)
        if path == "/apis/networking.k8s.io/v1/ingresses" and "watch=true" in q
    ]
    assert api_server.watch_opened > watches
    assert f"resourceVersion={bookmark}" in reopened[-1], reopened[-1]
