"""Scale benchmark of the Kubernetes route source against a synthetic cluster.

Runs the API test server (`python -m tests.kubeapi`) in a separate process with N tenants
(each a namespace with 60 Services, 60 EndpointSlices and one Ingress or TLSRoute with 5
hostnames), runs `KubernetesSource` in this process, and reports: time to first full
sync, RSS after sync (total, and per tenant above the pre-start baseline), route update
lag p50/p99 under a steady churn (default 1,000 changes/min), and the rebuild count of a
1,000-event burst. Not part of the test run:

    .venv/bin/python benchmarks/k8s_scale.py --tenants 200 2000 [--churn-seconds 30]

This file must never touch the cluster outside loopback or leave the server running.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sniffer.routing.sources import Update  # noqa: E402
from sniffer.routing.sources.kubernetes import KubernetesSettings, KubernetesSource  # noqa: E402
from sniffer.routing.table import Listener, RouteTable  # noqa: E402
from tests.kubeapi.objects import endpoint_slice  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Api:
    """Drives the test server's `/_test/apply` (many objects in one write) over HTTPS."""

    def __init__(self, kubeconfig: Path) -> None:
        cfg = yaml.safe_load(kubeconfig.read_text())
        cluster = cfg["clusters"][0]["cluster"]
        self.url = cluster["server"]
        self.token = cfg["users"][0]["user"]["token"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self.ssl = ssl.create_default_context(cadata=ca)
        self.session: aiohttp.ClientSession | None = None

    async def apply(self, objs: list[dict[str, Any]]) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        async with self.session.post(
            self.url + "/_test/apply",
            data=json.dumps({"objects": objs}),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            ssl=self.ssl,
        ) as r:
            r.raise_for_status()
            await r.read()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_one(tenants: int, churn_seconds: float, churn_per_min: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="k8s-scale-"))
    kubeconfig = tmp / "kubeconfig"
    server = subprocess.Popen(  # noqa: ASYNC220 (starting the server process does not block)
        [
            sys.executable,
            "-m",
            "tests.kubeapi",
            "--kubeconfig",
            str(kubeconfig),
            "--tenants",
            str(tenants),
            "--no-validate",
            "--history",
            "200000",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = await asyncio.to_thread(server.stdout.readline)
        if not line.startswith("READY"):
            raise RuntimeError(f"test server failed to start: {line!r}")
        objects = int(line.split()[2])
        listeners = (Listener("tls-443", "0.0.0.0", 443, "tls"),)
        settings = KubernetesSettings(kubeconfig=str(kubeconfig), write_status=False)
        source = KubernetesSource(settings, listeners)
        publishes: list[tuple[float, Update]] = []
        pending: dict[str, tuple[str, float]] = {}
        lags: list[float] = []
        event_lags: list[float] = []
        build_times: list[float] = []

        def publish(update: Update) -> None:
            now = time.monotonic()
            t0 = time.perf_counter()
            RouteTable.build(update.spec)  # what the controller does to make it live
            build = time.perf_counter() - t0
            build_times.append(build)
            publishes.append((now, update))
            if update.oldest_event is not None:
                event_lags.append(now + build - update.oldest_event)
            if pending:
                by_name = {b.name: b for b in update.spec.backends}
                for name, (addr, sent) in list(pending.items()):
                    b = by_name.get(name)
                    if b is not None and any(e.host == addr for e in b.endpoints):
                        lags.append(now + build - sent)
                        del pending[name]

        baseline = rss_mib()
        t_start = time.monotonic()
        task = asyncio.create_task(source.run(publish))
        while not source.synced:
            source.changed.clear()
            if source.synced:
                break
            await asyncio.wait_for(source.changed.wait(), 120)
        sync_s = time.monotonic() - t_start
        after_sync = rss_mib()
        spec = publishes[-1][1].spec
        result: dict[str, Any] = {
            "tenants": tenants,
            "objects": objects,
            "routes": len(spec.routes),
            "backends": len(spec.backends),
            "sync_seconds": round(sync_s, 2),
            "rss_baseline_mib": round(baseline, 1),
            "rss_after_sync_mib": round(after_sync, 1),
            "peak_rss_mib": round(peak_mib(), 1),
            "kib_per_tenant": round((after_sync - baseline) * 1024 / max(1, tenants), 1),
            "first_table_build_ms": round(build_times[0] * 1000, 1),
        }
        api = Api(kubeconfig)
        try:
            # Steady churn: a routing-relevant change (endpoint moves) in a random
            # Ingress tenant (even index: their routes point at svc-00..04).
            interval = 60.0 / churn_per_min
            rnd = random.Random(7)
            n_changes = int(churn_seconds / interval)
            next_at = time.monotonic()
            for i in range(n_changes):
                t = rnd.randrange(0, tenants, 2)
                ns = f"tenant-{t:05d}"
                addr = f"172.16.{i // 250 % 250}.{i % 250 + 1}"
                obj = endpoint_slice(ns, "svc-00", [addr], name="svc-00-x1")
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the churn rate, not synchronisation
                pending[f"{ns}/svc-00:443"] = (addr, time.monotonic())
                await api.apply([obj])
            deadline = time.monotonic() + 10
            while pending and time.monotonic() < deadline:
                source.changed.clear()
                await asyncio.wait_for(source.changed.wait(), 10)
            result.update(
                churn_changes=n_changes,
                churn_per_min=churn_per_min,
                lag_p50_ms=round(_pct(lags, 0.5) * 1000, 1),
                lag_p99_ms=round(_pct(lags, 0.99) * 1000, 1),
                event_to_live_p99_ms=round(_pct(event_lags, 0.99) * 1000, 1),
                churn_unresolved=len(pending),
                table_build_p50_ms=round(statistics.median(build_times) * 1000, 1),
            )
            # Burst: 1,000 routing-relevant changes across tenants in one write.
            before = source.publishes
            burst = []
            targets = []
            for i in range(1000):
                t = (i * 2) % tenants
                ns = f"tenant-{t:05d}"
                s = (i * 2 // tenants) % 5
                addr = f"192.168.{i // 250}.{i % 250 + 1}"
                burst.append(endpoint_slice(ns, f"svc-{s:02d}", [addr], name=f"svc-{s:02d}-x1"))
                targets.append((f"{ns}/svc-{s:02d}:443", addr))
            final = dict(targets)
            t_burst = time.monotonic()
            await api.apply(burst)

            def burst_done() -> bool:
                by_name = {b.name: b for b in source.spec.backends}
                return all(
                    any(e.host == addr for e in by_name[name].endpoints)
                    for name, addr in final.items()
                    if name in by_name
                )

            while not burst_done():
                source.changed.clear()
                if burst_done():
                    break
                await asyncio.wait_for(source.changed.wait(), 30)
            result.update(
                burst_events=len(burst),
                burst_rebuilds=source.publishes - before,
                burst_to_live_ms=round((time.monotonic() - t_burst) * 1000, 1),
                rss_end_mib=round(rss_mib(), 1),
            )
        finally:
            await api.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return result
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tenants", type=int, nargs="+", default=[200, 2000])
    p.add_argument("--churn-seconds", type=float, default=30.0)
    p.add_argument("--churn-per-min", type=int, default=1000)
    args = p.parse_args()
    for n in args.tenants:
        # One process per size: RSS of a fresh process is what a pod would show.
        if len(args.tenants) > 1:
            cmd = [
                sys.executable,
                __file__,
                "--tenants",
                str(n),
                "--churn-seconds",
                str(args.churn_seconds),
                "--churn-per-min",
                str(args.churn_per_min),
            ]
            subprocess.run(cmd, check=True)
            continue
        print(json.dumps(asyncio.run(run_one(n, args.churn_seconds, args.churn_per_min))))


if __name__ == "__main__":
    main()
