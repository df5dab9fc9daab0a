"""`sniffer serve`: wire sources, controller, data plane(s) and admin endpoint together.

With `workers == 0` everything runs in this one process (laptops, tests). With
`workers >= 1` this process is the control process (sources, admin, supervisor) and
the relaying happens in worker processes. SIGTERM/SIGINT drain, then exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sniffer import __version__
from sniffer.observe import metrics
from sniffer.observe.accesslog import MAX_BUFFER, AccessLog
from sniffer.observe.admin import AdminServer
from sniffer.observe.metrics import DataPlaneCollector
from sniffer.observe.stats import Snapshot, add_runtime
from sniffer.proxy.server import DataPlane
from sniffer.proxy.settings import ProxySettings, WorkerSettings
from sniffer.proxy.supervisor import Supervisor
from sniffer.routing.controller import RouteController
from sniffer.routing.sources import RouteSource
from sniffer.routing.table import NO_LIMIT_DEFAULTS, LimitDefaults, RouteTable

log = logging.getLogger("sniffer")


@dataclass(frozen=True)
class ServeOptions:
    proxy: ProxySettings = field(default_factory=ProxySettings)
    admin: tuple[str, int] | None = ("127.0.0.1", 9190)
    workers: int = 0
    access_log: bool = True
    access_log_buffer: int = MAX_BUFFER
    """Bytes of access log a process holds for a slow stdout before dropping lines."""
    log_level: str = "info"
    limits: LimitDefaults = NO_LIMIT_DEFAULTS
    """Limit defaults from `serve` flags, under any a routes file sets."""


async def serve(sources: list[RouteSource], opts: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT, then drain; the steps are the functions below."""
    controller = RouteController(sources, opts.limits)
    metrics.BUILD_INFO.labels(__version__).set(1)
    stop = _stop_on_signals()
    relay: _Relay = _InProcess(opts) if opts.workers == 0 else _Workers(opts)
    await relay.start(controller)
    metrics.REGISTRY.register(relay.collector)
    endpoints = metrics.BackendEndpointsCollector(controller.endpoint_counts)
    metrics.REGISTRY.register(endpoints)
    admin = AdminServer(
        metrics.REGISTRY,
        _readiness(controller, relay),
        lambda: controller.table.to_dict(),
        _health(controller, relay),
    )
    try:
        await _start_admin(admin, opts.admin)
        runner = await _run_until_stopped(controller, stop)
        log.info("shutting down: draining for up to %.0fs", opts.proxy.drain_grace)
        runner.cancel()
        await relay.drain(opts.proxy.drain_grace)
        # Let the sources finish stopping (the status Lease is released at once on
        # cancel; this only waits for it when the drain was quicker), bounded.
        await asyncio.wait({runner}, timeout=5.0)
    finally:
        await admin.close()
        metrics.REGISTRY.unregister(relay.collector)
        metrics.REGISTRY.unregister(endpoints)
    return 0


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _start_admin(admin: AdminServer, address: tuple[str, int] | None) -> None:
    if address is not None:
        port = await admin.start(*address)
        log.info("admin endpoint on http://%s:%d/", address[0], port)


async def _run_until_stopped(
    controller: RouteController, stop: asyncio.Event
) -> asyncio.Task[None]:
    """Run the sources until `stop` (or until one crashes outside its retry loop)."""
    loop = asyncio.get_running_loop()
    runner = loop.create_task(controller.run())
    stop_task = loop.create_task(stop.wait())
    await asyncio.wait({runner, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if runner.done() and not stop.is_set():
        runner.result()  # a source crashed outside its retry loop: surface it
    stop_task.cancel()
    return runner


def _readiness(
    controller: RouteController, relay: _Relay
) -> Callable[[], tuple[bool, dict[str, Any]]]:
    def readiness() -> tuple[bool, dict[str, Any]]:
        """Ready: every source synced and every data plane listening with the newest table."""
        detail = controller.health()
        serving, errors = relay.serving(controller.table.version, detail)
        detail["listen_errors"] = errors
        return controller.ready and serving and not errors, detail

    return readiness


def _health(controller: RouteController, relay: _Relay) -> Callable[[], dict[str, Any]]:
    def health() -> dict[str, Any]:
        """Each listener of the table: its protocol and address, how many processes hold
        its socket (0: not bound anywhere) and the connections or QUIC flows open on it."""
        gauges = relay.collector.snapshot().gauges
        return {
            "listeners": {
                lis.name: {
                    "protocol": lis.protocol,
                    "address": lis.address,
                    "bound": int(gauges.get(("sniffer_listener_bound", key), 0)),
                    "open": int(gauges.get(("sniffer_listener_open", key), 0)),
                }
                for lis in controller.table.listeners
                for key in [(lis.name, lis.protocol)]
            }
        }

    return health


class _Relay(Protocol):
    """Where the relaying happens: this process, or worker processes."""

    collector: DataPlaneCollector

    async def start(self, controller: RouteController) -> None: ...

    def serving(self, version: int, detail: dict[str, Any]) -> tuple[bool, dict[str, str]]:
        """Whether table `version` is being served; listen errors; adds to `detail`."""
        ...

    async def drain(self, grace: float) -> None: ...


class _InProcess:
    """`--workers 0`: one data plane in this process, fed the newest table."""

    def __init__(self, opts: ServeOptions) -> None:
        self.plane = DataPlane(
            opts.proxy,
            access_log=AccessLog(max_buffer=opts.access_log_buffer) if opts.access_log else None,
        )
        plane = self.plane
        self.collector = DataPlaneCollector(lambda: [plane.stats.snapshot()])
        self.installer: asyncio.Task[None] | None = None

    async def start(self, controller: RouteController) -> None:
        tables: asyncio.Queue[RouteTable] = asyncio.Queue()
        controller.subscribe(tables.put_nowait)

        async def install_loop() -> None:
            while True:
                table = await tables.get()
                while not tables.empty():  # only the newest matters
                    table = tables.get_nowait()
                await self.plane.install(table)

        self.installer = asyncio.get_running_loop().create_task(install_loop())

    def serving(self, version: int, detail: dict[str, Any]) -> tuple[bool, dict[str, str]]:
        detail["listening"] = self.plane.bound_ports()
        return self.plane.installed_version == version, dict(self.plane.listen_errors)

    async def drain(self, grace: float) -> None:
        dropped = await self.plane.drain(grace)
        if dropped:
            log.warning("dropped %d connections still open after the grace", dropped)
        if isinstance(self.plane.access_log, AccessLog):
            self.plane.access_log.close()
        if self.installer is not None:
            self.installer.cancel()


class _Workers:
    """`--workers N`: this is the control process; N worker processes relay."""

    def __init__(self, opts: ServeOptions) -> None:
        self.supervisor = Supervisor(
            opts.workers,
            WorkerSettings(
                workers=opts.workers,
                proxy=replace(opts.proxy, reuse_port=True),
                access_log=opts.access_log,
                access_log_buffer=opts.access_log_buffer,
                log_level=opts.log_level,
            ),
        )
        supervisor = self.supervisor

        def snapshots() -> list[Snapshot]:
            control = Snapshot()
            add_runtime(control, "control", supervisor.table.version)
            return [*supervisor.snapshots(), control]

        self.collector = DataPlaneCollector(snapshots)

    async def start(self, controller: RouteController) -> None:
        await self.supervisor.start()
        controller.subscribe(self.supervisor.install)

    def serving(self, version: int, detail: dict[str, Any]) -> tuple[bool, dict[str, str]]:
        workers = self.supervisor.workers
        detail["workers"] = [
            {"index": w.index, "pid": w.process.pid if w.process else None} for w in workers
        ]
        errors = {k: v for w in workers for k, v in w.listen_errors.items()}
        return self.supervisor.ready, errors

    async def drain(self, grace: float) -> None:
        await self.supervisor.drain(grace)
