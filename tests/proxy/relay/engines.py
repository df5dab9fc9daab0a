"""A pair of real loopback connections handed to a relay engine, for the engines' tests.

`open_pair` builds what `ClientConnection` builds before its hand-off: an accepted
client transport, a backend dialled with a `Pump`, the replay written; then starts the
engine. The test holds the two far ends as plain non-blocking sockets (`client`,
`backend`) and the `Relay`. `ENGINES` lists every engine the contract suite runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sniffer.proxy.relay import Relay, RelayEngine
from sniffer.proxy.relay.userspace import USERSPACE, Pump

ENGINES: dict[str, RelayEngine] = {"userspace": USERSPACE}
"""Every engine the shared suite runs against (a kernel engine adds itself here)."""

HIGH = 64 * 1024
"""The write-buffer high-water mark the pairs use (the data plane's default)."""


@dataclass
class Owner:
    """Records what the engine reports (`RelayOwner`)."""

    outcomes: list[str] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    relay: Relay | None = None
    """What the engine started (or moved the pair to), as on a connection."""
    routed_at: float = 0.0

    def relay_closed(self, outcome: str) -> None:
        self.outcomes.append(outcome)
        self.ended.set()


class _Accepted(asyncio.Protocol):
    """The client transport's protocol before the hand-off (the connection's role)."""

    def __init__(self, made: asyncio.Future[asyncio.Transport]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.set_result(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        pass


@dataclass
class Pair:
    client: socket.socket
    """The client's own socket (the far end of the relayed client transport)."""
    backend: socket.socket
    """The backend's own socket (the far end of the dialled backend transport)."""
    relay: Relay
    pump: Pump
    owner: Owner
    transports: tuple[asyncio.Transport, asyncio.Transport]


@contextlib.asynccontextmanager
async def open_pair(
    engine: RelayEngine, replay: bytes = b"", client_eof: bool = False
) -> AsyncIterator[Pair]:
    loop = asyncio.get_running_loop()
    made: asyncio.Future[asyncio.Transport] = loop.create_future()
    server = await loop.create_server(lambda: _Accepted(made), "127.0.0.1", 0)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    client = socket.socket()
    client.setblocking(False)
    backend: socket.socket | None = None
    transports: list[asyncio.Transport] = []
    try:
        await loop.sock_connect(client, server.sockets[0].getsockname())
        client_transport = await asyncio.wait_for(made, 5)
        transports.append(client_transport)
        owner = Owner()
        pump = Pump(owner, client_transport, HIGH)
        accepting = loop.create_task(loop.sock_accept(listener))
        backend_transport, _ = await loop.create_connection(lambda: pump, *listener.getsockname())
        transports.append(backend_transport)  # type: ignore[arg-type]
        backend, _ = await asyncio.wait_for(accepting, 5)
        backend.setblocking(False)
        if client_eof:
            client.shutdown(socket.SHUT_WR)
        backend_transport.write(replay)
        owner.routed_at = time.monotonic()
        relay = owner.relay = engine.start(pump, len(replay), client_eof)
        yield Pair(client, backend, relay, pump, owner, (transports[0], transports[1]))
    finally:
        for t in transports:
            t.abort()
        for s in (client, backend, listener):
            if s is not None:
                s.close()
        server.close()


async def recv_all(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    """Read until EOF (bounded by `limit` bytes and the caller's timeout)."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) <= limit:
        data = await loop.sock_recv(sock, 1 << 18)
        if not data:
            break
        out += data
    return bytes(out)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `predicate()` on the loop until true (bounded)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)
