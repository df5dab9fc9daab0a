"""Leader election with a Lease against the API test server (optimistic concurrency).

Two candidates in one process, short timings: exactly one holds the Lease; the other
takes over after a release within one retry period, and after the holder goes silent
only once the record has not changed for its duration; a holder that cannot renew stops
leading before that; every call stays within the namespaced Role.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sniffer.routing.sources.kubernetes import KubernetesSettings
from sniffer.routing.sources.kubernetes.api import KubeApi
from sniffer.routing.sources.kubernetes.leader import LEASE_RBAC_RULES, LeaderElector
from tests.kubeapi.server import KubeApiServer

NS = "sniffer-system"


@pytest.fixture
async def make_elector(
    api_server: KubeApiServer, kubeconfig: Path
) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[KubeApi, asyncio.Task[None]]] = []

    async def make(identity: str, **overrides: Any) -> tuple[LeaderElector, asyncio.Task[None]]:
        settings = dataclasses.replace(
            KubernetesSettings(
                kubeconfig=str(kubeconfig),
                lease_namespace=NS,
                lease_duration=2.0,
                renew_deadline=1.2,
                retry_period=0.2,
                request_timeout=2.0,
                connect_timeout=1.0,
            ),
            **overrides,
        )
        api = await KubeApi.connect(settings)
        elector = LeaderElector(api, settings, NS, identity)
        task = asyncio.create_task(elector.run())
        made.append((api, task))
        return elector, task

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


async def test_one_leader_and_release_hands_over_within_a_retry(api_server, make_elector):
    a, a_task = await make_elector("pod-a")
    await _poll(lambda: a.is_leader, 5)
    b, _ = await make_elector("pod-b")
    # b keeps losing: the Lease is renewed well within its duration.
    await _poll(lambda: b.holder == "pod-a", 5)
    await asyncio.sleep(0.6)  # several of b's retries; b must stay a standby throughout
    assert a.is_leader and not b.is_leader
    lease = api_server.get("Lease", NS, "sniffer-status")
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["leaseDurationSeconds"] == 2
    assert "generation" not in lease["metadata"]

    a_task.cancel()  # SIGTERM's path: cancel -> release
    with contextlib.suppress(asyncio.CancelledError):
        await a_task
    assert _holder(api_server) in ("", "pod-b")
    took = await _poll(lambda: b.is_leader, 2)
    assert took < 0.2 + 0.3  # one retry period (plus scheduling)
    assert api_server.get("Lease", NS, "sniffer-status")["spec"]["leaseTransitions"] >= 1


async def test_silent_holder_is_replaced_only_after_the_lease_duration(api_server, make_elector):
    a, _ = await make_elector("pod-a")
    await _poll(lambda: a.is_leader, 5)
    b, _ = await make_elector("pod-b")
    await _poll(lambda: b.holder == "pod-a", 5)
    # The holder's renewals are refused from now on (its RBAC, a partition...).
    api_server.forbidden = True
    silenced = time.monotonic()
    # a stops writing within its renew deadline, before anyone may take over.
    stepped_down = await _poll(lambda: not a.is_leader, 3)
    assert stepped_down <= 1.2 + 0.1
    api_server.forbidden = False  # b can talk again; a as well, but a lost the race
    await _poll(lambda: b.is_leader or a.is_leader, 5)
    taken = time.monotonic() - silenced
    if b.is_leader:
        # b waited for the record to be unchanged for the full duration.
        assert taken >= 2.0 - 0.3
    assert sum((a.is_leader, b.is_leader)) == 1


async def test_a_conflicting_write_loses(api_server, make_elector):
    """Two candidates racing on the same empty record: exactly one wins it."""
    electors = [(await make_elector(f"pod-{i}"))[0] for i in range(3)]
    await _poll(lambda: any(e.is_leader for e in electors), 5)
    await asyncio.sleep(0.5)  # a few more rounds of all three
    assert sum(e.is_leader for e in electors) == 1
    leader = next(e for e in electors if e.is_leader)
    assert _holder(api_server) == leader.identity


async def test_lease_calls_stay_within_the_namespaced_role(api_server, make_elector):
    a, a_task = await make_elector("pod-a")
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
