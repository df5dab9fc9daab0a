"""Fixtures of the real-server tier: one kube-apiserver per session, a namespace set and
sniffer pods per test, everything created by a test deleted after it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.pki import PKI
from tests.support.prereq import missing
from tests.support.realkube import (
    REPO,
    SNIFFER,
    Client,
    KubeError,
    Pod,
    RealKube,
    absent_tools,
    shared_dir,
    start_session_server,
)
from tests.support.servers import TLSBackend

Obj = dict[str, Any]


def _prerequisites() -> None:
    if shared_dir() is None:
        missing(
            "real kube-apiserver not found: needs <repo>/../shared/kube-apiserver/up.sh "
            "(or SNIFFER_SHARED_DIR)"
        )
    tools = absent_tools()
    if tools:
        missing(f"up.sh needs {', '.join(tools)} (apt-get install xz-utils openssl curl)")
    if not SNIFFER.exists():
        missing(f"{SNIFFER} not installed (pip install -e .)")


def start_server(extra_args: str = "") -> RealKube:
    _prerequisites()
    kube = start_session_server(extra_args)
    # The project's own class objects, as `kubectl apply -k manifests/base` installs them.
    for name in ("ingressclass.yaml", "gatewayclass.yaml"):
        kube.admin.apply(yaml.safe_load((REPO / "manifests" / "base" / name).read_text()))
    return kube


def stop_server(kube: RealKube) -> None:
    kube.down(purge=True)
    shutil.rmtree(kube.state.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def kube() -> Iterator[RealKube]:
    """The session's real kube-apiserver (started once; every test shares it)."""
    server = start_server()
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def sniffer_kubeconfig(kube: RealKube, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sniffer's credentials: a TokenRequest ServiceAccount token and the cluster CA."""
    return kube.kubeconfig(tmp_path_factory.mktemp("sa") / "kubeconfig", kube.token())


class Tenants:
    """Namespaces and objects of one test; `cleanup()` deletes them in reverse order.

    Deleted object by object: without a controller-manager a deleted Namespace stays
    Terminating with everything in it, which later tests' pods would still see.
    """

    def __init__(self, admin: Client) -> None:
        self.admin = admin
        self.prefix = "t" + uuid.uuid4().hex[:6]
        self.created: list[tuple[str, str | None, str]] = []

    def namespace(self, suffix: str, labels: dict[str, str] | None = None) -> str:
        name = f"{self.prefix}-{suffix}"
        meta: Obj = {"name": name}
        if labels:
            meta["labels"] = labels
        self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
        return name

    def create(self, obj: Obj) -> Obj:
        out = self.admin.create(obj)
        meta = out["metadata"]
        self.created.append((out["kind"] or obj["kind"], meta.get("namespace"), meta["name"]))
        return out

    def cleanup(self) -> None:
        for kind, ns, name in reversed(self.created):
            with contextlib.suppress(KubeError, OSError):
                self.admin.delete(kind, ns, name)


@pytest.fixture
def tenants(kube: RealKube) -> Iterator[Tenants]:
    t = Tenants(kube.admin)
    yield t
    t.cleanup()


@pytest.fixture
def pods(
    sniffer_kubeconfig: Path, tmp_path: Path, tenants: Tenants
) -> Iterator[Callable[..., Pod]]:
    """Start sniffer pods (stopped after the test; their logs printed when it failed).

    Each test gets its own Lease name, so a Lease a killed pod left behind in an earlier
    test never delays this one.
    """
    made: list[Pod] = []

    def start(name: str, *extra: str, **kw: Any) -> Pod:
        pod = Pod(
            f"{tenants.prefix}-{name}",
            sniffer_kubeconfig,
            tmp_path,
            f"--lease-name=lease-{tenants.prefix}",
            *extra,
            **kw,
        )
        made.append(pod)
        return pod

    yield start
    for pod in made:
        pod.stop()
    for pod in made:
        print(f"----- {pod.name} (exit {pod.proc.returncode}) -----\n{pod.log()[-3000:]}")


async def until(
    pred: Callable[[], bool], timeout: float, what: str, show: Callable[[], object] | None = None
) -> float:
    """Seconds until `pred()` (run in a thread: it may call the API) holds; polled every
    20 ms, since the API server and other processes offer no event to wait on."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not await asyncio.to_thread(pred):
        if loop.time() - t0 > timeout:
            seen = "" if show is None else f"; last seen: {await asyncio.to_thread(show)}"
            raise AssertionError(f"not within {timeout}s: {what}{seen}")
        await asyncio.sleep(0.02)
    return loop.time() - t0


Backends = Callable[[str, str], Awaitable[TLSBackend]]


@pytest.fixture
async def backends(pki: PKI) -> AsyncIterator[Backends]:
    """Start a TLS backend named `name` with a certificate for `host`."""
    made: list[TLSBackend] = []

    async def start(name: str, host: str) -> TLSBackend:
        b = await TLSBackend(name, pki.issue(host).server_context()).start()
        made.append(b)
        return b

    yield start
    for b in made:
        await b.close()


async def who(pod: Pod, host: str, ctx: ssl.SSLContext) -> str | None:
    """The name of the backend a TLS connection for `host` through the pod reaches."""
    try:
        async with asyncio.timeout(3):
            r, w = await asyncio.open_connection(
                "127.0.0.1", pod.tls_port, ssl=ctx, server_hostname=host
            )
            try:
                w.write(b"who\n")
                await w.drain()
                return (await r.readline()).decode().strip() or None
            finally:
                w.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await w.wait_closed()
    except (OSError, ssl.SSLError, TimeoutError):
        return None


async def routed(pod: Pod, host: str, name: str, ctx: ssl.SSLContext, timeout: float) -> float:
    """Seconds until a connection for `host` reaches backend `name`."""
    t0 = time.monotonic()
    while (got := await who(pod, host, ctx)) != name:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{host}: reached {got!r}, not {name!r}, after {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0
