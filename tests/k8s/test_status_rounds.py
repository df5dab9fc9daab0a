"""Status rounds that plan only the namespaces that can have changed, checked against a
plan of everything.

After random sequences of changes (routes created, deleted and renamed onto each other's
hostnames across namespaces, backends removed and restored, statuses wiped by another
controller) every object holds exactly the status a plan of everything calls for. A
foreign edit wiping our entry is restored with nothing else changing and no rebuild (also
when only a re-list sees it); a new generation with the same routing is reported; a
conflict that appears or disappears updates the status of the route in the other
namespace; a failed round is retried in full; a write whose echo never reaches the writer
is planned again when its memory expires.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections.abc import Callable, Collection
from typing import Any

import pytest

from sniffer.routing.sources.kubernetes import status as status_module
from sniffer.routing.sources.kubernetes.status import StatusWriter
from tests.k8s.conftest import Harness, needs_crds
from tests.kubeapi import objects as o

pytestmark = needs_crds

OTHER = "example.com/other-controller"
OLDER = "2020-01-01T00:00:00Z"
YOUNGER = "2021-01-01T00:00:00Z"


def _infra(server: Any, namespaces: Collection[str]) -> None:
    server.create(o.gateway_class())
    server.create(o.gateway("infra", "edge"))
    for ns in namespaces:
        server.create(o.service(ns, "web"))
        server.create(o.endpoint_slice(ns, "web", ["10.0.0.1"]))


def _writer(h: Harness) -> StatusWriter:
    writer = h.source._status
    assert writer is not None
    return writer


def _accepted(server: Any, ns: str, name: str) -> tuple[str, str] | None:
    obj = server.get("TLSRoute", ns, name) or {}
    for p in (obj.get("status") or {}).get("parents", []):
        if p.get("controllerName") != OTHER and p["parentRef"]["name"] == "edge":
            c = {c["type"]: c for c in p["conditions"]}["Accepted"]
            return c["status"], c["reason"]
    return None


async def _poll(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Re-check `pred` until it holds; status echoes land in the caches without any event
    a test can wait on, so this polls (bounded)."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


async def _settled(h: Harness) -> None:
    """The writer is idle and a plan of everything, trusting no memory, has nothing left."""
    writer = _writer(h)
    try:
        await _poll(lambda: writer.idle.is_set() and not writer.unwritten())
    except TimeoutError:
        pytest.fail(f"status never matched a full plan: {writer.unwritten()}")


def _wipe(server: Any, ns: str, name: str) -> None:
    """Another controller replaces the route's status with its own entry only."""
    obj = copy.deepcopy(server.get("TLSRoute", ns, name))
    obj["status"] = {
        "parents": [
            {
                "parentRef": {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "name": "theirs",
                    "namespace": "infra",
                },
                "controllerName": OTHER,
                "conditions": [
                    {
                        "type": "Accepted",
                        "status": "True",
                        "reason": "Accepted",
                        "message": "",
                        "observedGeneration": 1,
                        "lastTransitionTime": OLDER,
                    }
                ],
            }
        ]
    }
    server.update(obj, status=True)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_incremental_rounds_write_what_a_full_plan_would(api_server, harness_factory, seed):
    rng = random.Random(seed)
    namespaces = [f"t{i}" for i in range(6)]
    hosts = [f"h{i}.example.com" for i in range(4)]
    _infra(api_server, namespaces)
    routes: set[tuple[str, str]] = set()
    for ns in namespaces[:3]:
        api_server.create(o.tls_route(ns, "r0", [rng.choice(hosts)], [o.backend_ref("web")]))
        routes.add((ns, "r0"))
    h = harness_factory()
    await h.start()
    await _settled(h)
    plans: list[Collection[str] | None] = []
    writer = _writer(h)
    plan = writer.plan

    def spy(*args: Any) -> Any:
        plans.append(args[3] if len(args) > 3 else None)
        return plan(*args)

    writer.plan = spy  # type: ignore[method-assign]
    removed: set[str] = set()
    for step in range(14):
        op = rng.choice(["create", "create", "delete", "rename", "backend", "wipe"])
        rebuilds = h.source.rebuilds
        if op == "create" or not routes:
            ns, name = rng.choice(namespaces), f"r{step + 1}"
            chosen = rng.sample(hosts, rng.randint(1, 2))
            created = rng.choice([OLDER, YOUNGER, None])
            api_server.create(
                o.tls_route(ns, name, chosen, [o.backend_ref("web")], created=created)
            )
            routes.add((ns, name))
        elif op == "delete":
            ns, name = rng.choice(sorted(routes))
            api_server.delete("TLSRoute", ns, name)
            routes.discard((ns, name))
        elif op == "rename":
            ns, name = rng.choice(sorted(routes))
            obj = copy.deepcopy(api_server.get("TLSRoute", ns, name))
            obj["spec"]["hostnames"] = rng.sample(hosts, rng.randint(1, 2))
            if api_server.update(obj)["metadata"]["resourceVersion"] == obj["metadata"].get(
                "resourceVersion"
            ):
                continue  # the same hostnames: nothing changed
        elif op == "backend":
            ns = rng.choice(namespaces)
            if ns in removed:
                api_server.create(o.service(ns, "web"))
                removed.discard(ns)
            else:
                api_server.delete("Service", ns, "web")
                removed.add(ns)
        else:
            ns, name = rng.choice(sorted(routes))
            _wipe(api_server, ns, name)
            # Nothing else changes: our entry must come back by itself.
            await _poll(lambda ns=ns, name=name: _accepted(api_server, ns, name) is not None)  # type: ignore[misc]
            await _settled(h)
            continue
        await h.until(lambda rebuilds=rebuilds: h.source.rebuilds > rebuilds)  # type: ignore[misc]
        await _settled(h)
    # Rounds were incremental: none but the first after start planned every namespace.
    assert plans and all(d is not None for d in plans), plans
    assert max(len(d or ()) for d in plans) < len(namespaces), plans


async def test_a_foreign_wipe_of_our_entry_is_restored(api_server, harness_factory):
    _infra(api_server, ["team-a"])
    api_server.create(o.tls_route("team-a", "r", ["a.example.com"], [o.backend_ref("web")]))
    h = harness_factory()
    await h.start()
    await _poll(lambda: _accepted(api_server, "team-a", "r") == ("True", "Accepted"))
    await _settled(h)
    writes = len(api_server.status_writes)
    rebuilds = h.source.rebuilds
    _wipe(api_server, "team-a", "r")
    # Nothing else changes in the cluster: the wipe alone brings our entry back, next to
    # the other controller's.
    await _poll(lambda: _accepted(api_server, "team-a", "r") == ("True", "Accepted"))
    parents = api_server.get("TLSRoute", "team-a", "r")["status"]["parents"]
    assert sorted(p["controllerName"] for p in parents) == sorted(
        [OTHER, "sniffer.dev/gateway-controller"]
    )
    assert api_server.status_writes[writes:] == [("TLSRoute", "team-a", "r")]
    assert h.source.rebuilds == rebuilds, "a status-only change needs no rebuild"


async def test_conflicts_across_namespaces_update_both_routes(api_server, harness_factory):
    _infra(api_server, ["team-a", "team-b"])
    host = "shared.example.com"
    api_server.create(o.tls_route("team-a", "old", [host], [o.backend_ref("web")], created=OLDER))
    h = harness_factory()
    await h.start()
    await _poll(lambda: _accepted(api_server, "team-a", "old") == ("True", "Accepted"))
    # A younger route in another namespace takes the name: it loses, the older keeps it.
    api_server.create(
        o.tls_route("team-b", "young", [host], [o.backend_ref("web")], created=YOUNGER)
    )
    await _poll(lambda: _accepted(api_server, "team-b", "young") == ("False", "HostnameConflict"))
    assert _accepted(api_server, "team-a", "old") == ("True", "Accepted")
    await _settled(h)
    # The older one goes: team-b's route, whose namespace did not change, now holds it.
    api_server.delete("TLSRoute", "team-a", "old")
    await _poll(lambda: _accepted(api_server, "team-b", "young") == ("True", "Accepted"))
    await _settled(h)
    # An older route comes back under another name: team-b loses again, and the message
    # names the new winner.
    api_server.create(o.tls_route("team-a", "older", [host], [o.backend_ref("web")], created=OLDER))
    await _poll(lambda: _accepted(api_server, "team-b", "young") == ("False", "HostnameConflict"))
    entry = api_server.get("TLSRoute", "team-b", "young")["status"]["parents"][0]
    assert "team-a/older" in entry["conditions"][0]["message"]
    await _settled(h)


async def test_a_failed_round_is_retried_in_full(api_server, harness_factory):
    namespaces = [f"t{i}" for i in range(5)]
    _infra(api_server, namespaces)
    for ns in namespaces:
        api_server.create(o.tls_route(ns, "r", [f"{ns}.example.com"], [o.backend_ref("web")]))
    h = harness_factory(status_retry_limit=2)
    await h.start()
    await _settled(h)
    writer = _writer(h)
    plans: list[Collection[str] | None] = []
    plan = writer.plan

    def spy(*args: Any) -> Any:
        plans.append(args[3] if len(args) > 3 else None)
        return plan(*args)

    writer.plan = spy  # type: ignore[method-assign]
    failed = writer.rounds_failed
    # More faults than one write's retries: the round planning t0 fails.
    api_server.status_faults.extend([500] * 4)
    api_server.create(o.tls_route("t0", "new", ["new.example.com"], [o.backend_ref("web")]))
    await _poll(lambda: writer.rounds_failed > failed)
    await _poll(lambda: _accepted(api_server, "t0", "new") == ("True", "Accepted"))
    await _settled(h)
    first_failed = next(i for i, d in enumerate(plans) if d is not None and "t0" in d)
    assert plans[first_failed + 1] is None, plans  # the retry plans every namespace


async def test_a_write_whose_echo_never_arrives_is_planned_again(
    api_server, harness_factory, monkeypatch
):
    monkeypatch.setattr(status_module, "_WRITE_MEMORY_SECONDS", 0.5)
    _infra(api_server, ["team-a"])
    h = harness_factory()
    await h.start()
    await _settled(h)
    # The writer is told of no status change (as if the echo were lost): only the
    # expiry of its memory of the write can bring a wiped status back.
    monkeypatch.setattr(StatusWriter, "touch", lambda self, kind, ns: None)
    api_server.create(o.tls_route("team-a", "r", ["a.example.com"], [o.backend_ref("web")]))
    await _poll(lambda: _accepted(api_server, "team-a", "r") == ("True", "Accepted"))
    wiped_at = time.monotonic()
    _wipe(api_server, "team-a", "r")
    await _poll(lambda: _accepted(api_server, "team-a", "r") == ("True", "Accepted"))
    print(f"wiped status restored after {time.monotonic() - wiped_at:.2f}s (memory 0.5 s)")


async def test_a_new_generation_with_the_same_routing_is_reported(api_server, harness_factory):
    _infra(api_server, ["team-a"])
    hosts = ["a.example.com", "b.example.com"]
    api_server.create(o.tls_route("team-a", "r", hosts, [o.backend_ref("web")]))
    h = harness_factory()
    await h.start()
    await _poll(lambda: _accepted(api_server, "team-a", "r") == ("True", "Accepted"))
    publishes = h.source.publishes

    def observed() -> int:
        entry = api_server.get("TLSRoute", "team-a", "r")["status"]["parents"][0]
        return int(entry["conditions"][0]["observedGeneration"])

    # The same hostnames in another order: a new generation, the same table.
    obj = copy.deepcopy(api_server.get("TLSRoute", "team-a", "r"))
    obj["spec"]["hostnames"] = hosts[::-1]
    assert api_server.update(obj)["metadata"]["generation"] == 2
    await _poll(lambda: observed() == 2)
    assert h.source.publishes == publishes, "no new table was needed"


async def test_a_wipe_seen_only_by_a_relist_is_restored(api_server, harness_factory):
    _infra(api_server, ["team-a"])
    api_server.create(o.tls_route("team-a", "r", ["a.example.com"], [o.backend_ref("web")]))
    h = harness_factory(inactivity_timeout=1.0)
    await h.start()
    await _poll(lambda: _accepted(api_server, "team-a", "r") == ("True", "Accepted"))
    await _settled(h)
    rebuilds = h.source.rebuilds
    api_server.go_silent()  # the streams miss the wipe...
    _wipe(api_server, "team-a", "r")
    api_server.expire_history()  # ...and the server compacts it away: only a re-list tells
    await _poll(lambda: _accepted(api_server, "team-a", "r") == ("True", "Accepted"))
    assert h.source.rebuilds == rebuilds, "a status-only difference needs no rebuild"
