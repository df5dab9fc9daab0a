"""Relaying faithfully under trouble: resets passed on as resets, and an access log whose
pipe stops draining never stalls the data plane."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time

from sniffer.observe.accesslog import AccessLog
from sniffer.observe.stats import DataPlaneStats
from sniffer.proxy.server import DataPlane, ProxySettings
from sniffer.routing.table import RouteTable
from tests.conftest import PlaneFactory
from tests.proxy.test_relay import client_hello, tls_spec
from tests.support.servers import RawBackend, answering_backend

LINGER_ZERO = struct.pack("ii", 1, 0)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close a stream with an RST (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    writer.transport.abort()


async def _relayed_pair(
    plane: DataPlane, raw: RawBackend
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamWriter]:
    port = plane.bound_ports()["main"]
    hello = client_hello("app.r.example")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello)
    b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    assert await b_reader.readexactly(len(hello)) == hello
    return reader, writer, b_reader, b_writer


async def _outcome(plane: DataPlane) -> str:
    async with asyncio.timeout(10):
        while not plane.recorded.records:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
    outcome: str = plane.recorded.records[-1]["outcome"]  # type: ignore[attr-defined]
    return outcome


async def test_backend_reset_reaches_the_client_as_a_reset(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"app.r.example": "r"}))
    reader, writer, b_reader, b_writer = await _relayed_pair(plane, raw)
    b_writer.write(b"partial response")
    await b_writer.drain()
    assert await reader.readexactly(16) == b"partial response"
    _rst(b_writer)
    try:
        rest = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        rest = None
    assert rest is None, f"client saw a clean close (EOF) after {rest!r}, not a reset"
    assert await _outcome(plane) == "backend_reset"
    writer.close()
    await raw.close()


async def test_client_reset_reaches_the_backend_as_a_reset(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"app.r.example": "r"}))
    reader, writer, b_reader, b_writer = await _relayed_pair(plane, raw)
    writer.write(b"half a request")
    assert await b_reader.readexactly(14) == b"half a request"
    _rst(writer)
    try:
        rest = await asyncio.wait_for(b_reader.read(), 10)
    except ConnectionResetError:
        rest = None
    assert rest is None, f"backend saw a clean close (EOF) after {rest!r}, not a reset"
    assert await _outcome(plane) == "client_reset"
    b_writer.close()
    await raw.close()


async def test_clean_close_stays_a_clean_close(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"app.r.example": "r"}))
    reader, writer, b_reader, b_writer = await _relayed_pair(plane, raw)
    b_writer.write(b"whole response")
    b_writer.close()
    assert await asyncio.wait_for(reader.read(), 10) == b"whole response"
    writer.close()
    assert await _outcome(plane) == "closed"
    await raw.close()


async def test_stalled_log_pipe_never_blocks_relaying() -> None:
    """stdout is a pipe nobody reads: relaying goes on, lines beyond the buffer are
    dropped and counted, and what was kept comes out whole once the pipe drains."""

    server = await answering_backend()
    bport = server.sockets[0].getsockname()[1]
    read_end, write_end = os.pipe()
    log = AccessLog(fd=write_end, flush_interval=0.01, max_buffer=16 * 1024)
    stats = DataPlaneStats()
    plane = DataPlane(ProxySettings(), access_log=log, stats=stats)
    await plane.install(RouteTable.build(tls_spec({"r": [bport]}, {"app.r.example": "r"})))
    port = plane.bound_ports()["main"]
    hello = client_hello("app.r.example")
    began = time.monotonic()
    n = 0
    # Enough lines to fill the pipe (64 KiB) and the buffer (16 KiB) several times over.
    while stats.snapshot().counters.get(("sniffer_access_log_dropped", ()), 0) < 100:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello)
        assert await asyncio.wait_for(reader.read(), 10) == b"ok"  # relaying goes on
        writer.close()
        n += 1
        assert n < 5000 and time.monotonic() - began < 60
    await plane.drain(0)
    log.flush()
    dropped = stats.snapshot().counters[("sniffer_access_log_dropped", ())]
    # Now drain the pipe: every line that was kept is whole JSON.
    os.set_blocking(read_end, False)
    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            chunk = os.read(read_end, 65536)
        except BlockingIOError:
            log.close(0.5)  # the writer thread had more: let it finish
            try:
                chunk = os.read(read_end, 65536)
            except BlockingIOError:
                break
        data += chunk
    lines = data.decode().splitlines()
    # Whole lines only: each parses as one JSON object of a routed connection.
    assert all(json.loads(line)["route"] == "app.r.example" for line in lines)
    assert len(lines) + dropped >= n - 50  # a few may still sit in the last batch
    assert dropped > 0 and len(lines) > 0
    os.close(read_end)
    os.close(write_end)
    server.close()
