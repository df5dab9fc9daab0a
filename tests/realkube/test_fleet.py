"""Three sniffer pods with the DaemonSet's identity on a real kube-apiserver: one writer.

Each pod gets POD_NAME/POD_NAMESPACE as the downward API sets them and a ServiceAccount
token bound by the shipped RBAC. Checked: exactly one Lease holder within 2 s of the fleet
being ready; one status write per spec change for the whole fleet; no write at all while
nothing changes; after SIGKILL of the holder, nobody takes over before the lease duration
has passed since its last renewal, and a standby does within the duration + 2 s and writes
the status of a route created meanwhile; after SIGTERM, the Lease is released and taken
within 2 s. Timings default to 3/2/0.5 s (duration/renew deadline/retry period);
SNIFFER_REALKUBE_LEASE=15,10,2 measures the production defaults.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime

from tests.realkube.conftest import Tenants, until
from tests.realkube.world import accepted, endpoints, gateway, lease_holder, route, service
from tests.support.realkube import Pod, RealKube

LEASE, RENEW, RETRY = (
    float(x) for x in os.environ.get("SNIFFER_REALKUBE_LEASE", "3,2,0.5").split(",")
)
TIMINGS = (LEASE, RENEW, RETRY)
WRITES = 'sniffer_status_writes_total{kind="TLSRoute",result="ok"}'


def _stamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _world(t: Tenants) -> tuple[str, str]:
    gw_ns, app = t.namespace("infra"), t.namespace("app")
    t.create(gateway(gw_ns))
    t.create(service(app))
    t.create(endpoints(app))
    return gw_ns, app


async def _fleet(pods, n: int = 3) -> tuple[list[Pod], float]:
    fleet = [pods(f"p{i}", lease=TIMINGS) for i in range(n)]
    await until(lambda: all(p.ready for p in fleet), 60, "every pod ready")
    return fleet, time.monotonic()


def _leaders(fleet: list[Pod]) -> list[str]:
    return [p.name for p in fleet if p.proc.poll() is None and p.metric("sniffer_leader ") == 1]


async def test_three_pods_one_holder_one_write_per_change_none_when_idle(
    kube: RealKube, tenants: Tenants, pods
) -> None:
    admin = kube.admin
    gw_ns, app = _world(tenants)
    tenants.create(route(app, "r", [f"r.{app}.example.com"], gw_ns))
    fleet, ready_at = await _fleet(pods)
    lease = f"lease-{tenants.prefix}"
    names = {p.name for p in fleet}
    await until(
        lambda: lease_holder(admin, lease) in names,
        2 + (time.monotonic() - ready_at),
        "a Lease holder within 2 s of ready",
    )
    await until(lambda: len(_leaders(fleet)) == 1, 2, "one pod says it leads")
    assert _leaders(fleet) == [lease_holder(admin, lease)]
    await until(lambda: accepted(admin, app, "r") == ("True", "Accepted", 1), 10, "r Accepted")

    # One spec change: one status write in the whole fleet.
    await until(lambda: sum(p.metric(WRITES) for p in fleet) >= 1, 5, "the write counted")
    before = sum(p.metric(WRITES) for p in fleet)
    admin.edit(
        "TLSRoute", app, "r", lambda o: o["spec"]["hostnames"].append(f"s.{app}.example.com")
    )
    await until(lambda: accepted(admin, app, "r") == ("True", "Accepted", 2), 5, "generation 2")

    # Then nothing: every object's resourceVersion and every counter stay as they are
    # for several debounce periods and Lease renewals (a negative needs a window).
    def snapshot() -> tuple[object, ...]:
        objs = [
            admin.get("TLSRoute", app, "r"),
            admin.get("Gateway", gw_ns, "edge"),
            admin.get("GatewayClass", None, "sniffer"),
        ]
        rvs = tuple(o["metadata"]["resourceVersion"] for o in objs if o)
        return rvs, sum(p.metric("sniffer_status_writes_total{") for p in fleet)

    quiet = snapshot()
    assert sum(p.metric(WRITES) for p in fleet) - before == 1
    deadline = time.monotonic() + max(3.0, 4 * RETRY)
    while time.monotonic() < deadline:
        assert await asyncio.to_thread(snapshot) == quiet, "a write while nothing changed"
        await asyncio.sleep(0.25)
    assert _leaders(fleet) == [lease_holder(admin, lease)]


async def test_sigkill_waits_the_lease_and_sigterm_hands_over_at_once(
    kube: RealKube, tenants: Tenants, pods
) -> None:
    admin = kube.admin
    gw_ns, app = _world(tenants)
    fleet, _ = await _fleet(pods)
    lease = f"lease-{tenants.prefix}"
    by_name = {p.name: p for p in fleet}
    await until(lambda: lease_holder(admin, lease) in by_name, 10, "a holder")

    # SIGKILL: no release, the standbys must wait out the lease duration.
    first = by_name[lease_holder(admin, lease)]
    first.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    first.proc.wait(5)
    last_renew = _stamp(admin.get("Lease", "sniffer-system", lease)["spec"]["renewTime"])
    tenants.create(route(app, "meanwhile", [f"m.{app}.example.com"], gw_ns))
    await until(lambda: lease_holder(admin, lease) not in ("", first.name), LEASE + 5, "takeover")
    took = time.monotonic() - killed_at
    second_lease = admin.get("Lease", "sniffer-system", lease)["spec"]
    gap = _stamp(second_lease["acquireTime"]) - last_renew
    print(
        f"SIGKILL takeover: {took:.2f}s after the kill, {gap:.2f}s after the last renewal "
        f"(lease {LEASE}s)"
    )
    assert gap >= LEASE, f"taken over {gap:.2f}s after the last renewal, lease is {LEASE}s"
    # The last renewal came at most one retry period (plus its request) before the kill.
    assert LEASE - RETRY - 0.25 <= took <= LEASE + 2
    await until(
        lambda: accepted(admin, app, "meanwhile") is not None, 5, "status by the new holder"
    )
    assert accepted(admin, app, "meanwhile") == ("True", "Accepted", 1)

    # SIGTERM: the holder releases the Lease; a standby takes it within 2 s.
    second = by_name[lease_holder(admin, lease)]
    second.signal(signal.SIGTERM)
    termed_at = time.monotonic()
    await until(
        lambda: lease_holder(admin, lease) not in ("", first.name, second.name),
        LEASE + 5,
        "hand-over",
    )
    took = time.monotonic() - termed_at
    print(f"SIGTERM hand-over: {took:.2f}s")
    assert took <= 2.0
    assert second.proc.wait(15) == 0
    third = by_name[lease_holder(admin, lease)]
    await until(lambda: _leaders(fleet) == [third.name], 2, "the third pod leads")
