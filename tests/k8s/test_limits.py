"""Limits from Kubernetes annotations: a tenant's on its Namespace, a backend's on its
Service; malformed ones are reported (log, counter, route-table problems) and ignored."""

from __future__ import annotations

import copy

import pytest

from sniffer.observe import metrics
from sniffer.routing.sources.kubernetes.limits import limits_from_annotations
from sniffer.routing.table import Limits, RouteTable
from tests.kubeapi import objects as o


def test_annotations_translate_to_limits() -> None:
    lim, problems = limits_from_annotations(
        [
            ("sniffer.dev/max-connections", "300"),
            ("sniffer.dev/connections-per-second", "12.5"),
            ("sniffer.dev/connections-burst", " 40 "),
        ],
        "tenant",
        "Namespace team-a",
    )
    assert problems == []
    assert lim == Limits(300, 12.5, 40, None, "Namespace team-a annotations")


@pytest.mark.parametrize(
    ("key", "value", "scope"),
    [
        ("sniffer.dev/max-connections", "many", "tenant"),
        ("sniffer.dev/max-connections", "-1", "backend"),
        ("sniffer.dev/connections-burst", "1.5", "tenant"),
        ("sniffer.dev/connections-per-second", "nan", "backend"),
        ("sniffer.dev/connections-per-second", "0", "tenant"),
        ("sniffer.dev/max-pending-dials", "10", "tenant"),  # per backend only
    ],
)
def test_a_malformed_annotation_is_reported_and_ignored(key: str, value: str, scope: str) -> None:
    lim, problems = limits_from_annotations(
        [
            (key, value),
            (
                "sniffer.dev/max-connections"
                if "max-conn" not in key
                else "sniffer.dev/connections-burst",
                "7",
            ),
        ],
        scope,
        "Service team-a/web" if scope == "backend" else "Namespace team-a",
    )
    assert len(problems) == 1 and key in problems[0] and "ignored" in problems[0]
    assert lim.values() in ({"max_connections": 7}, {"burst": 7})  # the good one applies


async def test_namespace_and_service_annotations_reach_the_table(
    api_server, harness_factory
) -> None:
    api_server.create(
        o.namespace(
            "team-a",
            None,
            {"sniffer.dev/max-connections": "300", "sniffer.dev/connections-per-second": "50"},
        )
    )
    api_server.create(
        o.service(
            "team-a",
            "web",
            annotations={
                "sniffer.dev/max-connections": "200",
                "sniffer.dev/max-pending-dials": "8",
            },
        )
    )
    api_server.create(o.endpoint_slice("team-a", "web", ["10.0.0.1"]))
    api_server.create(o.ingress("team-a", "ing", [("a.team-a.example", "web", 443)]))
    h = harness_factory()
    await h.start()
    await h.routes_to("a.team-a.example", "team-a/web:443")
    table = h.table
    tenant = table.effective_limits("tenant", "team-a")
    assert tenant["max_connections"].value == 300
    assert tenant["connections_per_second"].value == 50
    assert tenant["max_connections"].source == "Namespace team-a annotations"
    backend = table.effective_limits("backend", "team-a/web:443")
    assert backend["max_connections"].value == 200 and backend["max_pending_dials"].value == 8
    assert backend["max_connections"].source == "Service team-a/web annotations"
    # route-table -o json shows them under the tenant's and the backend's `limits`.
    data = table.to_dict()
    (t,) = [t for t in data["tenants"] if t["name"] == "team-a"]
    assert t["limits"]["max_connections"] == {"value": 300, "from": "Namespace team-a annotations"}
    assert RouteTable.from_dict(data).effective_limits("tenant", "team-a") == tenant

    # A changed annotation changes the limit without a restart; a malformed one is
    # reported once (log, counter, problems) and ignored: the other annotation stays.
    def errors() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "sniffer_annotation_errors_total", {"kind": "Namespace"}
        )
        return value or 0.0

    before = errors()
    ns = copy.deepcopy(api_server.get("Namespace", None, "team-a"))
    ns["metadata"]["annotations"]["sniffer.dev/max-connections"] = "lots"
    api_server.update(ns)
    await h.until(lambda: "max_connections" not in h.table.effective_limits("tenant", "team-a"))
    assert h.table.effective_limits("tenant", "team-a")["connections_per_second"].value == 50
    assert any("sniffer.dev/max-connections='lots'" in p for p in h.source.problems())
    assert errors() == before + 1
    await h.stop()
