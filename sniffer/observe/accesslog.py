"""The access log: one JSON line per connection, written when it closes.

Lines are buffered and handed over on a short timer (or when the buffer is large) to a
writer thread, in chunks of at most PIPE_BUF bytes cut at line ends, so lines of several
worker processes sharing one stdout pipe never interleave. The event loop never waits
on the log: a pipe that stops draining (a stuck log shipper) blocks only the writer
thread, chunks queue up to `max_buffer` bytes, and lines beyond that are dropped and
counted. A closed connection hands over an `AccessRecord` (plain values, built by
`sniffer.proxy.record`), or a QUIC flow its own line; this module formats a record and
never reaches back into the connection. Nothing is written per read.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import select
import threading
from typing import NamedTuple

_PIPE_BUF = select.PIPE_BUF
_FLUSH_AT = 32 * 1024
MAX_BUFFER = 1024 * 1024
"""Bytes of log waiting for a slow stdout before lines are dropped (per process)."""


class AccessRecord(NamedTuple):
    """What one closed connection tells the access log, field for field of its line."""

    id_prefix: str
    """The process's random prefix: with `serial` (hex) the line's unique `id`."""
    serial: int
    client: tuple[str, int] | None
    """The client's address (from the PROXY header when the listener expects one)."""
    listener: str
    tls: bool
    """A `tls` listener (the name is the `sni` field) or `http` (the `host` field)."""
    host: str | None
    """The name sniffed, normalised by `sniffer.wire.hostname` ([a-z0-9._-] only)."""
    route: str
    """The route's hostname, `(default)`, or "" when not routed."""
    backend: str | None
    tenant: str | None
    endpoint: str | None
    """The endpoint connected to, as `host:port` text."""
    bytes_in: int
    """Client -> backend, the replayed hello included."""
    bytes_out: int
    duration: float
    """Seconds from accept to close."""
    outcome: str
    hello: str
    """The `alpn`, `ja4` and `ech` members, preformatted (`,"alpn":[...],...`)."""


def format_line(r: AccessRecord) -> str:
    """The access-log line (JSON and a newline), formatted rather than encoded.

    Hostnames were normalised and addresses are IP literals, so they need no escaping;
    names from the route table go through small memos of `json.dumps`, which escapes
    anything outside ASCII: the line is ASCII, so its length is its size in bytes.
    """
    (prefix, serial, client, listener, tls, host, route, backend, tenant, endpoint, bytes_in,
     bytes_out, duration, outcome, hello) = r  # fmt: skip
    if client is not None and host is not None and endpoint is not None and backend:
        # A relayed connection, nearly every line: one f-string, the parts that repeat
        # for every connection of a listener and of a route/backend/endpoint from two
        # memos probed inline (the `get` never returns "").
        addr, port = client
        if ":" in addr:
            addr = f"[{addr}]"
        lis = (listener, tls)
        where = (route, backend, tenant, endpoint)
        return (
            f'{{"id":"{prefix}{serial:x}","client":"{addr}:{port}'
            f"{_LISTENER.get(lis) or _listener(lis)}{host}{_WHERE.get(where) or _where(where)}"
            f'{bytes_in},"bytes_out":{bytes_out},"duration":{duration:.6f},'
            f'"outcome":{_JS.get(outcome) or _js(outcome)}{hello}}}\n'
        )
    if client is None:
        at = "null"
    else:
        addr, port = client
        at = f'"[{addr}]:{port}"' if ":" in addr else f'"{addr}:{port}"'
    return _LINE % (
        prefix,
        serial,
        at,
        _js(listener),
        "sni" if tls else "host",
        "null" if host is None else f'"{host}"',
        _js(route) if route else "null",
        "null" if backend is None else _js(backend),
        "null" if tenant is None else _js(tenant),
        "null" if endpoint is None else f'"{endpoint}"',
        bytes_in,
        bytes_out,
        duration,
        _js(outcome),
        hello,
    )


_LISTENER: dict[tuple[str, bool], str] = {}
_WHERE: dict[tuple[str, str, str | None, str], str] = {}


def _listener(key: tuple[str, bool]) -> str:
    """From the client's closing quote to the name's opening quote, per listener."""
    if len(_LISTENER) > 10_000:  # bounded whatever the tables do
        _LISTENER.clear()
    out = _LISTENER[key] = f'","listener":{_js(key[0])},"{"sni" if key[1] else "host"}":"'
    return out


def _where(key: tuple[str, str, str | None, str]) -> str:
    """From the name's closing quote to `bytes_in`'s value, per route/backend/endpoint."""
    if len(_WHERE) > 10_000:
        _WHERE.clear()
    route, backend, tenant, endpoint = key
    out = _WHERE[key] = (
        f'","route":{_js(route)},"backend":{_js(backend)},"tenant":{_js(tenant or "")},'
        f'"endpoint":"{endpoint}","bytes_in":'
    )
    return out


def forget_names() -> None:
    """Drop the memos of table names: a new table may have retired them.

    Called when a route table is installed, so that names of routes, backends and
    endpoints gone with the table are not kept for the life of the process (tenants
    come and go for months); what is still in use is formatted again on its next line.
    """
    _LISTENER.clear()
    _WHERE.clear()
    _JS.clear()


_LINE = (
    '{"id":"%s%x","client":%s,"listener":%s,"%s":%s,"route":%s,"backend":%s,"tenant":%s,'
    '"endpoint":%s,"bytes_in":%d,"bytes_out":%d,"duration":%.6f,"outcome":%s'
    "%s}\n"
)
_JS: dict[str, str] = {}


def _js(value: str) -> str:
    """`json.dumps` memoised for the bounded vocabulary of table names and outcomes."""
    out = _JS.get(value)
    if out is None:
        if len(_JS) > 10_000:  # a table churning through names must not grow this forever
            _JS.clear()
        out = _JS[value] = json.dumps(value)
    return out


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

    def __call__(self, entry: AccessRecord | str) -> None:
        """Take a TCP connection's record, or a line a protocol with fields of its own
        (QUIC's datagrams and version) formatted itself (JSON, ASCII, newline-ended)."""
        line = entry if type(entry) is str else format_line(entry)  # type: ignore[arg-type]
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
