"""The report's reading of a run: which samples count and what it concludes."""

from __future__ import annotations

from typing import Any

from benchmarks.report import kernel_floor, summarize


def results(samples: list[dict[str, Any]], rows: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rows": {r: {"skipped": None} for r in rows},
        "samples": samples,
    }
    out["summary"] = summarize(out)
    return out


def per_op(row: str, total: float, user: float, rep: int = 0) -> dict[str, Any]:
    return {
        "rep": rep,
        "workload": "new-conn",
        "row": row,
        "metrics": {"cpu_us_per_op": total, "user_us_per_op": user},
    }


def test_a_limit_below_every_rows_kernel_share_is_called_unreachable() -> None:
    r = results(
        [per_op("sniffer", 280, 90), per_op("haproxy", 220, 30), per_op("nginx", 200, 20)],
        ["sniffer", "haproxy", "nginx"],
    )
    text = "\n".join(kernel_floor(r))
    assert "| new-conn | 160.0 (nginx) | 90.0 / 190.0 | 30.0 / 190.0 | 20.0 / 180.0 |" in text
    assert "cannot be met by any proxy here" in text


def test_a_reachable_limit_is_not_called_unreachable() -> None:
    # nginx spends most of its time in its own code: 0.8x its total is above the kernel's.
    r = results([per_op("sniffer", 150, 60), per_op("nginx", 200, 120)], ["sniffer", "nginx"])
    text = "\n".join(kernel_floor(r))
    assert "| new-conn | 160.0 (nginx) |" in text
    assert "cannot be met" not in text


def test_idle_memory_counts_only_samples_from_a_fresh_process() -> None:
    def idle(rep: int, pss: float, fresh: bool | None) -> dict[str, Any]:
        m: dict[str, Any] = {"pss_per_conn": pss}
        if fresh is not None:
            m["fresh_process"] = fresh
        return {"rep": rep, "workload": "idle-conns", "row": "sniffer", "metrics": m}

    # Old results (no flag): only the first repeat ran in a fresh process.
    old = results([idle(0, 3200, None), idle(1, 600, None), idle(2, 580, None)], ["sniffer"])
    assert old["summary"]["idle-conns"]["sniffer"]["pss_per_conn"]["median"] == 3200
    new = results([idle(0, 3200, True), idle(1, 3210, True), idle(2, 3190, True)], ["sniffer"])
    assert new["summary"]["idle-conns"]["sniffer"]["pss_per_conn"]["n"] == 3
