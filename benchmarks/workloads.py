"""The six workloads. Each runs one client against one row and returns its figures.

CPU is the proxy's own: utime+stime of its whole process tree (children included), read
from /proc before and after the client runs. Clients are wrk, curl and benchmarks.clients.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import procstat
from .env import MEDIUM_PATH, SMALL_PATH, Bench
from .rows import Row

GIB = 1 << 30
REPO = Path(__file__).resolve().parents[1]
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)

WRK_LUA_TEMPLATE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"duration_us":%d,"requests":%d,"bytes":%d,', summary.duration,
    summary.requests, summary.bytes))
  io.write(string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},',
    e.connect, e.read, e.write, e.status, e.timeout))
  io.write('"latency_us":{')
  local ps = {PERCENTILES}
  for i, p in ipairs(ps) do
    if i > 1 then io.write(",") end
    io.write(string.format('"%g":%d', p, latency:percentile(p)))
  end
  io.write("}}\\n")
end
"""
WRK_LUA = WRK_LUA_TEMPLATE.replace("PERCENTILES", ", ".join(str(p) for p in PERCENTILES))


@dataclass
class Settings:
    duration: float  # seconds per wrk/hello run
    wrk_threads: int
    close_conns: int  # wrk connections for the new-connection-per-request workload
    keepalive_conns: int
    stream_conns: int  # concurrent streams of the 1 MiB file
    hello_procs: int
    hello_concurrency: int
    idle_count: int
    big_size: int  # bytes of the single large stream


@dataclass
class Context:
    bench: Bench
    settings: Settings
    wrk_prefix: list[str]
    dir: Path


def _measure(row: Row, client: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run `client`, adding the proxy tree's CPU seconds and peak memory over the run,
    the machine's busy CPU seconds (every row, `direct` too) and, for sniffer rows, the
    share of relayed bytes the kernel relay carried."""
    machine0 = procstat.machine_cpu_seconds()
    if row.pid is None:
        out = client()
        out["machine_cpu_s"] = procstat.machine_cpu_seconds() - machine0
        return out
    kernel0 = _kernel_bytes(row)
    user0, sys0 = procstat.cpu_split(row.pid)
    with procstat.PeakSampler(row.pid) as peak:
        out = client()
        time.sleep(0.2)  # let the proxy finish closing what the client just left
    user1, sys1 = procstat.cpu_split(row.pid)
    out["machine_cpu_s"] = procstat.machine_cpu_seconds() - machine0
    kernel1 = _kernel_bytes(row)
    if kernel0 is not None and kernel1 is not None and kernel1[1] > kernel0[1]:
        out["kernel_share"] = (kernel1[0] - kernel0[0]) / (kernel1[1] - kernel0[1])
    out["cpu_user_s"], out["cpu_sys_s"] = user1 - user0, sys1 - sys0
    out["cpu_s"] = out["cpu_user_s"] + out["cpu_sys_s"]
    out["peak_rss"] = peak.peak_rss
    out["peak_pss"] = peak.peak_pss
    return out


def _wrk(ctx: Context, row: Row, path: str, conns: int, close: bool) -> dict[str, float]:
    script = ctx.dir / "report.lua"
    if not script.exists():
        script.write_text(WRK_LUA)
    s = ctx.settings
    argv = [
        *ctx.wrk_prefix,
        "wrk",
        "-t",
        str(s.wrk_threads),
        "-c",
        str(conns),
        "-d",
        f"{max(1, round(s.duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
    ]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"https://a.bench.test:{row.port}{path}")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=s.duration + 60, check=False)
    line = next((x for x in r.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed (rc={r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
    data = json.loads(line[len("WRKJSON ") :])
    secs = data["duration_us"] / 1e6
    errors = sum(data["errors"].values())
    lat = data["latency_us"]
    return {
        "requests": data["requests"],
        "seconds": secs,
        "bytes": data["bytes"],
        "rate": data["requests"] / secs,
        "mib_s": data["bytes"] / secs / (1 << 20),
        "errors": errors,
        "p50_ms": lat["50"] / 1000,
        "p99_ms": lat["99"] / 1000,
        "cdf": {k: v / 1000 for k, v in lat.items()},  # type: ignore[dict-item]
    }


def _kernel_bytes(row: Row) -> tuple[float, float] | None:
    """(bytes the kernel relay carried, bytes relayed) from a sniffer row's /metrics."""
    if not row.admin:
        return None
    try:
        with urllib.request.urlopen(row.admin + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    kernel = total = 0.0
    for line in text.splitlines():
        if line.startswith("sniffer_kernel_relay_bytes_total "):
            kernel = float(line.split()[1])
        elif line.startswith("sniffer_bytes_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return kernel, total


def _per_op(out: dict[str, float], n: float) -> None:
    """The machine-wide CPU per operation (µs), next to the proxy's own."""
    if "machine_cpu_s" in out and n:
        out["machine_us_per_op"] = out["machine_cpu_s"] / n * 1e6


def new_conn(ctx: Context, row: Row) -> dict[str, float]:
    """(1) a new TLS connection per request: wrk with Connection: close."""
    out = _measure(row, lambda: _wrk(ctx, row, SMALL_PATH, ctx.settings.close_conns, True))
    if "cpu_s" in out and out["requests"]:
        out["cpu_us_per_op"] = out["cpu_s"] / out["requests"] * 1e6
        out["user_us_per_op"] = out["cpu_user_s"] / out["requests"] * 1e6
    _per_op(out, out.get("requests", 0))
    return out


def keep_alive(ctx: Context, row: Row) -> dict[str, float]:
    """(2) small requests on kept-alive connections."""
    out = _measure(row, lambda: _wrk(ctx, row, SMALL_PATH, ctx.settings.keepalive_conns, False))
    if "cpu_s" in out and out["requests"]:
        out["cpu_us_per_op"] = out["cpu_s"] / out["requests"] * 1e6
        out["user_us_per_op"] = out["cpu_user_s"] / out["requests"] * 1e6
    _per_op(out, out.get("requests", 0))
    return out


def _curl(ctx: Context, row: Row) -> dict[str, float]:
    port = row.port
    argv = [
        "curl",
        "-sk",
        "--max-time",
        "300",
        "--resolve",
        f"a.bench.test:{port}:127.0.0.1",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_total} %{time_starttransfer}",
        f"https://a.bench.test:{port}/big",
    ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=320, check=False)
    try:
        size, total, ttfb = (float(x) for x in r.stdout.split())
    except ValueError as e:
        raise RuntimeError(f"curl failed (rc={r.returncode}): {r.stderr[-300:]}") from e
    if size != ctx.settings.big_size:
        raise RuntimeError(f"curl got {size:.0f} bytes, expected {ctx.settings.big_size}")
    return {
        "bytes": size,
        "seconds": total,
        "mib_s": size / (total - ttfb) / (1 << 20),
        "errors": 0,
    }


def large_stream(ctx: Context, row: Row) -> dict[str, float]:
    """(3) one large download through the proxy (throughput of one connection)."""
    out = _measure(row, lambda: _curl(ctx, row))
    if "cpu_s" in out:
        out["cpu_s_per_gib"] = out["cpu_s"] / (out["bytes"] / GIB)
    if "machine_cpu_s" in out and out.get("bytes"):
        out["machine_s_per_gib"] = out["machine_cpu_s"] / (out["bytes"] / GIB)
    return out


def concurrent_streams(ctx: Context, row: Row) -> dict[str, float]:
    """(4) many concurrent streams: wrk fetching a 1 MiB file on kept-alive connections."""
    out = _measure(row, lambda: _wrk(ctx, row, MEDIUM_PATH, ctx.settings.stream_conns, False))
    if "cpu_s" in out and out["bytes"]:
        out["cpu_s_per_gib"] = out["cpu_s"] / (out["bytes"] / GIB)
    if "machine_cpu_s" in out and out.get("bytes"):
        out["machine_s_per_gib"] = out["machine_cpu_s"] / (out["bytes"] / GIB)
    return out


def _hello(ctx: Context, row: Row) -> dict[str, float]:
    s = ctx.settings
    argv = [
        sys.executable,
        "-m",
        "benchmarks.clients",
        "hello",
        "--port",
        str(row.port),
        "--duration",
        str(s.duration),
        "--concurrency",
        str(s.hello_concurrency),
    ]
    files = [ctx.dir / f"hello-lat-{i}.txt" for i in range(s.hello_procs)]
    procs = [
        subprocess.Popen(
            [*argv, "--latencies", str(f)], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        for f in files
    ]
    lat: list[float] = []
    count = errors = 0
    secs = 0.0
    for p, f in zip(procs, files, strict=True):
        stdout, _ = p.communicate(timeout=s.duration + 60)
        data = json.loads(stdout.strip().splitlines()[-1])
        count += data["count"]
        errors += data["errors"]
        secs = max(secs, data["seconds"])
        lat.extend(float(x) for x in f.read_text().split())
        f.unlink()
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * p / 100))] * 1000 if lat else 0.0

    return {
        "requests": count,
        "errors": errors,
        "seconds": secs,
        "rate": count / secs,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "cdf": {f"{p:g}": pct(p) for p in PERCENTILES},
    }  # type: ignore[dict-item]


def hello_heavy(ctx: Context, row: Row) -> dict[str, float]:
    """(6) connections that send a ClientHello, get the backend's first bytes, and close."""
    out = _measure(row, lambda: _hello(ctx, row))
    if "cpu_s" in out and out["requests"]:
        out["cpu_us_per_op"] = out["cpu_s"] / out["requests"] * 1e6
        out["user_us_per_op"] = out["cpu_user_s"] / out["requests"] * 1e6
    _per_op(out, out.get("requests", 0))
    return out


def idle_conns(ctx: Context, row: Row) -> dict[str, float]:
    """(5) N idle connections held open (TLS handshake completed through the proxy)."""
    s = ctx.settings
    pid = row.pid if row.pid is not None else ctx.bench.procs[0].pid
    time.sleep(0.5)
    before = procstat.memory(pid)
    argv = [
        sys.executable,
        "-m",
        "benchmarks.clients",
        "idle",
        "--port",
        str(row.port),
        "--count",
        str(s.idle_count),
        "--concurrency",
        "64",
        "--hold",
        "120",
        "--open-timeout",
        str(max(30.0, s.idle_count / 100)),
    ]
    p = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert p.stdin is not None and p.stdout is not None
    try:
        opened = json.loads(p.stdout.readline() or "{}")
        time.sleep(1.0)  # let lazily-allocated per-connection state settle
        held = procstat.memory(pid)
        p.stdin.write("release\n")
        p.stdin.flush()
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    n = int(opened.get("open", 0))
    out: dict[str, float] = {
        "open": n,
        "errors": opened.get("failed", -1),
        "open_seconds": opened.get("open_seconds", 0),
        "rss_before": before.rss,
        "pss_before": before.pss,
        "rss_held": held.rss,
        "pss_held": held.pss,
    }
    if n:
        out["rss_per_conn"] = (held.rss - before.rss) / n
        out["pss_per_conn"] = (held.pss - before.pss) / n
    if row.pid is None:  # direct: the figure is the backend's, not a proxy's
        out["note"] = "backend a's memory"  # type: ignore[assignment]
    return out


WORKLOADS: dict[str, Callable[[Context, Row], dict[str, float]]] = {
    # idle-conns first: later workloads leave freed memory that a Python row reuses, which
    # would hide part of the per-connection growth
    "idle-conns": idle_conns,
    "hello-heavy": hello_heavy,
    "new-conn": new_conn,
    "keep-alive": keep_alive,
    "concurrent-streams": concurrent_streams,
    "large-stream": large_stream,
}
