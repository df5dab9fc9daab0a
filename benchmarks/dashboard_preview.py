"""Draw docs/dashboard.png from a real `sniffer serve --kubernetes` run, every panel fed.

    .venv/bin/python -m benchmarks.dashboard_preview [--minutes 4] [--out docs/dashboard.png]

What runs, all on loopback, and is stopped at the end:
- a real etcd + kube-apiserver (`../shared/kube-apiserver/up.sh`; KUBE_TEST_DIR,
  KUBE_TEST_PORT, KUBE_TEST_ETCD_PORT, KUBE_TEST_ETCD_PEER_PORT pick the state dir and
  ports, `down.sh --purge` removes them) with the Gateway API CRDs of `../shared/crds`;
- tenants as an operator's cluster has them: tenant-a (Ingress, a live TLS backend and
  its HTTP/3 twin on the Service's UDP port, a malformed limit annotation), tenant-b
  (TLSRoute through a Gateway: status written by the leader), tenant-c (its endpoint
  refuses dials), tenant-d (its Namespace allows it no connection);
- `sniffer serve --kubernetes` with 2 workers, a TLS and a QUIC listener, the kernel
  relay on, leader election, a small `--max-connections`, a routes file merged in (with
  an HTTP/3 backend whose first endpoint is dead), and Prometheus scraping it every second.

Then, for `--minutes`: TLS exchanges per tenant (tenant-a busiest), unknown names,
GREASE-ECH hellos, a router that closes at once (kernel relay fallbacks), held
connections; QUIC flows (aioquic) to tenant-a's names, failovers, NAT rebindings, an
unknown name and stray datagrams; tenants churning (TLSRoutes and Ingresses created
and deleted, EndpointSlices rewritten); and the walls met once each: a burst over
`--max-connections` (shedding), stdout left undrained (dropped log lines), a worker
SIGKILLed (restart), a kube-apiserver restart (watch errors), a routes-file edit and a
broken one (reloads). The preview is drawn from Prometheus with
`manifests/grafana/render_preview.py`; the command fails if any query of any panel
has no data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.env import free_port  # noqa: E402
from tests.deploy.test_dashboard_prometheus import (  # noqa: E402
    H3_HOST,
    HOSTS,
    Pki,
    QuicBackend,
    TlsBackend,
    client_context,
    exchange,
    make_pki,
    quic_exchange,
    quic_refusal,
    stray_datagrams,
    tls_connect,
)
from tests.kubeapi import objects as o  # noqa: E402
from tests.wire.hellos import modern_hello, records  # noqa: E402

SHARED = REPO.parent / "shared"
KUBE = SHARED / "kube-apiserver"
BIN = REPO / ".venv" / "bin"
TENANTS = "tenant-a|tenant-b|tenant-c|tenant-d"
CLOSING_HOST = "closing.tenant-c.test"
MAX_CONNECTIONS = 32  # per worker, QUIC flows too: the shedding burst opens more than both hold


def free_udp_port() -> int:
    """A UDP port nothing is bound to (so its datagrams draw ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return str(r.read().decode())
    except OSError:
        return None


def wait(what: str, check: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


class Cluster:
    """The real kube-apiserver, driven with kubectl as the admin."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.dir = Path(env.get("KUBE_TEST_DIR", "/tmp/kube-apiserver-run"))
        self.kubeconfig = self.dir / "admin.kubeconfig"

    def up(self) -> None:
        subprocess.run([str(KUBE / "up.sh")], env=self.env, check=True, capture_output=True)

    def down(self) -> None:
        subprocess.run([str(KUBE / "down.sh"), "--purge"], env=self.env, check=False)

    def restart_apiserver(self) -> None:
        """down.sh (SIGTERM, pids of the state dir) and up.sh again: same data and certs."""
        subprocess.run([str(KUBE / "down.sh")], env=self.env, check=True, capture_output=True)
        self.up()

    def kubectl(self, *args: str, stdin: str | None = None) -> None:
        done = subprocess.run(
            [str(BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            text=True,
            check=False,
            capture_output=True,
        )
        if done.returncode:
            raise SystemExit(f"kubectl {' '.join(args)}: {done.stderr.strip()}")

    def apply(self, *objs: dict[str, Any]) -> None:
        self.kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}),
        )

    def delete(self, kind: str, ns: str, name: str) -> None:
        self.kubectl("delete", kind, "-n", ns, name, "--wait=false", "--ignore-not-found")


def local(ns: str, name: str, port: int, udp: bool = False, **annotations: str) -> dict[str, Any]:
    """A Service for a backend on this machine. The real API server refuses loopback
    addresses in EndpointSlices, so it is an ExternalName (127.0.0.1 passes as a DNS
    name), which sniffer dials at the referenced port. `udp`: the port's UDP twin too
    (HTTP/3), which quic listeners route the Ingress's names to."""
    ports: list[tuple[str, int, int | str] | tuple[str, int, int | str, str]]
    ports = [("https", port, port)]
    if udp:
        ports.append(("h3", port, port, "UDP"))
    return o.service(
        ns,
        name,
        ports,
        type="ExternalName",
        external_name="127.0.0.1",
        annotations=annotations or None,
    )


def tenants(live_a: int, live_b: int, dead: int) -> list[dict[str, Any]]:
    objs = [
        o.namespace("sniffer-system"),
        o.namespace("infra"),
        o.gateway_class(),
        o.gateway("infra", "edge"),
        o.ingress_class(),
        o.namespace("tenant-a"),
        local("tenant-a", "router", live_a, udp=True),
        o.ingress("tenant-a", "web", [(HOSTS["tenant-a"], "router", live_a)]),
        o.namespace("tenant-b"),
        local("tenant-b", "router-b", live_b),
        o.tls_route("tenant-b", "shop", [HOSTS["tenant-b"]], [o.backend_ref("router-b", live_b)]),
        o.namespace("tenant-c"),
        local("tenant-c", "router-c", dead),
        o.ingress("tenant-c", "web", [(HOSTS["tenant-c"], "router-c", dead)]),
        # tenant-d's Namespace allows it no connection at all.
        o.namespace("tenant-d", None, {"sniffer.dev/max-connections": "0"}),
        local("tenant-d", "router-d", dead),
        o.ingress("tenant-d", "web", [(HOSTS["tenant-d"], "router-d", dead)]),
        # Endpoints that churn (not dialled: tenant-a's churn Service is not routed).
        o.service("tenant-a", "batch", cluster_ip=None),
    ]
    for obj in objs:
        obj["metadata"].pop("creationTimestamp", None)
    return objs


class Sniffer:
    def __init__(self, kubeconfig: Path, routes: Path, tls: int, quic: int, admin: int) -> None:
        self.stderr = (routes.parent / "sniffer.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(BIN / "sniffer"),
                "serve",
                "--kubernetes",
                "--kubeconfig",
                str(kubeconfig),
                "--routes",
                str(routes),
                "--listen",
                f"tls:127.0.0.1:{tls}@443",
                "--listen",
                f"quic:127.0.0.1:{quic}@443",
                "--kernel-relay=on",  # every routed TCP pair is handed to the kernel
                "--kernel-relay-after=0",  # at once (the default waits 1 s)
                "--quic-idle-timeout=5",  # flows end 5 s after their last datagram
                "--admin",
                f"127.0.0.1:{admin}",
                "--workers",
                "2",
                f"--max-connections={MAX_CONNECTIONS}",
                "--access-log-buffer=4096",
                "--drain-grace=1",
                "--lease-duration=6",
                "--lease-renew-deadline=4",
                "--lease-retry-period=1",
            ],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=dict(os.environ, POD_NAME="sniffer-0", POD_NAMESPACE="sniffer-system"),
        )
        self.draining = threading.Event()
        self.draining.set()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        while self.draining.wait() and self.proc.stdout.read(4096):
            pass

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def stop(self) -> None:
        self.draining.set()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def routes_file(
    path: Path, dead: int, closing: int, h3: tuple[int, int], extra: bool, broken: bool = False
) -> None:
    """The routes file merged with the cluster: backends and routes of its own: tenant-c's
    name on a router that closes at once (`closing`), and tenant-a's HTTP/3 name on a
    backend whose first UDP endpoint `h3[0]` is dead (every other flow fails over to
    `h3[1]`, the tenant's QUIC server)."""
    text = (
        f"backends:\n  - name: file-backend\n    tenant: tenant-c\n"
        f'    endpoints: ["127.0.0.1:{dead}"]\n'
        f"  - name: closing\n    tenant: tenant-c\n"
        f'    endpoints: ["127.0.0.1:{closing}"]\n'
        f"  - name: router-h3\n    tenant: tenant-a\n"
        f'    endpoints: ["127.0.0.1:{h3[0]}", "127.0.0.1:{h3[1]}"]\n'
        "routes:\n  - host: file.tenant-c.test\n    backend: file-backend\n"
        f"  - host: {CLOSING_HOST}\n    backend: closing\n"
        f"  - host: {H3_HOST}\n    backend: router-h3\n"
    )
    if extra:
        text += "  - host: file2.tenant-c.test\n    backend: file-backend\n"
    if broken:
        text += "  - host: [not, a, name]\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def refused(port: int, host: str, whole: bool = True) -> None:
    """A raw ClientHello (GREASE ECH) for `host`; read until sniffer or the backend
    closes (`whole`), else only the first answer (a backend's ServerHello)."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(records(modern_hello(sni=host.encode(), post_quantum=False)))
        s.settimeout(5)
        while s.recv(4096) and whole:
            pass


def ech_hello(port: int) -> None:
    """A GREASE-ECH hello for tenant-a: routed and counted; the client leaves after the
    backend's ServerHello (the backend would wait for its Finished)."""
    refused(port, HOSTS["tenant-a"], whole=False)


class ClosingBackend:
    """tenant-c's router of the routes file: accepts and closes at once. sniffer has
    dialled it and replayed the hello by then, but a closed pair cannot go into the
    kernel's socket map: a kernel relay fallback (reason map_error), relayed in user
    space (what an operator sees when a tenant's router turns connections away)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()


def traffic_round(ctx: ssl.SSLContext, pki: Pki, port: int, quic: int, rnd: int) -> None:
    for _ in range(3 + 2 * (rnd % 4)):
        exchange(ctx, port, "tenant-a")
    for _ in range(1 + rnd % 2):
        exchange(ctx, port, "tenant-b")
    for host in (HOSTS["unknown"], HOSTS["tenant-c"], HOSTS["tenant-d"]):
        refused(port, host)
    if rnd % 3 == 0:
        ech_hello(port)
    refused(port, CLOSING_HOST)
    # HTTP/3: tenant-a's Ingress name (the Service's UDP twin), its h3 name from the
    # routes file (a dead endpoint first: failovers; now and then a NAT rebinding), an
    # unknown name (a CONNECTION_CLOSE) and stray short-header datagrams (dropped).
    for _ in range(1 + rnd % 3):
        assert quic_exchange(pki, quic, host=HOSTS["tenant-a"]) == b"first"
    rebind = rnd % 4 == 1
    assert quic_exchange(pki, quic, rebind=rebind) == (b"firstmoved" if rebind else b"first")
    if rnd % 2 == 0:
        quic_refusal(pki, quic)
    stray_datagrams(quic, 1 + rnd % 3)


def shed_burst(port: int) -> None:
    """Hold more connections than both workers admit, each with a part of a hello, for
    6 s while new ones keep arriving (so the shed count grows across scrapes), then let go."""
    held = []
    for _ in range(3 * MAX_CONNECTIONS):
        with contextlib.suppress(OSError):
            held.append(socket.create_connection(("127.0.0.1", port), 5))
    for s in held:  # past TCP_DEFER_ACCEPT: accepted, then in sniff until --hello-timeout
        with contextlib.suppress(OSError):
            s.sendall(b"\x16\x03\x01")
    for _ in range(12):
        time.sleep(0.5)
        for _ in range(4):
            refused(port, HOSTS["unknown"])
    for s in held:
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = ap.parse_args()
    env = dict(os.environ)
    cluster = Cluster(env)
    tmp = Path(tempfile.mkdtemp(prefix="sniffer-preview-"))
    pki: Pki = make_pki(tmp)
    backends = {t: TlsBackend(*pki.certs[t]) for t in ("tenant-a", "tenant-b")}
    # tenant-a's HTTP/3 server, on the UDP port of its TLS router's number.
    quic_backend = QuicBackend(*pki.certs["tenant-a"], backends["tenant-a"].port)
    dead = free_port()
    tls, admin, prom_port = free_port(), free_port(), free_port()
    quic, dead_udp = free_udp_port(), free_udp_port()
    h3 = (dead_udp, backends["tenant-a"].port)
    routes = tmp / "routes.yaml"
    closing = ClosingBackend()
    routes_file(routes, dead, closing.port, h3, extra=False)
    sniffer: Sniffer | None = None
    fed = False  # every query had data: the temporary directory goes at the end
    prom: subprocess.Popen[bytes] | None = None
    held: list[ssl.SSLSocket] = []
    try:
        log("starting kube-apiserver")
        cluster.up()
        cluster.kubectl("apply", "-f", str(SHARED / "crds" / "gateway-api" / "standard"))
        cluster.kubectl("wait", "--for=condition=established", "--timeout=60s", "crd", "--all")
        cluster.apply(*tenants(backends["tenant-a"].port, backends["tenant-b"].port, dead))
        (tmp / "prometheus.yml").write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "sniffer",
                            "static_configs": [{"targets": [f"127.0.0.1:{admin}"]}],
                        }
                    ],
                }
            )
        )
        sniffer = Sniffer(cluster.kubeconfig, routes, tls, quic, admin)
        base = f"http://127.0.0.1:{admin}"
        wait("sniffer ready", lambda: get(f"{base}/readyz") is not None)
        try:
            wait("leader", lambda: "sniffer_leader 1.0" in (get(f"{base}/metrics") or ""))
        except SystemExit:
            print((tmp / "sniffer.log").read_text()[-3000:])
            print(
                "\n".join(
                    x
                    for x in (get(f"{base}/metrics") or "").splitlines()
                    if "leader" in x or "watch_up" in x
                )
            )
            raise
        prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        prometheus = f"http://127.0.0.1:{prom_port}"
        wait("prometheus", lambda: get(f"{prometheus}/-/ready") is not None)
        ctx = client_context(pki)
        for tenant, n in (("tenant-a", 3), ("tenant-b", 1)):
            held += [tls_connect(ctx, tls, HOSTS[tenant]) for _ in range(n)]
        start = time.time()
        end = start + args.minutes * 60
        events = {  # fraction of the run -> the wall met then
            0.2: "routes file edit",
            0.25: "malformed annotation",
            0.3: "worker SIGKILL",
            0.45: "stdout undrained",
            0.55: "stdout drained",
            0.6: "shedding burst",
            0.7: "kube-apiserver restart",
            0.8: "broken routes file",
        }
        rnd, churn_at, churn = 0, start, 0
        rng = random.Random(7)
        while time.time() < end:
            traffic_round(ctx, pki, tls, quic, rnd)
            rnd += 1
            now = time.time()
            for at in sorted(events):
                if now >= start + at * (end - start):
                    what = events.pop(at)
                    log(what)
                    if what == "routes file edit":
                        routes_file(routes, dead, closing.port, h3, extra=True)
                    elif what == "worker SIGKILL":
                        os.kill(sniffer.workers()[0], signal.SIGKILL)
                    elif what == "malformed annotation":  # reported, counted, ignored
                        bad = {"sniffer.dev/max-connections": "lots"}
                        port_a = backends["tenant-a"].port
                        cluster.apply(local("tenant-a", "router", port_a, udp=True, **bad))
                    elif what == "stdout undrained":
                        sniffer.draining.clear()
                        for _ in range(600):  # more lines than the pipe and buffer hold
                            refused(tls, HOSTS["unknown"])
                    elif what == "stdout drained":
                        sniffer.draining.set()
                    elif what == "shedding burst":
                        shed_burst(tls)
                    elif what == "kube-apiserver restart":
                        cluster.restart_apiserver()
                    elif what == "broken routes file":
                        routes_file(routes, dead, closing.port, h3, extra=True, broken=True)
            if now >= churn_at:  # tenants churning: a change every ~3 s
                churn_at = now + 3
                churn += 1
                name = f"churn-{churn % 4}"
                if churn % 2:
                    cluster.apply(
                        o.tls_route(
                            "tenant-b",
                            name,
                            [f"{name}.tenant-b.test"],
                            [o.backend_ref("router-b", backends["tenant-b"].port)],
                        )
                    )
                else:
                    cluster.delete("tlsroute", "tenant-b", f"churn-{(churn - 1) % 4}")
                cluster.apply(
                    o.endpoint_slice(
                        "tenant-a", "batch", [f"10.0.0.{rng.randrange(1, 250)}"], name="batch-1"
                    )
                )
            time.sleep(0.5)
        stop = time.time()
        log(f"{rnd} rounds; drawing {args.out}")
        sys.path.insert(0, str(REPO / "manifests" / "grafana"))
        import render_preview

        empty: list[str] = []
        empty_queries: list[str] = []
        drawn = render_preview.render(
            prometheus,
            start - 5,
            stop,
            args.out,
            tenant=TENANTS,
            rate_interval="15s",
            step=1.0,
            note="sniffer serve --kubernetes (TLS and QUIC listeners, kernel relay on) against"
            " a real kube-apiserver, tenants churning, every wall met once\n(shedding,"
            " dropped log lines, worker kill, API restart, broken routes file)",
            empty=empty,
            empty_queries=empty_queries,
        )
        log(f"{drawn} series; panels without data: {empty or 'none'}")
        for q in empty_queries:
            log(f"query without data: {q}")
        if empty or empty_queries:
            log(f"sniffer's log and Prometheus' data are kept in {tmp}")
            return 1
        fed = True
        return 0
    finally:
        for s in held:
            s.close()
        if sniffer is not None:
            sniffer.stop()
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=15)
        for b in backends.values():
            b.close()
        quic_backend.close()
        closing.close()
        cluster.down()
        if fed:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
