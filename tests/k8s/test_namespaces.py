"""The Namespace informer: labels and `sniffer.dev/*` annotations, dirtying its namespace."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable

import pytest

from sniffer.routing.sources.kubernetes import KubernetesSettings, compute_spec
from sniffer.routing.sources.kubernetes.fields import MalformedObject
from sniffer.routing.sources.kubernetes.parsers import parse_namespace
from tests.k8s.conftest import TLS
from tests.kubeapi import objects as o


def test_parse_keeps_labels_and_only_sniffer_annotations() -> None:
    rec = parse_namespace(
        o.namespace(
            "team-a",
            {"tier": "gold"},
            {
                "sniffer.dev/max-connections": "100",
                "kubectl.kubernetes.io/last-applied-configuration": "{...}",
            },
        )
    )
    assert rec.name == "team-a"
    assert rec.label_map() == {"kubernetes.io/metadata.name": "team-a", "tier": "gold"}
    assert rec.annotations == (("sniffer.dev/max-connections", "100"),)
    assert rec.annotation("sniffer.dev/max-connections") == "100"
    assert rec.annotation("sniffer.dev/connections-burst") is None


def test_parse_rejects_a_non_string_label() -> None:
    obj = o.namespace("team-a")
    obj["metadata"]["labels"]["tier"] = 3
    with pytest.raises(MalformedObject, match="labels"):
        parse_namespace(obj)


async def _poll(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `pred` (a cache read with no event to wait on) within a bounded time."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


async def test_namespace_changes_reach_the_view_and_dirty_that_namespace(
    api_server, harness_factory
) -> None:
    api_server.create(o.namespace("team-a", {"tier": "gold"}, {"sniffer.dev/max-connections": "5"}))
    api_server.create(o.namespace("team-b"))
    for ns in ("team-a", "team-b"):
        api_server.create(o.service(ns, "web"))
        api_server.create(o.endpoint_slice(ns, "web", ["10.0.0.1"]))
        api_server.create(o.ingress(ns, "ing", [("a." + ns + ".example", "web", 443)]))
    h = harness_factory()
    await h.start()
    view = h.source.view
    rec = view.namespace("team-a")
    assert rec is not None and rec.label_map()["tier"] == "gold"
    assert rec.annotation("sniffer.dev/max-connections") == "5"
    assert view.namespace("nowhere") is None

    translated = h.source.namespaces_translated
    ns = copy.deepcopy(api_server.get("Namespace", None, "team-a"))
    ns["metadata"]["labels"]["tier"] = "silver"
    api_server.update(ns)
    await _poll(lambda: view.namespace("team-a").label_map()["tier"] == "silver")  # type: ignore[union-attr]
    # The change re-translates team-a, and only it.
    await _poll(lambda: h.source.namespaces_translated > translated)
    assert h.source.namespaces_translated == translated + 1

    api_server.delete("Namespace", None, "team-b")
    await _poll(lambda: view.namespace("team-b") is None)


async def test_one_shot_table_without_namespace_rights(api_server, kubeconfig) -> None:
    """`route-table -n` as a user who may not list Namespaces: a table and a problem."""
    api_server.create(o.service("team-a", "web"))
    api_server.create(o.endpoint_slice("team-a", "web", ["10.0.0.1"]))
    api_server.create(o.ingress("team-a", "ing", [("a.example", "web", 443)]))
    api_server.forbidden_resources.add("namespaces")
    settings = KubernetesSettings(kubeconfig=str(kubeconfig), write_status=False)
    spec, problems = await compute_spec(settings, (TLS,))
    assert [r.host for r in spec.routes] == ["a.example"]
    assert any("Namespaces not readable" in p for p in problems)
