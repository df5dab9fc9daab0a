"""Gateway API TLSRoutes: attachment, hostnames, weights, every status reason, versions."""

from __future__ import annotations

import asyncio
import copy

import pytest

from sniffer.routing.table import MatchKind, WeightedBackend
from tests.k8s.conftest import needs_crds
from tests.kubeapi import objects as o
from tests.kubeapi.server import ApiFailure

pytestmark = needs_crds
T0 = "2024-01-01T00:00:00Z"
T1 = "2024-06-01T00:00:00Z"


def _infra(server, listeners=None):
    server.create(o.gateway_class())
    server.create(o.gateway("infra", "edge", listeners))


def _svc(server, ns, name="web", addr="10.0.0.1"):
    server.create(o.service(ns, name))
    server.create(o.endpoint_slice(ns, name, [addr]))


def _parents(server, ns, name):
    obj = server.get("TLSRoute", ns, name)
    out = {}
    for p in (obj.get("status") or {}).get("parents", []):
        conds = {c["type"]: (c["status"], c["reason"]) for c in p["conditions"]}
        out[p["parentRef"]["name"]] = conds
    return out


async def _status(h, server, ns, name, want):
    """Wait until the route's status for Gateway `edge` has the wanted conditions."""

    async def check():
        async with server.changed:
            await server.changed.wait_for(
                lambda: _parents(server, ns, name).get("edge", {}).items() >= want.items()
            )

    await asyncio.wait_for(check(), 5)


async def test_route_appears_with_multi_label_wildcard_and_status(api_server, harness_factory):
    _infra(api_server)
    _svc(api_server, "team-a")
    api_server.create(
        o.tls_route(
            "team-a", "r", ["*.a.example.com", "exact.example.com"], [o.backend_ref("web", 443)]
        )
    )
    h = harness_factory()
    await h.start()
    assert h.lookup("deep.x.a.example.com") == (MatchKind.WILDCARD, "team-a/web:443")
    assert h.lookup("exact.example.com") == (MatchKind.EXACT, "team-a/web:443")
    route = next(r for r in h.spec.routes if r.host == "*.a.example.com")
    assert route.multi_label and route.listeners == frozenset({"tls-443"})
    assert route.source == "TLSRoute team-a/r"
    await _status(
        h,
        api_server,
        "team-a",
        "r",
        {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")},
    )
    # Gateway listener status counts the route; the class is accepted.
    async with api_server.changed:
        await asyncio.wait_for(
            api_server.changed.wait_for(
                lambda: (
                    (api_server.get("Gateway", "infra", "edge").get("status") or {})
                    .get("listeners", [{}])[0]
                    .get("attachedRoutes")
                    == 1
                )
            ),
            5,
        )
    gc = api_server.get("GatewayClass", None, "sniffer")
    assert gc["status"]["conditions"][0]["type"] == "Accepted"
    # Deleting it removes the route.
    api_server.delete("TLSRoute", "team-a", "r")
    await h.routes_to("exact.example.com", None)


async def test_weights_including_zero(api_server, harness_factory):
    _infra(api_server)
    for name in ("blue", "green", "off"):
        _svc(api_server, "team-a", name)
    api_server.create(
        o.tls_route(
            "team-a",
            "r",
            ["w.example.com"],
            [
                o.backend_ref("blue", 443, weight=90),
                o.backend_ref("green", 443, weight=10),
                o.backend_ref("off", 443, weight=0),
            ],
        )
    )
    h = harness_factory()
    await h.start()
    m = h.table.lookup("tls-443", "w.example.com")
    assert m.backends == (
        WeightedBackend("team-a/blue:443", 90),
        WeightedBackend("team-a/green:443", 10),
        WeightedBackend("team-a/off:443", 0),
    )


async def test_listener_hostname_intersection(api_server, harness_factory):
    _infra(api_server, [o.tls_listener("tls", 443, hostname="*.example.com")])
    _svc(api_server, "team-a")
    api_server.create(
        o.tls_route("team-a", "narrow", ["a.example.com", "other.net"], [o.backend_ref("web")])
    )
    api_server.create(o.tls_route("team-a", "none", ["other.org"], [o.backend_ref("web")]))
    h = harness_factory()
    await h.start()
    assert h.lookup("a.example.com")[1] == "team-a/web:443"
    assert h.lookup("other.net")[0] is MatchKind.NONE
    await _status(
        h, api_server, "team-a", "none", {"Accepted": ("False", "NoMatchingListenerHostname")}
    )


async def test_every_status_reason(api_server, harness_factory):
    _infra(
        api_server,
        [
            o.tls_listener("tls", 443, allowed_from="Same"),
            o.tls_listener("open", 8443, allowed_from="All"),
        ],
    )
    _svc(api_server, "infra", "local")
    _svc(api_server, "team-a")
    _svc(api_server, "team-b", "shared")
    # NotAllowedByListeners: listener `tls` only admits routes from its own namespace.
    api_server.create(
        o.tls_route(
            "team-a",
            "not-allowed",
            ["na.example.com"],
            [o.backend_ref("web")],
            parents=[o.parent_ref("edge", "infra", "tls")],
        )
    )
    # BackendNotFound
    api_server.create(o.tls_route("infra", "missing", ["m.example.com"], [o.backend_ref("nope")]))
    # InvalidKind
    api_server.create(
        o.tls_route(
            "infra", "kind", ["k.example.com"], [o.backend_ref("cm", kind="ConfigMap", group="")]
        )
    )
    # RefNotPermitted, then fixed by a ReferenceGrant.
    api_server.create(
        o.tls_route(
            "infra", "xns", ["x.example.com"], [o.backend_ref("shared", namespace="team-b")]
        )
    )
    h = harness_factory()
    await h.start()
    await _status(
        h, api_server, "team-a", "not-allowed", {"Accepted": ("False", "NotAllowedByListeners")}
    )
    await _status(
        h,
        api_server,
        "infra",
        "missing",
        {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")},
    )
    await _status(h, api_server, "infra", "kind", {"ResolvedRefs": ("False", "InvalidKind")})
    await _status(h, api_server, "infra", "xns", {"ResolvedRefs": ("False", "RefNotPermitted")})
    # Refused references keep their share but have nothing to dial.
    m = h.table.lookup("tls-443", "x.example.com")
    assert h.backend(m.backends[0].backend).endpoints == ()
    api_server.create(o.reference_grant("team-b", "allow-infra", "infra", "shared"))
    await _status(h, api_server, "infra", "xns", {"ResolvedRefs": ("True", "ResolvedRefs")})
    await h.routes_to("x.example.com", "team-b/shared:443")
    assert h.backend("team-b/shared:443").endpoints
    # The cross-namespace Service changing reaches the route (dependency tracking).
    api_server.update(o.endpoint_slice("team-b", "shared", ["10.9.9.9"]))
    await h.until(lambda: h.backend("team-b/shared:443").endpoints[0].host == "10.9.9.9")
    # Listener `open` (port 8443) is not one sniffer listens on: Gateway listener status.
    async with api_server.changed:
        await asyncio.wait_for(
            api_server.changed.wait_for(
                lambda: any(
                    c["reason"] == "PortUnavailable"
                    for lis in (api_server.get("Gateway", "infra", "edge").get("status") or {}).get(
                        "listeners", []
                    )
                    if lis["name"] == "open"
                    for c in lis["conditions"]
                )
            ),
            5,
        )


async def test_conflicting_tlsroutes_status(api_server, harness_factory):
    _infra(api_server)
    _svc(api_server, "team-a")
    _svc(api_server, "team-b")
    api_server.create(
        o.tls_route("team-b", "young", ["c.example.com"], [o.backend_ref("web")], created=T1)
    )
    api_server.create(
        o.tls_route("team-a", "old", ["c.example.com"], [o.backend_ref("web")], created=T0)
    )
    h = harness_factory()
    await h.start()
    assert h.lookup("c.example.com")[1] == "team-a/web:443"
    await _status(h, api_server, "team-b", "young", {"Accepted": ("False", "HostnameConflict")})
    await _status(h, api_server, "team-a", "old", {"Accepted": ("True", "Accepted")})


async def test_status_keeps_other_controllers_entries(api_server, harness_factory):
    _infra(api_server)
    _svc(api_server, "team-a")
    api_server.create(o.tls_route("team-a", "r", ["s.example.com"], [o.backend_ref("web")]))
    obj = dict(api_server.get("TLSRoute", "team-a", "r"))
    obj["status"] = {
        "parents": [
            {
                "parentRef": {"group": o.GW, "kind": "Gateway", "name": "theirs"},
                "controllerName": "example.com/other",
                "conditions": [
                    {
                        "type": "Accepted",
                        "status": "True",
                        "reason": "Accepted",
                        "message": "",
                        "lastTransitionTime": T0,
                        "observedGeneration": 1,
                    }
                ],
            }
        ]
    }
    api_server.update(obj, status=True)
    h = harness_factory()
    await h.start()
    await _status(h, api_server, "team-a", "r", {"Accepted": ("True", "Accepted")})
    assert "theirs" in _parents(api_server, "team-a", "r")
    writes = len(api_server.status_writes)
    # Nothing changed: another rebuild writes no status.
    api_server.update(o.endpoint_slice("team-a", "web", ["10.0.0.5"]))
    await h.until(lambda: h.backend("team-a/web:443").endpoints[0].host == "10.0.0.5")
    await h.source.status_idle()
    assert len(api_server.status_writes) == writes


async def test_tlsroute_version_fallback(harness_factory, tmp_path):
    from tests.k8s.conftest import Harness
    from tests.kubeapi.server import KubeApiServer

    server = KubeApiServer(tls_route_versions=("v1alpha2",))
    await server.start()
    try:
        server.create(o.gateway_class())
        server.create(o.gateway("infra", "edge"))
        server.create(o.service("team-a", "web"))
        server.create(o.endpoint_slice("team-a", "web", ["10.0.0.1"]))
        server.create(
            o.tls_route(
                "team-a", "r", ["old.example.com"], [o.backend_ref("web")], version="v1alpha2"
            )
        )
        h = Harness(server, server.write_kubeconfig(tmp_path / "kc"))
        await h.start()
        try:
            assert h.source.health()["versions"]["TLSRoute"] == "v1alpha2"
            assert h.lookup("old.example.com")[1] == "team-a/web:443"
            await h.source.status_idle()
            assert server.get("TLSRoute", "team-a", "r")["status"]["parents"]
        finally:
            await h.stop()
    finally:
        await server.stop()


async def test_server_validates_against_crd_schema(api_server):
    bad = o.gateway("infra", "bad")
    bad["spec"]["listeners"][0]["protocol"] = 7
    with pytest.raises(ApiFailure) as err:
        api_server.create(bad)
    assert err.value.code == 422


async def test_gateway_port_matches_the_public_port_of_a_mapped_listener(
    api_server, harness_factory
):
    # The DaemonSet binds 8443 and the node's hostPort 443 maps onto it
    # (`--listen tls:0.0.0.0:8443@443`): the Gateway's port 443 must attach.
    from sniffer.routing.table import Listener

    mapped = Listener("tls-443", "0.0.0.0", 8443, "tls", public_port=443)
    unmapped = Listener("tls-8443", "0.0.0.0", 8443, "tls")
    _infra(api_server)
    _svc(api_server, "team-a")
    api_server.create(
        o.tls_route("team-a", "r", ["app.a.example.com"], [o.backend_ref("web", 443)])
    )
    h = harness_factory(listeners=(mapped,))
    await h.start()
    assert h.lookup("app.a.example.com") == (MatchKind.EXACT, "team-a/web:443")
    await h.stop()
    h2 = harness_factory(listeners=(unmapped,), write_status=False)
    await h2.start()
    assert h2.lookup("app.a.example.com", listener="tls-8443") == (MatchKind.NONE, None)
    await h2.stop()


def _written(server, kind, ns, name):
    return [w for w in server.status_writes if w == (kind, ns or "", name)]


async def test_gateway_of_another_class_is_neither_routed_nor_written(api_server, harness_factory):
    _infra(api_server)
    api_server.create(o.gateway_class("other", "example.com/other-controller"))
    api_server.create(o.gateway("infra", "theirs", class_name="other"))
    # Another sniffer fleet's class (same controller, another class name): not ours either.
    api_server.create(o.gateway_class("internal"))
    api_server.create(o.gateway("infra", "internal", class_name="internal"))
    api_server.create(
        o.tls_route(
            "team-a",
            "internal",
            ["internal.example.com"],
            [o.backend_ref("web")],
            parents=[o.parent_ref("internal", "infra")],
        )
    )
    _svc(api_server, "team-a")
    api_server.create(o.tls_route("team-a", "ours", ["ours.example.com"], [o.backend_ref("web")]))
    api_server.create(
        o.tls_route(
            "team-a",
            "theirs",
            ["theirs.example.com"],
            [o.backend_ref("web")],
            parents=[o.parent_ref("theirs", "infra")],
        )
    )
    both = [o.parent_ref("edge", "infra"), o.parent_ref("theirs", "infra")]
    api_server.create(
        o.tls_route("team-a", "both", ["both.example.com"], [o.backend_ref("web")], parents=both)
    )
    theirs_before = {
        name: copy.deepcopy(api_server.get("TLSRoute", "team-a", name).get("status"))
        for name in ("theirs", "internal")
    }
    h = harness_factory()
    await h.start()
    await _status(h, api_server, "team-a", "ours", {"Accepted": ("True", "Accepted")})
    await _status(h, api_server, "team-a", "both", {"Accepted": ("True", "Accepted")})
    await h.source.status_idle()
    assert h.lookup("ours.example.com")[1] == "team-a/web:443"
    assert h.lookup("theirs.example.com") == (MatchKind.NONE, None)
    assert h.lookup("internal.example.com") == (MatchKind.NONE, None)
    assert h.lookup("both.example.com")[1] == "team-a/web:443"  # through our Gateway only
    # Another controller's objects carry nothing of ours, and were never written.
    for name in ("theirs", "internal"):
        assert _written(api_server, "TLSRoute", "team-a", name) == []
        assert api_server.get("TLSRoute", "team-a", name).get("status") == theirs_before[name]
    assert _written(api_server, "Gateway", "infra", "theirs") == []
    assert _written(api_server, "Gateway", "infra", "internal") == []
    assert _written(api_server, "GatewayClass", None, "other") == []
    assert _written(api_server, "GatewayClass", None, "internal") == []
    assert set(_parents(api_server, "team-a", "both")) == {"edge"}
    assert _written(api_server, "Gateway", "infra", "edge")  # while ours were
    assert _written(api_server, "GatewayClass", None, "sniffer")


async def test_gateway_class_of_another_controller_is_not_ours(api_server, harness_factory):
    """A GatewayClass named as sniffer's but whose controllerName is another's: its
    Gateways belong to that controller (the positive control: sniffer configured with
    that controller name takes them)."""
    api_server.create(o.gateway_class("sniffer", "example.com/other-controller"))
    api_server.create(o.gateway("infra", "edge"))
    _svc(api_server, "team-a")
    api_server.create(o.tls_route("team-a", "r", ["r.example.com"], [o.backend_ref("web")]))
    objects = (
        ("GatewayClass", None, "sniffer"),
        ("Gateway", "infra", "edge"),
        ("TLSRoute", "team-a", "r"),
    )
    before = [copy.deepcopy(api_server.get(*k).get("status")) for k in objects]
    h = harness_factory()
    await h.start()
    await h.source.status_idle()
    assert h.lookup("r.example.com") == (MatchKind.NONE, None)
    assert api_server.status_writes == []
    assert [api_server.get(*k).get("status") for k in objects] == before

    other = harness_factory(controller_name="example.com/other-controller")
    await other.start()
    assert other.lookup("r.example.com")[1] == "team-a/web:443"
    await _status(other, api_server, "team-a", "r", {"Accepted": ("True", "Accepted")})
    assert h.lookup("r.example.com") == (MatchKind.NONE, None)
