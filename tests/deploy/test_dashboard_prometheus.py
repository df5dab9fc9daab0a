"""Every dashboard query, run by a real Prometheus scraping a real sniffer under real traffic.

The chain a user relies on, end to end on loopback:
  TLS clients -> sniffer (file routes, one worker; the kernel relays each routed pair
  where BPF sockmap is allowed, as root in CI) -> two TLS tenant backends
  Prometheus (scrape_interval 1s) -> sniffer's admin /metrics
  dashboard queries -> Prometheus HTTP API.

Traffic: tenant-a gets three times tenant-b's connections and larger payloads; a few
connections carry an unknown SNI (refused: unknown_name); a few go to tenant-c, whose
only endpoint is a closed port (backend connect errors); a few go to tenant-d, whose limit
of 0 connections refuses them all (limited connections). Some tenant-a and tenant-b
connections stay open so that the active-connections gauge has something to show.
QUIC (aioquic both ends): each round one flow to tenant-a's h3 host, whose backend lists a
dead UDP endpoint first (every other flow fails over), one unknown name (refused with a
CONNECTION_CLOSE) and stray short-header datagrams (dropped); in the last round a client
moves to a new socket (a rebind).
Traffic comes in rounds; after each round the test polls Prometheus until the scrape
shows it, so rate() windows see increases, with no fixed sleeps.

Then each panel's queries are evaluated at the last scrape, with `$tenant` as a regex
of the tenants and `$__rate_interval` as 15s, and checked against what the traffic must
produce. Panels fed only by the Kubernetes source (watch health, watch events, objects
cached) and by route changes (update lag, rebuild rates) are only checked to be valid
PromQL here, because the file source emits no such samples (or a single one at start).
benchmarks/dashboard_preview.py feeds every query of every panel, from a --kubernetes run.

Also: the live /metrics page matches the metric contract (names, types, labels), and the
dashboard preview PNG is drawn from the range data (to the path SNIFFER_DASHBOARD_PNG
names, else to a temporary file; docs/dashboard.png is drawn by
benchmarks/dashboard_preview.py, from a --kubernetes run).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration

from tests.deploy.contract import METRICS
from tests.deploy.support import MANIFESTS, REPO, find_tool, missing, require_tool
from tests.support.servers import free_port

cryptography = pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

DASHBOARD = MANIFESTS / "grafana" / "sniffer.json"
TENANTS = "tenant-a|tenant-b|tenant-c|tenant-d"
RATE_INTERVAL = "15s"
# Rounds of traffic; more make a longer, livelier docs/dashboard.png.
ROUNDS = int(os.environ.get("SNIFFER_DASHBOARD_ROUNDS", "10"))


def per_round(rnd: int) -> dict[str, int]:
    """Connections per round, varied so the graphs show change; tenant-a always > tenant-b."""
    return {
        "tenant-a": 4 + 2 * (rnd % 3),
        "tenant-b": 1 + rnd % 2,
        "unknown": 1 + (rnd % 4 == 0),
        "tenant-c": 1,
        "tenant-d": 1,
    }


HELD = {"tenant-a": 3, "tenant-b": 1}
PAYLOAD = {"tenant-a": (2048, 16384), "tenant-b": (512, 4096)}  # (request, response) bytes
HOSTS = {
    "tenant-a": "www.tenant-a.test",
    "tenant-b": "shop.tenant-b.test",
    "tenant-c": "api.tenant-c.test",
    "tenant-d": "app.tenant-d.test",
    "unknown": "nobody.unrouted.test",
}
H3_HOST = "h3.tenant-a.test"
"""Routed on the quic listener to tenant-a's router-h3: a dead UDP endpoint, then the
tenant's QUIC server (on the UDP port of its TLS router's number)."""
# Metrics that only the Kubernetes source produces.
KUBERNETES_ONLY = {
    "sniffer_watch_events_total",
    "sniffer_watch_relists_total",
    "sniffer_watch_errors_total",
    "sniffer_watch_up",
    "sniffer_objects_cached",
    "sniffer_leader",
    "sniffer_status_writes_total",
}
DEADLINE = 60.0  # seconds for any one wait; the whole test takes ~30-60 s


# -- helpers -----------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll `check` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
            if check():
                return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Pki:
    ca_pem: Path
    certs: dict[str, tuple[Path, Path]]  # tenant -> (cert, key)


def make_pki(tmp: Path) -> Pki:
    """A CA and one server certificate per tenant, so clients verify end to end."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sniffer test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = tmp / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs = {}
    for tenant in ("tenant-a", "tenant-b"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTS[tenant])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(HOSTS[tenant])]
                    + ([x509.DNSName(H3_HOST)] if tenant == "tenant-a" else [])
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = tmp / f"{tenant}.crt", tmp / f"{tenant}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        certs[tenant] = (cert_path, key_path)
    return Pki(ca_pem, certs)


class TlsBackend:
    """A tenant router: terminates TLS, reads 'SIZE\\n', answers SIZE bytes, closes."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.handled = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with (
            contextlib.suppress(OSError),
            conn,
            self.ctx.wrap_socket(conn, server_side=True) as tls,
        ):
            buf = b""
            while b"\n" not in buf:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                buf += chunk
            size = int(buf.split(b"\n", 1)[0])
            tls.sendall(b"x" * size)
            self.handled += 1

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        self.thread.join(timeout=5)


class QuicBackend:
    """tenant-a's QUIC server (aioquic), on its own event loop in a thread: echoes each
    stream back."""

    def __init__(self, cert: Path, key: Path, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
        config.load_cert_chain(cert, key)

        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def echo() -> None:
                writer.write(await reader.read())
                writer.write_eof()

            self.loop.create_task(echo())

        self.server: QuicServer = self.loop.run_until_complete(
            serve("127.0.0.1", port, configuration=config, stream_handler=handler)
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def quic_config(pki: Pki, host: str) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=host)
    config.load_verify_locations(str(pki.ca_pem))
    return config


async def _quic_exchange(pki: Pki, port: int, rebind: bool, host: str) -> bytes:
    async with connect("127.0.0.1", port, configuration=quic_config(pki, host)) as c:
        got = await _stream(c, b"first")
        if rebind:  # the client's NAT mapping changes: same connection, new socket
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0, 0, 0))
            old = c._transport
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: c, sock=sock)
            old.close()  # type: ignore[union-attr]
            got += await _stream(c, b"moved")
        return got


async def _stream(c: QuicConnectionProtocol, data: bytes) -> bytes:
    reader, writer = await c.create_stream()
    writer.write(data)
    writer.write_eof()
    return await asyncio.wait_for(reader.read(), 20)


def quic_exchange(pki: Pki, port: int, rebind: bool = False, host: str = H3_HOST) -> bytes:
    return asyncio.run(_quic_exchange(pki, port, rebind, host))


def quic_refusal(pki: Pki, port: int) -> None:
    async def attempt() -> None:
        async with connect("127.0.0.1", port, configuration=quic_config(pki, HOSTS["unknown"])):
            pass

    with pytest.raises(ConnectionError):
        asyncio.run(asyncio.wait_for(attempt(), 20))


def stray_datagrams(port: int, n: int) -> None:
    """Short-header datagrams from an address sniffer has no flow for: dropped."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(n):
            sock.sendto(b"\x40" + bytes(40), ("127.0.0.1", port))


def client_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def tls_connect(ctx: ssl.SSLContext, port: int, host: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def exchange(ctx: ssl.SSLContext, port: int, tenant: str) -> int:
    """One request/response through sniffer; returns the response size received."""
    request, response = PAYLOAD[tenant]
    with tls_connect(ctx, port, HOSTS[tenant]) as tls:
        tls.sendall(f"{response}\n".encode() + b"r" * (request - len(f"{response}\n")))
        got = 0
        while chunk := tls.recv(65536):
            got += len(chunk)
    return got


def expect_refusal(ctx: ssl.SSLContext, port: int, host: str) -> None:
    """sniffer refuses (TLS alert or close) before any handshake completes."""
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls = tls_connect(ctx, port, host)
        try:
            tls.sendall(b"1\n")
            if not tls.recv(1):
                raise ConnectionError("closed by sniffer")
        finally:
            tls.close()


# -- processes ----------------------------------------------------------------------------


@dataclass
class Stack:
    tls_port: int
    quic_port: int
    admin: str
    prometheus: str
    tmp: Path
    pki: Pki
    kernel: bool
    """The worker relays in the kernel (--kernel-relay on where BPF sockmap is allowed)."""


def kernel_relay_here() -> bool:
    """BPF sockmap and the capabilities for it (root; CI runs as root)."""
    from sniffer.proxy.kernel.relay import KernelRelay, Unavailable

    try:
        KernelRelay(capacity=1).close()
    except Unavailable:
        return False
    return True


@contextlib.contextmanager
def running(cmd: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    prometheus = require_tool("prometheus", Path("/usr/bin/prometheus"))
    sniffer = find_tool("sniffer")
    if (
        sniffer is None
        or subprocess.run(
            [sniffer, "--help"], capture_output=True, timeout=60, check=False
        ).returncode
        != 0
    ):
        missing("the `sniffer` command is not installed (pip install -e . in the venv)")
    assert sniffer is not None

    pki = make_pki(tmp_path)
    kernel = kernel_relay_here()
    backends = {t: TlsBackend(*pki.certs[t]) for t in ("tenant-a", "tenant-b")}
    quic_backend = QuicBackend(*pki.certs["tenant-a"], backends["tenant-a"].port)
    dead_port = free_port()  # nothing listens there: tenant-c's dials are refused
    tls_port, admin_port, prom_port = free_port(), free_port(), free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        quic_port = probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead_udp = probe.getsockname()[1]  # closed: ICMP port unreachable
    routes = {
        "listeners": [
            {"name": "tls", "address": f"127.0.0.1:{tls_port}", "protocol": "tls"},
            {"name": "h3", "address": f"127.0.0.1:{quic_port}", "protocol": "quic"},
        ],
        "backends": [
            {
                "name": "router",
                "tenant": "tenant-a",
                "endpoints": [f"127.0.0.1:{backends['tenant-a'].port}"],
            },
            {
                "name": "router-b",
                "tenant": "tenant-b",
                "endpoints": [f"127.0.0.1:{backends['tenant-b'].port}"],
            },
            {
                "name": "router-h3",
                "tenant": "tenant-a",
                "endpoints": [f"127.0.0.1:{dead_udp}", f"127.0.0.1:{backends['tenant-a'].port}"],
            },
            {"name": "router-c", "tenant": "tenant-c", "endpoints": [f"127.0.0.1:{dead_port}"]},
            # tenant-d may hold no connection at all: every one is refused by its limit.
            {"name": "router-d", "tenant": "tenant-d", "endpoints": [f"127.0.0.1:{dead_port}"]},
        ],
        "tenants": [{"name": "tenant-d", "limits": {"max_connections": 0}}],
        "routes": [
            {"host": HOSTS["tenant-a"], "backend": "router"},
            {"host": HOSTS["tenant-b"], "backend": "router-b"},
            {"host": HOSTS["tenant-c"], "backend": "router-c"},
            {"host": HOSTS["tenant-d"], "backend": "router-d"},
            {"host": H3_HOST, "backend": "router-h3"},
        ],
    }
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(routes))
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "scrape_configs": [
                    {
                        "job_name": "sniffer",
                        "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}],
                    }
                ],
            }
        )
    )
    admin = f"http://127.0.0.1:{admin_port}"
    prom = f"http://127.0.0.1:{prom_port}"
    sniffer_log, prom_log = tmp_path / "sniffer.log", tmp_path / "prometheus.log"
    try:
        with running(
            [
                sniffer,
                "serve",
                "--routes",
                str(routes_file),
                "--admin",
                f"127.0.0.1:{admin_port}",
                "--workers",
                "1",
                "--drain-grace",
                "1",
                "--quic-idle-timeout",
                "1",  # flows end soon after their last datagram: active settles
                "--kernel-relay",
                "on" if kernel else "off",
                "--kernel-relay-after",
                "0",  # every routed pair at once (the default waits 1 s)
            ],
            sniffer_log,
        ) as sp:
            wait_for(
                "sniffer /readyz",
                lambda: alive(sp, sniffer_log) or http_get(f"{admin}/readyz")[0] == 200,
            )
            with running(
                [
                    prometheus,
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                prom_log,
            ) as pp:
                wait_for(
                    "prometheus ready",
                    lambda: alive(pp, prom_log) or http_get(f"{prom}/-/ready")[0] == 200,
                )
                yield Stack(tls_port, quic_port, admin, prom, tmp_path, pki, kernel)
                alive(sp, sniffer_log)
    finally:
        for b in backends.values():
            b.close()
        quic_backend.close()


# -- Prometheus queries ----------------------------------------------------------------------


def query(prom: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    status, body = http_get(f"{prom}/api/v1/query?{urllib.parse.urlencode(params)}")
    data = json.loads(body)
    assert status == 200 and data["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


def by(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(lbl, "") for lbl in labels): float(r["value"][1]) for r in result}


def scalar_sum(prom: str, expr: str) -> float:
    return sum(float(r["value"][1]) for r in query(prom, expr))


# -- the test ------------------------------------------------------------------------------------


Check = Callable[[list[list[dict[str, Any]]]], None]


def finite(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


def expectations(start: float, end: float, kernel: bool) -> dict[str, Check]:
    """Per panel title: what its queries (A, B, ...) must return for the traffic sent;
    `kernel`: the worker relays in the kernel."""
    a, b = ("tenant-a",), ("tenant-b",)

    def active(r: list[list[dict[str, Any]]]) -> None:
        got = by(r[0], "tenant")
        assert got[a] == HELD["tenant-a"] and got[b] == HELD["tenant-b"], got

    def new_conns(r: list[list[dict[str, Any]]]) -> None:
        got = by(r[0], "tenant", "backend")
        assert got[("tenant-a", "router")] > got[("tenant-b", "router-b")] > 0, got

    def bytes_panel(r: list[list[dict[str, Any]]]) -> None:
        got = by(r[0], "tenant")
        assert got[a] > got[b] > 0, got

    def quantile_by_tenant(r: list[list[dict[str, Any]]]) -> None:
        for res in r:
            got = by(res, "tenant")
            assert finite([got[a], got[b]]) and got[a] > 0, got

    def endpoints(r: list[list[dict[str, Any]]]) -> None:
        got = by(r[0], "tenant", "backend")
        assert got == {
            ("tenant-a", "router"): 1,
            ("tenant-a", "router-h3"): 2,
            ("tenant-b", "router-b"): 1,
            ("tenant-c", "router-c"): 1,
            ("tenant-d", "router-d"): 1,
        }, got

    def connect_errors(r: list[list[dict[str, Any]]]) -> None:
        got = by(r[0], "tenant", "backend", "reason")
        assert got.get(("tenant-c", "router-c", "refused"), 0) > 0, got
        assert got.get(("tenant-a", "router-h3", "refused"), 0) > 0, got  # its dead UDP one
        others = [k for k in got if k[0] != "tenant-c" and k[1] != "router-h3" and got[k] > 0]
        assert not others, got

    def limited(r: list[list[dict[str, Any]]]) -> None:
        got = by(r[0], "tenant", "limit")
        assert got.get(("tenant-d", "tenant_max_connections"), 0) > 0, got
        assert not [k for k in got if k[0] != "tenant-d" and got[k] > 0], got

    def loop_lag(r: list[list[dict[str, Any]]]) -> None:
        for res in r:
            got = by(res, "worker")
            assert finite([got[("0",)]]) and got[("0",)] < 1.0, got

    def dropped(r: list[list[dict[str, Any]]]) -> None:
        assert [float(x["value"][1]) for x in r[0]] == [0.0]  # the test reads stdout

    def accepted(r: list[list[dict[str, Any]]]) -> None:
        assert by(r[0], "listener")[("tls",)] > 0

    def refusals(r: list[list[dict[str, Any]]]) -> None:
        got = by(r[0], "listener", "reason")
        assert got.get(("tls", "unknown_name"), 0) > 0, got

    def listeners(r: list[list[dict[str, Any]]]) -> None:
        # The held connections are open on the tls listener; its one worker holds it.
        # (QUIC flows have idled out by then.)
        assert by(r[0], "listener", "protocol") == {
            ("tls", "tls"): sum(HELD.values()),
            ("h3", "quic"): 0,
        }
        assert by(r[1], "listener", "protocol") == {("tls", "tls"): 1, ("h3", "quic"): 1}

    def datagrams(r: list[list[dict[str, Any]]]) -> None:
        got = by(r[0], "tenant", "direction")
        assert set(got) == {("tenant-a", "client_to_backend"), ("tenant-a", "backend_to_client")}
        assert min(got.values()) > 0, got

    def dropped_datagrams(r: list[list[dict[str, Any]]]) -> None:
        got = by(r[0], "listener", "reason")
        assert got.get(("h3", "not_initial"), 0) > 0, got
        assert {k[0] for k in got} == {"h3"}, got

    def quic_refusals(r: list[list[dict[str, Any]]]) -> None:
        got = by(r[0], "listener", "reason")
        assert got.get(("h3", "unknown_name"), 0) > 0, got
        assert {k[0] for k in got} == {"h3"}, got  # the tls listener's are filtered out

    def rebinds_failovers(r: list[list[dict[str, Any]]]) -> None:
        assert by(r[0], "listener")[("h3",)] > 0
        assert by(r[1], "listener")[("h3",)] > 0

    def sniff(r: list[list[dict[str, Any]]]) -> None:
        for res in r:
            got = by(res, "listener")
            assert finite([got[("tls",)]]) and got[("tls",)] > 0, got

    def table_size(r: list[list[dict[str, Any]]]) -> None:
        routes, backends, conflicts = (float(x[0]["value"][1]) for x in r)
        assert (routes, backends, conflicts) == (5, 5, 0)

    def rebuilds(r: list[list[dict[str, Any]]]) -> None:
        # File source: one load at start, nothing since: rates are 0 but the series exist.
        assert r[0] and float(r[0][0]["value"][1]) == 0
        assert by(r[1], "result").get(("ok",)) == 0

    def since_load(r: list[list[dict[str, Any]]]) -> None:
        (value,) = by(r[0], "instance").values()
        assert 0 <= value <= end - start + 120, value

    def valid_only(r: list[list[dict[str, Any]]]) -> None:
        """Kubernetes-only or change-driven: the query ran without error; nothing more."""

    def not_leading(r: list[list[dict[str, Any]]]) -> None:
        """Routes from a file: no Lease, so the pod does not lead (the gauge is there)."""
        assert list(by(r[0]).values()) == [0.0]

    def kernel_workers(r: list[list[dict[str, Any]]]) -> None:
        """The one worker relays in the kernel where it can (else --kernel-relay off)."""
        assert list(by(r[0], "instance").values()) == [1.0 if kernel else 0.0], r[0]

    def kernel_handoffs(r: list[list[dict[str, Any]]]) -> None:
        """Every routed TLS pair went to the kernel (--kernel-relay-after 0). The fallback
        query stays empty: no pair here needs one (benchmarks/dashboard_preview.py
        draws one from a router that closes at once)."""
        if kernel:
            assert by(r[0])[()] > 0, r[0]

    def kernel_bytes(r: list[list[dict[str, Any]]]) -> None:
        """The tenants' responses (up to 16 KiB each) went through the kernel."""
        if kernel:
            assert by(r[0])[()] > 0, r[0]

    def runtime(r: list[list[dict[str, Any]]]) -> None:
        """Every query has series for the worker, all finite; the control process shows
        up too (it holds no connections, so not in the open-connections query)."""
        for result in r:
            assert "0" in {x["metric"]["worker"] for x in result}, result
            assert finite([float(x["value"][1]) for x in result]), result
        assert "control" in {x["metric"]["worker"] for result in r for x in result}, r

    def workers(r: list[list[dict[str, Any]]]) -> None:
        assert list(by(r[0], "instance").values()) == [1]

    def restarts(r: list[list[dict[str, Any]]]) -> None:
        assert list(by(r[0], "instance").values()) == [0]

    def versions(r: list[list[dict[str, Any]]]) -> None:
        import sniffer

        assert by(r[0], "version") == {(sniffer.__version__,): 1}

    return {
        "Active connections per tenant": active,
        "New connections/s per tenant and backend": new_conns,
        "Bytes/s client → backend": bytes_panel,
        "Bytes/s backend → client": bytes_panel,
        "Connection duration p50 / p99": quantile_by_tenant,
        "Ready endpoints per routed backend": endpoints,
        "Limited connections/s per tenant": limited,
        "Backend connect errors/s by reason": connect_errors,
        "Backend connect latency p50 / p99": quantile_by_tenant,
        "Accepted connections/s by listener": accepted,
        "Refusals/s by reason": refusals,
        "Connections shed at accept/s per pod": valid_only,  # never at --max-connections
        "Sniff duration p50 / p99": sniff,
        # Python's ssl sends no ECH; tests/proxy/test_hello_facts.py checks the counter.
        "ECH connections/s per tenant": valid_only,
        "Open connections and QUIC flows per listener": listeners,
        # Without BPF sockmap (not root) the stack runs --kernel-relay off: the queries
        # are then only checked to run (tests/proxy/test_kernel_relay.py needs it too).
        "Workers relaying in the kernel": kernel_workers,
        "Kernel relay hand-offs and fallbacks/s": kernel_handoffs,
        "Bytes/s carried by the kernel relay": kernel_bytes,
        "QUIC datagrams/s per tenant": datagrams,
        "QUIC datagrams dropped/s by reason": dropped_datagrams,
        "QUIC refusals/s by reason": quic_refusals,
        "QUIC rebinds and failovers/s": rebinds_failovers,
        "Route update lag p50 / p99": valid_only,  # Kubernetes events only
        "Route table size": table_size,
        "Route table rebuilds and reloads": rebuilds,
        "Route table rebuild duration p50 / p99": valid_only,  # no rebuild in the window
        "Time since last route table load": since_load,
        "Watch health": valid_only,  # Kubernetes source only
        "Watch events, relists and errors/s": valid_only,  # Kubernetes source only
        "Objects cached by kind": valid_only,  # Kubernetes source only
        "Status leader": not_leading,
        "Status writes/s": valid_only,  # Kubernetes source only
        "Open connections and route table version per process": runtime,
        "asyncio tasks and allocated blocks per process": runtime,
        "Garbage collector per process": runtime,
        "Workers alive": workers,
        "Worker restarts": restarts,
        "Event-loop lag p50 / p99 per worker": loop_lag,
        "Access-log lines dropped/s and bad annotations": dropped,
        "Versions running": versions,
    }


def drive_traffic(s: Stack, held: list[ssl.SSLSocket]) -> tuple[float, float]:
    """Send the rounds of traffic; return (first, last) scrape timestamps that saw it."""
    ctx = client_context(s.pki)
    prom = s.prometheus
    accepted = 0
    first = 0.0
    for rnd in range(ROUNDS):
        counts = per_round(rnd)
        for tenant in ("tenant-a", "tenant-b"):
            for _ in range(counts[tenant]):
                assert exchange(ctx, s.tls_port, tenant) == PAYLOAD[tenant][1]
        for _ in range(counts["unknown"]):
            expect_refusal(ctx, s.tls_port, HOSTS["unknown"])
        for _ in range(counts["tenant-c"]):
            expect_refusal(ctx, s.tls_port, HOSTS["tenant-c"])
        for _ in range(counts["tenant-d"]):
            expect_refusal(ctx, s.tls_port, HOSTS["tenant-d"])
        last_round = rnd == ROUNDS - 1
        got = quic_exchange(s.pki, s.quic_port, rebind=last_round)
        assert got == (b"firstmoved" if last_round else b"first")
        quic_refusal(s.pki, s.quic_port)
        stray_datagrams(s.quic_port, 3)
        if rnd == ROUNDS // 2:
            for tenant, n in HELD.items():
                for _ in range(n):
                    tls = tls_connect(ctx, s.tls_port, HOSTS[tenant])
                    held.append(tls)
        accepted += sum(counts.values()) + (sum(HELD.values()) if rnd == ROUNDS // 2 else 0)

        def scraped(total: int = accepted) -> bool:
            return scalar_sum(prom, "sum(sniffer_accepted_connections_total)") >= total

        wait_for(f"Prometheus to scrape round {rnd}", scraped)
        if not first:
            first = float(query(prom, "sniffer_build_info")[0]["value"][0])

    def settled() -> bool:
        got = by(query(prom, "sum by (tenant) (sniffer_connections_active)"), "tenant")
        return (
            got.get(("tenant-a",)) == HELD["tenant-a"]
            and got.get(("tenant-b",)) == HELD["tenant-b"]
        )

    wait_for("active connections to reach Prometheus", settled)
    last = float(query(prom, "sniffer_build_info")[0]["value"][0])
    return first, last


def test_metrics_page_matches_the_contract(stack: Stack) -> None:
    """Names, types and label sets sniffer exposes are the ones the artefacts use."""
    held: list[ssl.SSLSocket] = []
    try:
        ctx = client_context(stack.pki)
        exchange(ctx, stack.tls_port, "tenant-a")
        expect_refusal(ctx, stack.tls_port, HOSTS["unknown"])
        expect_refusal(ctx, stack.tls_port, HOSTS["tenant-c"])
        expect_refusal(ctx, stack.tls_port, HOSTS["tenant-d"])

        def page_has_data_plane() -> bool:
            return "sniffer_connections_total{" in http_get(f"{stack.admin}/metrics")[1]

        wait_for("data-plane metrics on /metrics", page_has_data_plane)
    finally:
        for tls in held:
            tls.close()
    from prometheus_client.parser import text_string_to_metric_families

    exposed: dict[str, tuple[str, set[frozenset[str]]]] = {}
    for family in text_string_to_metric_families(http_get(f"{stack.admin}/metrics")[1]):
        # The text parser reports prometheus_client's `_created` samples as families.
        if not family.name.startswith("sniffer_") or family.name.endswith("_created"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        label_sets = {
            frozenset(s.labels) - {"le"} for s in family.samples if not s.name.endswith("_created")
        }
        exposed[name] = (family.type, label_sets)
    unknown = set(exposed) - set(METRICS)
    assert not unknown, f"exposed but not in the contract (dashboard/alerts): {unknown}"
    absent = set(METRICS) - set(exposed)
    assert absent <= KUBERNETES_ONLY, f"contract metrics missing from /metrics: {absent}"
    for name, (kind, label_sets) in exposed.items():
        want_kind, want_labels = METRICS[name]
        assert kind == want_kind, f"{name}: {kind}, contract says {want_kind}"
        for labels in label_sets:
            assert labels == want_labels, f"{name}: labels {sorted(labels)} != {want_labels}"


def test_every_dashboard_query_against_live_prometheus(stack: Stack) -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    held: list[ssl.SSLSocket] = []
    try:
        first, last = drive_traffic(stack, held)
        checks = expectations(first, last, stack.kernel)
        assert {p["title"] for p in panels} == set(checks), "a panel has no expectation"
        problems = []
        for panel in panels:
            results = []
            for target in panel["targets"]:
                expr = (
                    target["expr"]
                    .replace("$tenant", TENANTS)
                    .replace("$__rate_interval", RATE_INTERVAL)
                )
                results.append(query(stack.prometheus, expr, at=last))
            try:
                checks[panel["title"]](results)
            except (AssertionError, KeyError, IndexError, ValueError) as exc:
                problems.append(f"{panel['title']}: {exc!r}\n    results: {results}")
        assert not problems, "\n".join(problems)

        # The tenant variable's own query lists the tenants with traffic.
        status, body = http_get(
            f"{stack.prometheus}/api/v1/label/tenant/values?"
            + urllib.parse.urlencode({"match[]": "sniffer_connections_active"})
        )
        assert status == 200
        assert {"tenant-a", "tenant-b"} <= set(json.loads(body)["data"])

        _render_preview(stack, first, last)
    finally:
        for tls in held:
            tls.close()


def _render_preview(stack: Stack, first: float, last: float) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        missing("matplotlib not installed: cannot draw the dashboard preview")
    spec = importlib.util.spec_from_file_location(
        "render_preview", MANIFESTS / "grafana" / "render_preview.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        target = os.environ.get("SNIFFER_DASHBOARD_PNG")
        out = (REPO / target) if target else stack.tmp / "dashboard.png"
        drawn = module.render(
            stack.prometheus,
            first - 3,
            last + 1,
            out,
            tenant=TENANTS,
            rate_interval="5s",
            step=0.5,
            note="routes from a file: the Kubernetes-only panels "
            "(watches, objects, update lag) have no data",
        )
    finally:
        del sys.modules[spec.name]
    assert drawn >= 20, f"only {drawn} series drawn"
    assert out.stat().st_size > 20_000
