"""Credentials: exec-plugin kubeconfigs renewed on 401, in-cluster tokens re-read, and the
long-running process never importing kubernetes-asyncio's generated client."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import yaml

from sniffer.routing.sources.kubernetes import credentials
from tests.kubeapi import objects as o

REPO = Path(__file__).resolve().parents[2]

EXEC_PLUGIN = """\
import json, pathlib, sys
here = pathlib.Path(sys.argv[1])
with open(here / "runs", "a") as f:
    f.write("run\\n")
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1beta1",
    "kind": "ExecCredential",
    "status": {"token": (here / "token").read_text().strip()},
}))
"""


def _exec_kubeconfig(server, tmp_path: Path) -> Path:
    """A kubeconfig whose user is an exec plugin handing out the token in `token`."""
    (tmp_path / "plugin.py").write_text(EXEC_PLUGIN)
    (tmp_path / "token").write_text(server.token)
    cfg = yaml.safe_load(server.write_kubeconfig(tmp_path / "kubeconfig").read_text())
    cfg["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(tmp_path / "plugin.py"), str(tmp_path)],
            "interactiveMode": "Never",
        }
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tenant(server, ns, host):
    server.create(o.service(ns, "web"))
    server.create(o.endpoint_slice(ns, "web", ["10.0.0.1"]))
    server.create(o.ingress(ns, "x", [(host, "web", 443)]))


async def test_exec_plugin_token_is_renewed_when_the_server_says_401(
    api_server, harness_factory, tmp_path
):
    kubeconfig = _exec_kubeconfig(api_server, tmp_path)
    _tenant(api_server, "team-a", "a.example.com")
    h = harness_factory(kubeconfig=str(kubeconfig))
    await h.start()
    runs = (tmp_path / "runs").read_text().count("run")
    # The token expires: the server wants a new one, which only the plugin knows.
    api_server.token = "rotated-token"
    (tmp_path / "token").write_text("rotated-token")
    api_server.close_watches()
    _tenant(api_server, "team-b", "b.example.com")
    await h.routes_to("b.example.com", "team-b/web:443")
    assert (tmp_path / "runs").read_text().count("run") > runs
    await h.watching()


async def test_in_cluster_token_is_read_directly_and_reread_after_rotation(
    api_server, harness_factory, tmp_path, monkeypatch
):
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(api_server.token + "\n")
    (sa / "ca.crt").write_bytes(api_server.ca_pem)
    monkeypatch.setattr(credentials, "SERVICE_ACCOUNT_DIR", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api_server.port))
    _tenant(api_server, "team-a", "a.example.com")
    h = harness_factory(kubeconfig=None)
    await h.start()
    assert h.lookup("a.example.com")[1] == "team-a/web:443"
    # kubelet rotates the bound token; the old one stops working at once.
    api_server.token = "rotated-token"
    (sa / "token").write_text("rotated-token\n")
    api_server.close_watches()
    _tenant(api_server, "team-b", "b.example.com")
    await h.routes_to("b.example.com", "team-b/web:443")


async def test_kubeconfig_is_loaded_in_a_child_process_into_pem_and_token(api_server, tmp_path):
    # The loader hands back PEM, not paths: kubernetes-asyncio's temporary files do not
    # outlive the child process.
    cfg = yaml.safe_load(api_server.write_kubeconfig(tmp_path / "kubeconfig").read_text())
    creds = await credentials.from_kubeconfig(str(tmp_path / "kubeconfig"))
    assert creds.host == api_server.url
    assert creds.authorization == f"Bearer {api_server.token}"
    ca = base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    assert creds.ca_pem == ca
    creds.ssl_context()


def test_serving_from_kubernetes_never_imports_the_generated_client():
    code = (
        "import sys, json;"
        "import sniffer.cli, sniffer.app;"
        "from sniffer.routing.sources.kubernetes import KubernetesSource, compute_spec;"
        "import sniffer.routing.sources.kubernetes.source;"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kubernetes_asyncio'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []
