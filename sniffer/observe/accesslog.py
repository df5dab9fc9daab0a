"""The access log: one JSON line per connection, written when it closes.

Lines are buffered and handed over on a short timer (or when the buffer is large) to a
writer thread, in chunks of at most PIPE_BUF bytes cut at line ends, so lines of several
worker processes sharing one stdout pipe never interleave. The event loop never waits
on the log: a pipe that stops draining (a stuck log shipper) blocks only the writer
thread, chunks queue up to `max_buffer` bytes, and lines beyond that are dropped and
counted. Each connection formats its own line (see `ClientConnection.log_line`);
nothing is written per read.
"""

from __future__ import annotations

import asyncio
import os
import queue
import select
import threading
from typing import Protocol

_PIPE_BUF = select.PIPE_BUF
_FLUSH_AT = 32 * 1024
MAX_BUFFER = 1024 * 1024
"""Bytes of log waiting for a slow stdout before lines are dropped (per process)."""


class Loggable(Protocol):
    def log_line(self, now: float) -> str:
        """One JSON object and a newline, ASCII only (so its length is its size)."""


class AccessLog:
    def __init__(
        self, fd: int = 1, flush_interval: float = 0.2, max_buffer: int = MAX_BUFFER
    ) -> None:
        self.fd = fd
        self.flush_interval = flush_interval
        """Seconds a line may wait in the buffer: batching keeps write() off the hot path."""
        self.max_buffer = max_buffer
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0
        """Lines not written: the buffer was full or stdout failed."""
        # the writer thread's side: a C queue, so a handoff costs no Python-level lock
        # dance on either side. An Event in it is set once what came before is written.
        self._chunks: queue.SimpleQueue[bytes | threading.Event] = queue.SimpleQueue()
        self._queued = 0
        """Bytes handed over and not yet written (guarded by `_lock`)."""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __call__(self, conn: Loggable, now: float) -> None:
        line = conn.log_line(now)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        """Hand the buffered lines to the writer thread (never blocks on stdout)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = "".join(self._lines).encode()
        self._lines, self._size = [], 0
        # Cut at line ends into chunks of at most PIPE_BUF bytes (a longer line alone):
        # one search per chunk, not a step per line.
        chunks: list[bytes] = []
        start, total = 0, len(data)
        while total - start > _PIPE_BUF:
            cut = data.rfind(b"\n", start, start + _PIPE_BUF) + 1
            if cut <= start:  # a line longer than PIPE_BUF: alone in its chunk
                cut = data.index(b"\n", start) + 1
            chunks.append(data[start:cut])
            start = cut
        chunks.append(data[start:] if start else data)
        put = self._chunks.put
        with self._lock:
            for chunk in chunks:
                if self._queued + len(chunk) > self.max_buffer:
                    self.dropped += chunk.count(b"\n")
                    continue
                self._queued += len(chunk)
                put(chunk)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        get = self._chunks.get
        while True:
            data = get()
            if isinstance(data, threading.Event):
                data.set()  # everything handed over before it is written
                continue
            self._write(data)
            with self._lock:
                self._queued -= len(data)

    def _write(self, data: bytes) -> None:
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError:  # stdout closed: count, never crash
            with self._lock:
                self.dropped += data.count(b"\n")

    def close(self, timeout: float = 2.0) -> None:
        """Flush and wait up to `timeout` for the writer (a stuck pipe cannot hold exit)."""
        self.flush()
        if self._thread is None:
            return
        done = threading.Event()
        self._chunks.put(done)
        done.wait(timeout)
