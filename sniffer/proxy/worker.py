"""A data-plane worker process: relay with the tables the control process sends.

Started by the supervisor as `python -m sniffer.proxy.worker` so it imports only the
data plane (no Kubernetes client, no CLI framework, no prometheus_client): its memory is
the relay's. It binds its own listening sockets with SO_REUSEPORT, installs every table
it is sent, and sends its stats snapshot back every second. The messages and their
framing are `sniffer.proxy.ipc`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from sniffer.observe.stats import DataPlaneStats
from sniffer.proxy.ipc import (
    STATS_INTERVAL,
    Configure,
    Drain,
    InstallDelta,
    Installed,
    InstallTable,
    Resync,
    Stats,
    receive,
    send,
    without_gc,
)
from sniffer.routing.table import RouteTable, TableDelta

# -- worker side -------------------------------------------------------------------------

_INLINE_DELTA = 2000
"""A delta that moves up to this many routes and backends is applied inline (the table
re-indexes only their hostnames); a larger one is applied in a thread."""


async def _apply(base: RouteTable, delta: TableDelta) -> RouteTable:
    if delta.spans <= _INLINE_DELTA:
        return base.apply(delta)
    # As with a large frame: the index rebuild must not stall relaying meanwhile.
    return await asyncio.get_running_loop().run_in_executor(None, without_gc, base.apply, delta)


async def _worker_main(fd: int) -> int:
    from sniffer.observe.accesslog import AccessLog
    from sniffer.proxy.server import DataPlane

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    first = await receive(reader)
    assert isinstance(first, Configure), first
    cfg = first.settings
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker-{cfg.index} %(name)s: %(message)s",
    )
    access = AccessLog(max_buffer=cfg.access_log_buffer) if cfg.access_log else None
    stats = DataPlaneStats(worker=str(cfg.index))
    plane = DataPlane(cfg.proxy, access_log=access, stats=stats, share=(cfg.index, cfg.workers))
    stop = asyncio.Event()
    drain_grace: list[float] = [plane.settings.drain_grace]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; control decides

    async def pump_stats() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            await send(writer, Stats(stats.snapshot()))

    async def listen() -> None:
        try:
            while True:
                message = await receive(reader)
                if isinstance(message, InstallDelta):
                    try:
                        table = await _apply(plane.table, message.delta)
                    except ValueError as exc:  # out of step: never expected, recoverable
                        await send(writer, Resync(str(exc)))
                        continue
                    message = InstallTable(table)
                if isinstance(message, InstallTable):
                    await plane.install(message.table)
                    await send(writer, Installed(message.table.version, dict(plane.listen_errors)))
                elif isinstance(message, Drain):
                    drain_grace[0] = message.grace
                    stop.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            stop.set()  # the control process is gone: drain and exit

    tasks = [loop.create_task(pump_stats()), loop.create_task(listen())]
    await stop.wait()
    await plane.drain(drain_grace[0])
    if access is not None:
        access.close()
    for t in tasks:
        t.cancel()
    with contextlib.suppress(ConnectionError, RuntimeError):
        await send(writer, Stats(stats.snapshot()))
    writer.close()
    return 0


def main() -> None:
    fd = int(os.environ.pop("SNIFFER_WORKER_FD"))
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay runnable anyway
        runner = asyncio.run
    sys.exit(runner(_worker_main(fd)))


if __name__ == "__main__":
    main()
