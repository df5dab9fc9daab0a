"""Leader election with a Lease against the API test server (optimistic concurrency).

Candidates in one process, short timings: exactly one holds the Lease; the other takes
over after a release within one retry period; when only the holder's Lease calls are
refused, it stops leading (and stops writing status) at its renew deadline and the
standby takes over no earlier than the lease duration after the last renewal and not
much later; every call stays within the namespaced Role.

Times are compared on the candidates' own records of what they sent (`SpiedApi`), and
every bound keeps a margin a loaded machine keeps: a safety bound (never two leaders,
no takeover before the lease duration) is the property itself; a liveness bound (the
standby does take over) allows seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sniffer.routing.sources.kubernetes import KubernetesSettings
from sniffer.routing.sources.kubernetes.api import KubeApi, Unauthorized
from sniffer.routing.sources.kubernetes.leader import LEASE_RBAC_RULES, LeaderElector
from tests.k8s.conftest import needs_crds
from tests.kubeapi import objects as o
from tests.kubeapi.server import KubeApiServer

NS = "sniffer-system"
LEASE, RENEW, RETRY = 2.0, 1.2, 0.2
TIMINGS = {"lease_duration": LEASE, "renew_deadline": RENEW, "retry_period": RETRY}
GET_SLACK = 0.5
"""How long a standby's read of the Lease may take on a loaded machine: it times the
record from when it *began* that read, so it may start the clock that much early."""


class SpiedApi(KubeApi):
    """The real client, recording what it sent; its Lease calls can be refused (403) as
    when its RoleBinding for Leases is gone, while every other call goes through."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refuse_leases = False
        self.lease_writes: list[float] = []
        """Monotonic send times of Lease creates/updates the server accepted."""
        self.status_patches: list[tuple[float, str]] = []
        """(monotonic send time, path) of status writes the server accepted."""

    async def _call(
        self, method: str, path: str, *args: Any, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        if self.refuse_leases and "/leases" in path:
            raise Unauthorized(403, "Forbidden", "leases is forbidden (revoked by the test)")
        sent = time.monotonic()
        resp = await super()._call(method, path, *args, **kwargs)
        if "/leases" in path and method in ("POST", "PUT"):
            self.lease_writes.append(sent)
        elif method == "PATCH" and path.endswith("/status"):
            self.status_patches.append((sent, path))
        return resp


@pytest.fixture
async def make_elector(
    api_server: KubeApiServer, kubeconfig: Path
) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[KubeApi, asyncio.Task[None]]] = []

    async def make(
        identity: str, **overrides: Any
    ) -> tuple[LeaderElector, asyncio.Task[None], SpiedApi]:
        settings = dataclasses.replace(
            KubernetesSettings(
                kubeconfig=str(kubeconfig),
                lease_namespace=NS,
                request_timeout=2.0,
                connect_timeout=1.0,
                **TIMINGS,  # type: ignore[arg-type]
            ),
            **overrides,
        )
        api = await SpiedApi.connect(settings)
        assert isinstance(api, SpiedApi)
        elector = LeaderElector(api, settings, NS, identity)
        task = asyncio.create_task(elector.run())
        made.append((api, task))
        return elector, task, api

    yield make
    for api, task in made:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()


async def _poll(pred: Callable[[], bool], timeout: float) -> float:
    """Seconds until `pred()` holds (polled: the electors offer no event to wait on)."""
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)
    return time.monotonic() - start


def _holder(server: KubeApiServer) -> str | None:
    lease = server.get("Lease", NS, "sniffer-status")
    return None if lease is None else lease["spec"].get("holderIdentity")


def _lease_requests(server: KubeApiServer) -> int:
    return sum(1 for _, path, _ in list(server.requests) if "/leases" in path)


async def _rounds(server: KubeApiServer, n: int) -> None:
    """Wait until the server has answered `n` more Lease requests (candidates' rounds)."""
    target = _lease_requests(server) + n
    await _poll(lambda: _lease_requests(server) >= target, 10 + n * RETRY)


async def test_one_leader_and_release_hands_over_within_a_retry(api_server, make_elector):
    # A long lease, so that a hand-over within seconds can only come from the release.
    long = {"lease_duration": 15.0, "renew_deadline": 10.0}
    a, a_task, _ = await make_elector("pod-a", **long)
    await _poll(lambda: a.is_leader, 5)
    b, _, _ = await make_elector("pod-b", **long)
    # b keeps losing: the Lease is renewed well within its duration.
    await _poll(lambda: b.holder == "pod-a", 5)
    await _rounds(api_server, 8)  # several rounds of both; b stays a standby throughout
    assert a.is_leader and not b.is_leader
    lease = api_server.get("Lease", NS, "sniffer-status")
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["leaseDurationSeconds"] == 15

    a_task.cancel()  # SIGTERM's path: cancel -> release
    with contextlib.suppress(asyncio.CancelledError):
        await a_task
    assert _holder(api_server) in ("", "pod-b")  # released (or already taken)
    took = await _poll(lambda: b.is_leader, 10)
    # One retry period (0.2 s) plus a loaded machine's scheduling; without the release
    # b would wait out the 15 s lease.
    assert took < 5.0, took
    assert api_server.get("Lease", NS, "sniffer-status")["spec"]["leaseTransitions"] >= 1


async def test_holder_that_cannot_renew_steps_down_and_standby_waits_the_lease(
    api_server, make_elector
):
    a, _, a_api = await make_elector("pod-a")
    await _poll(lambda: a.is_leader, 5)
    b, _, b_api = await make_elector("pod-b")
    await _poll(lambda: b.holder == "pod-a", 5)
    # Only the holder's Lease calls are refused from now on; the standby reads on.
    a_api.refuse_leases = True
    refused_at = time.monotonic()
    both: list[float] = []
    a_down = b_up = 0.0

    def watch() -> bool:
        nonlocal a_down, b_up
        now = time.monotonic()
        if a.is_leader and b.is_leader:
            both.append(now)
        if not a_down and not a.is_leader:
            a_down = now
        if not b_up and b.is_leader:
            b_up = now
        return bool(a_down and b_up)

    await _poll(watch, LEASE + 10)
    assert both == [], "two leaders at once"
    assert a_down < b_up
    # a's leadership ends at its renew deadline, timed from its last successful renewal.
    last_renewal = max(a_api.lease_writes)
    assert last_renewal <= refused_at
    assert a_down - last_renewal < RENEW + GET_SLACK, a_down - last_renewal
    # b takes over no earlier than the lease duration after that renewal (it cannot
    # know of a later one: there was none), and not much later.
    b_took = b_api.lease_writes[0]
    waited = b_took - last_renewal
    print(f"standby took over {waited:.2f}s after the holder's last renewal (lease {LEASE}s)")
    assert waited >= LEASE - GET_SLACK, waited
    assert waited < LEASE + 2 * RETRY + 3.0, waited
    # a, able to talk again, finds b holding a fresh Lease and stays a standby.
    a_api.refuse_leases = False
    await _poll(lambda: a.holder == "pod-b", 5)
    await _rounds(api_server, 6)
    assert b.is_leader and not a.is_leader
    assert _holder(api_server) == "pod-b"


async def test_a_conflicting_write_loses(api_server, make_elector):
    """Three candidates racing on the same empty record: never more than one leader."""
    electors = [(await make_elector(f"pod-{i}"))[0] for i in range(3)]
    leaders: list[int] = []

    def count() -> bool:
        leaders.append(sum(e.is_leader for e in electors))
        return False

    await _poll(lambda: any(e.is_leader for e in electors), 5)
    with contextlib.suppress(TimeoutError):
        # Sample through a few rounds of all three (the server counts them).
        async with asyncio.timeout(10 + 12 * RETRY):
            target = _lease_requests(api_server) + 12
            while _lease_requests(api_server) < target:
                count()
                await asyncio.sleep(0.01)
    assert max(leaders) == 1, leaders
    # The record names the one that leads (a stall may have made it step down for a
    # moment: it renews again at its next round).
    await _poll(lambda: sum(e.is_leader for e in electors) == 1, 5)
    leader = next(e for e in electors if e.is_leader)
    assert _holder(api_server) == leader.identity


async def test_lease_calls_stay_within_the_namespaced_role(api_server, make_elector):
    a, a_task, _ = await make_elector("pod-a")
    await _poll(lambda: a.is_leader, 5)
    a_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await a_task
    allowed = {verb for _, _, verbs in LEASE_RBAC_RULES for verb in verbs}
    seen = set()
    for method, path, _ in api_server.requests:
        if "/leases" not in path:
            continue
        assert path.startswith(f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases")
        seen.add({"GET": "get", "POST": "create", "PUT": "update"}[method])
    assert seen == allowed


@needs_crds
async def test_leader_that_cannot_renew_stops_writing_status(api_server, harness_factory):
    """The status writer follows the Lease: once the holder's renew deadline has passed
    it writes nothing, and the route created meanwhile gets its status from the standby
    once that has waited out the lease."""
    api_server.create(o.gateway_class())
    api_server.create(o.gateway("infra", "edge"))
    api_server.create(o.service("team-a", "web"))
    api_server.create(o.endpoint_slice("team-a", "web", ["10.0.0.1"]))
    api_server.create(o.tls_route("team-a", "r0", ["r0.example.com"], [o.backend_ref("web")]))

    def pod(name: str) -> Any:
        return harness_factory(api_class=SpiedApi, lease_namespace=NS, identity=name, **TIMINGS)

    a, b = pod("pod-a"), pod("pod-b")
    await a.start()
    await _poll(lambda: a.source.elector is not None and a.source.elector.is_leader, 5)
    await a.source.status_idle()
    assert any(p.endswith("/r0/status") for _, p in a.api.status_patches)
    await b.start()
    await _poll(lambda: b.source.elector.holder == "pod-a", 5)
    assert b.api.status_patches == []  # a standby writes nothing

    a.api.refuse_leases = True
    await _poll(lambda: not a.source.elector.is_leader, RENEW + 5)
    stepped_down = time.monotonic()
    api_server.create(o.tls_route("team-a", "r1", ["r1.example.com"], [o.backend_ref("web")]))
    await a.routes_to("r1.example.com", "team-a/web:443")  # a still routes it

    def r1_accepted() -> bool:
        obj = api_server.get("TLSRoute", "team-a", "r1") or {}
        return any(
            c["type"] == "Accepted" and c["status"] == "True"
            for p in (obj.get("status") or {}).get("parents", [])
            for c in p["conditions"]
        )

    await _poll(r1_accepted, LEASE + 10)
    # Written by b, after it held the Lease; a wrote nothing since it stepped down.
    assert [p for _, p in b.api.status_patches if p.endswith("/r1/status")]
    assert min(t for t, _ in b.api.status_patches) >= b.api.lease_writes[0]
    assert [p for t, p in a.api.status_patches if t >= stepped_down] == []
    waited = b.api.lease_writes[0] - max(a.api.lease_writes)
    assert waited >= LEASE - GET_SLACK, waited
