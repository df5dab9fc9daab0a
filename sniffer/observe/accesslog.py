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
import collections
import os
import select
import threading
import time
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
        # the writer thread's side
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._busy = False
        self._wake = threading.Condition()
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
        lines, self._lines, self._size = self._lines, [], 0
        chunks: list[bytes] = []
        chunk: list[str] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > _PIPE_BUF:
                chunks.append("".join(chunk).encode())
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            chunks.append("".join(chunk).encode())
        if not chunks:
            return
        with self._wake:
            for data in chunks:
                if self._queued + len(data) > self.max_buffer:
                    self.dropped += data.count(b"\n")
                    continue
                self._chunks.append(data)
                self._queued += len(data)
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._chunks:
                    self._busy = False
                    self._wake.notify_all()
                    self._wake.wait()
                data = self._chunks.popleft()
                self._busy = True
            self._write(data)
            with self._wake:
                self._queued -= len(data)

    def _write(self, data: bytes) -> None:
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError:  # stdout closed: count, never crash
            with self._wake:
                self.dropped += data.count(b"\n")

    def close(self, timeout: float = 2.0) -> None:
        """Flush and wait up to `timeout` for the writer (a stuck pipe cannot hold exit)."""
        self.flush()
        deadline = time.monotonic() + timeout
        with self._wake:
            while (self._chunks or self._busy) and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
