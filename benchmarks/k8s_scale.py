"""Scale benchmark of `sniffer serve --kubernetes` against a synthetic cluster.

Three processes, so every figure is the product's and none is the harness's:
- the API test server (`python -m tests.kubeapi`) with N tenants, each a namespace with
  60 Services, 60 EndpointSlices and one Ingress or TLSRoute with 5 hostnames;
- the router as production runs its control process: `sniffer serve --kubernetes
  --kubeconfig K --listen tls:127.0.0.1:P --workers 0 --admin 127.0.0.1:A`;
- this harness: it polls `/readyz`, reads RSS from /proc, drives changes through the test
  server's `/_test/apply`, and probes routes end to end: a real ClientHello to the
  router's TLS listener, relayed to a probe backend bound on loopback addresses that
  answers with the address it was dialled on.

Reported: time from exec to `/readyz` ready (first full sync, table live; the test server
has listed everything once before, so this is the router's time, not the server's first
encoding of 242k objects; `--cold-server` for that) and the CPU seconds the router used
until then, RSS after sync (total, and per tenant above the same
command against an empty cluster), RSS at the end,
route update lag p50/p99 under a steady churn (default 1,000 changes/min; measured from
the harness's write to the first connection reaching the new endpoint, on a sample of the
changes, plus the router's own `sniffer_route_update_lag_seconds` histogram), and the
rebuild count of a 1,000-event burst. Not part of the test run:

    .venv/bin/python benchmarks/k8s_scale.py --tenants 200 2000 [--runs 3] [--churn-seconds 30]

This file must never touch anything outside loopback or leave a process running.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.clients import client_hello  # noqa: E402
from benchmarks.env import free_port  # noqa: E402
from tests.kubeapi.objects import endpoint_slice  # noqa: E402

PROBE_ADDRESSES = [f"127.1.0.{i}" for i in range(1, 65)]
"""Loopback addresses the probe backend listens on; churn moves endpoints among them."""


def status_mib(pid: int, field: str) -> float:
    """A kB line of /proc/PID/status (VmRSS, VmHWM...) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def histogram_quantile(text: str, name: str, q: float) -> tuple[float, int]:
    """Prometheus `histogram_quantile` (linear within a bucket) and the sample count."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return float("nan"), 0
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le, int(total)
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9), int(total)
        prev_le, prev_c = le, c
    return prev_le, int(total)


def counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    return 0.0


WARMED = (
    "/api/v1/namespaces",
    "/api/v1/services",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/networking.k8s.io/v1/ingresses",
)
"""What `TestServer.warm` lists: all but ~1,000 of the synthetic cluster's objects."""


class TestServer:
    """`python -m tests.kubeapi` in its own process."""

    def __init__(self, tenants: int, kubeconfig: Path, gateway_port: int) -> None:
        self.kubeconfig = kubeconfig
        self.proc = subprocess.Popen(
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
                "--gateway-port",
                str(gateway_port),
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.close()
            raise RuntimeError(f"test server failed to start: {line!r}")
        self.objects = int(line.split()[2])
        cfg = yaml.safe_load(kubeconfig.read_text())
        cluster = cfg["clusters"][0]["cluster"]
        self.url = cluster["server"]
        self.token = cfg["users"][0]["user"]["token"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self.ssl = ssl.create_default_context(cadata=ca)
        self.session: aiohttp.ClientSession | None = None

    def warm(self) -> float:
        """List the numerous kinds once, as the router will, so the server has encoded
        every object before the router starts (it keeps each object's JSON): the sync
        measured is then the router's, not the test server's first encoding. Seconds taken.
        """
        started = time.monotonic()
        for path in WARMED:
            token = ""
            while True:
                query = "?limit=500" + (f"&continue={token}" if token else "")
                req = urllib.request.Request(
                    self.url + path + query, headers={"Authorization": f"Bearer {self.token}"}
                )
                with urllib.request.urlopen(req, context=self.ssl, timeout=60) as r:
                    token = json.loads(r.read())["metadata"].get("continue") or ""
                if not token:
                    break
        return time.monotonic() - started

    async def apply(self, objs: list[dict[str, Any]]) -> None:
        """Upsert many objects in one write (`/_test/apply`)."""
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

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
        self.close()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Router:
    """`sniffer serve --kubernetes --workers 0` in its own process."""

    def __init__(self, kubeconfig: Path, log: Path, tls_port: int, workers: int = 0) -> None:
        self.tls_port = tls_port
        self.admin_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.started = time.monotonic()
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sniffer",
                "serve",
                "--kubernetes",
                "--kubeconfig",
                str(kubeconfig),
                "--listen",
                f"tls:127.0.0.1:{self.tls_port}",
                "--workers",
                str(workers),
                "--admin",
                f"127.0.0.1:{self.admin_port}",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 900.0) -> float:
        """Seconds from exec to `/readyz` saying ready (every source synced, table live)."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sniffer exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                code, body = http_get(self.admin + "/readyz", 5)
                if code == 200 and json.loads(body).get("ready"):
                    return time.monotonic() - self.started
            time.sleep(0.02)
        raise TimeoutError("sniffer did not become ready")

    def metrics(self) -> str:
        return http_get(self.admin + "/metrics", 10)[1].decode()

    @property
    def rss(self) -> float:
        return status_mib(self.proc.pid, "VmRSS")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class ProbeBackend:
    """Listens on `PROBE_ADDRESSES`:port; answers each connection with the address dialled."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.port = 0

    async def start(self) -> None:
        for _ in range(20):
            port = free_port()
            try:
                for addr in PROBE_ADDRESSES:
                    self.servers.append(await asyncio.start_server(self._serve, addr, port))
            except OSError:
                await self.stop()
                continue
            self.port = port
            return
        raise RuntimeError("no free port on the probe addresses")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(writer.get_extra_info("sockname")[0].encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        for s in self.servers:
            s.close()
        self.servers = []


async def probe(port: int, host: str) -> str | None:
    """The endpoint address a connection for `host` reaches through the router, if any."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(client_hello(host))
        line = await asyncio.wait_for(reader.readline(), 2)
        return line.decode().strip() or None
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()


async def wait_routed(port: int, host: str, addr: str, since: float, limit: float) -> float | None:
    """Probe every 10 ms until `host` reaches `addr`; seconds since `since`, or None."""
    while time.monotonic() - since < limit:
        if await probe(port, host) == addr:
            return time.monotonic() - since
        await asyncio.sleep(0.01)
    return None


async def idle_rss(tmp: Path, workers: int) -> float:
    """RSS of the same command against an empty cluster: the per-tenant baseline."""
    server = TestServer(0, tmp / "kubeconfig-empty", 443)
    router = Router(tmp / "kubeconfig-empty", tmp / "sniffer-empty.log", free_port(), workers)
    try:
        await asyncio.to_thread(router.wait_ready)
        await asyncio.sleep(1.0)
        return router.rss
    finally:
        router.close()
        await server.aclose()


async def run_one(
    tenants: int,
    churn_seconds: float,
    churn_per_min: int,
    sample_every: int,
    workers: int = 0,
    warm: bool = True,
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="k8s-scale-"))
    baseline = await idle_rss(tmp, workers)
    kubeconfig = tmp / "kubeconfig"
    backend = ProbeBackend()
    await backend.start()
    tls_port = free_port()
    server = await asyncio.to_thread(TestServer, tenants, kubeconfig, tls_port)
    router: Router | None = None
    try:
        warm_s = await asyncio.to_thread(server.warm) if warm else None
        router = Router(kubeconfig, tmp / "sniffer.log", tls_port, workers)
        sync_s = await asyncio.to_thread(router.wait_ready)
        sync_cpu = cpu_seconds(router.proc.pid)
        await asyncio.sleep(1.0)  # let the first table's garbage go before reading RSS
        after_sync = router.rss
        _, body = http_get(router.admin + "/readyz")
        k8s = json.loads(body)["sources"]["kubernetes"]
        result: dict[str, Any] = {
            "workers": workers,
            "tenants": tenants,
            "objects": server.objects,
            "routes": k8s["routes"],
            "server_warmed_s": None if warm_s is None else round(warm_s, 1),
            "sync_seconds": round(sync_s, 2),
            # The control process's own CPU until ready: on a loaded machine the wall
            # time above is mostly waiting (and includes the test server's encoding).
            "sync_cpu_seconds": round(sync_cpu, 2),
            "rss_idle_mib": round(baseline, 1),
            "rss_after_sync_mib": round(after_sync, 1),
            "kib_per_tenant": round((after_sync - baseline) * 1024 / max(1, tenants), 1),
        }

        # Steady churn: a routing-relevant change (the endpoint moves to another probe
        # address) in a random Ingress tenant (even index: h0 routes to svc-00).
        where: dict[str, str] = {}
        probes: list[asyncio.Task[float | None]] = []
        interval = 60.0 / churn_per_min
        rnd = random.Random(7)
        n_changes = int(churn_seconds / interval)
        next_at = time.monotonic()
        changed_at: dict[str, float] = {}
        for i in range(n_changes):
            # A tenant changed again before its probe saw the first change would lose
            # that sample: one change per tenant every 2 s (the lag is far below).
            while True:
                ns = f"tenant-{rnd.randrange(0, tenants, 2):05d}"
                if time.monotonic() - changed_at.get(ns, -10.0) > 2.0:
                    break
            changed_at[ns] = time.monotonic()
            addr = rnd.choice([a for a in PROBE_ADDRESSES if a != where.get(ns)])
            where[ns] = addr
            obj = endpoint_slice(
                ns, "svc-00", [addr], ports=(("https", backend.port),), name="svc-00-x1"
            )
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the churn rate, not synchronisation
            sent = time.monotonic()
            await server.apply([obj])
            if i % sample_every == 0:
                probes.append(
                    asyncio.create_task(
                        wait_routed(router.tls_port, f"h0.{ns}.example.com", addr, sent, 10)
                    )
                )
        lags = [x for x in await asyncio.gather(*probes) if x is not None]
        text = router.metrics()
        p50_h, n_h = histogram_quantile(text, "sniffer_route_update_lag_seconds", 0.5)
        p99_h, _ = histogram_quantile(text, "sniffer_route_update_lag_seconds", 0.99)
        result.update(
            churn_changes=n_changes,
            churn_per_min=churn_per_min,
            lag_samples=len(lags),
            lag_lost=len(probes) - len(lags),
            lag_p50_ms=round(_pct(lags, 0.5) * 1000, 1),
            lag_p99_ms=round(_pct(lags, 0.99) * 1000, 1),
            lag_max_ms=round(max(lags, default=float("nan")) * 1000, 1),
            metric_lag_p50_ms=round(p50_h * 1000, 1),
            metric_lag_p99_ms=round(p99_h * 1000, 1),
            metric_lag_count=n_h,
            rss_after_churn_mib=round(router.rss, 1),
        )

        # Burst: 1,000 routing-relevant changes across tenants in one write.
        await asyncio.sleep(1.0)
        before = counter(router.metrics(), "sniffer_route_table_rebuilds")
        burst: list[dict[str, Any]] = []
        final: dict[str, str] = {}
        for i in range(1000):
            t = (i * 2) % tenants
            ns = f"tenant-{t:05d}"
            s = (i * 2 // tenants) % 5
            addr = PROBE_ADDRESSES[i % len(PROBE_ADDRESSES)]
            burst.append(
                endpoint_slice(
                    ns,
                    f"svc-{s:02d}",
                    [addr],
                    ports=(("https", backend.port),),
                    name=f"svc-{s:02d}-x1",
                )
            )
            final[f"h{s}.{ns}.example.com"] = addr
        t_burst = time.monotonic()
        await server.apply(burst)
        rnd_hosts = rnd.sample(sorted(final), min(50, len(final)))
        last = list(final)[-1]
        done = await asyncio.gather(
            *(wait_routed(router.tls_port, h, final[h], t_burst, 30) for h in [last, *rnd_hosts])
        )
        await asyncio.sleep(2.0)  # a late extra rebuild would still count
        after = counter(router.metrics(), "sniffer_route_table_rebuilds")
        result.update(
            burst_events=len(burst),
            burst_rebuilds=int(after - before),
            burst_to_live_ms=round(
                max((d for d in done if d is not None), default=float("nan")) * 1000, 1
            ),
            burst_unresolved=sum(d is None for d in done),
            rss_end_mib=round(router.rss, 1),
            rss_peak_mib=round(status_mib(router.proc.pid, "VmHWM"), 1),
        )
        return result
    finally:
        if router is not None:
            router.close()
        await server.aclose()
        await backend.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(rows)}
    for k, v in rows[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = statistics.median(r[k] for r in rows)
        else:
            out[k] = v
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tenants", type=int, nargs="+", default=[200, 2000])
    p.add_argument("--runs", type=int, default=1, help="runs per size; the median is printed")
    p.add_argument("--churn-seconds", type=float, default=30.0)
    p.add_argument("--churn-per-min", type=int, default=1000)
    p.add_argument(
        "--sample-every", type=int, default=4, help="probe the lag of every Nth churn change"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="sniffer's data-plane workers (0: in-process; N: tables shipped to N workers)",
    )
    p.add_argument(
        "--cold-server",
        action="store_true",
        help="start the router against a test server that has not listed yet (the sync"
        " then includes the server encoding every object once, as before 2026-12-08)",
    )
    args = p.parse_args()
    for n in args.tenants:
        rows = []
        for _ in range(args.runs):
            row = asyncio.run(
                run_one(
                    n,
                    args.churn_seconds,
                    args.churn_per_min,
                    args.sample_every,
                    args.workers,
                    not args.cold_server,
                )
            )
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
        print(json.dumps(_median_row(rows)), flush=True)


if __name__ == "__main__":
    main()
