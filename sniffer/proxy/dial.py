"""Dialing a routed connection's backend: the endpoint walk, its error classes, our PROXY header.

`Dial` is a `ClientConnection`'s dial: it tries the backend's endpoints in turn from
the plane's round-robin start, each attempt watched by the plane's connect-timeout sweep
(which stops it through `ClientConnection.dial_timed_out_now`), counts each failure by
class on the backend's tally, and hands the first connected `Pump` to
`ClientConnection.dialed`, or calls `ClientConnection.dial_failed` once every endpoint
failed. `proxy_header` encodes the PROXY header a backend asks for. This module never
answers a client and never relays a byte.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from sniffer.observe.counting import count
from sniffer.proxy.phases import DIALING
from sniffer.proxy.relay.userspace import Pump
from sniffer.wire.proxy_protocol import encode_v1, encode_v1_unknown, encode_v2, encode_v2_local

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from sniffer.observe.stats import BackendTally
    from sniffer.proxy.connection import ClientConnection
    from sniffer.routing.table import Backend, Endpoint

__all__ = ["TIMEOUT", "Dial", "error_class", "proxy_header"]

log = logging.getLogger("sniffer.proxy")

# The `reason` label of sniffer_backend_connect_errors_total.
TIMEOUT: Final = "timeout"
"""No answer within connect_timeout (the plane's sweep cancelled the attempt)."""
_UNREACHABLE: Final = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ETIMEDOUT})


def error_class(exc: OSError) -> str:
    """`refused` (RST: nothing listens), `unreachable` (no route, the kernel's own
    timeout), or `error` (anything else)."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return "unreachable" if exc.errno in _UNREACHABLE else "error"


def proxy_header(
    version: str,
    src: tuple[str, int] | None,
    dst: tuple[str, int] | None,
    authority: str | None,
    unique_id: str,
) -> bytes:
    """The PROXY header (`v1` or `v2`) for a connection from `src` to `dst`; `UNKNOWN`
    (v1) or `LOCAL` (v2) when either address is not known, so a backend that expects a
    header always gets one. `authority` and `unique_id` go in v2 TLVs."""
    if src is None or dst is None:
        return encode_v2_local() if version == "v2" else encode_v1_unknown()
    if version == "v2":
        return encode_v2(src, dst, authority, unique_id)
    return encode_v1(src, dst)


class Dial:
    """A routed connection's dial: its backend's endpoints in turn until one connects.

    Made by the connection when it is admitted; it is the connection's `dialer` until it
    reports (`dialed` or `dial_failed`) or the connection stops it (`cancel`).

    `loop.create_connection` is a coroutine. Driving it with an asyncio Task, one per
    connection, cost ~9k instructions (the Task, its entry in asyncio's weak set of all
    tasks and that set's callback when it dies, a `call_soon` for its first step) where
    this driver costs ~1k: `_step` sends into the coroutine and has the future it waits
    on call `_step` again when done. The first step runs at once: a connect never
    completes synchronously, so nothing of the connection runs before the dial begins.
    Stopping an attempt (`cancel`, `time_out`) cancels that future, which raises
    `CancelledError` in the coroutine: it closes its socket and raises it out to `_step`.
    """

    __slots__ = ("_coro", "_endpoint", "_factory", "_i", "_start", "_timed_out", "_waiting",
                 "backend", "conn", "tally")  # fmt: skip

    def __init__(self, conn: ClientConnection, backend: Backend, tally: BackendTally) -> None:
        self.conn = conn
        self.backend = backend
        self.tally = tally
        shared = conn.state_shared
        n = len(backend.endpoints)
        self._start = 0 if n == 1 else shared.next_index(backend.name, n)
        self._i = 0
        assert conn.transport is not None
        # The backend socket's protocol, made by C (`partial`), not by a Python lambda.
        self._factory = partial(Pump, conn, conn.transport, shared.settings.write_buffer_high)
        self._coro: Coroutine[Any, Any, tuple[asyncio.BaseTransport, Pump]] | None = None
        self._waiting: asyncio.Future[Any] | None = None
        self._endpoint: Endpoint | None = None
        self._timed_out = False
        conn.dialer = self
        self._next()

    def cancel(self) -> None:
        """The client went away: stop the attempt in flight, dial no further."""
        waiting = self._waiting
        if waiting is not None:
            waiting.cancel()

    def time_out(self) -> None:
        """The plane's sweep found the attempt in flight past the connect timeout: count
        it and go on to the next endpoint."""
        waiting = self._waiting
        if waiting is not None and waiting.cancel():
            self._timed_out = True

    def _next(self) -> None:
        """Start attempts until one is in flight or connected, or every endpoint failed
        (a loop, not a recursion: every attempt may fail at once, e.g. no local port)."""
        conn = self.conn
        eps = self.backend.endpoints
        n = len(eps)
        while conn.state is DIALING:
            i = self._i
            if i == n:
                conn.dial_failed()
                return
            self._i = i + 1
            ep = self._endpoint = eps[(self._start + i) % n]
            conn.dial_began = time.monotonic()
            conn.state_shared.dialing.add(conn)  # the plane's sweep enforces connect_timeout
            self._coro = conn.state_shared.loop.create_connection(self._factory, ep.host, ep.port)
            if self._send():
                return

    def _step(self, _: object) -> None:
        """The future the attempt waits on is done: go on with it."""
        if not self._send():
            self._next()

    def _send(self) -> bool:
        """Step the attempt in flight: True while it waits or once it has connected (or
        found the client gone), False when it failed."""
        self._waiting = None
        coro = self._coro
        assert coro is not None
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            self._coro = None
            conn = self.conn
            conn.state_shared.dialing.discard(conn)
            transport, pump = done.value
            if conn.state is not DIALING:  # the client went away meanwhile
                transport.close()
            else:
                assert self._endpoint is not None
                conn.dialed(self._endpoint, pump, conn.dial_began, time.monotonic())
            return True
        except asyncio.CancelledError:
            self._failed(TIMEOUT if self._timed_out else None)
            return False
        except OSError as exc:
            self._failed(error_class(exc), exc)
            return False
        except Exception as exc:  # a bug, not the network: still answer the client
            log.exception("connect to %s (%s) failed", self._endpoint, self.backend.name)
            self._failed("error", exc)
            return False
        if waiting is None:  # a bare `yield` (asyncio.sleep(0)): step again next turn
            self.conn.state_shared.loop.call_soon(self._step, None)
        else:
            self._waiting = waiting
            waiting.add_done_callback(self._step)
        return True

    def _failed(self, reason: str | None, exc: Exception | None = None) -> None:
        """The attempt in flight failed (`reason`, counted) or was stopped (None)."""
        self._coro = None
        conn = self.conn
        conn.state_shared.dialing.discard(conn)
        if reason is not None:
            count(self.tally.errors, reason)
            if reason == TIMEOUT:
                self._timed_out = False
                log.warning("connect to %s (%s) timed out", self._endpoint, self.backend.name)
            elif reason != "refused":
                log.warning("connect to %s (%s) failed: %s", self._endpoint, self.backend.name, exc)
