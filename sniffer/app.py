"""`sniffer serve`: wire sources, controller, data plane(s) and admin endpoint together.

With `workers == 0` everything runs in this one process (laptops, tests). With
`workers >= 1` this process is the control process (sources, admin, supervisor) and
the relaying happens in worker processes. SIGTERM/SIGINT drain, then exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field, replace
from typing import Any

from sniffer import __version__
from sniffer.observe import metrics
from sniffer.observe.accesslog import MAX_BUFFER, AccessLog
from sniffer.observe.admin import AdminServer
from sniffer.observe.metrics import DataPlaneCollector
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
    loop = asyncio.get_running_loop()
    controller = RouteController(sources, opts.limits)
    metrics.BUILD_INFO.labels(__version__).set(1)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    plane: DataPlane | None = None
    supervisor: Supervisor | None = None
    installer: asyncio.Task[None] | None = None
    if opts.workers == 0:
        plane = DataPlane(
            opts.proxy,
            access_log=AccessLog(max_buffer=opts.access_log_buffer) if opts.access_log else None,
        )
        local = plane
        collector = DataPlaneCollector(lambda: [local.stats.snapshot()])
        tables: asyncio.Queue[RouteTable] = asyncio.Queue()
        controller.subscribe(tables.put_nowait)

        async def install_loop() -> None:
            while True:
                table = await tables.get()
                while not tables.empty():  # only the newest matters
                    table = tables.get_nowait()
                await local.install(table)

        installer = loop.create_task(install_loop())
    else:
        supervisor = Supervisor(
            opts.workers,
            WorkerSettings(
                workers=opts.workers,
                proxy=replace(opts.proxy, reuse_port=True),
                access_log=opts.access_log,
                access_log_buffer=opts.access_log_buffer,
                log_level=opts.log_level,
            ),
        )
        collector = DataPlaneCollector(supervisor.snapshots)
        await supervisor.start()
        controller.subscribe(supervisor.install)
    metrics.REGISTRY.register(collector)
    endpoints = metrics.BackendEndpointsCollector(controller.endpoint_counts)
    metrics.REGISTRY.register(endpoints)

    def readiness() -> tuple[bool, dict[str, Any]]:
        """Ready: every source synced and every data plane listening with the newest table."""
        detail = controller.health()
        if supervisor is not None:
            errors = {k: v for w in supervisor.workers for k, v in w.listen_errors.items()}
            serving = supervisor.ready
            detail["workers"] = [
                {"index": w.index, "pid": w.process.pid if w.process else None}
                for w in supervisor.workers
            ]
        else:
            assert plane is not None
            errors = dict(plane.listen_errors)
            serving = plane.installed_version == controller.table.version
            detail["listening"] = plane.bound_ports()
        detail["listen_errors"] = errors
        return controller.ready and serving and not errors, detail

    admin = AdminServer(metrics.REGISTRY, readiness, lambda: controller.table.to_dict())
    try:
        if opts.admin is not None:
            port = await admin.start(*opts.admin)
            log.info("admin endpoint on http://%s:%d/", opts.admin[0], port)
        runner = loop.create_task(controller.run())
        stop_task = loop.create_task(stop.wait())
        await asyncio.wait({runner, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done() and not stop.is_set():
            runner.result()  # a source crashed outside its retry loop: surface it
        log.info("shutting down: draining for up to %.0fs", opts.proxy.drain_grace)
        runner.cancel()
        if plane is not None:
            dropped = await plane.drain()
            if dropped:
                log.warning("dropped %d connections still open after the grace", dropped)
            if plane.access_log is not None and isinstance(plane.access_log, AccessLog):
                plane.access_log.close()
        if supervisor is not None:
            await supervisor.drain(opts.proxy.drain_grace)
        if installer is not None:
            installer.cancel()
        # Let the sources finish stopping (the status Lease is released at once on
        # cancel; this only waits for it when the drain was quicker), bounded.
        await asyncio.wait({runner}, timeout=5.0)
    finally:
        await admin.close()
        metrics.REGISTRY.unregister(collector)
        metrics.REGISTRY.unregister(endpoints)
    return 0
