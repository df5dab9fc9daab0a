"""Walls between tenants, end to end: `sniffer serve` processes under a low open-file
limit, real TLS clients and backends on loopback.

The noisy-neighbour test floods tenant A from another process (tests/support/flood.py)
so that the flood's own CPU work does not run in the event loop that times tenant B.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.proxy.test_relay import client_hello, tls_request
from tests.support.pki import PKI
from tests.support.servers import RawBackend, TLSBackend, answering_backend, free_port
from tests.test_serve import Sniffer, start_sniffer  # noqa: F401 - a fixture


def _routes(port: int, backends: dict[str, int], extra: str = "") -> str:
    lines = [
        "listeners:",
        f"  - {{name: tls, address: '127.0.0.1:{port}', protocol: tls}}",
        "backends:",
        *(
            f"  - {{name: {n}, tenant: team-{n}, endpoints: ['127.0.0.1:{p}']}}"
            for n, p in backends.items()
        ),
        "routes:",
        *(f"  - {{host: app.{n}.example, backend: {n}}}" for n in backends),
    ]
    return "\n".join(lines) + "\n" + extra


async def _closed_at_once(port: int, hello: bytes) -> bool:
    """The proxy closes a new connection without answering (shed at accept)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello)
    try:
        data = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        data = b""
    writer.close()
    return data == b""


@pytest.mark.parametrize("workers", ["0", "1"])
async def test_overload_sheds_at_accept_and_health_keeps_answering(
    start_sniffer: object,  # noqa: F811 - the fixture imported from test_serve
    workers: str,
) -> None:
    raw = await RawBackend().start()
    port = free_port()
    # 256 descriptors: (256 - 64 reserved) // 2 = 96 client connections per process.
    s: Sniffer = await start_sniffer(  # type: ignore[operator]
        _routes(port, {"r": raw.port}), port, "--workers", workers, nofile=256
    )
    hello = client_hello("app.r.example")
    held: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
    for _ in range(96):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello)
        _, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
        held.append((writer, b_writer))
    for _ in range(10):
        assert await _closed_at_once(port, hello)
    assert raw.accepted.empty()
    # Health endpoints answer while the data plane is saturated.
    assert s.get("/healthz")[0] == 200
    assert s.get("/readyz")[0] == 200
    key = 'sniffer_refused_connections_total{listener="tls",reason="overloaded"}'
    await s.wait_for(lambda: s.metrics().get(key) == 10)
    # Connections already relaying were not sacrificed.
    writer, b_writer = held[0]
    writer.write(b"still here")
    b_reader = b_writer.transport.get_protocol()._stream_reader  # type: ignore[attr-defined]
    assert await asyncio.wait_for(b_reader.readexactly(len(hello) + 10), 10) == (
        hello + b"still here"
    )
    # Recovery is automatic: as connections close, new ones are admitted again.
    for writer, b_writer in held[:10]:
        writer.close()
        b_writer.close()
    await s.wait_for(
        lambda: s.metrics().get('sniffer_connections_active{backend="r",tenant="team-r"}') == 86
    )
    for _ in range(5):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello)
        await asyncio.wait_for(raw.accepted.get(), 10)
        writer.close()
    for writer, b_writer in held[10:]:
        writer.close()
        b_writer.close()
    await raw.close()


@pytest.mark.parametrize(
    ("cap", "flood", "nofile", "concurrency", "probes"),
    [
        pytest.param(30, 400, 256, 50, 60, id="small"),
        pytest.param(300, 2000, 2048, 100, 200, id="issue", marks=pytest.mark.soak),
    ],
)
async def test_noisy_neighbour_cannot_take_the_edge_from_others(
    start_sniffer: object,  # noqa: F811 - the fixture imported from test_serve
    pki: PKI,
    tmp_path: Path,
    cap: int,
    flood: int,
    nofile: int,
    concurrency: int,
    probes: int,
) -> None:
    """Tenant A, capped at `cap`, is flooded with `flood` TLS connections that complete
    the handshake and idle; without the cap they would exceed what `nofile` allows.
    Tenant B's clients all succeed, median within 2x of their baseline, with two workers
    splitting the cap between them."""
    b = await TLSBackend("b", pki.issue("app.b.example").server_context()).start()
    leaf_a = pki.issue("app.a.example")
    port = free_port()
    neighbour = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.flood",
            str(port),
            "app.a.example",
            str(flood),
            str(concurrency),
            str(pki.ca_path),
            str(leaf_a.cert),
            str(leaf_a.key),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    loop = asyncio.get_running_loop()
    try:
        assert neighbour.stdout is not None and neighbour.stdin is not None
        line = await loop.run_in_executor(None, neighbour.stdout.readline)
        a_port = int(line.split()[1])
        tenants = f"tenants:\n  - {{name: team-a, limits: {{max_connections: {cap}}}}}\n"
        s: Sniffer = await start_sniffer(  # type: ignore[operator]
            _routes(port, {"a": a_port, "b": b.port}, tenants),
            port,
            "--workers",
            "2",
            nofile=nofile,
        )
        # Without the cap A's flood would hold more than both workers may open.
        assert 2 * ((nofile - max(64, nofile // 16)) // 2) < flood

        async def timed_b() -> float:
            began = time.perf_counter()
            assert await tls_request(pki, port, "app.b.example") == b"b\n"
            return time.perf_counter() - began

        for _ in range(5):  # warm up
            await timed_b()
        baseline = sorted([await timed_b() for _ in range(probes)])
        # Flood (A's own process) while B keeps connecting: every B client succeeds.
        neighbour.stdin.write(b"go\n")
        neighbour.stdin.flush()
        done = loop.run_in_executor(None, neighbour.stdout.readline)
        arriving: list[float] = []
        while not done.done():
            arriving.append(await timed_b())
        _, admitted, refused = (await done).decode().split()
        assert int(admitted) == cap and int(admitted) + int(refused) == flood
        # A's flood now holds its cap of idle connections and was refused the rest
        # (sniffer holds nothing for those): B's typical latency is back within 2x of
        # baseline. The median is asserted, not the tail: with a few dozen probes the
        # "p99" is the slowest one, which any other process on a shared machine can
        # delay (benchmarks/noisy_neighbour.py measures tails on a quiet machine).
        # While the flood arrives, its generator's own TLS handshakes compete with
        # sniffer and B for this machine's two cores, so that phase is reported only.
        holding = sorted([await timed_b() for _ in range(probes)])
        arriving.sort()

        def p99(xs: list[float]) -> float:
            return xs[min(len(xs) - 1, int(len(xs) * 0.99))]

        def p50(xs: list[float]) -> float:
            return xs[len(xs) // 2]

        assert p50(holding) <= 2 * p50(baseline), (p50(baseline), p50(holding))
        key = 'sniffer_refused_connections_total{listener="tls",reason="tenant_limit"}'
        await s.wait_for(lambda: s.metrics().get(key) == flood - cap)
        m = s.metrics()
        limited = (
            'sniffer_limited_connections_total{backend="a",limit="tenant_max_connections",'
            'tenant="team-a"}'
        )
        assert m[limited] == flood - cap
        overloaded = 'sniffer_refused_connections_total{listener="tls",reason="overloaded"}'
        assert overloaded not in m

        def ms(xs: list[float]) -> str:
            return f"{p50(xs) * 1e3:.1f}/{p99(xs) * 1e3:.1f} ms (n={len(xs)})"

        print(
            f"\nnoisy neighbour: A admitted {admitted}/{flood} (cap {cap}, 2 workers); "
            f"B new TLS connection p50/p99: baseline {ms(baseline)}, while the flood "
            f"arrives {ms(arriving)}, while it holds {ms(holding)}"
        )
    finally:
        if neighbour.stdin is not None:
            neighbour.stdin.close()
        try:
            neighbour.wait(10)
        except subprocess.TimeoutExpired:
            neighbour.kill()
            neighbour.wait()
        await b.close()


async def test_stdout_pipe_nobody_reads_never_stalls_the_data_plane(tmp_path: Path) -> None:
    """`sniffer serve` whose stdout is a pipe nobody reads (a stuck log shipper): every
    connection is still relayed, the lines beyond the buffer are dropped and counted, and
    SIGTERM still exits promptly."""
    backend = await answering_backend()
    port, admin = free_port(), free_port()
    routes = tmp_path / "routes.yaml"
    routes.write_text(_routes(port, {"r": backend.sockets[0].getsockname()[1]}))
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe, full sooner
    stderr = tmp_path / "stderr.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sniffer",
            "serve",
            "--routes",
            str(routes),
            "--workers",
            "1",
            "--admin",
            f"127.0.0.1:{admin}",
            "--access-log-buffer",
            "4096",
        ],
        stdout=write_end,
        stderr=stderr.open("wb"),
        cwd=REPO,
    )
    os.close(write_end)
    s = Sniffer(proc, f"http://127.0.0.1:{admin}", port, routes, tmp_path / "none", stderr)
    try:
        await s.wait_for(lambda: s.get("/readyz")[0] == 200, timeout=30)
        hello = client_hello("app.r.example")
        for _ in range(200):  # ~50 KB of log lines: pipe and buffer overflow many times
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(hello)
            assert await asyncio.wait_for(reader.read(), 10) == b"ok"
            writer.close()
        key = "sniffer_access_log_dropped_total"
        await s.wait_for(lambda: s.metrics().get(key, 0) > 0)
        assert s.get("/healthz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(read_end)
        backend.close()
