"""The ClusterRole grants exactly what sniffer's Kubernetes source uses, and nothing more.

Compared as (api_group, resource, verbs) triples, one per resource, with the constant
RBAC_RULES that sniffer/routing/sources/kubernetes/kinds.py exports next to the code
that makes the calls; and with the brief's contract (contract.EXPECTED_RBAC), so the
manifest is pinned even before that module exists.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import pytest

from tests.deploy.contract import EXPECTED_RBAC
from tests.deploy.support import find, render

Triple = tuple[str, str, frozenset[str]]


def _expand(rules: Iterable[dict[str, Any]]) -> set[Triple]:
    out: set[Triple] = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected keys in {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.add((group, resource, frozenset(rule["verbs"])))
    return out


def _normalise(rules: Iterable[tuple[str, str, Iterable[str]]]) -> set[Triple]:
    out: set[Triple] = set()
    for group, resource, verbs in rules:
        out.add((group, resource, frozenset(verbs)))
    return out


def _manifest_rules() -> set[Triple]:
    role = find(render("base"), "ClusterRole", "sniffer")
    triples = _expand(role["rules"])
    keys = [(g, r) for g, r, _ in triples]
    assert len(keys) == len(set(keys)), "a resource appears in two rules: merge them"
    return triples


def test_cluster_role_matches_code() -> None:
    try:
        kinds = importlib.import_module("sniffer.routing.sources.kubernetes.kinds")
    except ModuleNotFoundError as exc:
        pytest.skip(
            f"sniffer.routing.sources.kubernetes.kinds not importable yet ({exc}); the "
            "manifest is still checked against the brief's contract by the test below"
        )
    rules = getattr(kinds, "RBAC_RULES", None)
    assert rules is not None, "kinds.py exists but exports no RBAC_RULES"
    in_code = _normalise(rules)
    in_manifest = _manifest_rules()
    assert in_manifest == in_code, (
        f"only in manifest: {sorted(in_manifest - in_code)}; "
        f"only in code: {sorted(in_code - in_manifest)}"
    )


def test_cluster_role_matches_contract() -> None:
    assert _manifest_rules() == _normalise(EXPECTED_RBAC)


def test_cluster_role_is_read_only_except_status() -> None:
    for group, resource, verbs in _manifest_rules():
        assert "*" not in (group, resource) and "*" not in verbs, "no wildcards"
        assert resource != "secrets", "sniffer never terminates TLS: no Secrets"
        writes = verbs - {"get", "list", "watch"}
        if writes:
            assert resource.endswith("/status"), f"write verbs {writes} on {resource}"
            assert writes <= {"update", "patch"}


def _binds_service_account(binding: dict[str, Any], sa: dict[str, Any]) -> None:
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"],
        }
    ]


def test_binding_grants_the_role_to_the_daemonsets_account() -> None:
    objs = render("base")
    binding = find(objs, "ClusterRoleBinding", "sniffer")
    sa = find(objs, "ServiceAccount", "sniffer")
    ds = find(objs, "DaemonSet", "sniffer")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "sniffer",
    }
    _binds_service_account(binding, sa)
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert ds["metadata"]["namespace"] == sa["metadata"]["namespace"]


def test_lease_role_is_namespaced_and_matches_code() -> None:
    """Leader election: get/create/update on leases, in sniffer's namespace only."""
    leader = importlib.import_module("sniffer.routing.sources.kubernetes.leader")
    objs = render("base")
    role = find(objs, "Role", "sniffer-leader-election")
    sa = find(objs, "ServiceAccount", "sniffer")
    assert role["metadata"]["namespace"] == sa["metadata"]["namespace"]
    assert _expand(role["rules"]) == _normalise(leader.LEASE_RBAC_RULES)
    cluster_wide = {resource for _, resource, _ in _manifest_rules()}
    assert "leases" not in cluster_wide, "leases belong in the namespaced Role only"
    binding = find(objs, "RoleBinding", "sniffer-leader-election")
    assert binding["metadata"]["namespace"] == sa["metadata"]["namespace"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "sniffer-leader-election",
    }
    _binds_service_account(binding, sa)


def test_daemonset_gives_the_pod_its_lease_identity() -> None:
    """POD_NAME and POD_NAMESPACE from the downward API (read by `serve`'s lease flags)."""
    ds = find(render("base"), "DaemonSet", "sniffer")
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}) for e in container["env"]}
    assert env["POD_NAME"] == {"fieldPath": "metadata.name"}
    assert env["POD_NAMESPACE"] == {"fieldPath": "metadata.namespace"}
