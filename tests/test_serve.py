"""`sniffer serve` as a process: admin endpoint, reload, drain, workers, access log."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sniffer.wire.answers import tls_alert
from tests.conftest import REPO
from tests.proxy.test_relay import client_hello, open_tls, tls_request
from tests.support.pki import PKI
from tests.support.servers import TLSBackend, free_port


async def refused_by_name(port: int, name: str) -> bool:
    """A ClientHello for `name` is answered with the unrecognized_name alert."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(client_hello(name))
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer == tls_alert(112)


def routes_yaml(port: int, backends: dict[str, int], routes: dict[str, str]) -> str:
    lines = [
        "listeners:",
        f"  - {{name: tls, address: '127.0.0.1:{port}', protocol: tls}}",
        "backends:",
    ]
    lines += [
        f"  - {{name: {n}, tenant: team-{n}, endpoints: ['127.0.0.1:{p}']}}"
        for n, p in backends.items()
    ]
    lines.append("routes:")
    lines += [f"  - {{host: {h}, backend: {b}}}" for h, b in routes.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Sniffer:
    proc: subprocess.Popen[bytes]
    admin: str
    port: int
    routes: Path
    stdout: Path
    stderr: Path

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.admin + path, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self.get("/metrics")[1].decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    async def wait_for(self, predicate: object, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    if predicate():  # type: ignore[operator]
                        return
                except (OSError, urllib.error.URLError):
                    pass
                assert self.proc.poll() is None, self.stderr.read_text()
                await asyncio.sleep(0.05)

    async def table_version(self) -> int:
        version: int = json.loads(self.get("/routes")[1])["version"]
        return version


@pytest.fixture
async def backends(pki: PKI) -> AsyncIterator[dict[str, TLSBackend]]:
    a = await TLSBackend("a", pki.issue("app.a.example").server_context()).start()
    b = await TLSBackend("b", pki.issue("app.b.example").server_context()).start()
    yield {"a": a, "b": b}
    await a.close()
    await b.close()


@pytest.fixture
def start_sniffer(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    async def start(routes_text: str, port: int, *extra: str, nofile: int | None = None) -> Sniffer:
        """`sniffer serve`; with `nofile`, under that RLIMIT_NOFILE (soft and hard)."""
        routes = tmp_path / "routes.yaml"
        routes.write_text(routes_text)
        admin_port = free_port()
        stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sniffer",
                "serve",
                "--routes",
                str(routes),
                "--admin",
                f"127.0.0.1:{admin_port}",
                *extra,
            ],
            stdout=stdout.open("wb"),
            stderr=stderr.open("wb"),
            cwd=REPO,
            preexec_fn=limit,
        )
        procs.append(proc)
        s = Sniffer(proc, f"http://127.0.0.1:{admin_port}", port, routes, stdout, stderr)
        await s.wait_for(lambda: s.get("/readyz")[0] == 200, timeout=30)
        return s

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


async def test_serve_reload_and_bad_reload(
    start_sniffer: object, backends: dict[str, TLSBackend], pki: PKI
) -> None:
    port = free_port()
    ports = {"a": backends["a"].port, "b": backends["b"].port}
    s: Sniffer = await start_sniffer(  # type: ignore[operator]
        routes_yaml(port, ports, {"app.a.example": "a"}), port, "--workers", "0"
    )
    assert await tls_request(pki, port, "app.a.example") == b"a\n"
    v1 = await s.table_version()

    # A good edit goes live without a restart.
    s.routes.write_text(routes_yaml(port, ports, {"app.a.example": "a", "app.b.example": "b"}))
    await s.wait_for(lambda: json.loads(s.get("/routes")[1])["version"] > v1)
    assert await tls_request(pki, port, "app.b.example") == b"b\n"
    v2 = await s.table_version()

    # A bad edit is refused, named, counted; the last good table keeps serving.
    s.routes.write_text(routes_yaml(port, ports, {"app.a.example": "nowhere"}))
    await s.wait_for(
        lambda: s.metrics().get('sniffer_route_table_reloads_total{result="error"}') == 1.0
    )
    status, body = s.get("/readyz")
    detail = json.loads(body)
    assert "unknown backend 'nowhere'" in detail["sources"]["file"]["last_error"]
    assert await s.table_version() == v2
    assert await tls_request(pki, port, "app.b.example") == b"b\n"
    assert "unknown backend 'nowhere'" in s.stderr.read_text()

    # route-table --from reads the live table.
    out = subprocess.run(
        [sys.executable, "-m", "sniffer", "route-table", "--from", s.admin, "-o", "json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    assert {r["host"] for r in json.loads(out.stdout)["routes"]} == {
        "app.a.example",
        "app.b.example",
    }
    s.proc.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, s.proc.wait, 30) == 0


async def test_sigterm_drains_open_connections_then_exits_zero(
    start_sniffer: object, backends: dict[str, TLSBackend], pki: PKI
) -> None:
    port = free_port()
    s: Sniffer = await start_sniffer(  # type: ignore[operator]
        routes_yaml(port, {"a": backends["a"].port}, {"app.a.example": "a"}),
        port,
        "--workers",
        "1",
        "--drain-grace",
        "20",
    )
    reader, writer = await open_tls(pki, port, "app.a.example")
    writer.write(b"who\n")
    assert await reader.readline() == b"a\n"
    s.proc.send_signal(signal.SIGTERM)

    def refusing() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    await s.wait_for(refusing)  # no longer accepting...
    writer.write(b"who\n")  # ...but the open connection still works
    assert await reader.readline() == b"a\n"
    assert s.proc.poll() is None
    writer.write(b"bye\n")
    await reader.read()
    writer.close()
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, s.proc.wait, 30) == 0
    log = [json.loads(line) for line in s.stdout.read_text().splitlines()]
    assert log[-1]["sni"] == "app.a.example" and log[-1]["outcome"] == "closed"
    assert log[-1]["tenant"] == "team-a" and log[-1]["bytes_in"] > 0 and log[-1]["bytes_out"] > 0


async def test_workers_aggregate_metrics_and_survive_a_worker_crash(
    start_sniffer: object, backends: dict[str, TLSBackend], pki: PKI
) -> None:
    port = free_port()
    s: Sniffer = await start_sniffer(  # type: ignore[operator]
        routes_yaml(
            port,
            {"a": backends["a"].port, "b": backends["b"].port},
            {"app.a.example": "a", "app.b.example": "b"},
        ),
        port,
        "--workers",
        "2",
    )
    for _ in range(10):
        assert await tls_request(pki, port, "app.a.example") == b"a\n"
    for _ in range(4):
        assert await tls_request(pki, port, "app.b.example") == b"b\n"
    key_a = 'sniffer_connections_total{backend="a",listener="tls",tenant="team-a"}'
    key_b = 'sniffer_connections_total{backend="b",listener="tls",tenant="team-b"}'
    await s.wait_for(lambda: s.metrics().get(key_a) == 10 and s.metrics().get(key_b) == 4)
    m = s.metrics()
    assert m['sniffer_bytes_total{backend="a",direction="client_to_backend",tenant="team-a"}'] > 0
    assert m['sniffer_workers{state="alive"}'] == 2

    workers = json.loads(s.get("/readyz")[1])["workers"]
    victim = workers[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    await s.wait_for(lambda: s.metrics().get("sniffer_worker_restarts_total") == 1)
    await s.wait_for(
        lambda: (
            victim not in [w["pid"] for w in json.loads(s.get("/readyz")[1])["workers"]]
            and s.get("/readyz")[0] == 200
        )
    )
    assert s.metrics()['sniffer_workers{state="alive"}'] == 2
    for _ in range(6):
        assert await tls_request(pki, port, "app.a.example") == b"a\n"
    # Counters never go down: the dead worker's reported totals are kept, new ones added.
    await s.wait_for(lambda: s.metrics().get(key_a) == 16)
    final = s.metrics()
    assert final[key_b] == 4
    active = [v for k, v in final.items() if k.startswith("sniffer_connections_active")]
    assert all(v == 0 for v in active)

    # A route change reaches both workers, the restarted one and the other, as a delta
    # from the table each was sent last: ready means both confirmed the new version.
    v = await s.table_version()
    s.routes.write_text(routes_yaml(port, {"a": backends["a"].port}, {"app.a.example": "a"}))
    await s.wait_for(
        lambda: s.get("/readyz")[0] == 200 and json.loads(s.get("/routes")[1])["version"] > v
    )
    # Every process reports its runtime (what benchmarks/soak.py samples): both workers
    # hold the table the control process built last.
    newest = json.loads(s.get("/routes")[1])["version"]

    def versions() -> list[float | None]:
        m = s.metrics()
        return [m.get(f'sniffer_route_table_version{{worker="{w}"}}') for w in ("control", 0, 1)]

    await s.wait_for(lambda: versions() == [newest] * 3)
    m = s.metrics()
    for w in ("control", "0", "1"):
        assert m[f'sniffer_process_asyncio_tasks{{worker="{w}"}}'] >= 1
        assert m[f'sniffer_process_allocated_blocks{{worker="{w}"}}'] > 10_000
        assert f'sniffer_process_gc_objects{{generation="permanent",worker="{w}"}}' in m
        assert m[f'sniffer_process_gc_collections_total{{generation="0",worker="{w}"}}'] >= 0
    assert m['sniffer_open_connections{worker="0"}'] >= 0
    for _ in range(6):  # SO_REUSEPORT spreads these over both workers
        assert await refused_by_name(port, "app.b.example")
        assert await tls_request(pki, port, "app.a.example") == b"a\n"
    assert "whole table" not in s.stderr.read_text()  # no worker fell out of step
    s.proc.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, s.proc.wait, 30) == 0
    # Connection ids (the access log's `id`, the PROXY v2 unique id) never repeat across
    # the workers, the restarted one included: each process has its own random prefix.
    ids = [json.loads(line)["id"] for line in s.stdout.read_text().splitlines()]
    assert len(ids) == len(set(ids)) >= 20
    assert len({i.partition("-")[0] for i in ids}) >= 2
