"""sniffer's own event-loop stalls with a large route table that churns.

Starts `sniffer serve` (file source, `--workers N`) on a table of `--routes` routes over
`--backends` backends, holds `--idle` relayed connections open (so sweeps and stats
snapshots have something to walk), rewrites the routes file by rename every
`--churn-interval` seconds (one route changed each time, as an operator or a controller
would), and reads the worker's `sniffer_event_loop_lag_seconds` histogram: how late a
50 ms timer fired, i.e. how long the loop was held by something else. On an otherwise
idle machine that is sniffer's own periodic work (table installs, stats snapshots,
sweeps, garbage collection, log flushes).

    .venv/bin/python -m benchmarks.loop_lag                       # 10,000 routes, 30 s
    .venv/bin/python -m benchmarks.loop_lag --workers 0 --seconds 20

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.clients import client_hello
from benchmarks.env import free_port, raise_nofile

REPO = Path(__file__).resolve().parents[1]
_BUCKET = re.compile(
    r'^sniffer_event_loop_lag_seconds_bucket\{le="([^"]+)",worker="(\w+)"\} (\S+)$'
)


def routes_file(
    path: Path, port: int, backend_port: int, routes: int, backends: int, generation: int
) -> None:
    lines = [
        "listeners:",
        f"  - {{name: tls, address: '127.0.0.1:{port}', protocol: tls}}",
        "backends:",
    ]
    lines += [
        f"  - {{name: b{i}, tenant: t{i}, endpoints: ['127.0.0.1:{backend_port}']}}"
        for i in range(backends)
    ]
    lines.append("routes:")
    lines += [
        f"  - {{host: h{i}.t{i % backends}.example, backend: b{i % backends}}}"
        for i in range(routes - 1)
    ]
    lines.append(f"  - {{host: churn{generation}.example, backend: b0}}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)  # by rename: the reader never sees half a file


def lag(admin: int) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m:
            out.setdefault(m.group(2), {})[m.group(1)] = float(m.group(3))
    return out


def ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def hold(port: int, n: int, backend_port: int) -> list[asyncio.StreamWriter]:
    """`n` relayed connections kept open (the backend answers nothing)."""
    writers = []
    hello = client_hello("h0.t0.example")
    for _ in range(n):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(hello)
        writers.append(w)
    return writers


async def main_async(args: argparse.Namespace) -> int:
    raise_nofile()
    loop = asyncio.get_running_loop()

    class Sink(asyncio.Protocol):
        pass

    backend = await loop.create_server(Sink, "127.0.0.1", 0, backlog=4096)
    bport = backend.sockets[0].getsockname()[1]
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="sniffer-lag-") as tmp:
        path = Path(tmp) / "routes.yaml"
        routes_file(path, port, bport, args.routes, args.backends, 0)
        proc = subprocess.Popen(  # noqa: ASYNC220 - fork+exec once, before measuring
            [
                sys.executable,
                "-m",
                "sniffer",
                "serve",
                "--routes",
                str(path),
                "--workers",
                str(args.workers),
                "--admin",
                f"127.0.0.1:{admin}",
                "--drain-grace",
                "1",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while not await loop.run_in_executor(None, ready, admin):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("sniffer did not become ready")
                await asyncio.sleep(0.2)
            held = await hold(port, args.idle, bport)
            await asyncio.sleep(2)  # settle after start-up (its first table, the idle conns)
            canary = subprocess.Popen(  # noqa: ASYNC220 - once, before measuring
                [sys.executable, "-c", CANARY, str(args.seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            before = await loop.run_in_executor(None, lag, admin)
            began = time.monotonic()
            generation = 0
            while time.monotonic() - began < args.seconds:
                generation += 1
                routes_file(path, port, bport, args.routes, args.backends, generation)
                await asyncio.sleep(args.churn_interval)
            after = await loop.run_in_executor(None, lag, admin)
            canary_out, _ = await loop.run_in_executor(None, canary.communicate)
            for w in held:
                w.close()
        finally:
            proc.terminate()
            proc.wait(30)
    backend.close()
    print(
        f"{args.routes} routes, {args.backends} backends, {args.idle} idle connections, "
        f"--workers {args.workers}, {generation} route changes in {args.seconds:.0f} s"
    )
    for worker, b in sorted(after.items()):
        a = before.get(worker, {})
        total = b["+Inf"] - a.get("+Inf", 0)
        bounds = sorted((float(k), k) for k in b if k != "+Inf")
        over = {k: total - (b[k] - a.get(k, 0)) for _, k in bounds}
        worst = next((k for _, k in reversed(bounds) if over[k] > 0), None)
        print(
            f"worker {worker}: {total:.0f} samples; over 5 ms: {over['0.005']:.0f}, "
            f"over 10 ms: {over['0.01']:.0f}, over 25 ms: {over['0.025']:.0f}; "
            f"worst bucket: > {worst or '0.001'} s"
        )
    print(f"canary (an empty uvloop process, same timer): {canary_out.strip()}")
    return 0


CANARY = """
import asyncio, sys, time
import uvloop
async def main(seconds):
    loop = asyncio.get_running_loop()
    over = {0.005: 0, 0.01: 0, 0.025: 0}
    n = 0
    end = loop.time() + seconds
    while loop.time() < end:
        due = loop.time() + 0.05
        await asyncio.sleep(0.05)
        late = loop.time() - due
        n += 1
        for k in over:
            over[k] += late > k
    print(f"{n} samples; over 5 ms: {over[0.005]}, over 10 ms: {over[0.01]}, "
          f"over 25 ms: {over[0.025]}")
uvloop.run(main(float(sys.argv[1])))
"""
"""The CPU contention every process on the machine sees (other work, the churn writer,
the control process re-reading the file): what sniffer's own stalls are compared with."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--backends", type=int, default=2_000)
    ap.add_argument("--idle", type=int, default=1_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--churn-interval", type=float, default=1.0)
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
