"""The access log: one JSON line per connection, written when it closes.

Lines are buffered and flushed on a short timer (or when the buffer is large), in
writes of at most PIPE_BUF bytes cut at line ends, so lines of several worker processes
sharing one stdout pipe never interleave. Each connection formats its own line (see
`ClientConnection.log_line`); nothing is written per read.
"""

from __future__ import annotations

import asyncio
import os
import select
from typing import Protocol

_PIPE_BUF = select.PIPE_BUF
_FLUSH_AT = 32 * 1024


class Loggable(Protocol):
    def log_line(self, now: float) -> str:
        """One JSON object and a newline, ASCII only (so its length is its size)."""


class AccessLog:
    def __init__(self, fd: int = 1, flush_interval: float = 0.2) -> None:
        self.fd = fd
        self.flush_interval = flush_interval
        """Seconds a line may wait in the buffer: batching keeps write() off the hot path."""
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0

    def __call__(self, conn: Loggable, now: float) -> None:
        line = conn.log_line(now)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines, self._size = self._lines, [], 0
        chunk: list[str] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > _PIPE_BUF:
                self._write("".join(chunk).encode())
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write("".join(chunk).encode())

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError:  # stdout closed or full and non-blocking: count, never crash
            self.dropped += data.count(b"\n")
