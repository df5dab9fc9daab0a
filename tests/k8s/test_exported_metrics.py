"""Every metric an alert or a dashboard panel names is on a real sniffer's /metrics page.

An alert on a metric sniffer does not export never fires, and nothing says so. This runs
`sniffer serve --kubernetes` (one worker, leader election on) against the API test
server holding what an operator's cluster has: a Gateway with a TLSRoute (status written
by the leader), Ingresses, a tenant whose Namespace limit refuses every connection, a
backend whose endpoint refuses dials and a Service with a malformed limit annotation;
then real connections go through it (routed, refused by name, by limit, by a dead
backend). Each `sniffer_*` name in the PrometheusRule's expressions and the dashboard's
queries must then be a family on the page with at least one sample, except the few whose
samples only a failure or a feature this run leaves off makes (DECLARED_ONLY), which
must be declared at least.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.k8s.conftest import SNIFFER, needs_crds, spawn_sniffer
from tests.kubeapi import objects as o
from tests.kubeapi.server import KubeApiServer
from tests.support.servers import answering_backend, free_port
from tests.wire.hellos import modern_hello, records

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "manifests" / "monitoring" / "prometheusrule.yaml"
DASHBOARD = REPO / "manifests" / "grafana" / "sniffer.json"
NS = "sniffer-system"
# Series a healthy run cannot make: a watch error or a 410 re-list, a routes-file reload
# (this run has no file). Declared on the page (# TYPE) is all that can be asked here;
# tests/k8s/test_resilience.py drives the watch failures themselves.
DECLARED_ONLY = {
    "sniffer_watch_errors_total",
    "sniffer_watch_relists_total",
    "sniffer_route_table_reloads_total",
    # Features this TCP-only run does not switch on; their series are proved with samples
    # where they are: QUIC flows through a real sniffer and Prometheus in
    # tests/deploy/test_dashboard_prometheus.py (the QUIC panels must show the traffic
    # sent), the kernel relay's counters in tests/proxy/test_kernel_relay.py.
    "sniffer_datagrams_total",
    "sniffer_dropped_datagrams_total",
    "sniffer_quic_rebinds_total",
    "sniffer_quic_failovers_total",
    "sniffer_kernel_relay_connections_total",
    "sniffer_kernel_relay_fallbacks_total",
    "sniffer_kernel_relay_bytes_total",
}
_HISTOGRAM = re.compile(r"_(bucket|sum|count)$")

pytestmark = [
    needs_crds,
    pytest.mark.skipif(not SNIFFER.exists(), reason="the sniffer command is not installed"),
]


def names_used() -> dict[str, set[str]]:
    """Metric family name -> where it is used (alert names, panel titles)."""
    used: dict[str, set[str]] = {}
    rule = yaml.safe_load(RULES.read_text())
    exprs = [(r["alert"], r["expr"]) for g in rule["spec"]["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    exprs += [
        (f"panel {p['title']!r}", t["expr"])
        for p in dash["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]
    exprs += [("variable tenant", v.get("query", "")) for v in dash["templating"]["list"]]
    for where, expr in exprs:
        for name in re.findall(r"\bsniffer_[a-z0-9_]+\b", str(expr)):
            used.setdefault(_HISTOGRAM.sub("", name), set()).add(where)
    return used


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())
    except (OSError, urllib.error.URLError):
        return None


async def _until(what: str, pred: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(pred):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _connect(port: int, host: str) -> bytes:
    """One connection with a real ClientHello for `host`; what came back before close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(records(modern_hello(sni=host.encode(), post_quantum=False)))
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
        return got


def _cluster(api: KubeApiServer, live: int, dead: int) -> None:
    api.create(o.gateway_class())
    api.create(o.gateway("infra", "edge"))
    api.create(o.namespace("team-a"))
    api.create(o.service("team-a", "web", annotations={"sniffer.dev/max-connections": "many"}))
    api.create(o.endpoint_slice("team-a", "web", ["127.0.0.1"], (("https", live),)))
    api.create(o.ingress("team-a", "ing", [("app.team-a.test", "web", 443)]))
    api.create(o.tls_route("team-a", "r", ["route.team-a.test"], [o.backend_ref("web")]))
    # team-b: its Namespace allows it no connection at all.
    api.create(o.namespace("team-b", None, {"sniffer.dev/max-connections": "0"}))
    api.create(o.service("team-b", "web"))
    api.create(o.endpoint_slice("team-b", "web", ["127.0.0.1"], (("https", live),)))
    api.create(o.ingress("team-b", "ing", [("app.team-b.test", "web", 443)]))
    # team-c: its only endpoint refuses every dial.
    api.create(o.namespace("team-c"))
    api.create(o.service("team-c", "web"))
    api.create(o.endpoint_slice("team-c", "web", ["127.0.0.1"], (("https", dead),)))
    api.create(o.ingress("team-c", "ing", [("app.team-c.test", "web", 443)]))


async def test_every_metric_an_alert_or_panel_names_is_exported(
    api_server: KubeApiServer, kubeconfig: Path
) -> None:
    used = names_used()
    assert len(used) > 20, used  # the parsing found the rules' and panels' names
    backend = await answering_backend(b"routed")
    live = backend.sockets[0].getsockname()[1]
    dead = free_port()
    _cluster(api_server, live, dead)
    tls, admin = free_port(), free_port()
    proc = spawn_sniffer(
        kubeconfig,
        f"tls:127.0.0.1:{tls}@443",
        admin,
        "--workers=1",
        "--drain-grace=1",
        "--lease-duration=3",
        "--lease-renew-deadline=2",
        "--lease-retry-period=0.5",
        POD_NAME="pod-0",
        POD_NAMESPACE=NS,
    )
    base = f"http://127.0.0.1:{admin}"
    try:
        await _until("ready", lambda: _get(f"{base}/readyz") is not None)
        await _until("routes", lambda: "app.team-c.test" in (_get(f"{base}/routes") or ""))
        await _until("leadership", lambda: "sniffer_leader 1.0" in (_get(f"{base}/metrics") or ""))
        for _ in range(3):
            assert await asyncio.to_thread(_connect, tls, "app.team-a.test") == b"routed"
            assert await asyncio.to_thread(_connect, tls, "route.team-a.test") == b"routed"
            for refused in ("app.team-b.test", "app.team-c.test", "nobody.example.test"):
                assert b"routed" not in await asyncio.to_thread(_connect, tls, refused)

        def page() -> dict[str, int]:
            text = _get(f"{base}/metrics") or ""
            return {
                f.name + ("_total" if f.type == "counter" else ""): len(f.samples)
                for f in text_string_to_metric_families(text)
                if f.name.startswith("sniffer_")
            }

        def complete() -> bool:
            got = page()
            return all(got.get(n, 0) > 0 for n in used if n not in DECLARED_ONLY)

        # Workers report once a second and status writes follow the Lease: poll.
        with contextlib.suppress(pytest.fail.Exception):  # the asserts below say what
            await _until("every used metric to have samples", complete, timeout=30)
        got = page()
        missing = {n: sorted(w) for n, w in used.items() if n not in got}
        assert not missing, f"named by alerts/panels but not on /metrics: {missing}"
        empty = {n: sorted(w) for n, w in used.items() if got[n] == 0 and n not in DECLARED_ONLY}
        assert not empty, f"on /metrics without a sample after real traffic: {empty}"
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except Exception:
            proc.kill()
            proc.communicate()
        backend.close()
