"""The control-side supervisor of the data-plane worker processes.

The control process runs the route sources once per pod and ships every compiled
`RouteTable` to each worker: whole to a worker that has nothing yet, otherwise as a
delta from the table it was sent last (one encoding shared by all such workers). A
worker that dies is restarted: its open connections are lost, nobody else's. Its
counters are kept (they only grow), its gauges dropped, so no series is left behind by
a dead worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

from sniffer.observe import metrics
from sniffer.observe.stats import Snapshot, backends_in, merge, without_backends
from sniffer.proxy.ipc import (
    Configure,
    Drain,
    InstallDelta,
    Installed,
    InstallTable,
    Message,
    Resync,
    Stats,
    encode,
    receive,
    send,
)
from sniffer.proxy.settings import WorkerSettings
from sniffer.routing.table import RouteTable

log = logging.getLogger("sniffer.workers")


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    writer: asyncio.StreamWriter | None = None
    snapshot: Snapshot = field(default_factory=Snapshot)
    installed_version: int = -1
    """Version of the last table the worker confirmed (listening with it)."""
    sent_version: int = -1
    """Version of the last table written to it: the base a delta for it must have."""
    listen_errors: dict[str, str] = field(default_factory=dict)
    started: float = 0.0


class Supervisor:
    def __init__(self, count: int, settings: WorkerSettings) -> None:
        """`settings` for every worker; each gets its own `index`, `workers` = count."""
        self.count = count
        self.settings = settings
        self.table = RouteTable.empty()
        self._full: tuple[int, bytes] | None = None
        self.workers = [_Worker(i) for i in range(count)]
        self.retired = Snapshot()
        """Counters and histograms of workers that died: kept so totals never go down."""
        self._retired_backends: set[tuple[str, str]] = set()
        self._table_backends: tuple[int, set[tuple[str, str]]] = (-1, set())
        """The current table's backend keys, made only while retired series exist."""
        self.stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        """Every worker is running and listening with the newest table."""
        version = self.table.version
        return all(w.writer is not None and w.installed_version == version for w in self.workers)

    def snapshots(self) -> list[Snapshot]:
        return [self.retired, *(w.snapshot for w in self.workers)]

    async def start(self) -> None:
        for w in self.workers:
            await self._spawn(w)

    def _count_alive(self) -> None:
        metrics.WORKERS.labels("alive").set(sum(w.writer is not None for w in self.workers))

    def _full_frame(self) -> bytes:
        """The current table whole, encoded at most once per version."""
        if self._full is None or self._full[0] != self.table.version:
            self._full = (self.table.version, encode(InstallTable(self.table)))
        return self._full[1]

    def install(self, table: RouteTable) -> None:
        base, self.table = self.table, table
        self._forget_retired()
        delta: bytes | None = None
        for w in self.workers:
            if w.writer is None:
                continue
            if w.sent_version == base.version:
                if delta is None:
                    delta = encode(InstallDelta(table.delta_from(base)))
                frame = delta
            else:
                frame = self._full_frame()
            w.sent_version = table.version
            self._spawn_task(self._send(w, frame))

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, w: _Worker, message: Message | bytes) -> None:
        if w.writer is None:
            return
        # A dead worker's reader task sees it exit and restarts it.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await send(w.writer, message)

    async def _spawn(self, w: _Worker) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ, SNIFFER_WORKER_FD=str(child.fileno()))
        # fork+exec takes about a millisecond; not worth an executor round trip.
        w.process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "sniffer.proxy.worker"],
            pass_fds=(child.fileno(),),
            env=env,
            start_new_session=False,
        )
        child.close()
        w.started = time.monotonic()
        w.snapshot = Snapshot()
        w.installed_version = w.sent_version = -1
        reader, writer = await asyncio.open_connection(sock=parent)
        w.writer = writer
        self._count_alive()
        await self._send(w, Configure(replace(self.settings, index=w.index, workers=self.count)))
        await self._send_full(w)
        self._spawn_task(self._read(w, reader))

    async def _send_full(self, w: _Worker) -> None:
        w.sent_version = self.table.version  # set with the write: later deltas build on it
        await self._send(w, self._full_frame())

    async def _read(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await receive(reader)
                if isinstance(message, Stats):
                    w.snapshot = message.snapshot
                    self._forget_retired()
                elif isinstance(message, Installed):
                    w.installed_version = message.version
                    w.listen_errors = message.listen_errors
                elif isinstance(message, Resync):  # it could not apply a delta: send it all
                    log.error("worker %d asked for the whole table: %s", w.index, message.reason)
                    await self._send_full(w)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, pickle.PickleError):
            pass
        proc = w.process
        assert proc is not None
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, proc.wait)
        if w.writer is not None:
            w.writer.close()
            w.writer = None
        self._count_alive()
        self._retire(w)
        if self.stopping:
            return
        metrics.WORKER_RESTARTS.inc()
        log.error("worker %d (pid %d) exited with %s; restarting", w.index, proc.pid, code)
        if time.monotonic() - w.started < 1.0:
            await asyncio.sleep(1.0)  # a worker dying at start-up must not spin the CPU
        if not self.stopping:
            await self._spawn(w)

    def _forget_retired(self) -> None:
        """Drop dead workers' series of backends that left the table and that no live
        worker still reports (an open connection keeps them), as live workers do: tenants
        come and go for weeks, and nothing may grow /metrics without bound. Checked on
        every table and every stats report (live workers forget after they install)."""
        if not self._retired_backends:
            return
        if self._table_backends[0] != self.table.version:
            self._table_backends = (self.table.version, self.table.backend_keys())
        gone = self._retired_backends - self._table_backends[1]
        for w in self.workers:  # rare: only right after backends left the table
            if gone:
                gone -= backends_in(w.snapshot)
        if gone:
            self.retired = without_backends(self.retired, gone)
            self._retired_backends -= gone

    def _retire(self, w: _Worker) -> None:
        dead = w.snapshot
        self.retired = merge([self.retired, Snapshot(dead.counters, {}, dead.hists)])
        self._retired_backends = backends_in(self.retired)
        w.snapshot = Snapshot()

    async def drain(self, grace: float) -> None:
        """Tell every worker to drain, then wait for them (killing any past grace + 5 s)."""
        self.stopping = True
        for w in self.workers:
            await self._send(w, Drain(grace))
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + grace + 5.0
        for w in self.workers:
            proc = w.process
            if proc is None:
                continue
            remaining = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.wait_for(loop.run_in_executor(None, proc.wait), remaining)
            except TimeoutError:
                log.error("worker %d did not drain in time; killing it", w.index)
                proc.kill()
