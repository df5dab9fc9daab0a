"""What every relay engine promises, run against each engine in `ENGINES` and on both
event loops (see conftest.py).

Real loopback sockets at both far ends: bytes arrive exact (SHA-256) and in order, a
FIN one way leaves the other way flowing, an RST is passed on as an RST, the counts
are exact, and a reader that stops makes the writer stop instead of filling memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from sniffer.proxy.kernel.relay import KernelRelay, Unavailable
from sniffer.proxy.relay import BACKEND_RESET, CLIENT_RESET, CLOSED, RelayEngine
from sniffer.proxy.relay.kernel import KernelEngine
from tests.proxy.relay.engines import ENGINES, open_pair, recv_all


@pytest.fixture(params=[*sorted(ENGINES), "kernel"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[RelayEngine]:
    if request.param != "kernel":
        yield ENGINES[request.param]
        return
    # The kernel engine needs its maps and program, and the running loop.
    try:
        relay = KernelRelay(capacity=64)
    except Unavailable as exc:  # pragma: no cover - CI runs as root
        pytest.skip(f"kernel relay unavailable here: {exc}")
    yield KernelEngine(relay, asyncio.get_running_loop())
    relay.close()


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def _send_then_fin(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    sock.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("first", ["client", "backend"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_bytes_arrive_exact_both_ways_with_half_close(
    engine: RelayEngine, first: str, seed: int
) -> None:
    rng = random.Random(seed)
    up = _blob(seed, rng.randrange(0, 3 << 20))
    down = _blob(seed + 100, rng.randrange(0, 3 << 20))
    replay = b"hello-replayed"
    async with open_pair(engine, replay) as pair:
        async with asyncio.timeout(60):
            if first == "client":
                # The client finishes sending first; the backend answers after that FIN.
                _, got_up = await asyncio.gather(
                    _send_then_fin(pair.client, up), recv_all(pair.backend)
                )
                _, got_down = await asyncio.gather(
                    _send_then_fin(pair.backend, down), recv_all(pair.client)
                )
            else:
                _, got_down = await asyncio.gather(
                    _send_then_fin(pair.backend, down), recv_all(pair.client)
                )
                _, got_up = await asyncio.gather(
                    _send_then_fin(pair.client, up), recv_all(pair.backend)
                )
            await pair.owner.ended.wait()
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(replay + up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        assert pair.owner.outcomes == [CLOSED]
        assert (pair.relay.bytes_up, pair.relay.bytes_down) == (len(replay) + len(up), len(down))


async def test_concurrent_streams_both_ways(engine: RelayEngine) -> None:
    """Both peers send at once (each direction independent of the other)."""
    up, down = _blob(7, 2 << 20), _blob(8, 2 << 20)
    async with open_pair(engine) as pair:
        async with asyncio.timeout(60):
            _, _, got_up, got_down = await asyncio.gather(
                _send_then_fin(pair.client, up),
                _send_then_fin(pair.backend, down),
                recv_all(pair.backend),
                recv_all(pair.client),
            )
            await pair.owner.ended.wait()
        assert got_up == up and got_down == down
        assert pair.owner.outcomes == [CLOSED]


async def test_client_fin_before_the_hand_off_follows_the_replay(engine: RelayEngine) -> None:
    async with open_pair(engine, b"whole request", client_eof=True) as pair:
        async with asyncio.timeout(10):
            assert await recv_all(pair.backend) == b"whole request"
            await _send_then_fin(pair.backend, b"answer")
            assert await recv_all(pair.client) == b"answer"
            await pair.owner.ended.wait()
        assert pair.owner.outcomes == [CLOSED]


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


async def _reset_seen(sock: socket.socket) -> bool:
    loop = asyncio.get_running_loop()
    try:
        while await loop.sock_recv(sock, 65536):
            pass
    except ConnectionResetError:
        return True
    return False


@pytest.mark.parametrize("who", ["client", "backend"])
async def test_a_reset_is_passed_on_as_a_reset(engine: RelayEngine, who: str) -> None:
    async with open_pair(engine) as pair:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(10):
            await loop.sock_sendall(pair.client, b"up")
            assert await loop.sock_recv(pair.backend, 16) == b"up"
            if who == "client":
                _rst(pair.client)
                assert await _reset_seen(pair.backend)
            else:
                _rst(pair.backend)
                assert await _reset_seen(pair.client)
            await pair.owner.ended.wait()
        assert pair.owner.outcomes == [CLIENT_RESET if who == "client" else BACKEND_RESET]


async def test_abort_drops_both_sides_without_a_report(engine: RelayEngine) -> None:
    async with open_pair(engine) as pair:
        pair.relay.abort()
        async with asyncio.timeout(10):
            assert await recv_all(pair.client) == b""
            assert await recv_all(pair.backend) == b""
        for _ in range(10):
            await asyncio.sleep(0)
        assert pair.owner.outcomes == []


async def test_close_lets_written_bytes_out(engine: RelayEngine) -> None:
    async with open_pair(engine, b"replay") as pair:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(10):
            await loop.sock_sendall(pair.backend, b"down")
            assert await loop.sock_recv(pair.client, 16) == b"down"
            pair.relay.close()
            assert await recv_all(pair.backend) == b"replay"
            assert await recv_all(pair.client) == b""


async def _push_until_stalled(sock: socket.socket, cap: int) -> int:
    """Send until the socket stays full for 0.5 s or `cap` bytes went: what was sent."""
    chunk = b"\x5a" * (256 * 1024)
    sent = stalled = 0
    while sent < cap and stalled < 50:
        try:
            sent += sock.send(chunk[: cap - sent])
            stalled = 0
        except BlockingIOError:
            stalled += 1
            await asyncio.sleep(0.01)
    return sent


STALL_BOUND = 24 << 20
"""What a pair may take in from a writer whose reader stopped: socket buffers on both
hops (the kernel autotunes them) plus one write buffer; a relay without flow control
takes whatever is offered (the push is capped at twice this)."""


@pytest.mark.parametrize("reader", ["backend", "client"])
async def test_a_stopped_reader_stops_the_writer(engine: RelayEngine, reader: str) -> None:
    async with open_pair(engine) as pair:
        writer_sock, reader_sock = (
            (pair.client, pair.backend) if reader == "backend" else (pair.backend, pair.client)
        )
        async with asyncio.timeout(60):
            sent = await _push_until_stalled(writer_sock, 2 * STALL_BOUND)
            assert sent < STALL_BOUND
            writer_sock.shutdown(socket.SHUT_WR)
            got = await recv_all(reader_sock)  # the reader resumes: every byte, once
        assert len(got) == sent and got == b"\x5a" * sent


def _sizes() -> Iterator[int]:
    yield from (0, 1, 1500, 65536, 65537)


@pytest.mark.parametrize("size", list(_sizes()))
async def test_counts_are_exact_at_chunk_edges(engine: RelayEngine, size: int) -> None:
    async with open_pair(engine, b"r") as pair:
        async with asyncio.timeout(20):
            _, got = await asyncio.gather(
                _send_then_fin(pair.client, b"u" * size), recv_all(pair.backend)
            )
            assert got == b"r" + b"u" * size
            _, got = await asyncio.gather(
                _send_then_fin(pair.backend, b"d" * size), recv_all(pair.client)
            )
            assert got == b"d" * size
            await pair.owner.ended.wait()
        assert (pair.relay.bytes_up, pair.relay.bytes_down) == (1 + size, size)
