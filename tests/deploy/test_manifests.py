"""Every manifest parses, renders with kustomize, and validates against its API schema.

Built-in kinds go through kubernetes-validate (the API server's OpenAPI schemas, strict:
unknown fields are errors) at the oldest and newest Kubernetes versions we claim. Gateway
API and Prometheus Operator kinds are checked with jsonschema against the
openAPIV3Schema of the matching served version in the upstream CRDs (shared/crds), also
with unknown fields rejected. CEL rules (x-kubernetes-validations) are only enforced by a
real API server and are not checked here.

Then the DaemonSet's operational invariants, which no schema knows: ports, probes, drain
grace, security context, workers from the CPU limit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    KUSTOMIZATIONS,
    MANIFESTS,
    crd_schemas,
    find,
    iter_manifest_files,
    kustomization,
    load_docs,
    render,
    require_module,
)

# Oldest supported and newest available in kubernetes-validate.
K8S_VERSIONS = ("1.30.0", "1.37.0")
CRD_GROUPS = {"gateway.networking.k8s.io", "monitoring.coreos.com"}
# Files in a kustomization directory that kustomization.yaml deliberately leaves out.
STANDALONE = {MANIFESTS / "examples/tenant/tlsroute-v1alpha2.yaml"}


def _with_components() -> list[str]:
    """KUSTOMIZATIONS and the components they use (kind: Component, not built alone)."""
    out = list(KUSTOMIZATIONS)
    for dirname in KUSTOMIZATIONS:
        for comp in kustomization(dirname).get("components", []):
            name = str((MANIFESTS / dirname / comp).resolve().relative_to(MANIFESTS.resolve()))
            if name not in out:
                out.append(name)
    return out


def _patch_files() -> set[Path]:
    out = set()
    for dirname in _with_components():
        for patch in kustomization(dirname).get("patches", []):
            if "path" in patch:
                out.add((MANIFESTS / dirname / patch["path"]).resolve())
    return out


def _object_files() -> list[Path]:
    patches = _patch_files()
    return [
        p
        for p in iter_manifest_files()
        if p.name != "kustomization.yaml" and p.resolve() not in patches
    ]


def validate(obj: dict[str, Any]) -> None:
    jsonschema = require_module("jsonschema", "jsonschema")
    kubernetes_validate = require_module("kubernetes_validate", "kubernetes-validate")
    api_version, kind = obj["apiVersion"], obj["kind"]
    group, _, version = api_version.rpartition("/")
    where = f"{kind} {obj.get('metadata', {}).get('name')}"
    if group in CRD_GROUPS:
        schema = crd_schemas().get((group, version, kind))
        assert schema is not None, f"{where}: no served CRD version {api_version} for {kind}"
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(obj), key=lambda e: e.json_path
        )
        assert not errors, f"{where}: " + "; ".join(f"{e.json_path}: {e.message}" for e in errors)
        assert obj["metadata"].get("name"), f"{where}: no metadata.name"
        return
    for k8s in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, k8s, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} invalid for Kubernetes {k8s}: {exc.message} at {exc.path}")


# -- files ---------------------------------------------------------------------------------


def test_manifest_tree_is_what_the_kustomizations_reference() -> None:
    """No orphan: every YAML file is a kustomization, a patch, a resource or declared extra."""
    referenced: set[Path] = set()
    for dirname in _with_components():
        k = kustomization(dirname)
        base = MANIFESTS / dirname
        for res in k.get("resources", []):
            target = (base / res).resolve()
            assert target.exists(), f"{dirname}: resource {res} does not exist"
            referenced.add(target)
        for patch in k.get("patches", []):
            target = (base / patch["path"]).resolve()
            assert target.is_file(), f"{dirname}: patch {patch['path']} does not exist"
            referenced.add(target)
    for path in iter_manifest_files():
        if path.name == "kustomization.yaml" or path in STANDALONE:
            continue
        assert path.resolve() in referenced, f"{path.relative_to(MANIFESTS)} is in no kustomization"
    kustomized_dirs = {(MANIFESTS / d).resolve() for d in _with_components()}
    for path in iter_manifest_files():
        if path.name == "kustomization.yaml":
            assert path.parent.resolve() in kustomized_dirs, f"{path} not in KUSTOMIZATIONS"


@pytest.mark.parametrize("path", _object_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_file_validates(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    for obj in docs:
        assert {"apiVersion", "kind", "metadata"} <= obj.keys(), f"{path}: not an object"
        validate(obj)


# -- kustomize ------------------------------------------------------------------------------


@pytest.mark.parametrize("dirname", KUSTOMIZATIONS)
def test_kustomization_renders_and_validates(dirname: str) -> None:
    objs = render(dirname)
    assert objs, f"kustomize {dirname} rendered nothing"
    seen = set()
    for obj in objs:
        key = (
            obj["apiVersion"],
            obj["kind"],
            obj["metadata"].get("namespace"),
            obj["metadata"]["name"],
        )
        assert key not in seen, f"{dirname}: duplicate {key}"
        seen.add(key)
        validate(obj)


def test_base_has_every_required_object() -> None:
    objs = render("base")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert kinds == {
        ("Namespace", "sniffer-system"),
        ("ServiceAccount", "sniffer"),
        ("ClusterRole", "sniffer"),
        ("ClusterRoleBinding", "sniffer"),
        ("Role", "sniffer-leader-election"),
        ("RoleBinding", "sniffer-leader-election"),
        ("PriorityClass", "sniffer-edge"),
        ("DaemonSet", "sniffer"),
        ("Service", "sniffer-metrics"),
        ("IngressClass", "sniffer"),
        ("GatewayClass", "sniffer"),
        ("Gateway", "sniffer"),
    }
    for obj in objs:
        cluster_scoped = obj["kind"] in {
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "PriorityClass",
            "IngressClass",
            "GatewayClass",
        }
        ns = obj["metadata"].get("namespace")
        assert (ns is None) if cluster_scoped else (ns == "sniffer-system"), obj["kind"]


def test_classes_name_sniffers_controllers() -> None:
    objs = render("base")
    assert find(objs, "IngressClass")["spec"]["controller"] == "sniffer.dev/ingress-controller"
    gc = find(objs, "GatewayClass")
    assert gc["spec"]["controllerName"] == "sniffer.dev/gateway-controller"
    gw = find(objs, "Gateway")
    assert gw["spec"]["gatewayClassName"] == gc["metadata"]["name"]
    (listener,) = gw["spec"]["listeners"]
    assert (listener["protocol"], listener["port"], listener["tls"]["mode"]) == (
        "TLS",
        443,
        "Passthrough",
    )
    args = _container(find(objs, "DaemonSet"))["args"]
    assert f"--ingress-class={find(objs, 'IngressClass')['metadata']['name']}" in args
    assert f"--gateway-class={gc['metadata']['name']}" in args


def test_tenant_example_routes_attach_to_sniffer() -> None:
    base = render("base")
    tenant = render("examples/tenant")
    ns = find(tenant, "Namespace")["metadata"]["name"]
    svc = find(tenant, "Service", "router")
    ing = find(tenant, "Ingress")
    assert ing["spec"]["ingressClassName"] == find(base, "IngressClass")["metadata"]["name"]
    svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    for rule in ing["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "router"
            assert backend["port"]["name"] in svc_ports
    gw = find(base, "Gateway")
    v1alpha2 = load_docs(MANIFESTS / "examples/tenant/tlsroute-v1alpha2.yaml")
    routes = [find(tenant, "TLSRoute"), *v1alpha2]
    for route in routes:
        (parent,) = route["spec"]["parentRefs"]
        assert (parent["name"], parent["namespace"]) == (
            gw["metadata"]["name"],
            gw["metadata"]["namespace"],
        )
        assert parent["sectionName"] == gw["spec"]["listeners"][0]["name"]
        (rule,) = route["spec"]["rules"]
        (ref,) = rule["backendRefs"]
        assert ref["name"] == "router" and ref["port"] in svc_ports.values()
    assert routes[0]["spec"] == routes[1]["spec"], "v1 and v1alpha2 examples drifted apart"
    for obj in tenant:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == ns


# -- DaemonSet invariants ---------------------------------------------------------------------


def _container(ds: dict[str, Any]) -> dict[str, Any]:
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return container


def _flag(args: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]


@pytest.mark.parametrize(
    "dirname", ["base", "overlays/hostnetwork", "overlays/edge-nodes", "overlays/kernel-relay"]
)
def test_daemonset_ports_probes_and_drain(dirname: str) -> None:
    objs = render(dirname)
    ds = find(objs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = _container(ds)
    args = c["args"]
    assert args[:2] == ["serve", "--kubernetes"]

    # Listeners: tls, http and quic (UDP, port h3), on the container ports that hostPort
    # 443/80 map to.
    ports = {p["name"]: p for p in c["ports"]}
    listens = dict(v.split(":", 1) for v in _flag(args, "listen"))
    assert set(listens) == {"tls", "http", "quic"}
    assert ports["h3"]["protocol"] == "UDP"
    assert [ports[n]["protocol"] for n in ("tls", "http", "admin")] == ["TCP"] * 3
    for kind, name, host_port in (("tls", "tls", 443), ("http", "http", 80), ("quic", "h3", 443)):
        port = ports[name]
        assert port["hostPort"] == host_port
        bound, _, public = listens[kind].partition("@")
        assert bound.rsplit(":", 1)[1] == str(port["containerPort"])
        # Gateway listeners say port 443: sniffer must know that is where clients arrive.
        assert int(public or bound.rsplit(":", 1)[1]) == host_port
        if pod.get("hostNetwork"):
            assert port["containerPort"] == port["hostPort"]

    # Admin endpoint: the probes, the Service, the annotations all point at --admin.
    (admin,) = _flag(args, "admin")
    admin_port = int(admin.rsplit(":", 1)[1])
    assert ports["admin"]["containerPort"] == admin_port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    notes = ds["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(admin_port)
    assert notes["prometheus.io/path"] == "/metrics"
    svc = find(objs, "Service", "sniffer-metrics")
    assert svc["spec"]["ports"][0]["targetPort"] == "admin"
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # Drain: the kubelet's deadline is the drain grace plus 5 s to exit.
    (grace,) = _flag(args, "drain-grace")
    assert pod["terminationGracePeriodSeconds"] == int(grace) + 5
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }

    # Workers: from the CPU limit, through the downward API.
    (workers,) = _flag(args, "workers")
    var = re.fullmatch(r"\$\((\w+)\)", workers)
    assert var, f"--workers={workers} should come from an env var"
    (env,) = [e for e in c["env"] if e["name"] == var.group(1)]
    assert env["valueFrom"]["resourceFieldRef"] == {
        "containerName": c["name"],
        "resource": "limits.cpu",
        "divisor": "1",
    }
    resources = c["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()

    assert pod["serviceAccountName"] == "sniffer"
    assert pod["priorityClassName"] == find(objs, "PriorityClass")["metadata"]["name"]
    assert pod["nodeSelector"]["kubernetes.io/os"] == "linux"
    assert any(t["key"] == "node-role.kubernetes.io/edge" for t in pod["tolerations"])


def test_daemonset_security_context_default() -> None:
    ds = find(render("base"), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = _container(ds)
    assert "hostNetwork" not in pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    # Unprivileged container ports: no capability at all is needed or granted.
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert all(p["containerPort"] >= 1024 for p in c["ports"])
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts, "read-only root needs a writable /tmp"


def test_hostnetwork_overlay() -> None:
    ds = find(render("overlays/hostnetwork"), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = _container(ds)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    sc = c["securityContext"]
    # Binds the node's 443/80 itself: exactly one capability, nothing else relaxed.
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    base = _container(find(render("base"), "DaemonSet"))
    # Everything but the listen addresses is the same as the base's arguments.
    strip = [a for a in base["args"] if not a.startswith("--listen=")]
    assert [a for a in c["args"] if not a.startswith("--listen=")] == strip


def test_kernel_relay_component_grants_bpf_and_net_admin_only() -> None:
    ds = find(render("overlays/kernel-relay"), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = _container(ds)
    sc = c["securityContext"]
    # uid 0 (no ambient capabilities in Kubernetes) with exactly the two capabilities
    # the sockmap program needs; nothing else relaxed.
    assert pod["securityContext"]["runAsUser"] == 0
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "NET_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    base = _container(find(render("base"), "DaemonSet"))
    assert c["args"] == [*base["args"], "--kernel-relay=on"]


def test_edge_nodes_overlay_only_adds_the_selector() -> None:
    base = find(render("base"), "DaemonSet")
    edge = find(render("overlays/edge-nodes"), "DaemonSet")
    assert edge["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/os": "linux",
        "node-role.kubernetes.io/edge": "",
    }
    del edge["spec"]["template"]["spec"]["nodeSelector"]
    del base["spec"]["template"]["spec"]["nodeSelector"]
    assert edge == base
