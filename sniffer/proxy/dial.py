"""Dialing a routed connection's backend: the endpoint walk, its error classes, our PROXY header.

`dial` is a `ClientConnection`'s dial task: it tries the backend's endpoints in turn from
the plane's round-robin start, each attempt watched by the plane's connect-timeout sweep
(which cancels it through `ClientConnection.dial_timed_out_now`), counts each failure by
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
from typing import TYPE_CHECKING, Final

from sniffer.observe.counting import count
from sniffer.proxy.phases import DIALING
from sniffer.proxy.relay.userspace import Pump
from sniffer.wire.proxy_protocol import encode_v1, encode_v1_unknown, encode_v2, encode_v2_local

if TYPE_CHECKING:
    from sniffer.observe.stats import BackendTally
    from sniffer.proxy.connection import ClientConnection
    from sniffer.routing.table import Backend

__all__ = ["TIMEOUT", "dial", "error_class", "proxy_header"]

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


async def dial(conn: ClientConnection, backend: Backend, tally: BackendTally) -> None:
    shared = conn.state_shared
    eps = backend.endpoints
    n = len(eps)
    start = shared.next_index(backend.name, n)
    errors = tally.errors
    loop = shared.loop
    dialing = shared.dialing
    client = conn.transport
    high = shared.settings.write_buffer_high
    assert client is not None
    for i in range(n):
        if conn.state is not DIALING:
            return  # the client went away while we dialed
        ep = eps[(start + i) % n]
        began = conn.dial_began = time.monotonic()
        dialing.add(conn)  # the plane's sweep enforces connect_timeout
        try:
            transport, pump = await loop.create_connection(
                lambda: Pump(conn, client, high), ep.host, ep.port
            )
        except asyncio.CancelledError:
            if not conn.dial_timed_out:
                raise
            conn.dial_timed_out = False
            if conn.dial_task is not None:
                conn.dial_task.uncancel()
            count(errors, TIMEOUT)
            log.warning("connect to %s (%s) timed out", ep, backend.name)
            continue
        except OSError as exc:
            reason = error_class(exc)
            count(errors, reason)
            if reason != "refused":
                log.warning("connect to %s (%s) failed: %s", ep, backend.name, exc)
            continue
        finally:
            dialing.discard(conn)
        if conn.state is not DIALING:
            transport.close()
            return
        conn.dialed(ep, pump, time.monotonic() - began)
        return
    conn.dial_failed()
