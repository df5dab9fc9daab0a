"""`ClientConnection` walked through every phase change with mock transports, no sockets.

As uvicorn's tests/protocols do: the protocol object gets a fake transport that records
what is written, and a loop whose `create_connection` hands back another fake; every move
between phases is recorded and checked against `sniffer.proxy.phases.TRANSITIONS`.
Metrics are read the way Prometheus does, through a registry's `get_sample_value`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sniffer.observe.accesslog import AccessRecord
from sniffer.observe.metrics import DataPlaneCollector
from sniffer.observe.stats import DataPlaneStats
from sniffer.proxy.connection import ClientConnection
from sniffer.proxy.phases import CLOSED, CLOSING, DIALING, RELAYING, SNIFFING, TRANSITIONS, Phase
from sniffer.proxy.server import DataPlane
from sniffer.proxy.settings import ProxySettings
from sniffer.routing.table import Backend, Endpoint, Listener, Route, RouteTable, TableSpec
from sniffer.routing.table import WeightedBackend as WB
from sniffer.wire.answers import tls_alert
from sniffer.wire.proxy_protocol import encode_v2_local
from tests.wire.hellos import modern_hello, records

HELLO = records(modern_hello(sni=b"app.example"))
LISTENER = Listener("main", "127.0.0.1", 443, "tls")


class FakeTransport:
    """The parts of an asyncio transport a connection uses, recording what it is asked."""

    def __init__(self, protocol: asyncio.Protocol, peer: tuple[str, int] | None) -> None:
        self.protocol = protocol
        self.peer = peer
        self.written = bytearray()
        self.eof_written = False
        self.closing = False
        self.aborted = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 443)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.Protocol:
        return self.protocol

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()


class FakeLoop:
    """The running loop, but `create_connection` connects to a fake backend (or fails)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.dialed: list[tuple[str, int]] = []
        self.failure: OSError | None = None
        self.upstreams: list[FakeTransport] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_connection(
        self, factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> tuple[FakeTransport, asyncio.Protocol]:
        self.dialed.append((host, port))
        done = self._loop.create_future()  # a real connect takes a turn of the loop at least
        self._loop.call_soon(done.set_result, None)
        await done
        if self.failure is not None:
            raise self.failure
        protocol = factory()
        transport = FakeTransport(protocol, (host, port))
        protocol.connection_made(transport)  # type: ignore[arg-type]
        self.upstreams.append(transport)
        return transport, protocol


class Recording(ClientConnection):
    """A ClientConnection that remembers every phase it enters."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "state":
            self.__dict__.setdefault("phases", []).append(value)
        super().__setattr__(name, value)

    @property
    def phases(self) -> list[Phase]:
        return self.__dict__["phases"]  # type: ignore[no-any-return]


class Rig:
    def __init__(self, plane: DataPlane, loop: FakeLoop, registry: CollectorRegistry) -> None:
        self.plane = plane
        self.loop = loop
        self.registry = registry
        self.logged: list[AccessRecord] = []

    def accept(
        self, peer: tuple[str, int] | None = ("192.0.2.9", 5000)
    ) -> tuple[Recording, FakeTransport]:
        conn = Recording(self.plane, LISTENER, self.plane.stats.listener(LISTENER.name))
        transport = FakeTransport(conn, peer)
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn, transport

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0)


def assert_walk(conn: Recording, expected: list[Phase]) -> None:
    assert conn.phases == expected
    for before, after in zip(conn.phases, conn.phases[1:], strict=False):
        assert after in TRANSITIONS[before], f"{before.name} -> {after.name}"


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    # Fake transports have no sockets: the phases are the same whatever the engine.
    plane = DataPlane(ProxySettings(max_connections=2, kernel_relay="off"), stats=DataPlaneStats())
    fake = FakeLoop(plane.loop)
    plane.loop = fake  # type: ignore[assignment]
    spec = TableSpec(
        listeners=(LISTENER,),
        backends=(
            Backend("a", "tenant-a", (Endpoint("10.0.0.1", 443), Endpoint("10.0.0.2", 443))),
            Backend("empty", "tenant-e", ()),
            Backend("pp1", "tenant-p", (Endpoint("10.0.0.3", 443),), proxy_protocol="v1"),
            Backend("pp2", "tenant-p", (Endpoint("10.0.0.4", 443),), proxy_protocol="v2"),
        ),
        routes=(
            Route("app.example", (WB("a"),)),
            Route("none.example", (WB("empty"),)),
            Route("v1.example", (WB("pp1"),)),
            Route("v2.example", (WB("pp2"),)),
        ),
    )
    table = RouteTable.build(spec)
    plane.table = table
    plane.admission.install(table)
    registry = CollectorRegistry()
    registry.register(DataPlaneCollector(lambda: [plane.stats.snapshot()]))
    r = Rig(plane, fake, registry)
    plane.access_log = r.logged.append
    yield r
    for conn in list(plane.connections):
        conn.close_for("test_over")


async def test_sniffing_dialing_relaying_closed(rig: Rig) -> None:
    conn, client = rig.accept()
    assert conn.state is SNIFFING and conn in rig.plane.sniffing
    conn.data_received(HELLO[:10])
    assert conn.state is SNIFFING
    conn.data_received(HELLO[10:])
    assert conn.state is DIALING and conn not in rig.plane.sniffing
    conn.data_received(b"early")  # while dialing: kept for the replay, in order
    await until(lambda: conn.state is RELAYING)
    (upstream,) = rig.loop.upstreams
    assert bytes(upstream.written) == HELLO + b"early"
    # Handed to the relay: the client's transport now calls the relay's protocol.
    assert client.protocol is not conn and conn.relay is upstream.protocol
    client.protocol.data_received(b"up")
    assert upstream.written.endswith(b"up")
    upstream.protocol.data_received(b"down")
    assert bytes(client.written) == b"down"
    assert client.protocol.eof_received() is True  # half-close passed on, connection stays
    assert upstream.eof_written and conn.state is RELAYING
    assert upstream.protocol.eof_received() is False
    assert conn.state is CLOSED and conn.outcome == "closed"
    assert_walk(conn, [SNIFFING, DIALING, RELAYING, CLOSED])
    await until(lambda: client.closing and upstream.closing)
    (logged,) = rig.logged
    assert (logged.outcome, logged.host, logged.backend, logged.endpoint) == (
        "closed",
        "app.example",
        "a",
        "10.0.0.1:443",
    )
    assert (logged.bytes_in, logged.bytes_out) == (len(HELLO) + 7, 4)
    assert (conn.bytes_up, conn.bytes_down) == (len(HELLO) + 7, 4)
    labels = {"listener": "main", "backend": "a", "tenant": "tenant-a"}
    assert rig.metric("sniffer_connections_total", **labels) == 1
    assert (
        rig.metric(
            "sniffer_bytes_total", backend="a", tenant="tenant-a", direction="client_to_backend"
        )
        == len(HELLO) + 7
    )


async def test_unknown_name_sniffing_closing_closed(rig: Rig) -> None:
    conn, client = rig.accept()
    conn.data_received(records(modern_hello(sni=b"other.example")))
    assert conn.state is CLOSING and conn.outcome == "unknown_name"
    assert bytes(client.written) == tls_alert(112) and client.eof_written
    conn.data_received(b"still talking")  # discarded while closing
    conn.connection_lost(None)
    assert_walk(conn, [SNIFFING, CLOSING, CLOSED])
    assert (
        rig.metric("sniffer_refused_connections_total", listener="main", reason="unknown_name") == 1
    )
    assert rig.loop.dialed == []


async def test_malformed_hello_is_refused_by_the_sniffer(rig: Rig) -> None:
    conn, client = rig.accept()
    conn.data_received(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
    assert conn.state is CLOSING and conn.outcome == "bad_hello"
    assert bytes(client.written) == tls_alert(50)
    assert_walk(conn, [SNIFFING, CLOSING])


async def test_every_endpoint_failing_dialing_closing(rig: Rig) -> None:
    rig.loop.failure = ConnectionRefusedError()
    conn, client = rig.accept()
    conn.data_received(HELLO)
    await until(lambda: conn.state is CLOSING)
    assert sorted(rig.loop.dialed) == [("10.0.0.1", 443), ("10.0.0.2", 443)]
    assert conn.outcome == "backend_unavailable" and bytes(client.written) == tls_alert(80)
    conn.connection_lost(None)
    assert_walk(conn, [SNIFFING, DIALING, CLOSING, CLOSED])
    assert (
        rig.metric(
            "sniffer_backend_connect_errors_total", backend="a", tenant="tenant-a", reason="refused"
        )
        == 2
    )


async def test_no_endpoints_is_refused_before_dialing(rig: Rig) -> None:
    conn, client = rig.accept()
    conn.data_received(records(modern_hello(sni=b"none.example")))
    assert conn.outcome == "no_endpoints" and bytes(client.written) == tls_alert(80)
    assert_walk(conn, [SNIFFING, CLOSING])


async def test_client_leaving_while_sniffing_or_dialing(rig: Rig) -> None:
    conn, _ = rig.accept()
    assert conn.eof_received() is False
    assert conn.outcome == "client_closed"
    assert_walk(conn, [SNIFFING, CLOSED])
    conn2, _ = rig.accept()
    conn2.data_received(HELLO)
    conn2.connection_lost(ConnectionResetError())  # gone mid-dial: the dial stops
    assert conn2.state is CLOSED and conn2.dialer is None
    assert_walk(conn2, [SNIFFING, DIALING, CLOSED])


async def test_plane_closes_a_relayed_connection_through_close_for(rig: Rig) -> None:
    conn, client = rig.accept()
    conn.data_received(HELLO)
    await until(lambda: conn.state is RELAYING)
    (upstream,) = rig.loop.upstreams
    conn.close_for("idle_timeout")
    assert conn.state is CLOSED and conn.outcome == "idle_timeout"
    assert client.aborted and upstream.aborted
    assert_walk(conn, [SNIFFING, DIALING, RELAYING, CLOSED])


async def test_hello_timeout_and_overload(rig: Rig) -> None:
    conn, client = rig.accept()
    conn.hello_timed_out()
    assert conn.outcome == "hello_timeout" and client.written == b""
    assert_walk(conn, [SNIFFING, CLOSING])
    rig.accept()
    extra, t3 = rig.accept()  # max_connections=2: the third is shed at accept
    assert extra.outcome == "overloaded" and t3.aborted
    assert_walk(extra, [SNIFFING, CLOSED])
    assert (
        rig.metric("sniffer_refused_connections_total", listener="main", reason="overloaded") == 1
    )


@pytest.mark.parametrize(
    ("name", "peer", "header"),
    [
        ("v1.example", ("192.0.2.9", 5000), b"PROXY TCP4 192.0.2.9 127.0.0.1 5000 443\r\n"),
        ("v1.example", None, b"PROXY UNKNOWN\r\n"),
        ("v2.example", None, encode_v2_local()),
    ],
)
async def test_a_backend_asking_for_a_proxy_header_always_gets_one(
    rig: Rig, name: str, peer: tuple[str, int] | None, header: bytes
) -> None:
    """The client's address unknown (no peername): UNKNOWN (v1) / LOCAL (v2), then the
    replay; never the replay alone, which the backend would take for a bad header."""
    conn, _ = rig.accept(peer=peer)
    hello = records(modern_hello(sni=name.encode()))
    conn.data_received(hello)
    await until(lambda: conn.state is RELAYING)
    (upstream,) = rig.loop.upstreams
    assert bytes(upstream.written) == header + hello
    assert conn.bytes_up == 0 and conn.relay is not None and conn.relay.bytes_up == len(hello)
