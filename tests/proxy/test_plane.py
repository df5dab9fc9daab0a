"""The data plane's own bookkeeping: listeners opened and closed as tables change."""

from __future__ import annotations

import logging

import pytest

from sniffer.routing.table import Backend, Endpoint, Listener, RouteTable, TableSpec
from tests.conftest import PlaneFactory


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
