"""The data plane's own bookkeeping: listeners opened and closed as tables change."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import weakref

import pytest
import uvloop

from sniffer.observe import accesslog
from sniffer.proxy.server import DataPlane, drop_transport_registry
from sniffer.proxy.settings import ProxySettings
from sniffer.routing.model import Route, WeightedBackend
from sniffer.routing.table import Backend, Endpoint, Listener, RouteTable, TableSpec
from tests.conftest import PlaneFactory
from tests.proxy.test_relay import client_hello, tls_spec
from tests.support.servers import RawBackend, answering_backend


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


def _registry(loop: asyncio.AbstractEventLoop) -> object:
    (found,) = [o for o in gc.get_referents(loop) if isinstance(o, weakref.WeakValueDictionary)]
    return found


def test_uvloop_keeps_no_registry_of_transports_and_still_relays() -> None:
    """`drop_transport_registry`: a connection on uvloop costs no weak reference per
    transport, and everything a connection and the kernel relay use still works."""
    hello = client_hello("app.r.example")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        registry = _registry(loop)
        raw = await RawBackend().start()
        plane = DataPlane(ProxySettings(kernel_relay="off"))
        assert type(registry) is not weakref.WeakValueDictionary  # the plane switched it
        assert drop_transport_registry(loop)  # a second plane on the loop: already done
        await plane.install(RouteTable.build(tls_spec({"r": [raw.port]}, {"app.r.example": "r"})))
        port = plane.bound_ports()["main"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello + b"up")
        b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
        assert await b_reader.readexactly(len(hello) + 2) == hello + b"up"
        b_writer.write(b"down")
        assert await reader.readexactly(4) == b"down"
        assert len(plane.connections) == 1 and len(registry) == 0  # type: ignore[arg-type]
        # The one check the registry served: a descriptor no transport owns is accepted.
        a, b = socket.socketpair()
        seen = loop.create_future()
        loop.add_reader(a.fileno(), seen.set_result, True)
        b.send(b"x")
        assert await asyncio.wait_for(seen, 10)
        loop.remove_reader(a.fileno())
        a.close()
        b.close()
        writer.close()
        b_writer.close()
        await plane.drain(1)
        await raw.close()

    uvloop.run(main())


async def test_an_asyncio_loop_is_left_as_it_is() -> None:
    loop = asyncio.get_running_loop()
    before = loop._transports  # type: ignore[attr-defined]
    assert not drop_transport_registry(loop)
    assert type(loop._transports) is weakref.WeakValueDictionary  # type: ignore[attr-defined]
    assert loop._transports is before  # type: ignore[attr-defined]


async def test_a_retired_backend_leaves_nothing_behind_in_the_plane(
    data_plane: PlaneFactory,
) -> None:
    """Tenants come and go for months: once a table without them is installed, the plane
    keeps neither their round-robin place, the access log's formatted names (the soak
    saw both grow with every route that came and went) nor their metric series."""
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
        return repr(
            (plane._rr, accesslog._WHERE, accesslog._JS, accesslog._LISTENER, plane.stats.backends)
        )

    assert "retired-svc" in kept()
    await plane.install(RouteTable.build(TableSpec(listeners=(listener,), backends=(), routes=())))
    assert "retired-svc" not in kept() and "retired-tenant" not in kept()
    server.close()
