"""Noisy neighbour: tenant B's service while tenant A is flooded, sniffer next to HAProxy.

Both proxies run one worker/thread under the same open-file limit in front of the same two
nginx TLS backends (tenant A = a.bench.test, tenant B = b.bench.test). Tenant A is capped
at `--cap` connections: sniffer with a `tenants:` limit (the excess is refused at once,
TLS alert internal_error), HAProxy with `maxconn` on A's server (the excess queues until
`timeout queue`, HAProxy's model). For each proxy, tenant B's keep-alive throughput and
latency (wrk, `--conns` connections) are measured in three phases:

  quiet     nothing else running
  cpu-hog   a CPU-bound neighbour process (a busy loop) competes for the cores
  flood     `--flood` TLS connections to A, each completing its handshake (when admitted)
            and then idling, held open during the whole wrk run

and, for sniffer, the event-loop lag (sniffer_event_loop_lag_seconds) of each phase.

    .venv/bin/python -m benchmarks.noisy_neighbour                # ~3 minutes
    .venv/bin/python -m benchmarks.noisy_neighbour --duration 5 --flood 500 --cap 100

Needs nginx, haproxy and wrk (see benchmarks/README.md). Loopback only; bounded waits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .clients import client_context, tls_flood
from .env import Bench, Process, free_port, name_mapping, raise_nofile, tls_get, wait_port
from .workloads import WRK_LUA

REPO = Path(__file__).resolve().parents[1]
NOFILE = 2048
"""The proxies' open-file limit: too few for the flood without a cap on tenant A."""


# -- the flood: a separate process so its TLS work is not timed with tenant B's ----------


async def _flood(port: int, count: int, concurrency: int) -> None:
    held, refused = await tls_flood(port, "a.bench.test", count, concurrency, client_context())
    print(f"done {len(held)} {refused}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in held:
        w.close()


def _limit_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


# -- the proxies ---------------------------------------------------------------------------


def start_sniffer(d: Path, bench: Bench, port: int, admin: int, cap: int) -> Process:
    routes = d / "noisy-routes.yaml"
    routes.write_text(
        f"""listeners:
  - {{name: tls, address: "127.0.0.1:{port}", protocol: tls}}
tenants:
  - {{name: tenant-a, limits: {{max_connections: {cap}}}}}
backends:
  - {{name: a, tenant: tenant-a, endpoints: ["127.0.0.1:{bench.ports["a"]}"]}}
  - {{name: b, tenant: tenant-b, endpoints: ["127.0.0.1:{bench.ports["b"]}"]}}
routes:
  - {{host: a.bench.test, backend: a}}
  - {{host: b.bench.test, backend: b}}
"""
    )
    exe = REPO / ".venv" / "bin" / "sniffer"
    argv = [
        str(exe),
        "serve",
        "--routes",
        str(routes),
        "--workers",
        "1",
        "--admin",
        f"127.0.0.1:{admin}",
        "--drain-grace",
        "1",
    ]
    return _start("sniffer", argv, d)


def start_haproxy(d: Path, bench: Bench, port: int, cap: int) -> Process:
    conf = d / "noisy-haproxy.cfg"
    conf.write_text(
        f"""global
    maxconn {(NOFILE - 128) // 2}
    nbthread 1

defaults
    mode tcp
    timeout connect 5s
    timeout queue 5s
    timeout client 1h
    timeout server 1h

frontend tls
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    use_backend a if {{ req.ssl_sni -i a.bench.test }}
    use_backend b if {{ req.ssl_sni -i b.bench.test }}

backend a
    server a 127.0.0.1:{bench.ports["a"]} maxconn {cap}

backend b
    server b 127.0.0.1:{bench.ports["b"]}
"""
    )
    return _start("haproxy", ["haproxy", "-db", "-f", str(conf)], d)


def _start(name: str, argv: list[str], d: Path) -> Process:
    p = Process(name, argv)
    log = d / f"noisy-{name}.log"
    p.log = log
    p.popen = subprocess.Popen(
        argv,
        cwd=d,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_limit_nofile,
    )
    return p


# -- measuring -----------------------------------------------------------------------------


def wrk(prefix: list[str], d: Path, port: int, conns: int, duration: int) -> dict[str, float]:
    script = d / "report.lua"
    script.write_text(WRK_LUA)
    argv = [
        *prefix,
        "wrk",
        "-t",
        "1",
        "-c",
        str(conns),
        "-d",
        f"{duration}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"https://b.bench.test:{port}/",
    ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((x for x in r.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {r.stdout[-400:]} {r.stderr[-400:]}")
    data = json.loads(line[len("WRKJSON ") :])
    secs = data["duration_us"] / 1e6
    return {
        "rps": data["requests"] / secs,
        "p50_ms": data["latency_us"]["50"] / 1000,
        "p99_ms": data["latency_us"]["99"] / 1000,
        "errors": sum(data["errors"].values()),
    }


_BUCKET = re.compile(r'^sniffer_event_loop_lag_seconds_bucket\{le="([^"]+)",worker="0"\} (\S+)$')


def loop_lag(admin: int) -> dict[str, float]:
    """Cumulative bucket counts of worker 0's loop-lag histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def lag_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    total = after.get("+Inf", 0) - before.get("+Inf", 0)
    under10 = after.get("0.01", 0) - before.get("0.01", 0)
    under25 = after.get("0.025", 0) - before.get("0.025", 0)
    return {"samples": total, "over_10ms": total - under10, "over_25ms": total - under25}


def run_proxy(
    name: str, args: argparse.Namespace, bench: Bench, d: Path, prefix: list[str]
) -> dict[str, Any]:
    port, admin = free_port(), free_port()
    proc = (
        start_sniffer(d, bench, port, admin, args.cap)
        if name == "sniffer"
        else start_haproxy(d, bench, port, args.cap)
    )
    out: dict[str, Any] = {}
    try:
        if not wait_port(port, 30, proc) or tls_get(port, "b.bench.test") != b"backend b\n":
            raise RuntimeError(f"{name} did not start:\n{proc.log_tail()}")
        wrk(prefix, d, port, args.conns, 2)  # warm up
        for phase in ("quiet", "cpu-hog", "flood"):
            hog = flood = None
            if phase == "cpu-hog":
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            if phase == "flood":
                flood = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.noisy_neighbour",
                        "--flood-client",
                        str(port),
                        str(args.flood),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=REPO,
                )
                assert flood.stdout is not None
                _, admitted, refused = flood.stdout.readline().decode().split()
                out["flood_clients"] = {"admitted": int(admitted), "refused": int(refused)}
            before = loop_lag(admin) if name == "sniffer" else {}
            try:
                result = wrk(prefix, d, port, args.conns, args.duration)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            if name == "sniffer":
                result["loop_lag"] = lag_delta(before, loop_lag(admin))  # type: ignore[assignment]
            if flood is not None:
                assert flood.stdin is not None
                flood.stdin.close()
                flood.wait(30)
            out[phase] = result
            print(f"{name} {phase}: {result}", flush=True)
    finally:
        proc.stop()
    return out


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Noisy neighbour: tenant B while tenant A is flooded",
        "",
        f"One worker/thread per proxy, RLIMIT_NOFILE {NOFILE}, tenant A capped at {args.cap} "
        f"(sniffer `tenants:` limit; HAProxy `maxconn` on A's server, `timeout queue 5s`), "
        f"flood of {args.flood} TLS connections to A held idle; tenant B: wrk keep-alive, "
        f"{args.conns} connections, {args.duration} s per phase.",
        "",
        "| proxy | phase | B req/s | B p50 ms | B p99 ms | errors | loop lag samples > 10 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for phase in ("quiet", "cpu-hog", "flood"):
            r = res.get(phase)
            if r is None:
                continue
            lag = r.get("loop_lag")
            lag_s = f"{int(lag['over_10ms'])} of {int(lag['samples'])}" if lag else "-"
            lines.append(
                f"| {name} | {phase} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['errors']:.0f} | {lag_s} |"
            )
    lines.append("")
    for name, res in results.items():
        f = res.get("flood_clients")
        if f is not None:
            lines.append(
                f"- {name}: flood connections admitted {f['admitted']}, "
                f"refused or timed out {f['refused']}"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--flood-client", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS
    )
    ap.add_argument("--cap", type=int, default=300)
    ap.add_argument("--flood", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rows", default="sniffer,haproxy")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.flood_client:
        asyncio.run(_flood(args.flood_client[0], args.flood_client[1], 100))
        return 0
    raise_nofile()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sniffer-noisy-") as tmp:
        d = Path(tmp)
        bench = Bench(d, big_size=1 << 20)
        bench.setup()
        try:
            with name_mapping(d) as prefix:
                for name in args.rows.split(","):
                    results[name] = run_proxy(name, args, bench, d, prefix)
                    time.sleep(1)  # let TIME_WAIT sockets and the flood's exit settle
        finally:
            bench.teardown()
    text = report(results, args)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
