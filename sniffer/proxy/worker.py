"""A data-plane worker process: relay with the tables the control process sends.

Started by the supervisor as `python -m sniffer.proxy.worker` so it imports only the
data plane (no Kubernetes client, no CLI framework, no prometheus_client): its memory is
the relay's. It binds its own listening sockets with SO_REUSEPORT, installs every table
it is sent, and sends its stats snapshot back every second. Frames on the socketpair are
length-prefixed pickles between the two halves of one program, never from a network peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from typing import Any

from sniffer.observe.stats import DataPlaneStats
from sniffer.proxy.server import without_gc
from sniffer.routing.table import RouteTable, TableDelta

_HEADER = struct.Struct("!I")
# A table for thousands of tenants pickles to a few MB; refuse absurd frames outright.
_MAX_FRAME = 512 * 1024 * 1024
_INLINE_FRAME = 256 * 1024
"""Frames up to this size (a table of a few hundred routes) are decoded inline."""
STATS_INTERVAL = 1.0
"""Seconds between a worker's stats snapshots (the staleness bound of /metrics)."""


def encode(message: tuple[str, Any]) -> bytes:
    """One frame: a length prefix and the pickle (encode once, send to every worker)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def send(writer: asyncio.StreamWriter, message: tuple[str, Any] | bytes) -> None:
    writer.write(message if isinstance(message, bytes) else encode(message))
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> tuple[str, Any]:
    (n,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if n > _MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    data = await reader.readexactly(n)
    if n > _INLINE_FRAME:
        # A large table takes tens of milliseconds to unpickle and index; in a thread the
        # GIL's switch interval lets the event loop keep relaying meanwhile instead of
        # stalling every connection of this worker for the whole rebuild.
        message: tuple[str, Any] = await asyncio.get_running_loop().run_in_executor(
            None, without_gc, pickle.loads, data
        )
    else:
        message = pickle.loads(data)
    return message


# -- worker side -------------------------------------------------------------------------

_INLINE_DELTA = 2000
"""Tables up to this many routes take a delta inline; larger ones are rebuilt in a thread."""


async def _apply(base: RouteTable, delta: TableDelta) -> RouteTable:
    if len(delta.routes) <= _INLINE_DELTA:
        return base.apply(delta)
    # As with a large frame: the index rebuild must not stall relaying meanwhile.
    return await asyncio.get_running_loop().run_in_executor(None, without_gc, base.apply, delta)


async def _worker_main(fd: int) -> int:
    from sniffer.observe.accesslog import MAX_BUFFER, AccessLog
    from sniffer.proxy.server import DataPlane, ProxySettings

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    kind, cfg = await receive(reader)
    assert kind == "settings"
    logging.basicConfig(
        level=cfg.get("log_level", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s worker-{cfg['index']} %(name)s: %(message)s",
    )
    access = (
        AccessLog(max_buffer=cfg.get("access_log_buffer", MAX_BUFFER))
        if cfg.get("access_log", True)
        else None
    )
    stats = DataPlaneStats(worker=str(cfg["index"]))
    plane = DataPlane(
        ProxySettings(**cfg["proxy"]),
        access_log=access,
        stats=stats,
        share=(cfg["index"], cfg.get("workers", 1)),
    )
    stop = asyncio.Event()
    drain_grace: list[float] = [plane.settings.drain_grace]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; control decides

    async def pump_stats() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            await send(writer, ("stats", stats.snapshot()))

    async def listen() -> None:
        try:
            while True:
                kind, payload = await receive(reader)
                if kind == "delta":
                    try:
                        payload = await _apply(plane.table, payload)
                    except ValueError as exc:  # out of step: never expected, recoverable
                        await send(writer, ("resync", str(exc)))
                        continue
                    kind = "table"
                if kind == "table":
                    await plane.install(payload)
                    await send(writer, ("installed", (payload.version, dict(plane.listen_errors))))
                elif kind == "drain":
                    drain_grace[0] = float(payload)
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
        await send(writer, ("stats", stats.snapshot()))
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
