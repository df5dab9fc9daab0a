"""One command for the whole suite.

    .venv/bin/python -m benchmarks.run [--quick] [--rows direct,sniffer,...] [--out DIR]

Starts two nginx TLS backends and every requested row on loopback, runs each workload on
each row (rows alternate, their order rotating every repeat), and writes report.md,
results.json and PNG plots to the output directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from . import procstat
from .env import NAMES, UNKNOWN, Bench, name_mapping, raise_nofile, tls_get, wait_port
from .rows import ALL_ROWS, Row, make_row
from .workloads import WORKLOADS, Context, Settings

REPO = Path(__file__).resolve().parents[1]


def settings_for(args: argparse.Namespace, nofile: int) -> Settings:
    # each proxied idle connection holds two fds in the proxy; stay under the fd limit
    idle_cap = max(100, (nofile - 1000) // 2)
    s = Settings(
        duration=args.duration or (3.0 if args.quick else 10.0),
        wrk_threads=2,
        close_conns=32,
        keepalive_conns=64,
        stream_conns=32,
        hello_procs=2,
        hello_concurrency=32,
        idle_count=min(args.idle or (1000 if args.quick else 10_000), idle_cap),
        big_size=args.big_mib * (1 << 20)
        if args.big_mib
        else (256 << 20 if args.quick else 1 << 30),
    )
    return s


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_row(row: Row, d: Path) -> None:
    if row.process is None:
        return
    row.process.start(d, stdout_devnull=row.name.startswith("sniffer"))
    if not wait_port(row.port, 20, row.process):
        row.skipped = f"did not listen on {row.port}: {row.process.log_tail()}"
        row.process.stop()


def check_routing(row: Row) -> dict[str, bool]:
    """a -> backend a, b -> backend b, unknown name refused. Retried briefly after start."""
    deadline = time.monotonic() + 10
    while True:
        got = {n: tls_get(row.port, n) for n in NAMES}
        ok = all(got[n] == f"backend {n.split('.')[0]}\n".encode() for n in NAMES)
        if row.name == "direct":
            ok = got[NAMES[0]] == b"backend a\n"
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    refused = tls_get(row.port, UNKNOWN) is None
    return {
        "routes_a": got[NAMES[0]] == b"backend a\n",
        "routes_b": got[NAMES[1]] == b"backend b\n",
        "refuses_unknown": refused,
    }


def machine_info(rows: list[Row]) -> dict[str, Any]:
    def sh(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
            return (r.stdout or r.stderr).strip()
        except OSError:
            return "?"

    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    commit = sh(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = sh(["git", "-C", str(REPO), "status", "--porcelain"])
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": sh(["nproc"]),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "git_commit": commit if len(commit) == 40 else "none (no commit yet)",
        "git_dirty": bool(dirty),
        "wrk": " ".join(sh(["wrk", "-v"]).split()[:2]) if shutil.which("wrk") else "missing",
        "curl": " ".join(sh(["curl", "--version"]).split()[:2]),
        "versions": {r.name: r.version for r in rows},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat, short runs (< 5 min)")
    ap.add_argument("--rows", default=",".join(ALL_ROWS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--workers", type=int, default=1, help="workers/threads of each proxy")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None, help="seconds per timed run")
    ap.add_argument("--idle", type=int, default=None, help="idle connections to hold")
    ap.add_argument("--big-mib", type=int, default=None, help="size of the large stream")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    for tool in ("wrk", "nginx", "curl"):
        if shutil.which(tool) is None:
            log(f"error: {tool} is required (apt-get install wrk nginx curl)")
            return 2
    out = args.out or REPO / "benchmarks" / "results" / dt.datetime.now().strftime(
        "%Y-%m-%d_%H%M%S"
    )
    out.mkdir(parents=True, exist_ok=True)
    nofile = raise_nofile()
    s = settings_for(args, nofile)
    workload_names = [w for w in args.workloads.split(",") if w]
    for w in workload_names:
        if w not in WORKLOADS:
            log(f"error: unknown workload {w}; known: {', '.join(WORKLOADS)}")
            return 2
    results: dict[str, Any] = {
        "settings": vars(s) | {"repeats": repeats, "workers": args.workers, "nofile": nofile},
        "samples": [],
    }
    with tempfile.TemporaryDirectory(prefix="sniffer-bench-") as tmp:
        d = Path(tmp)
        bench = Bench(d, big_size=s.big_size, nofile=nofile)
        rows: list[Row] = []
        try:
            bench.setup()
            log(f"backends up: {bench.ports}; fd limit {nofile}; idle conns {s.idle_count}")
            for name in [r for r in args.rows.split(",") if r]:
                row = make_row(name, args.workers, bench, d)
                if row.skipped is None:
                    start_row(row, d)
                if row.skipped is None:
                    row_check = check_routing(row)
                    results.setdefault("routing", {})[row.name] = row_check
                    if not row_check["routes_a"] or (
                        row.name != "direct" and not row_check["routes_b"]
                    ):
                        row.skipped = f"routing check failed: {row_check}"
                        if row.process:
                            row.skipped += "\n" + row.process.log_tail()
                            row.process.stop()
                if row.skipped:
                    log(f"row {row.name} SKIPPED: {row.skipped}")
                else:
                    log(f"row {row.name} up on {row.port} ({row.version})")
                rows.append(row)
            live = [r for r in rows if r.skipped is None]
            time.sleep(1.0)
            for r in live:  # idle memory after start and a few requests
                if r.pid is not None:
                    m = procstat.memory(r.pid)
                    results.setdefault("idle_memory", {})[r.name] = {
                        "rss": m.rss,
                        "pss": m.pss,
                        "processes": len(m.per_process_rss),
                        "max_process_rss": max(m.per_process_rss, default=0),
                        "max_worker_rss": max(m.worker_rss, default=0),
                    }
            with name_mapping(d) as prefix:
                ctx = Context(bench, s, prefix, d)
                for rep in range(repeats):
                    for w in workload_names:
                        k = rep % max(1, len(live))
                        for r in live[k:] + live[:k]:
                            if w == "idle-conns" and (rep > 0 or workload_names[0] != w):
                                # Bytes per idle connection need a process that has not
                                # freed (and can reuse) memory from earlier workloads.
                                if r.process is None:
                                    continue  # direct: backend a itself, measured once
                                r.process.stop()
                                start_row(r, d)
                                check_routing(r)
                            log(f"rep {rep + 1}/{repeats} {w:<19} {r.name}")
                            try:
                                m = WORKLOADS[w](ctx, r)
                                if w == "idle-conns":
                                    m["fresh_process"] = True
                            except Exception as e:  # one failing row must not stop the run
                                log(f"  failed: {e}")
                                m = {"failed": str(e)[:500]}
                                traceback.print_exc(file=sys.stderr)
                            if r.process is not None and not r.process.alive():
                                m["failed"] = "proxy exited: " + r.process.log_tail()
                                log(f"  {r.name} died: {r.process.log_tail()}")
                            results["samples"].append(
                                {"rep": rep, "workload": w, "row": r.name, "metrics": m}
                            )
                            brief = {
                                k2: round(v, 3)
                                for k2, v in m.items()
                                if isinstance(v, float | int)
                                and k2
                                in (
                                    "rate",
                                    "mib_s",
                                    "cpu_us_per_op",
                                    "cpu_s_per_gib",
                                    "pss_per_conn",
                                    "errors",
                                    "p99_ms",
                                )
                            }
                            log(f"  {brief}")
        finally:
            for r in rows:
                if r.process is not None:
                    r.process.stop()
            bench.teardown()
        results["machine"] = machine_info(rows)
        results["rows"] = {
            r.name: {
                "workers": r.workers,
                "skipped": r.skipped,
                "version": r.version,
                "notes": r.notes,
            }
            for r in rows
        }
    from .report import summarize, write_report

    results["summary"] = summarize(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, out, plots=not args.no_plots)
    log(f"report: {out / 'report.md'}")
    return 0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


if __name__ == "__main__":
    sys.exit(main())
