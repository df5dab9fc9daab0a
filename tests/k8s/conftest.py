"""Fixtures: an API test server per test and a harness running `KubernetesSource` against it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sniffer.routing.model import Conflict
from sniffer.routing.sources import Update
from sniffer.routing.sources.kubernetes import KubernetesSettings, KubernetesSource
from sniffer.routing.sources.kubernetes.api import KubeApi
from sniffer.routing.table import Listener, MatchKind, RouteTable, TableSpec
from tests.kubeapi.server import KubeApiServer, shared_crd_dir

REPO = Path(__file__).resolve().parents[2]
SNIFFER = REPO / ".venv" / "bin" / "sniffer"
TLS = Listener("tls-443", "127.0.0.1", 443, "tls")
HTTP = Listener("http-80", "127.0.0.1", 80, "http")

needs_crds = pytest.mark.skipif(
    shared_crd_dir() is None,
    reason="Gateway API CRDs not found: set SNIFFER_SHARED_DIR or provide <repo>/../shared/crds",
)


def spawn_sniffer(
    kubeconfig: Path, listen: str, admin: int, *extra: str, **env: str
) -> subprocess.Popen[bytes]:
    """`sniffer serve --kubernetes` against the API test server, output captured."""
    return subprocess.Popen(
        [
            str(SNIFFER),
            "serve",
            "--kubernetes",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            listen,
            "--admin",
            f"127.0.0.1:{admin}",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
        cwd=REPO,
    )


class Harness:
    """Runs a source against the server; records every publish; waits on conditions."""

    def __init__(self, server: KubeApiServer, config_file: Path, **overrides: Any) -> None:
        base = KubernetesSettings(
            kubeconfig=str(config_file),
            debounce_quiet=0.05,
            debounce_max_delay=0.3,
            backoff_initial=0.05,
            backoff_max=0.3,
            inactivity_timeout=5.0,
            request_timeout=5.0,
            connect_timeout=2.0,
            page_size=50,
        )
        listeners = overrides.pop("listeners", (TLS, HTTP))
        self._api_class: type[KubeApi] | None = overrides.pop("api_class", None)
        """A `KubeApi` subclass (a spy) the source talks through; it connects at start."""
        self.api: KubeApi | None = None
        self.settings = dataclasses.replace(base, **overrides)
        self.server = server
        self.source = KubernetesSource(self.settings, listeners)
        self.updates: list[Update] = []
        self._task: asyncio.Task[None] | None = None

    def _publish(self, update: Update) -> tuple[Conflict, ...]:
        self.updates.append(update)
        return self.table.conflicts  # as the RouteController answers a publish

    @property
    def spec(self) -> TableSpec:
        return self.updates[-1].spec

    @property
    def table(self) -> RouteTable:
        return RouteTable.build(self.spec)

    async def start(self, timeout: float = 10.0) -> None:
        if self._api_class is not None:
            self.api = await self._api_class.connect(self.settings)
            self.source = KubernetesSource(self.settings, self.source.listeners, api=self.api)
        self._task = asyncio.create_task(self.source.run(self._publish))
        await self.until(lambda: self.source.synced, timeout)
        await self.watching(timeout)

    async def watching(self, timeout: float = 10.0) -> None:
        """Wait until every informer has an open watch stream."""
        await self.until(lambda: bool(self.source.health()["api_up"]), timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.api is not None:
            await self.api.close()
            self.api = None

    async def until(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait for `pred()` to hold, re-checking on every publish or informer change."""
        ev = self.source.changed
        async with asyncio.timeout(timeout):
            while True:
                if self._task is not None and self._task.done():
                    self._task.result()
                if pred():
                    return
                ev.clear()
                if pred():
                    return
                await ev.wait()

    def lookup(self, host: str, listener: str = "tls-443") -> tuple[MatchKind, str | None]:
        m = self.table.lookup(listener, host)
        return m.kind, (m.backends[0].backend if m.backends else None)

    def backend(self, name: str) -> Any:
        return next((b for b in self.spec.backends if b.name == name), None)

    async def routes_to(self, host: str, backend: str | None, listener: str = "tls-443") -> None:
        await self.until(lambda: bool(self.updates) and self.lookup(host, listener)[1] == backend)


@pytest.fixture
async def api_server() -> AsyncIterator[KubeApiServer]:
    server = KubeApiServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def kubeconfig(api_server: KubeApiServer, tmp_path: Path) -> Path:
    return api_server.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
async def harness_factory(
    api_server: KubeApiServer, kubeconfig: Path
) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**overrides: Any) -> Harness:
        h = Harness(api_server, kubeconfig, **overrides)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.stop()
