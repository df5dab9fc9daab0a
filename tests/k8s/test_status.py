"""Gateway API status as the API conventions want it, and a burst of creates.

`lastTransitionTime` moves only when a condition's status flips; `observedGeneration`
follows the object's generation; nothing is written when the object already holds the
desired status (also right after a restart); 409/429/5xx writes are retried; a burst of
100 creates ends with every route's status right and no error logged. `from: Selector`
admits and rejects routes as namespace labels change.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

import pytest

from sniffer.observe import metrics
from tests.k8s.conftest import needs_crds
from tests.kubeapi import objects as o

pytestmark = needs_crds


def _infra(server: Any, listeners: Any = None) -> None:
    server.create(o.gateway_class())
    server.create(o.gateway("infra", "edge", listeners))


def _svc(server: Any, ns: str, name: str = "web") -> None:
    server.create(o.service(ns, name))
    server.create(o.endpoint_slice(ns, name, ["10.0.0.1"]))


def _edge_entry(server: Any, ns: str, name: str) -> dict[str, Any] | None:
    obj = server.get("TLSRoute", ns, name)
    for p in (obj.get("status") or {}).get("parents", []):
        if p["parentRef"]["name"] == "edge":
            return dict(p)
    return None


def _conds(entry: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (entry or {}).get("conditions", [])}


async def _until(server: Any, pred: Any, timeout: float = 5.0) -> None:
    """Wait for `pred()` over the server's objects, re-checked on every write."""
    async with server.changed:
        await asyncio.wait_for(server.changed.wait_for(pred), timeout)


def _counter(kind: str, result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "sniffer_status_writes_total", {"kind": kind, "result": result}
    )
    return value or 0.0


async def test_last_transition_time_kept_and_observed_generation_follows(
    api_server, harness_factory
):
    _infra(api_server)
    _svc(api_server, "team-a")
    api_server.create(o.tls_route("team-a", "r", ["a.example.com"], [o.backend_ref("web")]))
    h = harness_factory()
    await h.start()
    await _until(
        api_server,
        lambda: (
            _conds(_edge_entry(api_server, "team-a", "r")).get("Accepted", {}).get("status")
            == "True"
        ),
    )
    before = _conds(_edge_entry(api_server, "team-a", "r"))
    gw_before = copy.deepcopy(api_server.get("Gateway", "infra", "edge")["status"])
    # Make any rewrite of the stamp visible: pretend the condition flipped long ago.
    old = "2020-01-01T00:00:00Z"
    obj = copy.deepcopy(api_server.get("TLSRoute", "team-a", "r"))
    for p in obj["status"]["parents"]:
        for c in p["conditions"]:
            c["lastTransitionTime"] = old
    api_server.update(obj, status=True)

    # A hostname edit keeps Accepted=True: a new generation, the same transition time.
    obj = copy.deepcopy(api_server.get("TLSRoute", "team-a", "r"))
    obj["spec"]["hostnames"].append("b.example.com")
    api_server.update(obj)
    await h.routes_to("b.example.com", "team-a/web:443")
    await _until(
        api_server,
        lambda: (
            _conds(_edge_entry(api_server, "team-a", "r"))["Accepted"]["observedGeneration"] == 2
        ),
    )
    after = _conds(_edge_entry(api_server, "team-a", "r"))
    assert after["Accepted"]["status"] == before["Accepted"]["status"] == "True"
    assert after["Accepted"]["lastTransitionTime"] == old
    assert after["ResolvedRefs"]["lastTransitionTime"] == old
    # sniffer wrote only the status subresource, never the route itself.
    writes = [(m, p) for m, p, _ in api_server.requests if m in ("PUT", "PATCH", "POST")]
    assert writes and all(p.endswith("/status") for m, p in writes if "/tlsroutes" in p), writes

    # A flip (the backend Service goes away) moves ResolvedRefs' time, not Accepted's.
    api_server.delete("Service", "team-a", "web")
    await _until(
        api_server,
        lambda: _conds(_edge_entry(api_server, "team-a", "r"))["ResolvedRefs"]["status"] == "False",
    )
    flipped = _conds(_edge_entry(api_server, "team-a", "r"))
    assert flipped["ResolvedRefs"]["lastTransitionTime"] != old
    assert flipped["Accepted"]["lastTransitionTime"] == old
    # The Gateway's conditions did not flip: their times are the first write's.
    gw_after = api_server.get("Gateway", "infra", "edge")["status"]
    assert [c["lastTransitionTime"] for c in gw_after["conditions"]] == [
        c["lastTransitionTime"] for c in gw_before["conditions"]
    ]


async def test_nothing_written_when_the_server_already_holds_it(api_server, harness_factory):
    _infra(api_server)
    _svc(api_server, "team-a")
    for i in range(5):
        api_server.create(
            o.tls_route("team-a", f"r{i}", [f"r{i}.example.com"], [o.backend_ref("web")])
        )
    first = harness_factory()
    await first.start()
    await first.source.status_idle()
    assert api_server.status_writes, "the first instance wrote status"
    await first.stop()
    # A restart (or a new leader) compares with what the objects carry: no write at all.
    del api_server.status_writes[:]
    second = harness_factory()
    await second.start()
    await second.source.status_idle()
    assert api_server.status_writes == []


async def test_conflicts_and_server_errors_are_retried(api_server, harness_factory):
    _infra(api_server)
    _svc(api_server, "team-a")
    h = harness_factory()
    await h.start()
    await h.source.status_idle()
    # The counters are process-wide (other tests' writes are in them): deltas only.
    kinds, results = ("TLSRoute", "Gateway", "GatewayClass"), ("conflict", "error")
    before = {(k, r): _counter(k, r) for k in kinds for r in results}
    oks = _counter("TLSRoute", "ok")
    api_server.status_faults.extend([409, 503, 429])
    api_server.create(o.tls_route("team-a", "r", ["a.example.com"], [o.backend_ref("web")]))
    await _until(
        api_server,
        lambda: "Accepted" in _conds(_edge_entry(api_server, "team-a", "r")),
    )
    assert not api_server.status_faults
    assert _counter("TLSRoute", "ok") >= oks + 1
    # The three faults may land on the route or the Gateway write, whichever came first:
    # each is counted once, by kind and result.
    after = {key: _counter(*key) - was for key, was in before.items()}
    assert sum(after.values()) == 3, after
    assert sum(n for (_, r), n in after.items() if r == "conflict") == 1, after


async def test_a_failed_round_is_retried(api_server, harness_factory):
    _infra(api_server)
    _svc(api_server, "team-a")
    h = harness_factory(status_retry_limit=2)
    await h.start()
    await h.source.status_idle()
    # More failures than one round's retries: the round fails, and a later one succeeds
    # without any further change to the cluster.
    api_server.status_faults.extend([500] * 6)
    api_server.create(o.tls_route("team-a", "r", ["a.example.com"], [o.backend_ref("web")]))
    await _until(
        api_server,
        lambda: "Accepted" in _conds(_edge_entry(api_server, "team-a", "r")),
    )
    assert h.source.health()["status_writes"]["rounds_failed"] >= 1  # type: ignore[index]


async def test_burst_of_100_creates_every_status_right_and_no_error(
    api_server, harness_factory, caplog
):
    _infra(api_server)
    _svc(api_server, "team-a")
    h = harness_factory(
        debounce_quiet=0.1, debounce_max_delay=1.0, backoff_initial=0.5, backoff_max=30.0
    )
    await h.start()
    await h.source.status_idle()
    publishes, written = h.source.publishes, len(api_server.status_writes)
    caplog.set_level(logging.WARNING)
    for i in range(100):
        api_server.create(
            o.tls_route("team-a", f"r{i:03}", [f"r{i}.example.com"], [o.backend_ref("web")])
        )
        await asyncio.sleep(0.01)  # the pacing of the burst, not a synchronisation
    last_create = time.monotonic()

    def all_right() -> bool:
        for i in range(100):
            acc = _conds(_edge_entry(api_server, "team-a", f"r{i:03}")).get("Accepted")
            if acc is None or acc["status"] != "True" or acc["observedGeneration"] != 1:
                return False
        gw = api_server.get("Gateway", "infra", "edge").get("status") or {}
        return gw.get("listeners", [{}])[0].get("attachedRoutes") == 100

    await _until(api_server, all_right, timeout=15)  # ~0.1 s on a quiet machine
    took = time.monotonic() - last_create
    await h.source.status_idle()
    route_writes = [w for w in api_server.status_writes[written:] if w[0] == "TLSRoute"]
    gateway_writes = [w for w in api_server.status_writes[written:] if w[0] == "Gateway"]
    rounds = h.source.publishes - publishes
    print(
        f"burst of 100 TLSRoutes: every status right {took:.2f}s after the last create; "
        f"{len(route_writes)} route and {len(gateway_writes)} Gateway status writes, "
        f"{rounds} table publishes"
    )
    # Keeping up is counted, not timed: one write per route (nothing rewritten, nothing
    # failed and retried), and the Gateway's attachedRoutes written at most once per
    # published table (a round), not once per route.
    assert sorted(route_writes) == [("TLSRoute", "team-a", f"r{i:03}") for i in range(100)]
    assert 1 <= len(gateway_writes) <= rounds, (len(gateway_writes), rounds)
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not bad, [r.getMessage() for r in bad]
    health = h.source.health()["status_writes"]
    assert health["failures"] == 0 and health["rounds_failed"] == 0  # type: ignore[index]


async def test_from_selector_follows_namespace_labels(api_server, harness_factory):
    selector = {"matchLabels": {"edge": "yes"}}
    listener = o.tls_listener(allowed_from="Selector")
    listener["allowedRoutes"]["namespaces"]["selector"] = selector
    _infra(api_server, [listener])
    api_server.create(o.namespace("team-a", {"edge": "yes"}))
    api_server.create(o.namespace("team-b"))
    for ns in ("team-a", "team-b"):
        _svc(api_server, ns)
        api_server.create(o.tls_route(ns, "r", [f"{ns}.example.com"], [o.backend_ref("web")]))
    h = harness_factory()
    await h.start()
    assert h.lookup("team-a.example.com")[1] == "team-a/web:443"
    assert h.lookup("team-b.example.com")[1] is None

    def accepted(ns: str) -> tuple[str, str] | None:
        acc = _conds(_edge_entry(api_server, ns, "r")).get("Accepted")
        return None if acc is None else (acc["status"], acc["reason"])

    await _until(api_server, lambda: accepted("team-b") == ("False", "NotAllowedByListeners"))
    assert accepted("team-a") == ("True", "Accepted")

    # Labelling team-b admits it; unlabelling team-a rejects it.
    for ns, labels in (("team-b", {"edge": "yes"}), ("team-a", {})):
        obj = copy.deepcopy(api_server.get("Namespace", None, ns))
        obj["metadata"]["labels"] = {"kubernetes.io/metadata.name": ns} | labels
        api_server.update(obj)
    await h.routes_to("team-b.example.com", "team-b/web:443")
    await h.routes_to("team-a.example.com", None)
    await _until(api_server, lambda: accepted("team-b") == ("True", "Accepted"))
    await _until(api_server, lambda: accepted("team-a") == ("False", "NotAllowedByListeners"))

    # matchExpressions: NotIn excludes a tier.
    gw = copy.deepcopy(api_server.get("Gateway", "infra", "edge"))
    gw["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["selector"] = {
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["blocked"]}]
    }
    api_server.update(gw)
    await h.routes_to("team-a.example.com", "team-a/web:443")
    obj = copy.deepcopy(api_server.get("Namespace", None, "team-b"))
    obj["metadata"]["labels"]["tier"] = "blocked"
    api_server.update(obj)
    await h.routes_to("team-b.example.com", None)


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "x"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}, {"a": "x"}, False),
    ],
)
def test_label_selector(selector: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    from sniffer.routing.sources.kubernetes.parsers import parse_label_selector

    assert parse_label_selector(selector, "selector").matches(labels) is matches
