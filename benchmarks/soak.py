"""An hour's soak: one `sniffer serve --workers 2` under mixed traffic, watched for growth.

The harness starts sniffer (routes file, or `--kubernetes` against the real kube-apiserver
in ../shared/kube-apiserver/), its own TLS and HTTP backends on loopback, and drives for
`--duration` seconds, every rate bounded:

- new TLS connections (handshake with the tenant's backend through sniffer, a banner
  naming the backend, random bytes echoed back) and new HTTP requests (`Connection: close`);
- keep-alive: long TLS echo sessions and HTTP/1.1 keep-alive sessions, one exchange every
  half second, reopened every minute;
- bulk: 8 MiB down and 8 MiB up by turns, SHA-256 checked both ways;
- slowloris: TLS hellos and HTTP heads dribbled a byte a second until sniffer's hello
  timeout closes them (HTTP: 408);
- refused names: unknown SNI (alert unrecognized_name) and unknown Host (421);
- tenants at their limits: a tenant capped at 2 connections offered 6 at once, and one
  at 1 connection/s (burst 2) offered 6 in a row; the surplus must be refused, the rest
  must work;
- route changes: the routes file rewritten by rename every 3 s (a route added, the oldest
  churned one removed), or with `--kubernetes` tenants churning (namespaces with a
  Service, an EndpointSlice and an Ingress or TLSRoute created, later deleted); every
  added name must start routing to its backend and every removed one must be refused
  within 20 s;
- a worker SIGKILLed every `--kill-every` seconds (default: a sixth of the duration, ten
  minutes an hour); connections it held may die: one that fails (reset, early EOF,
  timeout) while a kill fell within its lifetime is counted `lost_to_kill`, not wrong.

Every 10 s it samples, per process (control and each worker, by pid): RSS and open fds
(/proc), asyncio tasks, Python allocated blocks, gc generation counts and frozen
objects, open connections and the route-table version (sniffer's /metrics), and the
control process's table version (/readyz).

Verdict: FAIL when any connection was corrupted (bytes or backend not the ones sent /
expected), wrongly refused or failed without a kill to blame, a limit let more through
than it allows, a route change was not seen in time, a killed worker did not come back,
or a metric grows over the last `--window` seconds (default two thirds of the run: the
last 40 minutes of an hour) "beyond noise": the 95 % confidence interval of its slope
excludes 0 AND the growth over the window exceeds both 5 % of its mean and an absolute
floor per metric (see FLOORS). The slope is one OLS slope common to every lifetime of
the process (a restarted worker is a new segment with its own intercept; the `--warmup`
seconds after each kill are left out for every process: the new worker fills up and the
survivor holds the reconnected sessions for a while), its standard error widened for the
lag-1 autocorrelation of the residuals (n_eff = n (1 - r) / (1 + r)), so that slow
oscillations are not mistaken for independent evidence.

    .venv/bin/python -m benchmarks.soak --duration 3600
    .venv/bin/python -m benchmarks.soak --duration 3600 --kubernetes

Results: benchmarks/results/soak-<date>/<variant>.json and <variant>.md. Exit 0 on PASS,
1 on FAIL. Loopback only; every wait is bounded; every process started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.clients import client_context, client_hello
from benchmarks.env import free_port, make_cert, raise_nofile

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO.parent / "shared" / "kube-apiserver"
CRDS = REPO.parent / "shared" / "crds" / "gateway-api"

DOMAIN = "soak.test"
GW = "gateway.networking.k8s.io"
STABLE = ["t0", "t1", "t2", "t3"]
"""Tenants present the whole run; all traffic but the churn checks goes to them."""
LIM_MAX = 2
RATE_PER_S, RATE_BURST = 1.0, 2
HELLO_TIMEOUT = 5.0
BULK = 8 << 20

REL_GROWTH = 0.05
FLOORS = {
    "rss_mib": 2.0,
    "fds": 3,
    "tasks": 3,
    "allocated_blocks": 20_000,
    "open_connections": 5,
    "gc_gen0": 700,  # gc.get_count() is bounded by the thresholds: one whole threshold
    "gc_gen1": 10,
    "gc_gen2": 10,
    "gc_frozen": 2_000,
    "version_lag": 2,
}
"""Smallest growth over the window that fails (besides REL_GROWTH of the mean)."""


# -- outcomes -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What happened to every connection the harness made, by traffic kind."""

    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    wrong: list[dict[str, Any]] = field(default_factory=list)
    wrong_count: Counter[str] = field(default_factory=Counter)
    kills: list[float] = field(default_factory=list)
    limit_breaches: int = 0
    route_checks: Counter[str] = field(default_factory=Counter)
    route_lag: list[float] = field(default_factory=list)

    def record(
        self, kind: str, outcome: str, began: float, ended: float, expected: frozenset[str]
    ) -> str:
        """Classify one connection: expected, lost to a kill, or wrong (kept)."""
        group = outcome.split(":", 1)[0]
        if outcome in expected or group in expected:
            verdict = outcome if outcome == "ok" else f"expected:{outcome}"
        elif group in ("corrupt", "misrouted"):
            verdict = "corrupted"
        elif group in ("reset", "closed", "timeout", "error") and self.killed_during(began, ended):
            verdict = "lost_to_kill"
        elif group == "refused":
            verdict = "wrongly_refused"
        else:
            verdict = "failed"
        self.outcomes.setdefault(kind, Counter())[verdict] += 1
        if verdict in ("corrupted", "wrongly_refused", "failed"):
            self.wrong_count[verdict] += 1
            if len(self.wrong) < 200:
                self.wrong.append(
                    {"kind": kind, "verdict": verdict, "outcome": outcome, "at": round(began, 1)}
                )
        return verdict

    def killed_during(self, began: float, ended: float) -> bool:
        return any(began - 1.0 <= k <= ended + 1.0 for k in self.kills)


ANY_END = frozenset({"ok"})


def _ssl_outcome(exc: ssl.SSLError) -> str:
    text = f"{exc.reason or ''} {exc}".upper()
    for alert, name in (
        ("UNRECOGNIZED_NAME", "unrecognized_name"),
        ("INTERNAL_ERROR", "internal_error"),
        ("HANDSHAKE_FAILURE", "handshake_failure"),
        ("DECODE_ERROR", "decode_error"),
    ):
        if alert in text:
            return f"refused:{name}"
    if "EOF" in text:
        return "closed:ssl_eof"
    return f"error:ssl:{exc.reason or exc}"


def _exc_outcome(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return _ssl_outcome(exc)
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return "closed:eof"
    if isinstance(exc, ConnectionRefusedError):
        return "error:connect_refused"
    return f"error:{type(exc).__name__}"


async def _close(w: asyncio.StreamWriter | None) -> None:
    if w is None:
        return
    w.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await w.wait_closed()


# -- backends -----------------------------------------------------------------------------


def _pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


class Backends:
    """One TLS and one HTTP server per tenant backend, on loopback ports of their own.

    TLS: after the handshake the server writes `<backend>\\n`, then serves one command:
    `ECHO` (echo until EOF), `BULK n seed` (n pseudo-random bytes, then close), `UP n`
    (read n bytes, answer their SHA-256), `HOLD` (wait for EOF). HTTP/1.1 keep-alive:
    every response body is `<backend> <host> <path>`.
    """

    def __init__(self, tmp: Path) -> None:
        crt, key = make_cert(tmp, f"backend.{DOMAIN}")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(crt, key)
        self.tls: dict[str, int] = {}
        self.http: dict[str, int] = {}
        self.servers: list[asyncio.Server] = []

    async def start(self, names: list[str]) -> None:
        for name in names:
            s = await asyncio.start_server(
                lambda r, w, n=name: self._tls(n, r, w), "127.0.0.1", 0, ssl=self.ctx, backlog=512
            )
            self.servers.append(s)
            self.tls[name] = s.sockets[0].getsockname()[1]
            s = await asyncio.start_server(
                lambda r, w, n=name: self._http(n, r, w), "127.0.0.1", 0, backlog=512
            )
            self.servers.append(s)
            self.http[name] = s.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for s in self.servers:
            s.close()

    async def _tls(self, name: str, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(f"{name}\n".encode())
            async with asyncio.timeout(600):
                cmd = (await r.readline()).decode().split()
                if not cmd:
                    return
                if cmd[0] == "ECHO":
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                elif cmd[0] == "BULK":
                    n, seed = int(cmd[1]), int(cmd[2])
                    data = _pattern(seed, n)
                    for i in range(0, n, 65536):
                        w.write(data[i : i + 65536])
                        await w.drain()
                elif cmd[0] == "UP":
                    h = hashlib.sha256()
                    left = int(cmd[1])
                    while left:
                        chunk = await r.read(min(left, 65536))
                        if not chunk:
                            return
                        h.update(chunk)
                        left -= len(chunk)
                    w.write(h.hexdigest().encode() + b"\n")
                    await w.drain()
                elif cmd[0] == "HOLD":
                    await r.read()
        except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def _http(self, name: str, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(120):
                    head = await r.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split()[1]
                fields = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                body = f"{name} {fields.get('host', '')} {path}\n".encode()
                close = fields.get("connection", "").lower() == "close"
                w.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n"
                    % (len(body), b"connection: close\r\n" if close else b"")
                    + body
                )
                await w.drain()
                if close:
                    return
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            w.close()


# -- clients ------------------------------------------------------------------------------


class Clients:
    """Connections through sniffer; each returns an outcome string (see Tally.record)."""

    def __init__(self, tls_port: int, http_port: int) -> None:
        self.tls_port = tls_port
        self.http_port = http_port
        self.ctx = client_context()

    async def open_tls(
        self, host: str, expect: str | None
    ) -> tuple[str, asyncio.StreamReader | None, asyncio.StreamWriter | None]:
        """Handshake through sniffer and read the banner; `expect`: the backend's name."""
        w = None
        try:
            async with asyncio.timeout(20):
                r, w = await asyncio.open_connection(
                    "127.0.0.1", self.tls_port, ssl=self.ctx, server_hostname=host
                )
                banner = (await r.readline()).decode().strip()
        except Exception as exc:
            await _close(w)
            return _exc_outcome(exc), None, None
        if not banner:
            await _close(w)
            return "closed:no_banner", None, None
        if expect is not None and banner != expect:
            await _close(w)
            return f"misrouted:{host}->{banner}", None, None
        return "ok", r, w

    async def tls_echo(self, host: str, expect: str, rounds: int = 1, every: float = 0.0) -> str:
        outcome, r, w = await self.open_tls(host, expect)
        if r is None or w is None:
            return outcome
        try:
            w.write(b"ECHO\n")
            for i in range(rounds):
                if i:
                    await asyncio.sleep(every)
                data = os.urandom(random.randint(64, 4096))
                async with asyncio.timeout(20):
                    w.write(data)
                    got = await r.readexactly(len(data))
                if got != data:
                    return "corrupt:echo"
            return "ok"
        except Exception as exc:
            return _exc_outcome(exc)
        finally:
            await _close(w)

    async def tls_bulk(self, host: str, expect: str, down: bool) -> str:
        outcome, r, w = await self.open_tls(host, expect)
        if r is None or w is None:
            return outcome
        try:
            async with asyncio.timeout(120):
                seed = random.getrandbits(32)
                data = _pattern(seed, BULK)
                if down:
                    w.write(f"BULK {BULK} {seed}\n".encode())
                    h = hashlib.sha256()
                    n = 0
                    while chunk := await r.read(1 << 16):
                        h.update(chunk)
                        n += len(chunk)
                    if n != BULK:
                        return "closed:short_bulk"
                    if h.digest() != hashlib.sha256(data).digest():
                        return "corrupt:bulk_down"
                else:
                    w.write(f"UP {BULK}\n".encode())
                    for i in range(0, BULK, 1 << 16):
                        w.write(data[i : i + (1 << 16)])
                        await w.drain()
                    line = (await r.readline()).decode().strip()
                    if not line:
                        return "closed:no_digest"
                    if line != hashlib.sha256(data).hexdigest():
                        return "corrupt:bulk_up"
            return "ok"
        except Exception as exc:
            return _exc_outcome(exc)
        finally:
            await _close(w)

    async def http_session(
        self, host: str, expect: str, rounds: int = 1, every: float = 0.0
    ) -> str:
        w = None
        try:
            async with asyncio.timeout(20):
                r, w = await asyncio.open_connection("127.0.0.1", self.http_port)
            for i in range(rounds):
                if i:
                    await asyncio.sleep(every)
                path = f"/{os.urandom(6).hex()}"
                last = i == rounds - 1
                async with asyncio.timeout(20):
                    w.write(
                        f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                        f"{'Connection: close' + chr(13) + chr(10) if last else ''}\r\n".encode()
                    )
                    head = await r.readuntil(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v)
                    body = await r.readexactly(length)
                if status != 200:
                    return f"refused:http{status}"
                want = f"{expect} {host} {path}\n".encode()
                if body != want:
                    got = body.split(b" ", 1)[0].decode("latin-1")
                    return f"misrouted:{host}->{got}" if got != expect else "corrupt:http_body"
            return "ok"
        except Exception as exc:
            return _exc_outcome(exc)
        finally:
            await _close(w)

    async def slowloris(self, tls: bool) -> str:
        """Dribble a hello (TLS) or a head (HTTP) a byte a second; sniffer must close it."""
        w = None
        data = client_hello(f"t0.{DOMAIN}") if tls else b"GET / HTTP/1.1\r\nHost: t0." + b"x" * 64
        began = time.monotonic()
        try:
            async with asyncio.timeout(HELLO_TIMEOUT * 4):
                r, w = await asyncio.open_connection(
                    "127.0.0.1", self.tls_port if tls else self.http_port
                )
                for i in range(len(data) - 1):
                    w.write(data[i : i + 1])
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            got = await r.read(4096)
                            if not tls and got.startswith(b"HTTP/1.1 408"):
                                return "refused:http408" if _slow_enough(began) else "closed:early"
                            if not got:
                                return (
                                    "closed:hello_timeout"
                                    if _slow_enough(began)
                                    else "closed:early"
                                )
                return "error:never_closed"
        except Exception as exc:
            out = _exc_outcome(exc)
            if out == "reset" and _slow_enough(began):
                return "closed:hello_timeout"
            return out
        finally:
            await _close(w)

    async def hold(self, host: str, expect: str, seconds: float) -> str:
        outcome, r, w = await self.open_tls(host, expect)
        if r is None or w is None:
            return outcome
        try:
            w.write(b"HOLD\n")
            await w.drain()
            await asyncio.sleep(seconds)
            return "ok"
        except Exception as exc:
            return _exc_outcome(exc)
        finally:
            await _close(w)


def _slow_enough(began: float) -> bool:
    return time.monotonic() - began >= HELLO_TIMEOUT - 1.0


# -- routes: file or Kubernetes -------------------------------------------------------------


class FileRoutes:
    """A routes file rewritten by rename; `churn` adds a name and drops the oldest."""

    def __init__(self, path: Path, tls_port: int, http_port: int, backends: Backends) -> None:
        self.path = path
        self.tls_port, self.http_port = tls_port, http_port
        self.b = backends
        self.churned: deque[tuple[str, str]] = deque()
        self.generation = 0

    def write(self) -> None:
        lines = [
            "listeners:",
            f"  - {{name: tls, address: '127.0.0.1:{self.tls_port}', protocol: tls}}",
            f"  - {{name: web, address: '127.0.0.1:{self.http_port}', protocol: http}}",
            "tenants:",
            f"  - {{name: lim, limits: {{max_connections: {LIM_MAX}}}}}",
            f"  - {{name: rate, limits: {{connections_per_second: {RATE_PER_S},"
            f" burst: {RATE_BURST}}}}}",
            "backends:",
        ]
        for name in self.b.tls:
            lines.append(
                f"  - {{name: {name}, tenant: {name}, endpoints: ['127.0.0.1:{self.b.tls[name]}']}}"
            )
            lines.append(
                f"  - {{name: {name}-http, tenant: {name},"
                f" endpoints: ['127.0.0.1:{self.b.http[name]}']}}"
            )
        lines.append("routes:")
        for name in self.b.tls:
            if name.startswith("c"):
                continue
            lines.append(f"  - {{host: {name}.{DOMAIN}, backend: {name}, listeners: [tls]}}")
            lines.append(f"  - {{host: {name}.{DOMAIN}, backend: {name}-http, listeners: [web]}}")
        for host, name in self.churned:
            lines.append(f"  - {{host: {host}, backend: {name}, listeners: [tls]}}")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.path)  # by rename, as an operator's tool or a ConfigMap would

    async def churn(self) -> tuple[tuple[str, str], tuple[str, str] | None]:
        self.generation += 1
        added = (f"g{self.generation}.churn.{DOMAIN}", f"c{self.generation % 4}")
        self.churned.append(added)
        removed = self.churned.popleft() if len(self.churned) > 5 else None
        self.write()
        return added, removed


def _service(name: str, spec: dict[str, Any], ports: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": {"sniffer.dev/http-port": "http"}},
        "spec": {**spec, "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports]},
    }


def _ingress(name: str, host: str, service: str, port: str) -> dict[str, Any]:
    backend = {"service": {"name": service, "port": {"name": port}}}
    path = {"path": "/", "pathType": "Prefix", "backend": backend}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {
            "ingressClassName": "sniffer",
            "rules": [{"host": host, "http": {"paths": [path]}}],
        },
    }


def _tls_route(name: str, host: str, service: str, port: int) -> dict[str, Any]:
    parent = {"group": GW, "kind": "Gateway", "name": "edge", "namespace": "infra"}
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "TLSRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [parent],
            "hostnames": [host],
            "rules": [{"backendRefs": [{"name": service, "port": port}]}],
        },
    }


class Kube:
    """The real kube-apiserver: started with the brief's ports, sniffer authenticated
    with a ServiceAccount token bound to manifests/base/rbac.yaml, tenants churning."""

    def __init__(self, state: Path, tls_port: int, backends: Backends) -> None:
        self.env = {
            **os.environ,
            "KUBE_TEST_DIR": os.environ.get("KUBE_TEST_DIR", str(state)),
            "KUBE_TEST_PORT": os.environ.get("KUBE_TEST_PORT", "17843"),
            "KUBE_TEST_ETCD_PORT": os.environ.get("KUBE_TEST_ETCD_PORT", "25190"),
            "KUBE_TEST_ETCD_PEER_PORT": os.environ.get("KUBE_TEST_ETCD_PEER_PORT", "25200"),
        }
        self.dir = Path(self.env["KUBE_TEST_DIR"])
        self.server = f"https://127.0.0.1:{self.env['KUBE_TEST_PORT']}"
        self.tls_port = tls_port
        self.b = backends
        self.live: deque[tuple[str, str, str]] = deque()  # (namespace, host, backend)
        self.generation = 0
        self.spare_ip = 0
        self.ctx: ssl.SSLContext | None = None
        self.api_errors: Counter[str] = Counter()

    def up(self) -> None:
        subprocess.run(
            [str(KUBE / "up.sh")], env=self.env, check=True, capture_output=True, timeout=180
        )
        ctx = ssl.create_default_context(cafile=str(self.dir / "pki" / "ca.crt"))
        ctx.load_cert_chain(self.dir / "pki" / "admin.crt", self.dir / "pki" / "admin.key")
        self.ctx = ctx

    def down(self) -> None:
        subprocess.run(
            [str(KUBE / "down.sh"), "--purge"], env=self.env, capture_output=True, timeout=120
        )

    def call(self, method: str, path: str, body: Any = None, ok404: bool = False) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and ok404:
                return None
            if exc.code == 409 and method == "POST":
                return None  # already there (a retried setup step)
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from exc

    def apply_files(self, files: list[Path]) -> None:
        kubectl = Path(sys.executable).parent / "kubectl"
        subprocess.run(
            [str(kubectl), "apply", "--server-side", *(a for f in files for a in ("-f", str(f)))],
            env={**self.env, "KUBECONFIG": str(self.dir / "admin.kubeconfig")},
            check=True,
            capture_output=True,
            timeout=120,
        )

    def setup(self, kubeconfig: Path) -> None:
        base = REPO / "manifests" / "base"
        self.apply_files(sorted((CRDS / "standard").glob("*.yaml")))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the CRDs' REST endpoints appear shortly after
            with contextlib.suppress(RuntimeError):
                self.call("GET", "/apis/gateway.networking.k8s.io/v1/tlsroutes")
                self.call("GET", "/apis/gateway.networking.k8s.io/v1/gatewayclasses")
                break
            time.sleep(0.5)
        self.apply_files(
            [base / f for f in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml")]
            + [base / "gatewayclass.yaml", base / "ingressclass.yaml"]
        )
        token = self.call(
            "POST",
            "/api/v1/namespaces/sniffer-system/serviceaccounts/sniffer/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 4 * 3600},
            },
        )["status"]["token"]
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "soak",
                            "cluster": {
                                "server": self.server,
                                "certificate-authority": str(self.dir / "pki" / "ca.crt"),
                            },
                        }
                    ],
                    "users": [{"name": "sniffer", "user": {"token": token}}],
                    "contexts": [
                        {"name": "soak", "context": {"cluster": "soak", "user": "sniffer"}}
                    ],
                    "current-context": "soak",
                }
            )
        )
        self.namespace("infra")
        self.call(
            "POST",
            "/apis/gateway.networking.k8s.io/v1/namespaces/infra/gateways",
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "edge", "namespace": "infra"},
                "spec": {
                    "gatewayClassName": "sniffer",
                    "listeners": [
                        {
                            "name": "tls",
                            "port": self.tls_port,
                            "protocol": "TLS",
                            "tls": {"mode": "Passthrough"},
                            "allowedRoutes": {"namespaces": {"from": "All"}},
                        }
                    ],
                },
            },
        )
        for i, name in enumerate([*STABLE, "lim", "rate"]):
            ann = {}
            if name == "lim":
                ann = {"sniffer.dev/max-connections": str(LIM_MAX)}
            elif name == "rate":
                ann = {
                    "sniffer.dev/connections-per-second": str(RATE_PER_S),
                    "sniffer.dev/connections-burst": str(RATE_BURST),
                }
            self.tenant(name, f"{name}.{DOMAIN}", name, ingress=i % 2 == 0, annotations=ann)

    def namespace(self, ns: str, annotations: dict[str, str] | None = None) -> None:
        self.call(
            "POST",
            "/api/v1/namespaces",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "annotations": annotations or {}},
            },
        )

    def tenant(
        self,
        ns: str,
        host: str,
        backend: str,
        ingress: bool,
        annotations: dict[str, str] | None = None,
    ) -> None:
        """A namespace whose Ingress (TLS and HTTP) or TLSRoute (TLS) sends `host` to
        the Service `router`, and `dark.<host>` to the Service `spare` and its
        EndpointSlice (never dialled: 192.0.2.0/24 is TEST-NET).

        `router` is an ExternalName Service for `localhost`: the API server refuses
        loopback addresses in EndpointSlices, and the harness's backends must stay on
        loopback. Its ports are the backend's own (TLS `https`, HTTP `http`)."""
        self.namespace(ns, annotations)
        tls, http = self.b.tls[backend], self.b.http[backend]
        v1 = f"/api/v1/namespaces/{ns}"
        self.call(
            "POST",
            f"{v1}/services",
            _service(
                "router",
                {"type": "ExternalName", "externalName": "localhost"},
                [("https", tls), ("http", http)],
            ),
        )
        self.call("POST", f"{v1}/services", _service("spare", {}, [("https", 443)]))
        self.spare_ip = self.spare_ip % 250 + 1
        self.call(
            "POST",
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "spare-1",
                    "labels": {"kubernetes.io/service-name": "spare"},
                },
                "addressType": "IPv4",
                "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": [f"192.0.2.{self.spare_ip}"], "conditions": {"ready": True}}
                ],
            },
        )
        for name, h, svc, port in (
            ("edge", host, "router", tls),
            ("dark", f"dark.{host}", "spare", 443),
        ):
            if ingress:
                self.call(
                    "POST",
                    f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
                    _ingress(name, h, svc, "https"),
                )
            else:
                self.call(
                    "POST",
                    f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/tlsroutes",
                    _tls_route(name, h, svc, port),
                )

    def remove(self, ns: str) -> None:
        """Delete the tenant's objects one by one, then the namespace, and finalize it:
        there is no namespace controller here to do it (nor any garbage collector)."""
        for name in ("edge", "dark"):
            self.call(
                "DELETE", f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/{name}", ok404=True
            )
            self.call(
                "DELETE",
                f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/tlsroutes/{name}",
                ok404=True,
            )
        self.call(
            "DELETE",
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/spare-1",
            ok404=True,
        )
        for svc in ("router", "spare"):
            self.call("DELETE", f"/api/v1/namespaces/{ns}/services/{svc}", ok404=True)
        self.call("DELETE", f"/api/v1/namespaces/{ns}", ok404=True)
        obj = self.call("GET", f"/api/v1/namespaces/{ns}", ok404=True)
        if obj is not None:
            obj["spec"] = {"finalizers": []}
            self.call("PUT", f"/api/v1/namespaces/{ns}/finalize", obj, ok404=True)

    async def churn(self) -> tuple[tuple[str, str], tuple[str, str] | None]:
        self.generation += 1
        g = self.generation
        ns, host, backend = f"churn-{g}", f"g{g}.churn.{DOMAIN}", f"c{g % 4}"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: self.tenant(ns, host, backend, g % 2 == 0))
        self.live.append((ns, host, backend))
        removed = None
        if len(self.live) > 5:
            old_ns, old_host, old_backend = self.live.popleft()
            await loop.run_in_executor(None, self.remove, old_ns)
            removed = (old_host, old_backend)
        return (host, backend), removed


# -- sniffer and sampling -----------------------------------------------------------------


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


_SERIES = re.compile(r"^(sniffer_[a-z_]+)\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = _SERIES.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2))), float(m.group(3))))
        elif line.startswith("sniffer_") and " " in line:
            name, _, v = line.partition(" ")
            with contextlib.suppress(ValueError):
                out.append((name, {}, float(v)))
    return out


def proc_rss_fds(pid: int) -> tuple[float, int] | None:
    try:
        rss = 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def sample(admin: int, control_pid: int, t: float) -> dict[str, Any]:
    """One row: per process (control, w0, w1...) its pid and figures."""
    code, body = _get(f"http://127.0.0.1:{admin}/readyz")
    ready = json.loads(body)
    pids = {"control": control_pid}
    for w in ready.get("workers", []):
        if w.get("pid"):
            pids[f"w{w['index']}"] = w["pid"]
    procs: dict[str, dict[str, Any]] = {k: {"pid": p} for k, p in pids.items()}
    control_version = ready.get("table_version")
    counters: dict[str, float] = {}
    _, text = _get(f"http://127.0.0.1:{admin}/metrics")
    for name, labels, v in parse_metrics(text.decode()):
        worker = labels.get("worker")
        key = "control" if worker == "control" else f"w{worker}"
        p = procs.get(key)
        if name in ("sniffer_refused_connections_total", "sniffer_limited_connections_total"):
            tag = labels.get("reason") or labels.get("limit", "")
            counters[f"{name}:{tag}"] = counters.get(f"{name}:{tag}", 0) + v
        elif name in ("sniffer_status_writes_total", "sniffer_watch_relists_total"):
            tag = labels.get("result") or labels.get("reason", "")
            counters[f"{name}:{tag}"] = counters.get(f"{name}:{tag}", 0) + v
        elif name in (
            "sniffer_accepted_connections_total",
            "sniffer_worker_restarts_total",
            "sniffer_watch_errors_total",
            "sniffer_route_table_rebuilds_total",
            "sniffer_leader",
        ):
            counters[name] = counters.get(name, 0) + v
        if p is None or worker is None:
            continue
        if name == "sniffer_process_asyncio_tasks":
            p["tasks"] = v
        elif name == "sniffer_process_allocated_blocks":
            p["allocated_blocks"] = v
        elif name == "sniffer_process_gc_objects":
            gen = labels["generation"]
            p["gc_frozen" if gen == "permanent" else f"gc_gen{gen}"] = v
        elif name == "sniffer_open_connections":
            p["open_connections"] = v
        elif name == "sniffer_route_table_version":
            p["table_version"] = v
    for key, p in procs.items():
        got = proc_rss_fds(p["pid"])
        if got is not None:
            p["rss_mib"], p["fds"] = got
        if key != "control" and "table_version" in p and control_version is not None:
            p["version_lag"] = control_version - p["table_version"]
    return {
        "t": round(t, 2),
        "ready": code == 200,
        "table_version": control_version,
        "procs": procs,
        "counters": counters,
    }


# -- trends -------------------------------------------------------------------------------


def trend(segments: list[list[tuple[float, float]]], floor: float) -> dict[str, Any]:
    """One slope (per hour) common to every segment, each with its own intercept.

    Standard error from the residuals, widened for their lag-1 autocorrelation; growth
    is "beyond noise" when the 95 % CI excludes 0 and the growth over the window passes
    both REL_GROWTH of the mean and `floor`.
    """
    segs = [s for s in segments if len(s) >= 6]
    n = sum(len(s) for s in segs)
    if n < 8:
        return {"n": n, "verdict": "too_few_samples"}
    sxx = sxy = 0.0
    means = []
    for s in segs:
        mx = sum(x for x, _ in s) / len(s)
        my = sum(y for _, y in s) / len(s)
        means.append((mx, my))
        sxx += sum((x - mx) ** 2 for x, _ in s)
        sxy += sum((x - mx) * (y - my) for x, y in s)
    if sxx == 0:
        return {"n": n, "verdict": "too_few_samples"}
    slope = sxy / sxx
    resid: list[list[float]] = []
    for s, (mx, my) in zip(segs, means, strict=True):
        resid.append([y - (my + slope * (x - mx)) for x, y in s])
    ssr = sum(e * e for r in resid for e in r)
    dof = max(1, n - len(segs) - 1)
    var = ssr / dof
    num = sum(r[i] * r[i - 1] for r in resid for i in range(1, len(r)))
    r1 = num / ssr if ssr > 0 else 0.0
    r1 = min(max(r1, 0.0), 0.95)  # negative autocorrelation: keep the plain error
    se = math.sqrt(var / sxx) * math.sqrt((1 + r1) / (1 - r1))
    span = max(x for s in segs for x, _ in s) - min(x for s in segs for x, _ in s)
    mean = sum(y for s in segs for _, y in s) / n
    growth = slope * span
    lo, hi = slope - 1.96 * se, slope + 1.96 * se
    beyond = lo > 0 and growth > REL_GROWTH * abs(mean) and growth > floor
    return {
        "n": n,
        "segments": len(segs),
        "mean": round(mean, 3),
        "slope_per_hour": round(slope, 4),
        "ci95_per_hour": [round(lo, 4), round(hi, 4)],
        "lag1_autocorrelation": round(r1, 3),
        "growth_over_window": round(growth, 3),
        "relative_growth": round(growth / mean, 4) if mean else None,
        "verdict": "GROWS" if beyond else "flat",
    }


def analyse(
    samples: list[dict[str, Any]],
    kills: list[float],
    end: float,
    window: float,
    warmup: float,
) -> dict[str, dict[str, Any]]:
    """Trend of every metric of every process over [end - window, end], by pid.

    The `warmup` seconds after each kill are left out for every process: the restarted
    worker fills up, and the surviving one holds the sessions that reconnected until
    they spread again (a step, not a trend). So are a restarted worker's first
    `warmup` seconds when no kill of ours explains the restart."""
    first_seen: dict[int, float] = {}
    for row in samples:
        for p in row["procs"].values():
            first_seen.setdefault(p["pid"], row["t"])
    out: dict[str, dict[str, Any]] = {}
    lo = end - window
    for key in sorted({k for row in samples for k in row["procs"]}):
        out[key] = {}
        for metric, floor in FLOORS.items():
            segs: dict[int, list[tuple[float, float]]] = {}
            for row in samples:
                p = row["procs"].get(key)
                if p is None or metric not in p or row["t"] < lo:
                    continue
                if any(k <= row["t"] < k + warmup for k in kills):
                    continue
                born = first_seen[p["pid"]]
                if p["pid"] != samples[0]["procs"].get(key, {}).get("pid") and (
                    row["t"] - born < warmup
                ):
                    continue  # a restarted worker warming up
                segs.setdefault(p["pid"], []).append((row["t"] / 3600, float(p[metric])))
            if segs:
                out[key][metric] = trend(list(segs.values()), floor)
    return out


# -- the run ------------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.tally = Tally()
        self.t0 = time.monotonic()
        self.stop_at = self.t0 + args.duration
        self.samples: list[dict[str, Any]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.restarts_missed = 0
        self.final: dict[str, Any] | None = None
        self.inflight = asyncio.Semaphore(args.concurrency)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    async def conn(self, kind: str, expected: frozenset[str], coro: Awaitable[str]) -> str:
        async with self.inflight:
            began = self.now()
            outcome = await coro
            return self.tally.record(kind, outcome, began, self.now(), expected)

    def every(self, period: float, fn: Callable[[], Awaitable[Any]], jitter: bool = True) -> None:
        """Start `fn` every `period` s (each start its own task), until the end."""

        async def loop() -> None:
            pending: set[asyncio.Task[Any]] = set()
            await asyncio.sleep(random.random() * period if jitter else period)
            while self.running():
                t = asyncio.ensure_future(fn())
                pending.add(t)
                t.add_done_callback(pending.discard)
                await asyncio.sleep(period)
            if pending:
                await asyncio.wait(pending, timeout=180)

        self.tasks.append(asyncio.ensure_future(loop()))

    def forever(self, fn: Callable[[], Awaitable[Any]]) -> None:
        """Run `fn` back to back until the end (a long session per call)."""

        async def loop() -> None:
            while self.running():
                await fn()

        self.tasks.append(asyncio.ensure_future(loop()))

    # traffic ------------------------------------------------------------------------------

    def traffic(self, c: Clients, http_ok: list[str]) -> None:
        ok = ANY_END
        s = STABLE

        def pick(names: list[str]) -> str:
            return random.choice(names)

        async def new_tls() -> None:
            t = pick(s)
            await self.conn("new_tls", ok, c.tls_echo(f"{t}.{DOMAIN}", t))

        async def new_http() -> None:
            t = pick(http_ok)
            await self.conn("new_http", ok, c.http_session(f"{t}.{DOMAIN}", f"{t}"))

        async def ka_tls() -> None:
            t = pick(s)
            await self.conn("keepalive_tls", ok, c.tls_echo(f"{t}.{DOMAIN}", t, 120, 0.5))

        async def ka_http() -> None:
            t = pick(http_ok)
            await self.conn("keepalive_http", ok, c.http_session(f"{t}.{DOMAIN}", t, 120, 0.5))

        flip = [False]

        async def bulk() -> None:
            flip[0] = not flip[0]
            t = pick(s)
            await self.conn("bulk", ok, c.tls_bulk(f"{t}.{DOMAIN}", t, down=flip[0]))

        slow = frozenset({"closed:hello_timeout"})

        async def slow_tls() -> None:
            await self.conn("slowloris_tls", slow, c.slowloris(tls=True))

        async def slow_http() -> None:
            await self.conn("slowloris_http", frozenset({"refused:http408"}), c.slowloris(False))

        async def unknown_tls() -> None:
            host = f"x{random.getrandbits(32):x}.nowhere.{DOMAIN}"
            await self.conn(
                "unknown_name_tls", frozenset({"refused:unrecognized_name"}), c.tls_echo(host, "")
            )

        async def unknown_http() -> None:
            host = f"x{random.getrandbits(32):x}.nowhere.{DOMAIN}"
            await self.conn(
                "unknown_name_http", frozenset({"refused:http421"}), c.http_session(host, "")
            )

        limited = frozenset({"ok", "refused:internal_error"})

        async def lim_round() -> None:
            outs = await asyncio.gather(
                *(
                    self.conn("tenant_max_connections", limited, c.hold(f"lim.{DOMAIN}", "lim", 3))
                    for _ in range(3 * LIM_MAX)
                )
            )
            if sum(o == "ok" for o in outs) > LIM_MAX:
                self.tally.limit_breaches += 1

        async def rate_round() -> None:
            began = time.monotonic()
            n_ok = 0
            for _ in range(6):
                out = await self.conn("tenant_rate", limited, c.tls_echo(f"rate.{DOMAIN}", "rate"))
                n_ok += out == "ok"
            allowed = RATE_BURST + RATE_PER_S * (time.monotonic() - began) + 1
            if n_ok > allowed:
                self.tally.limit_breaches += 1

        r = self.args.rate
        self.every(1 / (10 * r), new_tls)
        self.every(1 / (10 * r), new_http)
        for _ in range(4):
            self.forever(ka_tls)
            self.forever(ka_http)
        self.every(15 / r, bulk)
        self.every(2.0, slow_tls)
        self.every(2.0, slow_http)
        self.every(1 / (2 * r), unknown_tls)
        self.every(1 / (2 * r), unknown_http)
        self.every(10.0, lim_round)
        self.every(10.0, rate_round)

    # route changes --------------------------------------------------------------------------

    async def watch_route(self, c: Clients, host: str, backend: str, present: bool) -> None:
        began = time.monotonic()
        deadline = began + 20
        while time.monotonic() < deadline:
            out, _, w = await c.open_tls(host, backend)
            await _close(w)
            if (present and out == "ok") or (not present and out == "refused:unrecognized_name"):
                self.tally.route_checks["seen_added" if present else "seen_removed"] += 1
                self.tally.route_lag.append(time.monotonic() - began)
                return
            if out.startswith("misrouted") and present:
                self.tally.record("route_change", out, self.now(), self.now(), frozenset())
                return
            await asyncio.sleep(0.25)
        self.tally.route_checks["missed_added" if present else "missed_removed"] += 1

    def route_churn(self, c: Clients, churn: Callable[[], Awaitable[Any]], period: float) -> None:
        async def step() -> None:
            try:
                added, removed = await churn()
            except Exception as exc:
                self.tally.route_checks[f"churn_error:{type(exc).__name__}"] += 1
                print(f"churn error: {exc}", file=sys.stderr)
                return
            checks = [self.watch_route(c, *added, present=True)]
            if removed is not None:
                checks.append(self.watch_route(c, *removed, present=False))
            await asyncio.gather(*checks)

        self.every(period, step, jitter=False)

    # kills and samples ---------------------------------------------------------------------

    def kills(self, admin: int) -> None:
        index = [0]

        async def kill() -> None:
            loop = asyncio.get_running_loop()
            _, body = await loop.run_in_executor(None, _get, f"http://127.0.0.1:{admin}/readyz")
            workers = {w["index"]: w["pid"] for w in json.loads(body).get("workers", [])}
            pid = workers.get(index[0] % len(workers)) if workers else None
            which = index[0] % max(1, len(workers))
            index[0] += 1
            if not pid:
                self.restarts_missed += 1
                return
            self.tally.kills.append(self.now())
            os.kill(pid, signal.SIGKILL)  # a worker of the sniffer this harness started
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                _, body = await loop.run_in_executor(None, _get, f"http://127.0.0.1:{admin}/readyz")
                ws = {w["index"]: w["pid"] for w in json.loads(body).get("workers", [])}
                if ws.get(which) not in (None, pid):
                    return
            self.restarts_missed += 1

        self.every(self.args.kill_every, kill, jitter=False)

    def sampler(self, admin: int, control_pid: int) -> None:
        async def take() -> None:
            loop = asyncio.get_running_loop()
            try:
                row = await loop.run_in_executor(None, sample, admin, control_pid, self.now())
            except Exception as exc:
                print(f"sample failed: {exc!r}", file=sys.stderr)
                return
            self.samples.append(row)
            if self.args.verbose:
                brief = {
                    k: (p.get("rss_mib"), p.get("fds"), p.get("tasks"))
                    for k, p in row["procs"].items()
                }
                print(f"{row['t']:7.0f}s v{row['table_version']} {brief}", file=sys.stderr)

        self.every(self.args.sample_every, take, jitter=False)


def start_sniffer(
    args: argparse.Namespace, tmp: Path, admin: int, source: list[str]
) -> subprocess.Popen[bytes]:
    log = (tmp / "sniffer.log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sniffer",
            "serve",
            *source,
            "--workers",
            str(args.workers),
            "--admin",
            f"127.0.0.1:{admin}",
            "--hello-timeout",
            str(HELLO_TIMEOUT),
            "--drain-grace",
            "5",
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def wait_ready(admin: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sniffer exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            code, _ = await loop.run_in_executor(None, _get, f"http://127.0.0.1:{admin}/readyz", 2)
            if code == 200:
                return
        await asyncio.sleep(0.3)
    raise TimeoutError("sniffer did not become ready")


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    raise_nofile()
    backends = Backends(tmp)
    names = [*STABLE, "lim", "rate", "c0", "c1", "c2", "c3"]
    await backends.start(names)
    tls_port, http_port, admin = free_port(), free_port(), free_port()
    kube: Kube | None = None
    routes: FileRoutes | None = None
    if args.kubernetes:
        kube = Kube(Path(args.kube_dir), tls_port, backends)
        kube.down()  # a state dir left by an interrupted run
        await asyncio.get_running_loop().run_in_executor(None, kube.up)
        kubeconfig = tmp / "sniffer.kubeconfig"
        await asyncio.get_running_loop().run_in_executor(None, kube.setup, kubeconfig)
        source = [
            "--kubernetes",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            f"tls:127.0.0.1:{tls_port}",
            "--listen",
            f"http:127.0.0.1:{http_port}",
            "--lease-namespace",
            "sniffer-system",
            "--identity",
            "soak",
        ]
    else:
        routes = FileRoutes(tmp / "routes.yaml", tls_port, http_port, backends)
        routes.write()
        source = ["--routes", str(routes.path)]
    proc = start_sniffer(args, tmp, admin, source)
    soak = Soak(args, tmp)
    end, alive = 0.0, False
    try:
        await wait_ready(admin, proc)
        soak.t0 = time.monotonic()
        soak.stop_at = soak.t0 + args.duration
        clients = Clients(tls_port, http_port)
        http_ok = [t for i, t in enumerate(STABLE) if not args.kubernetes or i % 2 == 0]
        soak.samples.append(  # t = 0: the baseline of sniffer's counters
            await asyncio.get_running_loop().run_in_executor(None, sample, admin, proc.pid, 0.0)
        )
        soak.sampler(admin, proc.pid)
        soak.traffic(clients, http_ok)
        if kube is not None:
            soak.route_churn(clients, kube.churn, args.churn_every)
        else:
            assert routes is not None
            soak.route_churn(clients, routes.churn, args.churn_every)
        soak.kills(admin)
        await asyncio.wait(soak.tasks, timeout=args.duration + 300)
        for t in soak.tasks:
            t.cancel()
        alive = proc.poll() is None
        end = min(soak.now(), args.duration)
        if alive:  # every connection done: sniffer's counters to hold against the harness's
            soak.final = await asyncio.get_running_loop().run_in_executor(
                None, sample, admin, proc.pid, soak.now()
            )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await backends.close()
        if kube is not None:
            kube.down()
    return verdict(args, soak, end, alive, proc.returncode)


def verdict(
    args: argparse.Namespace, soak: Soak, end: float, alive: bool, rc: int | None
) -> dict[str, Any]:
    t = soak.tally
    window = args.window or args.duration * 2 / 3
    warmup = args.warmup if args.warmup is not None else 120.0
    trends = analyse(soak.samples, t.kills, end, window, warmup)
    growing = [
        f"{proc}.{metric}"
        for proc, metrics in trends.items()
        for metric, tr in metrics.items()
        if tr.get("verdict") == "GROWS"
    ]
    first, last = soak.samples[0], soak.final or soak.samples[-1]
    sniffer_counts = {
        k: v - first["counters"].get(k, 0) for k, v in sorted(last["counters"].items())
    }
    failures = []
    if not alive:
        failures.append("sniffer exited during the run")
    if rc not in (0, None):
        failures.append(f"sniffer exit code {rc} after SIGTERM")
    for what, n in t.wrong_count.items():
        failures.append(f"{n} connections {what}")
    if t.limit_breaches:
        failures.append(f"{t.limit_breaches} limit rounds let more through than allowed")
    missed = sum(n for k, n in t.route_checks.items() if not k.startswith("seen"))
    if missed:
        failures.append(f"{missed} route changes not seen within 20 s (or churn errors)")
    if soak.restarts_missed:
        failures.append(f"{soak.restarts_missed} killed workers not restarted within 30 s")
    if args.kubernetes and last["counters"].get("sniffer_leader") != 1:
        failures.append("sniffer did not hold the status Lease at the end")
    if sniffer_counts.get("sniffer_status_writes_total:error"):
        failures.append(
            f"{sniffer_counts['sniffer_status_writes_total:error']:.0f} status writes failed"
        )
    if growing:
        failures.append("growth beyond noise: " + ", ".join(growing))
    lag = sorted(t.route_lag)
    return {
        "variant": "kubernetes" if args.kubernetes else "file",
        "verdict": "FAIL" if failures else "PASS",
        "failures": failures,
        "config": {
            "duration_s": args.duration,
            "workers": args.workers,
            "window_s": window,
            "warmup_s": warmup,
            "sample_every_s": args.sample_every,
            "kill_every_s": args.kill_every,
            "churn_every_s": args.churn_every,
            "rate_scale": args.rate,
            "rel_growth": REL_GROWTH,
            "floors": FLOORS,
        },
        "ran_s": round(end, 1),
        "kills_at_s": [round(k, 1) for k in t.kills],
        "connections": {k: dict(v) for k, v in sorted(t.outcomes.items())},
        "totals": dict(sum((v for v in t.outcomes.values()), Counter())),
        "wrong_examples": t.wrong[:50],
        "limit_breaches": t.limit_breaches,
        "route_checks": dict(t.route_checks),
        "route_change_seen_s": {
            "p50": round(lag[len(lag) // 2], 2) if lag else None,
            "max": round(lag[-1], 2) if lag else None,
        },
        "sniffer_counters": sniffer_counts,
        "trends": trends,
        "samples": soak.samples,
    }


def markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    out = [
        f"# Soak, {res['variant']} source: {res['verdict']}",
        "",
        f"`{res['command']}` at {res['commit']} on {res['date']}: {res['ran_s']:.0f} s, "
        f"{cfg['workers']} workers, a sample every {cfg['sample_every_s']:.0f} s, worker "
        f"SIGKILLs at {', '.join(f'{k:.0f}' for k in res['kills_at_s'])} s, route changes "
        f"every {cfg['churn_every_s']:.0f} s. Trends over the last {cfg['window_s']:.0f} s "
        f"(the first {cfg['warmup_s']:.0f} s after each kill left out). Machine load at the "
        f"end: {res['loadavg']}.",
        "",
    ]
    if res["failures"]:
        out += ["Failures:", "", *(f"- {f}" for f in res["failures"]), ""]
    out += ["## Connections", "", "| kind | outcomes |", "|---|---|"]
    for kind, c in res["connections"].items():
        out.append(f"| {kind} | {', '.join(f'{k} {v:,}' for k, v in sorted(c.items()))} |")
    tot = res["totals"]
    out += [
        "",
        f"Total {sum(tot.values()):,}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(tot.items())),
        f"Limit rounds that let too many through: {res['limit_breaches']}. Route changes: "
        + ", ".join(f"{k} {v}" for k, v in sorted(res["route_checks"].items()))
        + f" (seen after p50 {res['route_change_seen_s']['p50']} s, max "
        f"{res['route_change_seen_s']['max']} s).",
        "",
        "## Trends (slope per hour, 95 % CI; GROWS = CI above 0 and growth over the window "
        f"> {cfg['rel_growth']:.0%} of the mean and > the floor)",
        "",
        "| process | metric | mean | slope/h | CI95/h | growth over window | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for proc, metrics in res["trends"].items():
        for metric, tr in metrics.items():
            if "slope_per_hour" not in tr:
                out.append(f"| {proc} | {metric} | | | | | {tr['verdict']} (n={tr['n']}) |")
                continue
            lo, hi = tr["ci95_per_hour"]
            rel = tr["relative_growth"]
            out.append(
                f"| {proc} | {metric} | {tr['mean']:,.1f} | {tr['slope_per_hour']:+,.2f} | "
                f"[{lo:+,.2f}, {hi:+,.2f}] | {tr['growth_over_window']:+,.2f}"
                f"{f' ({rel:+.1%})' if rel is not None else ''} | {tr['verdict']} |"
            )
    sc = res["sniffer_counters"]
    out += [
        "",
        "## sniffer's own counters (from before the traffic to after its last connection)",
        "",
    ]
    out += [f"- `{k}`: {v:,.0f}" for k, v in sc.items() if v]
    return "\n".join(out) + "\n"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3600)
    ap.add_argument("--kubernetes", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill-every", type=float, default=None, help="default: duration / 6")
    ap.add_argument("--churn-every", type=float, default=3.0)
    ap.add_argument("--sample-every", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=None, help="default: 2/3 of the duration")
    ap.add_argument(
        "--warmup", type=float, default=None, help="s left out after a kill; default: 120"
    )
    ap.add_argument("--rate", type=float, default=1.0, help="scale every traffic rate")
    ap.add_argument("--concurrency", type=int, default=200, help="connections in flight")
    ap.add_argument("--kube-dir", default=os.environ.get("KUBE_TEST_DIR", "/tmp/kube-soak"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.kill_every is None:
        args.kill_every = args.duration / 6
    # SIGTERM as Ctrl-C: the run is cancelled and its `finally`s stop the sniffer it
    # started (and the kube-apiserver), instead of leaving them running.
    signal.signal(signal.SIGTERM, _interrupt)
    out = args.out or REPO / "benchmarks" / "results" / f"soak-{time.strftime('%Y-%m-%d')}"
    variant = "kubernetes" if args.kubernetes else "file"
    with tempfile.TemporaryDirectory(prefix=f"soak-{variant}-") as d:
        tmp = Path(d)
        try:
            res = uvloop.run(run(args, tmp))
        finally:
            log = tmp / "sniffer.log"
            if log.exists():  # sniffer's own log lines (not the access log) for a post-mortem
                out.mkdir(parents=True, exist_ok=True)
                errors = [
                    ln
                    for ln in log.read_text(errors="replace").splitlines()
                    if not ln.startswith("{") and (" ERROR " in ln or " WARNING " in ln)
                ]
                (out / f"{variant}-sniffer-warnings.log").write_text(
                    "\n".join(errors[-2000:]) + "\n"
                )
    res["command"] = "python -m benchmarks.soak " + " ".join(sys.argv[1:])
    res["commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["loadavg"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{variant}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{variant}.md").write_text(markdown(res))
    print(markdown(res))
    return 0 if res["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
