"""`sniffer route-table --kubeconfig ...` run as a user would, against the API test server.

`-A` computes the table of the whole cluster; `-n NS` (repeatable) that of the named
namespaces only, with namespaced requests alone (what a user whose RBAC stops at their
own namespaces can make); `--host` explains a name. Nothing is written to the cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import REPO, SNIFFER
from tests.kubeapi import objects as o
from tests.kubeapi.server import KubeApiServer
from tests.support.prereq import missing


@pytest.fixture(autouse=True)
def _sniffer_installed() -> None:
    if not SNIFFER.exists():
        missing(f"{SNIFFER} not found: pip install -e '.[dev]' in the repository's .venv")


async def _route_table(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    """Run the command without blocking the loop the API test server answers on."""
    proc = await asyncio.create_subprocess_exec(
        str(SNIFFER),
        "route-table",
        "--kubeconfig",
        str(kubeconfig),
        "--listen",
        "tls:127.0.0.1:8443",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _tenants(server: KubeApiServer) -> None:
    for ns, addr in (("team-a", "10.0.0.1"), ("team-b", "10.0.0.2")):
        server.create(o.service(ns, "web"))
        server.create(o.endpoint_slice(ns, "web", [addr]))
        server.create(o.ingress(ns, "web", [(f"app.{ns}.example", "web", 443)]))
    # Another controller's Ingress: never in sniffer's table.
    server.create(
        o.ingress("team-a", "theirs", [("nginx.example", "web", 443)], class_name="nginx")
    )


def _hosts(table: dict[str, Any]) -> dict[str, list[str]]:
    return {r["host"]: [b["name"] for b in r["backends"]] for r in table["routes"]}


async def test_all_namespaces_and_one_namespace(api_server: KubeApiServer, kubeconfig: Path):
    _tenants(api_server)
    writes_before = [r for r in api_server.requests if r[0] != "GET"]

    code, out, err = await _route_table(kubeconfig, "-A", "-o", "json")
    assert code == 0, err
    assert _hosts(json.loads(out)) == {
        "app.team-a.example": ["team-a/web:443"],
        "app.team-b.example": ["team-b/web:443"],
    }

    api_server.requests.clear()
    code, out, err = await _route_table(kubeconfig, "-n", "team-b", "-o", "json")
    assert code == 0, err
    table = json.loads(out)
    assert _hosts(table) == {"app.team-b.example": ["team-b/web:443"]}
    assert [b["name"] for b in table["backends"]] == ["team-b/web:443"]
    # Only team-b's objects were asked for (Namespaces and cluster-scoped classes are
    # not namespaced; everything namespaced went through team-b).
    paths = [path for _, path, _ in api_server.requests]
    namespaced = [p for p in paths if "/namespaces/" in p]
    assert namespaced and all("/namespaces/team-b/" in p for p in namespaced), namespaced
    cluster_wide = [
        p
        for p in paths
        if "/namespaces/" not in p and p.endswith(("/ingresses", "/services", "/endpointslices"))
    ]
    assert cluster_wide == []

    # --host explains a name of the whole cluster.
    code, out, err = await _route_table(
        kubeconfig, "-A", "--host", "APP.team-a.example.", "-o", "json"
    )
    assert code == 0, err
    [explained] = json.loads(out)
    assert explained["match"] == "exact"
    assert explained["route"] == "app.team-a.example"
    assert [b["name"] for b in explained["backends"]] == ["team-a/web:443"]
    assert explained["backends"][0]["endpoints"] == ["10.0.0.1:8443"]

    # A read-only command: nothing was created, replaced, patched or deleted.
    assert [r for r in api_server.requests if r[0] != "GET"] == writes_before == []
