"""Three `sniffer serve --kubernetes` processes against one API: one status writer.

The pods' identity and Lease namespace come from POD_NAME/POD_NAMESPACE as the DaemonSet's
downward API sets them; the Lease timings are shortened by flags (production: 15/10/2 s)
so the test stays fast. Checked: exactly one process holds the Lease and writes; every
spec change makes exactly one status write; SIGKILL of the leader: another takes over
no earlier than the lease duration after the last renewal (and not much later) and writes
the status of a route created in the meantime; SIGTERM of the leader: the Lease is
released and taken at the next retry.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import SNIFFER, needs_crds, spawn_sniffer
from tests.kubeapi import objects as o
from tests.kubeapi.server import KubeApiServer
from tests.support.servers import free_port

NS = "sniffer-system"
# Short timings keep the default run fast; SNIFFER_FLEET_LEASE="15,10,2" measures with
# the production defaults.
LEASE, RENEW, RETRY = (
    float(x) for x in os.environ.get("SNIFFER_FLEET_LEASE", "3,2,0.5").split(",")
)

pytestmark = [
    needs_crds,
    pytest.mark.skipif(not SNIFFER.exists(), reason="the sniffer command is not installed"),
]


class Pod:
    def __init__(self, name: str, kubeconfig: Path) -> None:
        self.name = name
        self.admin = free_port()
        self.proc = spawn_sniffer(
            kubeconfig,
            f"tls:127.0.0.1:{free_port()}@443",
            self.admin,
            "--workers=0",
            "--no-access-log",
            "--drain-grace=1",
            f"--lease-duration={LEASE}",
            f"--lease-renew-deadline={RENEW}",
            f"--lease-retry-period={RETRY}",
            POD_NAME=name,
            POD_NAMESPACE=NS,
        )

    def get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=2) as r:
                return str(r.read().decode())
        except (OSError, urllib.error.URLError):
            return None

    def metric(self, line_prefix: str) -> float:
        page = self.get("/metrics") or ""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in page.splitlines()
            if line.startswith(line_prefix)
        )

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out.decode(errors="replace")


async def _eventually(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `pred()` holds; polled, since other processes offer no event."""
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(pred):
            await asyncio.sleep(0.05)
    return time.monotonic() - start


def _holder(server: KubeApiServer) -> str:
    lease = server.get("Lease", NS, "sniffer-status")
    return "" if lease is None else str(lease["spec"].get("holderIdentity") or "")


def _accepted_gen(server: KubeApiServer, ns: str, name: str) -> int | None:
    obj = server.get("TLSRoute", ns, name) or {}
    for p in (obj.get("status") or {}).get("parents", []):
        for c in p["conditions"]:
            if c["type"] == "Accepted" and c["status"] == "True":
                return int(c["observedGeneration"])
    return None


def _edit(server: KubeApiServer, ns: str, name: str, hostnames: list[str]) -> int:
    obj: dict[str, Any] = copy.deepcopy(server.get("TLSRoute", ns, name))
    obj["spec"]["hostnames"] = hostnames
    return int(server.update(obj)["metadata"]["generation"])


def _stamp(micro_time: str) -> float:
    """Seconds since the epoch of a Lease's MicroTime."""
    return datetime.strptime(micro_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _accepted(server: KubeApiServer, ns: str, name: str) -> tuple[str, str] | None:
    obj = server.get("TLSRoute", ns, name) or {}
    for p in (obj.get("status") or {}).get("parents", []):
        for c in p["conditions"]:
            if c["type"] == "Accepted":
                return str(c["status"]), str(c["reason"])
    return None


async def test_three_pods_one_writer_and_takeovers(api_server, kubeconfig):
    api_server.create(o.gateway_class())
    api_server.create(o.gateway("infra", "edge"))
    api_server.create(o.service("team-a", "web"))
    api_server.create(o.endpoint_slice("team-a", "web", ["10.0.0.1"]))
    api_server.create(o.tls_route("team-a", "r0", ["h0.example.com"], [o.backend_ref("web")]))
    pods = [Pod(f"pod-{i}", kubeconfig) for i in range(3)]
    try:
        for pod in pods:
            await _eventually(lambda p=pod: p.get("/readyz") is not None, 60, "ready")
        await _eventually(lambda: _accepted_gen(api_server, "team-a", "r0") == 1, 20, "status")
        leader = next(p for p in pods if p.name == _holder(api_server))
        standbys = [p for p in pods if p is not leader]
        assert leader.metric("sniffer_leader ") == 1
        assert [p.metric("sniffer_leader ") for p in standbys] == [0, 0]

        # Each spec change: exactly one status write, by the leader.
        writes_before = len(api_server.status_writes)
        edits = 3
        for n in range(1, edits + 1):
            hosts = [f"h{k}.example.com" for k in range(n + 1)]
            gen = _edit(api_server, "team-a", "r0", hosts)
            await _eventually(lambda g=gen: _accepted_gen(api_server, "team-a", "r0") == g, 10, "")
        # Every pod has routed the last edit (and so had its chance to write status).
        last = f"h{edits}.example.com"
        for pod in pods:
            await _eventually(lambda p=pod: last in (p.get("/routes") or ""), 10, "routed")
        writes = len(api_server.status_writes) - writes_before
        for pod in standbys:
            assert pod.metric("sniffer_status_writes_total{") == 0
        print(f"status writes per spec change with 3 pods: {writes / edits:.2f}")
        assert writes == edits

        # Two Gateways of sniffer's class, one hostname: the older route wins, the other
        # is told so; still one writer.
        api_server.create(o.gateway("infra", "edge2"))
        for ns, created in (("team-b", "2024-06-01T00:00:00Z"), ("team-a", "2024-01-01T00:00:00Z")):
            if ns == "team-b":
                api_server.create(o.service(ns, "web"))
                api_server.create(o.endpoint_slice(ns, "web", ["10.0.0.2"]))
            parent = o.parent_ref("edge2" if ns == "team-b" else "edge", "infra")
            api_server.create(
                o.tls_route(
                    ns,
                    "shared",
                    ["s.example.com"],
                    [o.backend_ref("web")],
                    parents=[parent],
                    created=created,
                )
            )
        await _eventually(
            lambda: (
                _accepted(api_server, "team-b", "shared") == ("False", "HostnameConflict")
                and _accepted(api_server, "team-a", "shared") == ("True", "Accepted")
            ),
            10,
            "conflict status",
        )
        for pod in standbys:
            assert pod.metric("sniffer_status_writes_total{") == 0

        # SIGKILL the leader; a route created meanwhile gets its status from the next one.
        killed_at = time.monotonic()
        leader.proc.send_signal(signal.SIGKILL)
        api_server.create(o.tls_route("team-a", "r1", ["k.example.com"], [o.backend_ref("web")]))
        records: list[dict[str, Any]] = []

        def taken_over() -> bool:
            spec = dict((api_server.get("Lease", NS, "sniffer-status") or {})["spec"])
            if not records or spec != records[-1]:
                records.append(spec)
            return spec.get("holderIdentity") not in (leader.name, "")

        await _eventually(taken_over, LEASE + 10, "takeover")
        await _eventually(
            lambda: _accepted_gen(api_server, "team-a", "r1") == 1, LEASE + 10, "status"
        )
        took_kill = time.monotonic() - killed_at
        new_leader = next(p for p in standbys if p.name == _holder(api_server))
        # Safety, on the Lease's own clock (one host): the new holder acquired it no
        # earlier than the lease duration after the dead one's last renewal, less the
        # time the standby's read of that renewal may have taken on a loaded machine.
        last_renewal = _stamp(
            next(r for r in reversed(records) if r["holderIdentity"] == leader.name)["renewTime"]
        )
        waited = _stamp(records[-1]["acquireTime"]) - last_renewal
        print(
            f"SIGKILL takeover: Lease acquired {waited:.2f}s after the last renewal, "
            f"status of a new route written {took_kill:.2f}s after the kill"
        )
        assert waited >= LEASE - 0.5, waited
        # Liveness, with a loaded machine's margin (a renewal, a retry, a status round).
        assert took_kill < LEASE + RETRY + 5.0

        # SIGTERM the new leader: it releases the Lease, the last pod takes it at its
        # next retry instead of waiting out the lease.
        last_pod = next(p for p in standbys if p is not new_leader)
        termed_at = time.monotonic()
        new_leader.proc.send_signal(signal.SIGTERM)
        await _eventually(lambda: _holder(api_server) == last_pod.name, LEASE + 10, "hand-over")
        took_term = time.monotonic() - termed_at
        print(f"SIGTERM hand-over: {took_term:.2f}s")
        api_server.create(o.tls_route("team-a", "r2", ["t.example.com"], [o.backend_ref("web")]))
        await _eventually(lambda: _accepted_gen(api_server, "team-a", "r2") == 1, 10, "status")
        assert new_leader.proc.wait(timeout=15) == 0
        assert "leader election: released Lease" in new_leader.stop()
        # One retry period plus the process's way to its cancellation, with margin.
        assert took_term < RETRY + 3.0
    finally:
        outputs = [(p.name, p.stop()) for p in pods]
        if sys.exc_info()[0] is not None:
            for name, out in outputs:
                print(f"--- {name}\n{out[-3000:]}")
