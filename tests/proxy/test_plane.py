"""The data plane's own bookkeeping: listeners opened and closed as tables change."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sniffer.observe import accesslog
from sniffer.routing.model import Route, WeightedBackend
from sniffer.routing.table import Backend, Endpoint, Listener, RouteTable, TableSpec
from tests.conftest import PlaneFactory
from tests.support.servers import answering_backend


async def test_closing_a_listener_logs_its_name_and_host_port(
    data_plane: PlaneFactory, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Backend("b", "t", (Endpoint("127.0.0.1", 9),))
    spec = TableSpec(
        listeners=(Listener("tls-443", "127.0.0.1", 0, "tls"),), backends=(backend,), routes=()
    )
    plane = await data_plane(spec)
    assert "tls-443" in plane.bound_ports()
    caplog.set_level(logging.INFO, logger="sniffer.proxy")
    await plane.install(RouteTable.build(TableSpec(listeners=(), backends=(backend,), routes=())))
    assert plane.bound_ports() == {}
    assert "closed listener tls-443 on 127.0.0.1:0" in caplog.messages


async def test_a_retired_backend_leaves_nothing_behind_in_the_plane(
    data_plane: PlaneFactory,
) -> None:
    """Tenants come and go for months: once a table without them is installed, the plane
    keeps neither their round-robin place nor the access log's formatted names (the soak
    saw both grow with every route that came and went)."""
    server = await answering_backend()
    port = server.sockets[0].getsockname()[1]
    retired = Backend("retired-svc", "retired-tenant", (Endpoint("127.0.0.1", port),) * 2)
    listener = Listener("http", "127.0.0.1", 0, "http")
    spec = TableSpec(
        listeners=(listener,),
        backends=(retired,),
        routes=(Route("retired.example", (WeightedBackend("retired-svc"),)),),
    )
    plane = await data_plane(spec)
    reader, writer = await asyncio.open_connection("127.0.0.1", plane.bound_ports()["http"])
    writer.write(b"GET / HTTP/1.1\r\nHost: retired.example\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b"ok"
    writer.close()
    log = plane.recorded  # type: ignore[attr-defined]
    for _ in range(200):  # the line is written when the plane closes the connection
        if log.records:
            break
        await asyncio.sleep(0.01)
    assert log.records[0]["backend"] == "retired-svc"

    def kept() -> str:
        return repr((plane._rr, accesslog._WHERE, accesslog._JS, accesslog._LISTENER))

    assert "retired-svc" in kept()
    await plane.install(RouteTable.build(TableSpec(listeners=(listener,), backends=(), routes=())))
    assert "retired-svc" not in kept() and "retired-tenant" not in kept()
    server.close()
