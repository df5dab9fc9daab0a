"""PROXY v2 TLVs read by a real peer: HAProxy as the backend answers with what it parsed.

HAProxy's `fc_pp_authority` and `fc_pp_unique_id` come back in an HTTP response, so
the test checks sniffer's header against HAProxy's parser, not against our own. The
unique id must equal the access log's `id` for the same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sniffer.routing.table import Backend, Endpoint, Listener, Route, TableSpec, WeightedBackend
from tests.conftest import PlaneFactory
from tests.support.pki import PKI
from tests.support.prereq import missing
from tests.support.servers import free_port

ANSWER = re.compile(rb"authority=(\S*) id=(\S*)\n")

StartHAProxy = Callable[[str], Awaitable[int]]


@pytest.fixture
async def haproxy(tmp_path: Path) -> AsyncIterator[StartHAProxy]:
    """Start HAProxy with one frontend (`bind_options` after `accept-proxy`) that answers
    every request with the PROXY TLVs it received; yields its port."""
    if shutil.which("haproxy") is None:
        missing("haproxy is not installed (apt-get install haproxy)")
    procs: list[subprocess.Popen[bytes]] = []

    async def start(bind_options: str) -> int:
        port = free_port()
        cfg = tmp_path / f"haproxy-{port}.cfg"
        cfg.write_text(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n"
            "  timeout server 10s\n"
            "frontend fe\n"
            f"  bind 127.0.0.1:{port} accept-proxy {bind_options}\n"
            "  http-request return status 200 content-type text/plain"
            ' lf-string "authority=%[fc_pp_authority] id=%[fc_pp_unique_id]\\n"\n'
        )
        proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        async with asyncio.timeout(20):
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    return port
                await asyncio.sleep(0.05)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spec(protocol: str, port: int, host: str) -> TableSpec:
    return TableSpec(
        listeners=(Listener("main", "127.0.0.1", 0, protocol, "fallback"),),  # type: ignore[arg-type]
        backends=(
            Backend("hap", "tenant-h", (Endpoint("127.0.0.1", port),), proxy_protocol="v2"),
            Backend("fallback", "tenant-h", (Endpoint("127.0.0.1", port),), proxy_protocol="v2"),
        ),
        routes=(Route(host, (WeightedBackend("hap"),)),),
    )


async def tlvs_seen(
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
) -> tuple[bytes, str]:
    """Send `request` through sniffer; HAProxy's answer: (authority, unique id) it read."""
    reader, writer = streams
    writer.write(request)
    async with asyncio.timeout(10):
        body = await reader.read()
    writer.close()
    m = ANSWER.search(body)
    assert m is not None, body
    return m.group(1), m.group(2).decode()


async def _closed_log(plane: object, n: int) -> list[dict[str, object]]:
    async with asyncio.timeout(10):
        while len(plane.recorded.records) < n:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
    return plane.recorded.records  # type: ignore[attr-defined, no-any-return]


async def test_http_listener_sends_host_and_id_to_haproxy(
    data_plane: PlaneFactory, haproxy: StartHAProxy
) -> None:
    plane = await data_plane(spec("http", await haproxy(""), "www.h.example"))
    port = plane.bound_ports()["main"]
    ids = set()
    for i in range(3):
        authority, unique_id = await tlvs_seen(
            await asyncio.open_connection("127.0.0.1", port),
            b"GET / HTTP/1.1\r\nHost: WWW.H.example:8080\r\nConnection: close\r\n\r\n",
        )
        assert authority == b"www.h.example"  # the normalised name sniffer routed on
        log = await _closed_log(plane, i + 1)
        assert unique_id == log[i]["id"]
        ids.add(unique_id)
    assert len(ids) == 3


async def test_tls_listener_sends_sni_and_id_to_haproxy(
    data_plane: PlaneFactory, haproxy: StartHAProxy, pki: PKI, tmp_path: Path
) -> None:
    leaf = pki.issue("app.h.example")
    bundle = tmp_path / "haproxy.pem"
    bundle.write_bytes(leaf.cert.read_bytes() + leaf.key.read_bytes())
    plane = await data_plane(spec("tls", await haproxy(f"ssl crt {bundle}"), "app.h.example"))
    port = plane.bound_ports()["main"]
    authority, unique_id = await tlvs_seen(
        await asyncio.open_connection(
            "127.0.0.1", port, ssl=pki.client_context(), server_hostname="app.h.example"
        ),
        b"GET / HTTP/1.1\r\nHost: app.h.example\r\nConnection: close\r\n\r\n",
    )
    assert authority == b"app.h.example"
    assert unique_id == (await _closed_log(plane, 1))[0]["id"]


async def test_no_name_sends_no_authority(data_plane: PlaneFactory, haproxy: StartHAProxy) -> None:
    # An HTTP/1.0 request without Host reaches the default backend: no name to pass on.
    plane = await data_plane(spec("http", await haproxy(""), "www.h.example"))
    port = plane.bound_ports()["main"]
    authority, unique_id = await tlvs_seen(
        await asyncio.open_connection("127.0.0.1", port), b"GET / HTTP/1.0\r\n\r\n"
    )
    assert authority == b""
    assert unique_id == (await _closed_log(plane, 1))[0]["id"]
