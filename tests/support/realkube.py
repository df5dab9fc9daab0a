"""A real etcd + kube-apiserver for tests, and `sniffer serve --kubernetes` pods against it.

It owns the life of one server per pytest session (`../shared/kube-apiserver/up.sh` on free
ports with a private state dir; stopped by the pid files the script writes, never by name),
a real restart (SIGTERM, then `up.sh` again on the same state: same data, certificates and
tokens), what a cluster admin installs before sniffer runs (the Gateway API CRDs of
`../shared/crds/`, the ServiceAccount and RBAC of `manifests/base/`), a ServiceAccount token
from the TokenRequest API in a kubeconfig for sniffer (never the admin's credentials), a
small synchronous admin client, and sniffer subprocesses with a DaemonSet pod's identity
(`POD_NAME`, `POD_NAMESPACE`). It must never touch a process it did not start nor listen
beyond loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
SNIFFER = REPO / ".venv" / "bin" / "sniffer"
SNIFFER_NS = "sniffer-system"
SNIFFER_SA = "sniffer"
GW = "gateway.networking.k8s.io"

Obj = dict[str, Any]

KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Service": ("/api/v1", "services", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices", True),
    "Ingress": ("/apis/networking.k8s.io/v1", "ingresses", True),
    "IngressClass": ("/apis/networking.k8s.io/v1", "ingressclasses", False),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "CustomResourceDefinition": (
        "/apis/apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        False,
    ),
    "GatewayClass": (f"/apis/{GW}/v1", "gatewayclasses", False),
    "Gateway": (f"/apis/{GW}/v1", "gateways", True),
    "TLSRoute": (f"/apis/{GW}/v1", "tlsroutes", True),
    "ReferenceGrant": (f"/apis/{GW}/v1beta1", "referencegrants", True),
}
"""kind -> (group/version prefix, plural, namespaced), for the kinds tests write."""

CRD_FILES = (
    "standard/gateway.networking.k8s.io_gatewayclasses.yaml",
    "standard/gateway.networking.k8s.io_gateways.yaml",
    "standard/gateway.networking.k8s.io_referencegrants.yaml",
    "standard/gateway.networking.k8s.io_tlsroutes.yaml",
)
MANIFESTS = ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml")


def shared_dir() -> Path | None:
    """`$SNIFFER_SHARED_DIR` or `<repo>/../shared`, when it holds the real server."""
    env = os.environ.get("SNIFFER_SHARED_DIR")
    base = Path(env) if env else REPO.parent / "shared"
    return base if (base / "kube-apiserver" / "up.sh").is_file() else None


def absent_tools() -> list[str]:
    return [t for t in ("xz", "openssl", "curl") if shutil.which(t) is None]


def path_of(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    prefix, plural, namespaced = KINDS[kind]
    path = prefix
    if namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    return path


def path_of_obj(obj: Mapping[str, Any], with_name: bool = True) -> str:
    meta = obj["metadata"]
    return path_of(obj["kind"], meta.get("namespace"), meta["name"] if with_name else None)


class KubeError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body


class Client:
    """A synchronous JSON client (bearer token, the server's CA): what tests and admins do."""

    def __init__(self, url: str, ca_pem: bytes, token: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 443
        self.token = token
        self._ssl = ssl.create_default_context(cadata=ca_pem.decode())

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str | None = "application/json",
        query: Mapping[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One request; returns (HTTP status, decoded JSON body or None)."""
        if query:
            path += "?" + urllib.parse.urlencode(query)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None and content_type:
            headers["Content-Type"] = content_type
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._ssl, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        try:
            decoded = json.loads(payload) if payload else None
        except ValueError:
            decoded = payload.decode(errors="replace")
        return resp.status, decoded

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, out = self.request(method, path, body, **kw)
        if status >= 400:
            raise KubeError(status, out)
        return out

    def watch_lines(
        self, path: str, query: Mapping[str, str], timeout: float = 10.0
    ) -> Iterator[Obj]:
        """Events of a watch, one JSON object a line (ends when the server ends the stream)."""
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._ssl, timeout=timeout)
        try:
            conn.request(
                "GET",
                path + "?" + urllib.parse.urlencode(query),
                headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
            )
            resp = conn.getresponse()
            if resp.status >= 400:
                raise KubeError(resp.status, json.loads(resp.read() or b"null"))
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    # -- objects -------------------------------------------------------------------------

    def create(self, obj: Obj) -> Obj:
        out: Obj = self.call("POST", path_of_obj(obj, with_name=False), obj)
        return out

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        status, out = self.request("GET", path_of(kind, namespace, name))
        if status == 404:
            return None
        if status >= 400:
            raise KubeError(status, out)
        obj: Obj = out
        return obj

    def list(self, kind: str, namespace: str | None = None) -> Obj:
        out: Obj = self.call("GET", path_of(kind, namespace))
        return out

    def replace(self, obj: Obj) -> Obj:
        out: Obj = self.call("PUT", path_of_obj(obj), obj)
        return out

    def replace_status(self, obj: Obj) -> Obj:
        out: Obj = self.call("PUT", path_of_obj(obj) + "/status", obj)
        return out

    def patch(self, kind: str, namespace: str | None, name: str, patch: Obj) -> Obj:
        out: Obj = self.call(
            "PATCH",
            path_of(kind, namespace, name),
            patch,
            content_type="application/merge-patch+json",
        )
        return out

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        status, out = self.request("DELETE", path_of(kind, namespace, name))
        if status >= 400 and status != 404:
            raise KubeError(status, out)

    def apply(self, obj: Obj) -> Obj:
        """Create, or replace what is there (any resourceVersion): an admin's `apply`."""
        meta = obj["metadata"]
        held = self.get(obj["kind"], meta.get("namespace"), meta["name"])
        if held is None:
            return self.create(obj)
        new = dict(obj, metadata=dict(meta, resourceVersion=held["metadata"]["resourceVersion"]))
        return self.replace(new)

    def edit(
        self, kind: str, namespace: str | None, name: str, change: Callable[[Obj], None]
    ) -> Obj:
        """Read, change, replace; retried on 409 as `kubectl edit` would be."""
        for _ in range(10):
            obj = self.get(kind, namespace, name)
            assert obj is not None, f"{kind} {namespace}/{name} not found"
            change(obj)
            try:
                return self.replace(obj)
            except KubeError as exc:
                if exc.status != 409:
                    raise
        raise AssertionError(f"{kind} {namespace}/{name}: 409 ten times")


class RealKube:
    """One etcd + kube-apiserver started by `up.sh` in a private state dir on free ports."""

    def __init__(self, shared: Path, state: Path, extra_args: str = "") -> None:
        self.shared = shared
        self.script_dir = shared / "kube-apiserver"
        self.state = state
        self.extra_args = extra_args
        self.port = free_port()
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.startups: list[float] = []
        """Seconds each `up.sh` took (start and restarts)."""
        self.stopping: list[float] = []
        """Seconds each SIGTERM of kube-apiserver and etcd took to end them (restarts)."""
        self.killed_on_restart: list[bool] = []
        self._admin: Client | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            KUBE_TEST_DIR=str(self.state),
            KUBE_TEST_PORT=str(self.port),
            KUBE_TEST_ETCD_PORT=str(self.etcd_port),
            KUBE_TEST_ETCD_PEER_PORT=str(self.etcd_peer_port),
            KUBE_TEST_APISERVER_ARGS=self.extra_args,
        )

    def up(self) -> None:
        t0 = time.monotonic()
        done = subprocess.run(
            [str(self.script_dir / "up.sh")],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"up.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        self.startups.append(time.monotonic() - t0)
        self._admin = None

    def down(self, purge: bool = True) -> None:
        subprocess.run(
            [str(self.script_dir / "down.sh"), *(["--purge"] if purge else [])],
            env=self.env(),
            capture_output=True,
            timeout=60,
            check=False,
        )

    def pid(self, which: str) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.state / f"{which}.pid").read_text().strip())
        return None

    def _stop_pid(self, which: str, grace: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after `grace` s; True when it had to be killed."""
        pid = self.pid(which)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        killed = False
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        (self.state / f"{which}.pid").unlink(missing_ok=True)
        return killed

    def stop_apiserver(self, grace: float = 5.0) -> bool:
        """SIGTERM the kube-apiserver (and etcd, which `up.sh` insists on starting itself);
        True when kube-apiserver outlived `grace` s and was killed.

        It stops listening at once, but with default flags it leaves open watch streams
        (anyone's, not only sniffer's) running for about 60 s before it exits: a restart
        does not wait for that.
        """
        killed = self._stop_pid("kube-apiserver", grace)
        self._stop_pid("etcd")
        return killed

    def restart(self) -> None:
        """A real restart: the same state dir (data, certificates, tokens), new processes."""
        t0 = time.monotonic()
        self.killed_on_restart.append(self.stop_apiserver())
        self.stopping.append(time.monotonic() - t0)
        self.up()

    @property
    def ca_pem(self) -> bytes:
        return (self.state / "pki" / "ca.crt").read_bytes()

    @property
    def admin(self) -> Client:
        if self._admin is None:
            token = (self.state / "admin-token.txt").read_text().strip()
            self._admin = Client(self.url, self.ca_pem, token)
        return self._admin

    def install(self) -> None:
        """What an admin installs: Gateway API CRDs, sniffer's namespace, SA and RBAC."""
        admin = self.admin
        for name in CRD_FILES:
            admin.apply(yaml.safe_load((self.shared / "crds" / "gateway-api" / name).read_text()))
        for name in MANIFESTS:
            for doc in yaml.safe_load_all((REPO / "manifests" / "base" / name).read_text()):
                if doc:
                    admin.apply(doc)
        for name in CRD_FILES:
            crd = yaml.safe_load((self.shared / "crds" / "gateway-api" / name).read_text())
            self.wait(
                lambda n=crd["metadata"]["name"]: _established(admin, n),
                30,
                f"CRD {crd['metadata']['name']} Established",
            )
        # The CRDs' REST endpoints come up a moment after Established.
        self.wait(lambda: admin.request("GET", path_of("TLSRoute"))[0] == 200, 30, "tlsroutes")

    def token(
        self, namespace: str = SNIFFER_NS, name: str = SNIFFER_SA, seconds: int = 3600
    ) -> str:
        """A ServiceAccount token from the TokenRequest API, as the kubelet mounts one."""
        out = self.admin.call(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds},
            },
        )
        return str(out["status"]["token"])

    def kubeconfig(self, path: Path, token: str, server: str | None = None) -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "real",
                    "cluster": {
                        "server": server or self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "sniffer", "user": {"token": token}}],
            "contexts": [{"name": "real", "context": {"cluster": "real", "user": "sniffer"}}],
            "current-context": "real",
        }
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path

    @staticmethod
    def wait(pred: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll `pred` every 20 ms; seconds it took, or AssertionError naming `what`."""
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"not within {timeout}s: {what}")
            time.sleep(0.02)
        return time.monotonic() - t0


def _established(admin: Client, name: str) -> bool:
    crd = admin.get("CustomResourceDefinition", None, name) or {}
    conds = (crd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conds)


def start_session_server(extra_args: str = "") -> RealKube:
    """Start, install, return (the caller stops it with `down()`)."""
    shared = shared_dir()
    assert shared is not None
    for attempt in (1, 2, 3):
        state = Path(tempfile.mkdtemp(prefix="realkube-"))
        kube = RealKube(shared, state / "run", extra_args)
        try:
            kube.up()
            kube.install()
            return kube
        except RuntimeError:
            # Another session may have bound one of the free ports we picked: new ports.
            kube.down()
            shutil.rmtree(state, ignore_errors=True)
            if attempt == 3:
                raise
        except BaseException:
            kube.down()
            shutil.rmtree(state, ignore_errors=True)
            raise
    raise AssertionError("unreachable")


class Pod:
    """`sniffer serve --kubernetes` as a DaemonSet pod runs it: its name and namespace from
    the environment, a ServiceAccount token; output goes to a file (read with `log()`)."""

    def __init__(
        self,
        name: str,
        kubeconfig: Path,
        workdir: Path,
        *extra: str,
        lease: tuple[float, float, float] | None = (3.0, 2.0, 0.5),
        namespace: str = SNIFFER_NS,
    ) -> None:
        self.name = name
        self.admin_port = free_port()
        self.tls_port = free_port()
        self.http_port = free_port()
        self.log_file = workdir / f"{name}.log"
        timings = []
        if lease is not None:
            duration, renew, retry = lease
            timings = [
                f"--lease-duration={duration}",
                f"--lease-renew-deadline={renew}",
                f"--lease-retry-period={retry}",
            ]
        self._out = self.log_file.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                str(SNIFFER),
                "serve",
                "--kubernetes",
                "--kubeconfig",
                str(kubeconfig),
                f"--listen=tls:127.0.0.1:{self.tls_port}@443",
                f"--listen=http:127.0.0.1:{self.http_port}@80",
                f"--admin=127.0.0.1:{self.admin_port}",
                "--workers=0",
                "--no-access-log",
                "--drain-grace=1",
                *timings,
                *extra,
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", POD_NAME=name, POD_NAMESPACE=namespace),
            cwd=REPO,
        )

    def get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}{path}", timeout=2
            ) as r:
                return str(r.read().decode())
        except (OSError, urllib.error.URLError):
            return None

    @property
    def ready(self) -> bool:
        return self.get("/readyz") is not None

    def metric(self, prefix: str) -> float:
        """Sum of the samples whose line starts with `prefix` (name and labels)."""
        page = self.get("/metrics") or ""
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(prefix)
        )

    def routes(self) -> Any:
        page = self.get("/routes")
        return None if page is None else json.loads(page)

    def log(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log_file.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


class Cutter:
    """A loopback TCP forwarder in front of the API server that a test can cut: every
    connection through it reset, new ones refused until `restore()` (a network partition
    between one pod and the API, which the real server cannot do on its own)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.cut_off = False
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> Cutter:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_w))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))
        self._open.difference_update((writer, up_w))

    def cut(self) -> None:
        self.cut_off = True
        for w in list(self._open):
            w.transport.abort()

    def restore(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
