"""A TLS connection through a running `sniffer serve --kubernetes` to a real TLS backend.

The route appears from an Ingress created in the API test server; deleting it makes new
connections fail with the `unrecognized_name` alert while an open one keeps working, and
`/readyz` is 503 until the first full sync.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.k8s.conftest import SNIFFER, spawn_sniffer
from tests.kubeapi import objects as o
from tests.kubeapi.certs import make_pki
from tests.support.prereq import missing
from tests.support.servers import free_port


@pytest.fixture(autouse=True)
def _sniffer_installed() -> None:
    if not SNIFFER.exists():
        missing(f"{SNIFFER} not found: pip install -e '.[dev]' in the repository's .venv")


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Retry `check` until it holds: the subprocess offers no event to wait on."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)  # retry interval against another process, not a sync
    assert await check(), what


def _readyz(admin: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


async def _echo_backend(tmp: Path) -> tuple[asyncio.Server, int, bytes]:
    pki = make_pki(tmp / "backend", hosts=("app.example.com",))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert_file, pki.key_file)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1], pki.ca_pem


async def _connect(port: int, ca: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = ssl.create_default_context(cadata=ca.decode())
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="app.example.com"),
        5,
    )


async def _roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes) -> bytes:
    w.write(data)
    await w.drain()
    return await asyncio.wait_for(r.readexactly(len(data)), 5)


async def test_tls_through_sniffer_follows_the_cluster(api_server, kubeconfig, tmp_path):
    backend, backend_port, ca = await _echo_backend(tmp_path)
    listen, admin = free_port(), free_port()
    api_server.create(o.service("team-a", "web", (("https", 443, "https"),)))
    api_server.create(
        o.endpoint_slice("team-a", "web", ["127.0.0.1"], ports=(("https", backend_port),))
    )
    await api_server.go_down()  # sniffer starts before the API is reachable
    proc = spawn_sniffer(kubeconfig, f"tls:127.0.0.1:{listen}", admin, "--workers", "1")
    try:

        async def admin_answers() -> bool:
            return await asyncio.to_thread(_readyz, admin) != 0

        await _eventually(admin_answers, 20, "admin endpoint up")
        assert await asyncio.to_thread(_readyz, admin) == 503
        await api_server.go_up()

        async def ready() -> bool:
            return await asyncio.to_thread(_readyz, admin) == 200

        await _eventually(ready, 20, "/readyz 200 after the first sync")

        api_server.create(o.ingress("team-a", "web", [("app.example.com", "web", "https")]))

        async def routed() -> bool:
            try:
                r, w = await _connect(listen, ca)
            except (ssl.SSLError, ConnectionError, OSError, TimeoutError):
                return False
            ok = await _roundtrip(r, w, b"ping") == b"ping"
            w.close()
            return ok

        await _eventually(routed, 15, "route live")
        held_r, held_w = await _connect(listen, ca)
        assert await _roundtrip(held_r, held_w, b"before") == b"before"

        api_server.delete("Ingress", "team-a", "web")
        refusal: list[str] = []

        async def refused() -> bool:
            try:
                _r, w = await _connect(listen, ca)
            except ssl.SSLError as exc:
                refusal.append(str(exc))
                return "UNRECOGNIZED_NAME" in str(exc).upper()
            except (ConnectionError, OSError, TimeoutError):
                return False
            w.close()
            return False

        await _eventually(refused, 15, "unrecognized_name after deletion")
        # The connection opened before the change is untouched by it.
        assert await _roundtrip(held_r, held_w, b"after" * 1000) == b"after" * 1000
        held_w.close()
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        backend.close()
        await backend.wait_closed()
        if sys.exc_info()[0] is not None:
            print(out.decode(errors="replace")[-4000:])
