"""The user-space relay: two asyncio protocols copying chunks between two transports.

`Pump` is the backend socket's protocol from the dial on (bytes a backend sends before
the hand-off go straight to the client, counted) and, once `start`ed, the relay of the
pair: it installs `ClientSide` as the client transport's protocol, so each chunk costs
one call that counts it and writes it on, with no phase to test.

Flow control is symmetric and tiny: when one side's write buffer passes its high-water
mark, the other side stops reading until it drains, so a pair's memory is bounded by two
write buffers, whatever the speed difference of the peers. A FIN one way is passed on
as a FIN (the other way keeps flowing); an RST one way is passed on as an RST. This
module never routes, dials, counts per tenant or formats a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import TYPE_CHECKING, Final, cast

from sniffer.proxy.relay import BACKEND_RESET, CLIENT_RESET, CLOSED

if TYPE_CHECKING:
    from collections.abc import Callable

    from sniffer.proxy.relay import Relay, RelayOwner

__all__ = ["USERSPACE", "ClientSide", "Pump", "UserSpaceEngine", "reset"]

_LINGER_ZERO = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Close with an RST, as the peer on the other side did: `abort()` alone sends a FIN,
    which a client without its own framing would take for a complete response."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


class Pump(asyncio.Protocol):
    """The backend side of a pair, and the pair's `Relay` in user space."""

    __slots__ = (
        "backend",
        "backend_eof",
        "bytes_down",
        "client",
        "client_eof",
        "early_end",
        "high",
        "owner",
        "side",
        "started",
    )
    engine: Final = "userspace"

    def __init__(self, owner: RelayOwner, client: asyncio.Transport, high: int) -> None:
        """`client`: the client's transport; `high`: the write-buffer high-water mark."""
        self.owner: RelayOwner | None = owner
        """Told once when the pair ends, then forgotten (no cycle outlives the pair)."""
        self.client: asyncio.Transport | None = client
        self.backend: asyncio.Transport | None = None
        """None before the connect and again once the backend's socket is gone."""
        self.high = high
        self.side: ClientSide | None = None
        self.bytes_down = 0
        self.client_eof = False
        self.backend_eof = False
        self.started = False
        self.early_end: str | None = None
        """How the backend's socket went before `start`, which then ends the pair so."""

    # -- the Relay interface ---------------------------------------------------------

    @property
    def bytes_up(self) -> int:
        side = self.side
        return 0 if side is None else side.bytes_up

    def start(self, replayed: int, client_eof: bool) -> Pump:
        """Relay from now on: the replay (`replayed` bytes) is written to the backend."""
        client = self.client
        backend = self.backend
        assert client is not None
        self.side = side = ClientSide(self, backend, replayed)
        self.started = True
        self.client_eof = client_eof
        client.set_protocol(side)
        if self.early_end is not None:  # the backend went between the connect and now
            if self.early_end is BACKEND_RESET:
                reset(client)
            self._end(self.early_end)
        elif client_eof:
            backend.write_eof()  # type: ignore[union-attr]  # (None only with early_end)
        else:
            client.resume_reading()
        return self

    def close(self) -> None:
        client = self.client
        if client is not None and not client.is_closing():
            client.close()
        backend = self.backend
        if backend is not None and not backend.is_closing():
            backend.close()

    def abort(self) -> None:
        self.owner = None
        if self.client is not None:
            self.client.abort()
        if self.backend is not None:
            self.backend.abort()

    def _end(self, outcome: str) -> None:
        """Close both sides (letting written bytes out), then tell the owner, once."""
        self.close()
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.relay_closed(outcome)

    # -- the backend transport's callbacks ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-alike.
        transport = cast(asyncio.Transport, transport)
        self.backend = transport
        # (uvloop already sets TCP_NODELAY on every TCP transport.)
        transport.set_write_buffer_limits(self.high)

    def data_received(self, data: bytes) -> None:
        self.bytes_down += len(data)
        self.client.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.backend_eof = True
        client = self.client
        if self.client_eof or client is None or client.is_closing():
            self._end(CLOSED)
            return False
        client.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend = None  # breaks transport <-> protocol: freed by reference counting
        side = self.side
        if side is not None:
            side.backend = None
        if not self.started:  # `start` ends the pair
            self.early_end = CLOSED if exc is None else BACKEND_RESET
            return
        if exc is not None:
            if self.client is not None:
                reset(self.client)
            self._end(BACKEND_RESET)
        else:
            self._end(CLOSED)

    def pause_writing(self) -> None:
        client = self.client
        if client is not None:
            client.pause_reading()

    def resume_writing(self) -> None:
        client = self.client
        if client is not None and self.started and not self.client_eof:
            client.resume_reading()


class ClientSide(asyncio.Protocol):
    """The client transport's protocol once relaying: counts and writes on each chunk."""

    __slots__ = ("backend", "bytes_up", "pump")

    def __init__(self, pump: Pump, backend: asyncio.Transport | None, replayed: int) -> None:
        self.pump: Pump | None = pump
        self.backend = backend
        self.bytes_up = replayed

    def data_received(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self.backend.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        pump = self.pump
        assert pump is not None
        pump.client_eof = True
        backend = self.backend
        if pump.backend_eof or backend is None:
            pump._end(CLOSED)
            return False
        backend.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        pump = self.pump
        assert pump is not None
        self.pump = None  # breaks the transport -> side -> pump -> transport cycle
        pump.client = None
        if exc is not None:
            if self.backend is not None:
                reset(self.backend)
            pump._end(CLIENT_RESET)
        else:
            pump._end(CLOSED)

    def pause_writing(self) -> None:
        if self.backend is not None:
            self.backend.pause_reading()

    def resume_writing(self) -> None:
        if self.backend is not None:
            self.backend.resume_reading()


class UserSpaceEngine:
    """The engine everywhere: a started pump is its own relay."""

    __slots__ = ()
    name: Final = "userspace"
    start: Final[Callable[[Pump, int, bool], Relay]] = staticmethod(Pump.start)
    """`Pump.start` itself (one call per connection, not two)."""


USERSPACE: Final = UserSpaceEngine()
