"""Turns results.json into report.md and PNG plots: medians, ratios, targets."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .rows import PEERS

MIB = 1 << 20

# workload -> [(metric key, column title, format, lower is better)]
COLUMNS: dict[str, list[tuple[str, str, str, bool]]] = {
    "hello-heavy": [
        ("rate", "hellos/s", "{:,.0f}", False),
        ("p50_ms", "TTFB p50 ms", "{:.2f}", True),
        ("p99_ms", "TTFB p99 ms", "{:.2f}", True),
        ("cpu_us_per_op", "proxy CPU µs/hello", "{:.0f}", True),
        ("user_us_per_op", "of which user µs", "{:.0f}", True),
    ],
    "new-conn": [
        ("rate", "conn/s", "{:,.0f}", False),
        ("p50_ms", "p50 ms", "{:.2f}", True),
        ("p99_ms", "p99 ms", "{:.2f}", True),
        ("cpu_us_per_op", "proxy CPU µs/conn", "{:.0f}", True),
        ("user_us_per_op", "of which user µs", "{:.0f}", True),
    ],
    "keep-alive": [
        ("rate", "req/s", "{:,.0f}", False),
        ("p50_ms", "p50 ms", "{:.2f}", True),
        ("p99_ms", "p99 ms", "{:.2f}", True),
        ("cpu_us_per_op", "proxy CPU µs/req", "{:.1f}", True),
        ("user_us_per_op", "of which user µs", "{:.1f}", True),
    ],
    "concurrent-streams": [
        ("mib_s", "MiB/s", "{:,.0f}", False),
        ("p50_ms", "p50 ms", "{:.1f}", True),
        ("p99_ms", "p99 ms", "{:.1f}", True),
        ("cpu_s_per_gib", "proxy CPU s/GiB", "{:.3f}", True),
    ],
    "large-stream": [
        ("mib_s", "MiB/s", "{:,.0f}", False),
        ("cpu_s_per_gib", "proxy CPU s/GiB", "{:.3f}", True),
    ],
    "idle-conns": [
        ("open", "conns held", "{:,.0f}", False),
        ("rss_per_conn", "RSS B/conn", "{:,.0f}", True),
        ("pss_per_conn", "PSS B/conn", "{:,.0f}", True),
        ("pss_held", "PSS held MiB", "{:.1f}", True),
    ],
}
SCALE = {"pss_held": MIB}
HEADLINE_RATE = {
    "hello-heavy": "rate",
    "new-conn": "rate",
    "keep-alive": "rate",
    "concurrent-streams": "mib_s",
    "large-stream": "mib_s",
}
CPU_KEY = {
    "hello-heavy": "cpu_us_per_op",
    "new-conn": "cpu_us_per_op",
    "keep-alive": "cpu_us_per_op",
    "concurrent-streams": "cpu_s_per_gib",
    "large-stream": "cpu_s_per_gib",
}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """workload -> row -> metric -> {median, min, max, n}; cdf -> percentile -> median."""
    acc: dict[str, dict[str, dict[str, list[float]]]] = {}
    cdfs: dict[str, dict[str, dict[str, list[float]]]] = {}
    for s in results["samples"]:
        m = s["metrics"]
        if "failed" in m:
            continue
        if s["workload"] == "idle-conns" and not m.get("fresh_process", s["rep"] == 0):
            # Memory per connection is only honest from a process that has not yet freed
            # memory it can reuse; results from before the harness restarted rows for
            # every idle repeat have that only in their first repeat.
            continue
        per = acc.setdefault(s["workload"], {}).setdefault(s["row"], {})
        for k, v in m.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                per.setdefault(k, []).append(float(v))
        if isinstance(m.get("cdf"), dict):
            c = cdfs.setdefault(s["workload"], {}).setdefault(s["row"], {})
            for p, v in m["cdf"].items():
                c.setdefault(p, []).append(float(v))
    out: dict[str, Any] = {}
    for w, rows in acc.items():
        out[w] = {}
        for r, metrics in rows.items():
            out[w][r] = {
                k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
                for k, v in metrics.items()
            }
            if w in cdfs and r in cdfs[w]:
                out[w][r]["cdf"] = {p: statistics.median(v) for p, v in cdfs[w][r].items()}
    return out


def med(summary: dict[str, Any], w: str, r: str, k: str) -> float | None:
    try:
        return float(summary[w][r][k]["median"])
    except (KeyError, TypeError):
        return None


def _fmt(v: float | None, f: str) -> str:
    return "n/a" if v is None else f.format(v)


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def best_peer(summary: dict[str, Any], w: str, peers: list[str]) -> tuple[str, float] | None:
    """The peer with the least CPU per operation on workload `w`, and that CPU."""
    vals = {p: v for p in peers if (v := med(summary, w, p, "cpu_us_per_op")) is not None}
    if not vals:
        return None
    best = min(vals, key=vals.__getitem__)
    return best, vals[best]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    summ = results["summary"]
    idle = results.get("idle_memory", {})
    rows = [
        r for r in results["rows"] if r.startswith("sniffer") and not results["rows"][r]["skipped"]
    ]
    peers = [p for p in PEERS if p in results["rows"] and not results["rows"][p]["skipped"]]
    out = []

    def add(
        row: str, what: str, value: float | None, limit: float | None, unit: str, rule: str
    ) -> None:
        ok = None if value is None or limit is None else value <= limit
        out.append(
            {
                "row": row,
                "target": what,
                "value": value,
                "limit": limit,
                "unit": unit,
                "rule": rule,
                "pass": ok,
            }
        )

    for r in rows:
        for w, label in (
            ("new-conn", "CPU per new connection"),
            ("hello-heavy", "CPU per new connection (hello-only)"),
            ("keep-alive", "CPU per keep-alive request"),
        ):
            best = best_peer(summ, w, peers)
            add(
                r,
                label,
                med(summ, w, r, "cpu_us_per_op"),
                0.8 * best[1] if best else None,
                "µs",
                f"<= 0.8x best peer ({best[0] if best else None})",
            )
        for w in ("large-stream", "concurrent-streams"):
            add(
                r,
                f"CPU per GiB ({w})",
                med(summ, w, r, "cpu_s_per_gib"),
                med(summ, w, "haproxy", "cpu_s_per_gib"),
                "s",
                "<= haproxy",
            )
        if r in idle:
            workers = max(1, results["rows"][r]["workers"])
            add(
                r,
                "idle RSS per worker (largest relaying process)",
                idle[r].get("max_worker_rss", idle[r]["max_process_rss"]) / MIB,
                30.0,
                "MiB",
                f"<= 30 MiB ({idle[r]['processes']} processes, {workers} workers)",
            )
            if idle[r]["processes"] > workers:
                add(
                    r,
                    "idle RSS of the whole process tree (control + workers)",
                    idle[r]["rss"] / MIB,
                    None,
                    "MiB",
                    "reported, no target",
                )
        add(
            r,
            "user-space memory per idle connection (PSS)",
            med(summ, "idle-conns", r, "pss_per_conn"),
            4096.0,
            "B",
            "<= 4 KiB",
        )
        direct = med(summ, "new-conn", "direct", "rate")
        rate = med(summ, "new-conn", r, "rate")
        # a rate target: pass when rate >= 0.75 direct; express as -rate <= -limit
        out.append(
            {
                "row": r,
                "target": "new connections/s vs direct",
                "value": rate,
                "limit": None if direct is None else 0.75 * direct,
                "unit": "conn/s",
                "rule": ">= 0.75x direct",
                "pass": None if rate is None or direct is None else rate >= 0.75 * direct,
            }
        )
    return out


PER_OP_CPU = (
    ("new-conn", "new TLS connection"),
    ("hello-heavy", "hello-only connection"),
    ("keep-alive", "keep-alive request"),
)


def kernel_floor(results: dict[str, Any]) -> list[str]:
    """Where each row's CPU per operation goes: its own code (user) or the kernel (system).

    On loopback the kernel work of a proxied connection (two TCP handshakes, the data
    delivered to the peer, teardown) is charged to the proxy and is nearly the same for
    every row. When the 0.8x-best-peer limit lies below the system CPU of every row, no
    proxy on this kernel could meet it even if its own code cost nothing; say so.
    """
    summ = results["summary"]
    live = [r for r, m in results["rows"].items() if not m["skipped"] and r != "direct"]
    peers = [p for p in PEERS if p in live]
    table: list[str] = []
    notes: list[str] = []
    for w, label in PER_OP_CPU:
        if w not in summ:
            continue
        users: dict[str, float] = {}
        system: dict[str, float] = {}
        for r in live:
            total, user = med(summ, w, r, "cpu_us_per_op"), med(summ, w, r, "user_us_per_op")
            if total is not None and user is not None:
                users[r], system[r] = user, total - user
        peer = best_peer(summ, w, peers)
        if peer is None or not system:
            continue
        best, limit = peer[0], 0.8 * peer[1]
        low = min(system, key=system.__getitem__)
        cells = [f"{_fmt(users.get(r), '{:.1f}')} / {_fmt(system.get(r), '{:.1f}')}" for r in live]
        table.append(
            f"| {w} | {limit:.1f} ({best}) | "
            + " | ".join(cells)
            + f" | {system[low]:.1f} ({low}) |"
        )
        if limit < system[low]:
            notes.append(
                f"- {label}: the limit, {limit:.1f} µs, is below the kernel's share alone for "
                f"every row (lowest: {system[low]:.1f} µs, {low}); it cannot be met by any "
                "proxy here, whatever its own code costs."
            )
    if not table:  # no workload with a peer to compare against
        return []
    head = [
        "",
        "## Kernel share of CPU per operation",
        "",
        "System = median total - median user, µs per operation.",
        "",
        "| workload | limit (0.8x best peer) | "
        + " | ".join(f"{r} user / system" for r in live)
        + " | lowest system of any row |",
        "|---" * (len(live) + 3) + "|",
    ]
    return head + table + (["", *notes] if notes else [])


MACHINE_KEY = {
    "hello-heavy": ("machine_us_per_op", "µs/hello", "{:.0f}"),
    "new-conn": ("machine_us_per_op", "µs/conn", "{:.0f}"),
    "keep-alive": ("machine_us_per_op", "µs/req", "{:.1f}"),
    "concurrent-streams": ("machine_s_per_gib", "s/GiB", "{:.3f}"),
    "large-stream": ("machine_s_per_gib", "s/GiB", "{:.3f}"),
}


def machine_minus_direct(results: dict[str, Any]) -> list[str]:
    """Machine-wide CPU per unit of work, less the same workload run `direct`.

    A relay in the kernel does its work in softirq and in the peers' system calls, which
    the proxy's own CPU does not show; the whole machine's busy time, less what the same
    work costs with no proxy at all, is the proxy's true share. Also the share of relayed
    bytes the kernel relay carried (sniffer rows; from their /metrics).
    """
    summ = results["summary"]
    live = [r for r, m in results["rows"].items() if not m["skipped"] and r != "direct"]
    table: list[str] = []
    for w, (key, unit, f) in MACHINE_KEY.items():
        base = med(summ, w, "direct", key) if w in summ else None
        if base is None:
            continue
        cells = []
        for r in live:
            v = med(summ, w, r, key)
            share = med(summ, w, r, "kernel_share")
            cell = _fmt(None if v is None else v - base, f)
            if share is not None:
                cell += f" ({share:.0%} by the kernel)"
            cells.append(cell)
        table.append(f"| {w} ({unit}) | {_fmt(base, f)} | " + " | ".join(cells) + " |")
    if not table:
        return []
    return [
        "",
        "## Machine-wide CPU minus direct",
        "",
        "Busy CPU of the whole machine (/proc/stat) per unit of work, less the same workload "
        "run `direct` (no proxy): the proxy's true share, kernel work done in softirq and in "
        "other processes' system calls included. In brackets: the share of relayed bytes the "
        "kernel relay carried.",
        "",
        "| workload | direct | " + " | ".join(live) + " |",
        "|---" * (len(live) + 2) + "|",
        *table,
    ]


def write_report(results: dict[str, Any], out: Path, plots: bool = True) -> None:
    summ = results["summary"]
    mach = results["machine"]
    rows_meta = results["rows"]
    live = [r for r, meta in rows_meta.items() if not meta["skipped"]]
    st = results["settings"]
    lines = [
        "# sniffer benchmark report",
        "",
        f"Date {mach['date']}; commit `{mach['git_commit']}`"
        + (" (work tree has uncommitted changes)" if mach["git_dirty"] else "")
        + ".",
        "",
        f"Machine: {mach['nproc']} CPUs ({mach['cpu_model']}), kernel {mach['kernel']}, "
        f"Python {mach['python']}; clients: {mach['wrk']}; {mach['curl']}.",
        "",
        f"**Noise warning.** These {mach['nproc']} cores are shared by the load clients, the two "
        "nginx backends and the proxy under test, so absolute numbers are noisy and only the "
        "rows of this one run, measured alternately, should be compared with each other. "
        f"Each figure is the median of {st['repeats']} repeat(s).",
        "",
        f"Settings: {st['duration']:g} s per timed run, {st['workers']} worker(s) per proxy, "
        f"large stream {st['big_size'] / MIB:,.0f} MiB, {st['idle_count']:,} idle connections "
        f"(fd limit {st['nofile']}; a proxied connection takes 2 fds), wrk {st['wrk_threads']} "
        f"threads, {st['close_conns']}/{st['keepalive_conns']}/{st['stream_conns']} connections "
        "(new-conn/keep-alive/streams). Proxy CPU = utime+stime of its whole process tree; "
        "on loopback the kernel charges much of the TCP delivery to the sender, so the system "
        "share is large and similar across rows: the user column is what a proxy's own code "
        "costs.",
        "",
        "## Rows",
        "",
        "| row | workers | version | routing a/b, unknown refused | notes |",
        "|---|---|---|---|---|",
    ]
    for r, meta in rows_meta.items():
        chk = results.get("routing", {}).get(r)
        chk_s = (
            "n/a"
            if chk is None
            else "a ok (no proxy)"
            if r == "direct"
            else (
                f"{'ok' if chk['routes_a'] and chk['routes_b'] else 'FAIL'}, "
                f"{'yes' if chk['refuses_unknown'] else 'NO'}"
            )
        )
        note = meta["notes"] or ""
        if meta["skipped"]:
            note = "**skipped**: " + meta["skipped"].splitlines()[0]
        lines.append(f"| {r} | {meta['workers'] or '-'} | {meta['version']} | {chk_s} | {note} |")

    lines += [
        "",
        "## Targets (sniffer)",
        "",
        "| row | target | value | limit | rule | met |",
        "|---|---|---|---|---|---|",
    ]
    for t in targets(results):
        met = {True: "yes", False: "**NO**", None: "n/a"}[t["pass"]]
        lines.append(
            f"| {t['row']} | {t['target']} | {_fmt(t['value'], '{:,.2f}')} {t['unit']} | "
            f"{_fmt(t['limit'], '{:,.2f}')} | {t['rule']} | {met} |"
        )

    lines += kernel_floor(results)
    lines += machine_minus_direct(results)
    lines += [
        "",
        "## Memory",
        "",
        "| row | idle RSS MiB | idle PSS MiB | processes | largest process RSS MiB | "
        "peak RSS MiB | peak PSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in live:
        im = results.get("idle_memory", {}).get(r)
        peaks = [
            (s["metrics"].get("peak_rss", 0), s["metrics"].get("peak_pss", 0))
            for s in results["samples"]
            if s["row"] == r
        ]
        prss = max((p[0] for p in peaks), default=0)
        ppss = max((p[1] for p in peaks), default=0)
        if im is None:
            lines.append(f"| {r} | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        lines.append(
            f"| {r} | {im['rss'] / MIB:.1f} | {im['pss'] / MIB:.1f} | {im['processes']} | "
            f"{im['max_process_rss'] / MIB:.1f} | {prss / MIB:.1f} | {ppss / MIB:.1f} |"
        )

    for w, cols in COLUMNS.items():
        if w not in summ:
            continue
        rate_key = HEADLINE_RATE.get(w)
        cpu_key = CPU_KEY.get(w)
        head = [c[1] for c in cols] + ["errors"]
        if rate_key:
            head.append("x direct")
        if cpu_key:
            head.append("sniffer CPU ÷ row CPU")
        lines += [
            "",
            f"## {w}",
            "",
            "| row | " + " | ".join(head) + " |",
            "|---" * (len(head) + 1) + "|",
        ]
        for r in live:
            if r not in summ[w]:
                lines.append(f"| {r} | " + " | ".join(["failed"] * len(head)) + " |")
                continue
            cells = []
            for k, _, f, _ in cols:
                v = med(summ, w, r, k)
                cells.append(_fmt(None if v is None else v / SCALE.get(k, 1), f))
            cells.append(_fmt(med(summ, w, r, "errors"), "{:.0f}"))
            if rate_key:
                cells.append(_ratio(med(summ, w, r, rate_key), med(summ, w, "direct", rate_key)))
            if cpu_key:
                cells.append(_ratio(med(summ, w, "sniffer", cpu_key), med(summ, w, r, cpu_key)))
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        if w == "new-conn":
            lines.append(
                "\nwrk's latency starts when the request is written, after the TLS "
                "handshake; hello-heavy's TTFB (connect to the backend's ServerHello) is "
                "the routing latency."
            )
        if w == "idle-conns":
            counts = sorted({summ[w][r]["pss_per_conn"]["n"] for r in live if r in summ[w]})
            lines.append(
                "\nPer-connection bytes = (tree memory with all connections held - "
                "before) ÷ connections; kernel socket buffers are not included. "
                "`direct` shows backend a's own growth. Only samples from a fresh process "
                "count (one that has not freed memory it could reuse): "
                f"{'/'.join(map(str, counts))} per row here."
            )

    if plots:
        try:
            files = make_plots(results, out)
            lines += ["", "## Plots", ""] + [f"![{f.stem}]({f.name})" for f in files]
        except ImportError:
            lines += ["", "(plots skipped: matplotlib not installed)"]
    lines += ["", "Raw samples and per-repeat figures: `results.json`.", ""]
    (out / "report.md").write_text("\n".join(lines))


def make_plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    summ = results["summary"]
    live = [r for r, meta in results["rows"].items() if not meta["skipped"]]
    colors = {r: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(live)}
    files = []
    for w, cols in COLUMNS.items():
        if w not in summ:
            continue
        fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 4.2), squeeze=False)
        for ax, (k, title, _, lower) in zip(axes[0], cols, strict=True):
            rs = [r for r in live if med(summ, w, r, k) is not None]
            sc = SCALE.get(k, 1)
            vals = [summ[w][r][k]["median"] / sc for r in rs]
            lo = [v - summ[w][r][k]["min"] / sc for v, r in zip(vals, rs, strict=True)]
            hi = [summ[w][r][k]["max"] / sc - v for v, r in zip(vals, rs, strict=True)]
            ax.bar(rs, vals, color=[colors[r] for r in rs], yerr=[lo, hi], capsize=3)
            ax.set_title(f"{title}\n({'lower' if lower else 'higher'} is better)", fontsize=10)
            ax.tick_params(axis="x", rotation=45, labelsize=8)
            for lbl in ax.get_xticklabels():
                lbl.set_horizontalalignment("right")
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"{w} (median of repeats; whiskers min-max)")
        fig.tight_layout()
        f = out / f"{w}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    cdf_w = [w for w in ("hello-heavy", "new-conn", "keep-alive") if w in summ]
    if cdf_w:
        fig, axes = plt.subplots(1, len(cdf_w), figsize=(5.5 * len(cdf_w), 4.5), squeeze=False)
        for ax, w in zip(axes[0], cdf_w, strict=True):
            for r in live:
                cdf = summ[w].get(r, {}).get("cdf")
                if not cdf:
                    continue
                pts = sorted((float(p), v) for p, v in cdf.items())
                ax.plot(
                    [v for _, v in pts], [p for p, _ in pts], marker=".", label=r, color=colors[r]
                )
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.set_xlabel("latency ms (log)")
            ax.set_ylabel("percentile")
            ax.set_title("TTFB of hello" if w == "hello-heavy" else f"{w} request latency")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        f = out / "latency-cdf.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    idle = results.get("idle_memory", {})
    rs = [r for r in live if r in idle]
    if rs:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(rs, [idle[r]["rss"] / MIB for r in rs], color=[colors[r] for r in rs])
        ax.set_title("idle RSS of the proxy process tree, MiB (lower is better)")
        ax.tick_params(axis="x", rotation=45)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        f = out / "idle-rss.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    return files


def main() -> None:
    """Re-render report.md (and plots) from a results folder's results.json."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("folder", type=Path, help="a folder written by benchmarks.run")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    results = json.loads((args.folder / "results.json").read_text())
    write_report(results, args.folder, plots=not args.no_plots)


if __name__ == "__main__":
    main()
