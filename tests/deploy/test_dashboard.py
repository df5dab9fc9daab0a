"""The Grafana dashboard is well-formed and every query asks for real sniffer metrics.

No Grafana here: the checks are on the JSON model. Every panel has a query; every
`sniffer_*` name in a query is a metric in the contract (histograms via _bucket); every
`by (...)` label is one those metrics carry; every query parses as PromQL (promtool, with
Grafana's variables substituted). test_dashboard_prometheus.py then runs the queries
against a live Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.contract import METRICS, TARGET_LABELS, base_metric
from tests.deploy.support import MANIFESTS, find, render, require_tool

DASHBOARD = MANIFESTS / "grafana" / "sniffer.json"
TENANT_QUERY = "label_values(sniffer_connections_active, tenant)"
# The brief's panel list: each entry must be covered by a panel whose title matches.
REQUIRED_PANELS = (
    r"^Active connections per tenant$",
    r"^New connections/s per tenant and backend$",
    r"^Bytes/s client → backend$",
    r"^Bytes/s backend → client$",
    r"^Connection duration p50 / p99$",
    r"^Backend connect errors",
    r"^Backend connect latency",
    r"^Refusals/s by reason$",
    r"^Route update lag",
    r"^Watch health$",
    r"^Workers alive$",
    r"^Route table size$",
)


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in load()["panels"] if p["type"] != "row"]


def substitute(expr: str, tenant: str = ".*", rate_interval: str = "1m") -> str:
    """Grafana's variables as Grafana would expand them for a Prometheus query."""
    return expr.replace("$tenant", tenant).replace("$__rate_interval", rate_interval)


def test_committed_json_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location(
        "generate_dashboard", MANIFESTS / "grafana" / "generate_dashboard.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert DASHBOARD.read_text(encoding="utf-8") == module.render(), (
        "sniffer.json is stale: run python manifests/grafana/generate_dashboard.py"
    )


def test_dashboard_model() -> None:
    dash = load()
    assert dash["title"] == "sniffer" and dash["uid"]
    assert dash["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    tenant = variables["tenant"]
    assert tenant["type"] == "query"
    assert tenant["query"] == TENANT_QUERY
    assert tenant["multi"] and tenant["includeAll"]
    assert tenant["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in load()["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))


def test_required_panels_present() -> None:
    titles = [p["title"] for p in panels()]
    for pattern in REQUIRED_PANELS:
        assert any(re.search(pattern, t) for t in titles), f"no panel for {pattern}"


def test_every_panel_has_queries_on_the_datasource_variable() -> None:
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        assert p.get("description"), f"{p['title']} has no description"
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']} has no unit"
        for t in p["targets"]:
            assert t["expr"].strip(), f"{p['title']}: empty query"
            assert t["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))


def test_queries_use_only_contract_metrics_and_labels() -> None:
    used_metrics: set[str] = set()
    for p in panels():
        for t in p["targets"]:
            expr = t["expr"]
            names = set(re.findall(r"\bsniffer_[a-z0-9_]+\b", expr))
            assert names, f"{p['title']}: query uses no sniffer metric: {expr}"
            bases = set()
            for name in names:
                base = base_metric(name)
                assert base is not None, f"{p['title']}: {name} is not a sniffer metric"
                if METRICS[base][0] == "histogram":
                    assert name.endswith("_bucket"), f"{p['title']}: use {base}_bucket"
                bases.add(base)
            used_metrics |= bases
            labels = set().union(*(METRICS[b][1] for b in bases)) | TARGET_LABELS | {"le"}
            for group in re.findall(r"\b(?:by|without) \(([^)]*)\)", expr):
                for label in (x.strip() for x in group.split(",")):
                    assert label in labels, f"{p['title']}: {label} is not a label of {bases}"
            for label in re.findall(r"[{,]\s*([a-z_]+)\s*(?:=~|!=|!~|=)", expr):
                assert label in labels, f"{p['title']}: selector on unknown label {label}"
            if any("tenant" in METRICS[b][1] for b in bases):
                assert 'tenant=~"$tenant"' in expr, f"{p['title']}: ignores $tenant"
    # Every metric of the contract appears somewhere on the dashboard.
    assert set(METRICS) - used_metrics == set(), "metrics without a panel"


def test_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule) after variable substitution."""
    promtool = require_tool("promtool")
    rules = []
    for p in panels():
        for t in p["targets"]:
            rules.append(
                {
                    "record": f"dashboard:panel_{p['id']}:{t['refId'].lower()}",
                    "expr": substitute(t["expr"], tenant="tenant-a|tenant-b"),
                }
            )
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_configmap_wraps_the_dashboard_for_the_sidecar() -> None:
    cm = find(render("grafana"), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["name"] == "sniffer-grafana-dashboard", "no hash suffix"
    assert json.loads(cm["data"]["sniffer.json"]) == load()


def test_substitute() -> None:
    expr = 'sum(rate(sniffer_bytes_total{tenant=~"$tenant"}[$__rate_interval]))'
    assert substitute(expr, "a|b", "15s") == 'sum(rate(sniffer_bytes_total{tenant=~"a|b"}[15s]))'
