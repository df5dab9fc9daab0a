"""The benchmark harness runs end to end on tiny durations (direct, bare-relay, sniffer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks import run
from benchmarks.rows import sniffer_bin
from tests.support.prereq import missing

MISSING = [t for t in ("wrk", "nginx", "curl") if shutil.which(t) is None]


def test_harness_smoke(tmp_path: Path) -> None:
    if MISSING:
        missing(f"benchmark tools missing: {', '.join(MISSING)} (apt-get install wrk nginx curl)")
    rows = ["direct", "bare-relay"] + (["sniffer"] if sniffer_bin() else [])
    out = tmp_path / "results"
    rc = run.main(
        [
            "--rows",
            ",".join(rows),
            "--repeats",
            "1",
            "--duration",
            "1",
            "--idle",
            "50",
            "--big-mib",
            "8",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert (out / "report.md").exists()
    for name in rows:
        assert results["rows"][name]["skipped"] is None, results["rows"][name]["skipped"]
        check = results["routing"][name]
        assert check["routes_a"], name
        if name != "direct":
            assert check["routes_b"] and check["refuses_unknown"], (name, check)
    failed = [
        (s["row"], s["workload"], s["metrics"]["failed"])
        for s in results["samples"]
        if "failed" in s["metrics"]
    ]
    assert not failed, failed
    summary = results["summary"]
    for name in rows:
        assert summary["new-conn"][name]["rate"]["median"] > 0
        assert summary["keep-alive"][name]["rate"]["median"] > 0
        assert summary["large-stream"][name]["mib_s"]["median"] > 0
        assert summary["idle-conns"][name]["open"]["median"] == 50
        if name != "direct":
            assert summary["hello-heavy"][name]["cpu_us_per_op"]["median"] > 0
