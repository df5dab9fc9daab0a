"""The user-space engine's own promises, beyond the shared contract (test_contract.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from sniffer.proxy.relay import BACKEND_RESET
from sniffer.proxy.relay.userspace import USERSPACE, ClientSide, Pump
from tests.proxy.relay.engines import open_pair, recv_all, until


async def test_the_client_transport_calls_the_relay_directly() -> None:
    """After the hand-off the client's chunks reach `ClientSide`: no phase test per chunk."""
    async with open_pair(USERSPACE) as pair:
        client_transport, _ = pair.transports
        side = client_transport.get_protocol()
        assert type(side) is ClientSide and side.pump is pair.pump
        assert pair.relay is pair.pump and pair.relay.engine == "userspace"


@contextlib.asynccontextmanager
async def _dialled_pump(
    owner: _NoOwner,
) -> AsyncIterator[tuple[socket.socket, asyncio.Transport, Pump, asyncio.Transport, socket.socket]]:
    """A client on a transport and its `Pump` dialled to a raw backend socket, the relay
    not started yet: (client socket, its transport, pump, backend transport, backend)."""
    loop = asyncio.get_running_loop()
    made: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.set_result(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Accepted, "127.0.0.1", 0)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        with socket.socket() as client, listener:
            client.setblocking(False)
            await loop.sock_connect(client, server.sockets[0].getsockname())
            ct = await made
            pump = Pump(owner, ct, 65536)
            accepting = loop.create_task(loop.sock_accept(listener))
            bt, _ = await loop.create_connection(lambda: pump, *listener.getsockname())
            backend, _ = await accepting
            with backend:
                yield client, ct, pump, bt, backend
    finally:
        server.close()


class _NoOwner:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def relay_closed(self, outcome: str) -> None:
        self.outcomes.append(outcome)


async def test_bytes_a_backend_sends_before_the_hand_off_reach_the_client() -> None:
    loop = asyncio.get_running_loop()
    async with _dialled_pump(_NoOwner()) as (client, ct, pump, bt, backend):
        backend.sendall(b"banner")  # a backend that speaks first
        await until(lambda: pump.bytes_down == 6)
        assert await loop.sock_recv(client, 16) == b"banner"
        USERSPACE.start(pump, 0, False)
        assert pump.bytes_down == 6 and pump.bytes_up == 0
        bt.abort()
        ct.abort()


async def test_a_backend_gone_before_the_hand_off_ends_the_pair_at_once() -> None:
    owner = _NoOwner()
    async with _dialled_pump(owner) as (client, _, pump, _, backend):
        # The backend resets before the replay went out (a FIN would only half-close).
        backend.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        backend.close()
        await until(lambda: pump.backend is None)
        assert owner.outcomes == []  # not started: nothing to report yet
        USERSPACE.start(pump, 0, False)
        assert owner.outcomes == [BACKEND_RESET]
        async with asyncio.timeout(5):
            with pytest.raises(ConnectionResetError):  # passed on to the client
                await recv_all(client)


def _live() -> int:
    return sum(type(o) in (Pump, ClientSide) for o in gc.get_objects())


async def _relay_one_pair_to_its_end() -> None:
    async with open_pair(USERSPACE) as pair:
        async with asyncio.timeout(10):
            pair.client.shutdown(socket.SHUT_WR)
            pair.backend.shutdown(socket.SHUT_WR)
            await pair.owner.ended.wait()
        pump = pair.pump
        await until(lambda: pump.client is None and pump.backend is None)


async def test_an_ended_pair_is_freed_without_the_cycle_collector() -> None:
    """Transports and protocols point at each other; the pump breaks those cycles as each
    side goes, so a closed pair is freed by reference counting at once."""
    gc.collect()
    before = _live()
    gc.disable()
    try:
        await _relay_one_pair_to_its_end()
        for _ in range(20):
            await asyncio.sleep(0)
        after = _live()
    finally:
        gc.enable()
    assert after == before
