"""The alerts load into Prometheus, fire when they should, and watch real sniffer metrics.

`promtool check rules` parses the PrometheusRule's spec.groups as a rule file (what the
Prometheus Operator hands to Prometheus); `promtool test rules` runs rules_test.yaml, which
feeds synthetic series and asserts which alerts fire, with which labels and text. The
ServiceMonitor must select the Service that exposes sniffer's admin port.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.contract import METRICS, TARGET_LABELS, base_metric
from tests.deploy.support import find, render, require_tool

HERE = Path(__file__).parent


def _rule_groups() -> list[dict[str, Any]]:
    rule = find(render("monitoring"), "PrometheusRule", "sniffer")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def _write_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": _rule_groups()}, sort_keys=False))
    return path


def test_promtool_check_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = _write_rules(tmp_path)
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count = sum(len(g["rules"]) for g in _rule_groups())
    assert f"SUCCESS: {count} rules found" in proc.stdout


def test_promtool_unit_tests_of_alerts(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    _write_rules(tmp_path)
    shutil.copy(HERE / "rules_test.yaml", tmp_path / "rules_test.yaml")
    proc = subprocess.run(
        [promtool, "test", "rules", "rules_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((HERE / "rules_test.yaml").read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", [])}
    alerts = {r["alert"] for g in _rule_groups() for r in g["rules"]}
    # Single-gauge threshold alerts without `for` logic worth testing are listed here.
    untested_on_purpose = {"SnifferRouteTableReloadFailing", "SnifferRouteConflicts"}
    assert alerts - tested == untested_on_purpose


def test_required_alerts_exist_with_severity_and_text() -> None:
    alerts = {r["alert"]: r for g in _rule_groups() for r in g["rules"]}
    for required in (
        "SnifferRoutedHostNoEndpoints",  # no endpoints for a routed host
        "SnifferRefusalRateHigh",  # refusal rate up
        "SnifferRouteUpdateLagHigh",  # route update lag high
        "SnifferWatchDown",  # watch failing
        "SnifferWatchErrors",
        "SnifferWorkerRestarts",  # worker restarts
        "SnifferNoLeader",  # no leader in the fleet
        "SnifferStatusWritesFailing",  # status writes failing
        "SnifferTenantAtLimit",  # a tenant held at its limit
        "SnifferShedding",  # the process shedding load
        "SnifferAccessLogDropped",  # access-log lines dropped
        "SnifferEventLoopLag",  # sustained loop lag
    ):
        assert required in alerts
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_alert_has_a_runbook_entry() -> None:
    runbook = (HERE.parents[1] / "docs" / "runbook.md").read_text()
    # GitHub's anchor of a "## Name" heading is the lower-cased name.
    anchors = {h.strip().lower() for h in re.findall(r"^## (\w+)$", runbook, re.MULTILINE)}
    for group in _rule_groups():
        for rule in group["rules"]:
            link = rule["annotations"].get("runbook", "")
            assert link == f"docs/runbook.md#{rule['alert'].lower()}", rule["alert"]
            assert rule["alert"].lower() in anchors, f"docs/runbook.md has no ## {rule['alert']}"
            entry = runbook.split(f"## {rule['alert']}\n", 1)[1].split("\n## ", 1)[0]
            assert "**Means**" in entry and "**Do**" in entry, rule["alert"]


def test_alert_expressions_use_only_sniffer_metrics() -> None:
    for group in _rule_groups():
        for rule in group["rules"]:
            names = set(re.findall(r"\bsniffer_[a-z0-9_]+\b", rule["expr"]))
            assert names, f"{rule['alert']} uses no sniffer metric"
            unknown = {n for n in names if base_metric(n) is None}
            assert not unknown, f"{rule['alert']}: not sniffer metrics: {unknown}"
            for label in re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"]):
                for name in (x.strip() for x in label.split(",")):
                    used = {base_metric(n) for n in names}
                    known = set().union(*(METRICS[m][1] for m in used if m)) | TARGET_LABELS
                    assert name in known | {"le"}, f"{rule['alert']}: by ({name}) not a label"


def test_service_monitor_selects_the_metrics_service() -> None:
    base = render("base")
    sm = find(render("monitoring"), "ServiceMonitor", "sniffer")
    svc = find(base, "Service", "sniffer-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
