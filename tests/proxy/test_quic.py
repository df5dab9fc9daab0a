"""QUIC through a real, in-process data plane on loopback: aioquic clients, aioquic
tenant servers, sniffer in between routing each flow by the SNI of its Initials.

A client's handshake verifies the tenant's own certificate for the name it asked for:
a connection that completes proves sniffer relayed every datagram untouched both ways.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from sniffer.proxy.server import DataPlane
from sniffer.routing.model import Limits
from sniffer.routing.table import Backend, Endpoint, Listener, Route, TableSpec, WeightedBackend
from sniffer.wire.ja4 import ja4_quic
from sniffer.wire.quic import VERSION_2, InitialReader, QuicHello
from tests.conftest import PlaneFactory
from tests.support.pki import PKI
from tests.support.servers import free_port
from tests.test_serve import Sniffer
from tests.test_serve import start_sniffer as start_sniffer  # a fixture, used by name
from tests.wire.quic_packets import aioquic_datagrams, client_initial, crypto_frame

ALPN = ["sniffer-test"]


class Tenant:
    """An aioquic server answering each stream with its name, a newline, and the
    stream's bytes echoed back."""

    def __init__(self, name: str, pki: PKI, *hosts: str, retry: bool = False) -> None:
        self.name = name
        self.leaf = pki.issue(*hosts)
        self.retry = retry
        self.server: QuicServer | None = None
        self.port = 0
        self.tickets: dict[bytes, SessionTicket] = {}
        self.early_data: list[bool] = []

    async def start(self, versions: list[int] | None = None) -> Tenant:
        config = QuicConfiguration(is_client=False, alpn_protocols=ALPN)
        if versions:
            config.supported_versions = versions
        config.load_cert_chain(self.leaf.cert, self.leaf.key)
        name = self.name.encode()

        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def echo() -> None:
                data = await reader.read()
                writer.write(name + b"\n" + data)
                writer.write_eof()

            asyncio.get_running_loop().create_task(echo())

        self.server = await serve(
            "127.0.0.1",
            0,
            configuration=config,
            stream_handler=handler,
            retry=self.retry,
            session_ticket_handler=lambda t: self.tickets.__setitem__(t.ticket, t),
            session_ticket_fetcher=self.tickets.pop,
        )
        self.port = self.server._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def quic_spec(tenants: list[Tenant], routes: dict[str, str], **listener: Any) -> TableSpec:
    return TableSpec(
        listeners=(Listener("quic", "127.0.0.1", 0, "quic", **listener),),
        backends=tuple(Backend(t.name, t.name, (Endpoint("127.0.0.1", t.port),)) for t in tenants),
        routes=tuple(Route(h, (WeightedBackend(b),)) for h, b in routes.items()),
    )


def client_config(pki: PKI, name: str, **kw: Any) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=ALPN, server_name=name, **kw)
    config.load_verify_locations(pki.ca_path)
    return config


async def exchange(client: QuicConnectionProtocol, payload: bytes) -> bytes:
    reader, writer = await client.create_stream()
    writer.write(payload)
    writer.write_eof()
    return await asyncio.wait_for(reader.read(), 20)


def counters(plane: DataPlane) -> dict[tuple[str, tuple[str, ...]], float]:
    return plane.stats.snapshot().counters


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def tenants(pki: PKI) -> AsyncIterator[list[Tenant]]:
    made: list[Tenant] = []
    yield made
    for t in made:
        t.close()


async def start(tenants: list[Tenant], *new: Tenant, **kw: Any) -> None:
    for t in new:
        tenants.append(await t.start(**kw))


async def test_routed_by_sni_one_mib_each_way(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("a", pki, "a.example"), Tenant("b", pki, "b.example"))
    plane = await data_plane(quic_spec(tenants, {"a.example": "a", "b.example": "b"}))
    port = plane.bound_ports()["quic"]
    payload = random.Random(1).randbytes(1 << 20)
    for name, tenant in (("a.example", b"a"), ("b.example", b"b")):
        async with connect("127.0.0.1", port, configuration=client_config(pki, name)) as client:
            got = await exchange(client, payload)
        assert got.split(b"\n", 1)[0] == tenant
        assert hashlib.sha256(got.split(b"\n", 1)[1]).digest() == hashlib.sha256(payload).digest()
    c = counters(plane)
    assert c[("sniffer_connections", ("quic", "a", "a"))] == 1
    assert c[("sniffer_bytes", ("a", "a", "client_to_backend"))] > 1 << 20
    assert c[("sniffer_bytes", ("a", "a", "backend_to_client"))] > 1 << 20
    assert c[("sniffer_datagrams", ("b", "b", "client_to_backend"))] > 800
    assert plane.flow_total == 2  # flows outlive the client's close until idle


async def test_flow_is_logged_at_idle_timeout(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("a", pki, "a.example"))
    plane = await data_plane(quic_spec(tenants, {"a.example": "a"}), quic_idle_timeout=0.3)
    port = plane.bound_ports()["quic"]
    async with connect("127.0.0.1", port, configuration=client_config(pki, "a.example")) as c:
        assert await exchange(c, b"hello") == b"a\nhello"
    log = plane.recorded  # type: ignore[attr-defined]
    await until(lambda: any(r["outcome"] == "idle_timeout" for r in log.records))
    (line,) = log.records
    assert line["protocol"] == "quic" and line["sni"] == "a.example"
    assert line["backend"] == "a" and line["tenant"] == "a"
    assert line["datagrams_in"] > 2 and line["datagrams_out"] > 2
    assert line["bytes_in"] > 1200 and line["bytes_out"] > 1000
    assert line["ja4"].startswith("q13d") and line["alpn"] == ALPN
    assert plane.flow_total == 0
    assert (
        counters(plane)[("sniffer_datagrams", ("a", "a", "client_to_backend"))]
        == (line["datagrams_in"])
    )


async def test_hello_over_two_datagrams(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    assert len(aioquic_datagrams("pq.example", quantum=True)) == 2
    await start(tenants, Tenant("pq", pki, "pq.example"))
    plane = await data_plane(quic_spec(tenants, {"pq.example": "pq"}))
    config = client_config(pki, "pq.example", quantum_readiness_test=True)
    async with connect("127.0.0.1", plane.bound_ports()["quic"], configuration=config) as c:
        assert await exchange(c, b"x" * 5000) == b"pq\n" + b"x" * 5000


async def test_quic_v2(data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]) -> None:
    await start(tenants, Tenant("v2", pki, "v2.example"), versions=[VERSION_2])
    plane = await data_plane(quic_spec(tenants, {"v2.example": "v2"}))
    config = client_config(pki, "v2.example", supported_versions=[VERSION_2])
    async with connect("127.0.0.1", plane.bound_ports()["quic"], configuration=config) as c:
        assert await exchange(c, b"two") == b"v2\ntwo"


async def test_retry_passes_through(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("r", pki, "r.example", retry=True))
    plane = await data_plane(quic_spec(tenants, {"r.example": "r"}))
    async with connect(
        "127.0.0.1", plane.bound_ports()["quic"], configuration=client_config(pki, "r.example")
    ) as c:
        assert await exchange(c, b"after retry") == b"r\nafter retry"


async def test_zero_rtt_resumption(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("z", pki, "z.example"))
    plane = await data_plane(quic_spec(tenants, {"z.example": "z"}))
    port = plane.bound_ports()["quic"]
    tickets: list[SessionTicket] = []
    async with connect(
        "127.0.0.1",
        port,
        configuration=client_config(pki, "z.example"),
        session_ticket_handler=tickets.append,
    ) as c:
        assert await exchange(c, b"first") == b"z\nfirst"
        await until(lambda: bool(tickets))
    config = client_config(pki, "z.example", session_ticket=tickets[-1])
    async with connect("127.0.0.1", port, configuration=config, wait_connected=False) as c:
        # Written before the handshake completes: it travels as 0-RTT, in datagrams that
        # reach sniffer while it is still reading the hello (or just after).
        got = await exchange(c, b"early")
        assert got == b"z\nearly"
        assert c._quic.tls.session_resumed
        assert c._quic.tls.early_data_accepted


async def rebind(client: QuicConnectionProtocol) -> None:
    """Move `client` to a new socket (a socket like the one aioquic's connect() made:
    IPv6, dual stack), as a NAT whose mapping changed would; the old one is left open
    for the caller to close."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0, 0, 0))
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: client, sock=sock)


async def test_nat_rebinding_moves_the_flow(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("m", pki, "m.example"))
    plane = await data_plane(quic_spec(tenants, {"m.example": "m"}))
    async with connect(
        "127.0.0.1", plane.bound_ports()["quic"], configuration=client_config(pki, "m.example")
    ) as c:
        assert await exchange(c, b"before") == b"m\nbefore"
        old = c._transport
        # The client's NAT mapping changes: same connection, new source port (a socket
        # like the one aioquic's connect() made: IPv6, dual stack).
        await rebind(c)
        old.close()  # type: ignore[union-attr]
        assert await exchange(c, b"after" * 1000) == b"m\n" + b"after" * 1000
    assert counters(plane)[("sniffer_quic_rebinds", ("quic",))] == 1
    assert plane.flow_total == 1


async def test_unknown_name_refused_within_a_second(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("a", pki, "a.example"))
    plane = await data_plane(quic_spec(tenants, {"a.example": "a"}))
    began = time.monotonic()
    with pytest.raises(ConnectionError):
        async with connect(
            "127.0.0.1",
            plane.bound_ports()["quic"],
            configuration=client_config(pki, "nobody.example"),
        ):
            pass
    assert time.monotonic() - began < 1.0
    assert counters(plane)[("sniffer_refused_connections", ("quic", "unknown_name"))] == 1
    assert plane.flow_total == 0


def client_ja4(config: QuicConfiguration) -> str:
    """The JA4 sniffer computes for a client of this configuration."""
    conn = QuicConnection(configuration=config)
    conn.connect(("127.0.0.1", 443), now=0.0)
    reader = InitialReader(16384, 1.0)
    for data, _ in conn.datagrams_to_send(now=0.0):
        got = reader.feed(data, 0.0)
    assert isinstance(got, QuicHello)
    return ja4_quic(got.hello)


async def test_deny_ja4_refuses_with_a_close(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("a", pki, "a.example"))
    fp = client_ja4(client_config(pki, "a.example"))
    assert fp.startswith("q13d")
    plane = await data_plane(quic_spec(tenants, {"a.example": "a"}, deny_ja4=frozenset([fp])))
    began = time.monotonic()
    with pytest.raises(ConnectionError):
        async with connect(
            "127.0.0.1", plane.bound_ports()["quic"], configuration=client_config(pki, "a.example")
        ):
            pass
    assert time.monotonic() - began < 1.0
    assert counters(plane)[("sniffer_refused_connections", ("quic", "ja4_denied"))] == 1


async def test_backend_limit_refuses_with_a_close(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("a", pki, "a.example"))
    spec = quic_spec(tenants, {"a.example": "a"})
    spec = TableSpec(
        spec.listeners,
        (Backend("a", "a", spec.backends[0].endpoints, limits=Limits(max_connections=1)),),
        spec.routes,
    )
    plane = await data_plane(spec)
    port = plane.bound_ports()["quic"]
    async with connect("127.0.0.1", port, configuration=client_config(pki, "a.example")) as c:
        assert await exchange(c, b"one") == b"a\none"
        began = time.monotonic()
        with pytest.raises(ConnectionError):
            async with connect("127.0.0.1", port, configuration=client_config(pki, "a.example")):
                pass
        assert time.monotonic() - began < 1.0
    c_ = counters(plane)
    assert c_[("sniffer_refused_connections", ("quic", "backend_limit"))] == 1
    assert c_[("sniffer_limited_connections", ("a", "a", "backend_max_connections"))] == 1


async def test_malformed_datagrams_all_counted(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("a", pki, "a.example"))
    plane = await data_plane(quic_spec(tenants, {"a.example": "a"}))
    port = plane.bound_ports()["quic"]
    rnd = random.Random(7)
    good = aioquic_datagrams("a.example")[0]
    shapes: list[Callable[[], bytes]] = [
        lambda: rnd.randbytes(rnd.randint(0, 1400)),
        lambda: b"\x40" + rnd.randbytes(rnd.randint(20, 1300)),  # short header
        lambda: good[: rnd.randint(1, 1199)],  # truncated
        lambda: good[:5] + b"\x08" + rnd.randbytes(1194),  # garbled after the version
        lambda: bytes([0xC0]) + b"\x0a\x0a\x0a\x0a" + rnd.randbytes(1195),  # unknown version
        lambda: client_initial(crypto_frame(0, b"\x01\x00\x00\x10abc"), dcid=os.urandom(8)),
    ]
    total = 20_000
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(("127.0.0.1", port))

    def handled() -> float:
        c = counters(plane)
        dropped = sum(v for (n, _), v in c.items() if n == "sniffer_dropped_datagrams")
        return dropped

    try:
        sent = 0
        while sent < total:
            # In batches, waiting for each to be counted: loopback drops datagrams when
            # a receive buffer overflows, and every datagram sent must be accounted for.
            for _ in range(min(64, total - sent)):
                await loop.sock_sendall(sock, rnd.choice(shapes)())
                sent += 1
            await until(lambda n=sent: handled() >= n, 20)
    finally:
        sock.close()
    assert handled() == total
    # Still serving.
    async with connect("127.0.0.1", port, configuration=client_config(pki, "a.example")) as c:
        assert await exchange(c, b"ok") == b"a\nok"


async def test_drain_waits_for_flows_then_ends(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("a", pki, "a.example"))
    plane = await data_plane(quic_spec(tenants, {"a.example": "a"}))
    async with connect(
        "127.0.0.1", plane.bound_ports()["quic"], configuration=client_config(pki, "a.example")
    ) as c:
        assert await exchange(c, b"x") == b"a\nx"
        assert plane.flow_total == 1
        began = time.monotonic()
        # The client keeps the connection open (silent): drain ends it at the grace.
        assert await plane.drain(0.3) == 1
        assert time.monotonic() - began < 2.0
    assert plane.flow_total == 0
    log = plane.recorded  # type: ignore[attr-defined]
    assert [r["outcome"] for r in log.records] == ["drain_timeout"]


class RawUDP(asyncio.DatagramProtocol):
    """A backend that records every datagram and answers each with `reply(data)`."""

    def __init__(self, reply: Callable[[bytes], list[bytes]] = lambda _: []) -> None:
        self.reply = reply
        self.got: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append(data)
        assert self.transport is not None
        for out in self.reply(data):
            self.transport.sendto(out, addr)


class Client(RawUDP):
    pass


async def raw_pair(
    data_plane: PlaneFactory,
    reply: Callable[[bytes], list[bytes]],
    dead: int = 0,
    **settings: Any,
) -> tuple[DataPlane, RawUDP, Client]:
    """A data plane routing raw.example to a raw UDP backend (after `dead` endpoints
    that nothing listens on), and a client socket towards it."""
    loop = asyncio.get_running_loop()
    _, backend = await loop.create_datagram_endpoint(
        lambda: RawUDP(reply), local_addr=("127.0.0.1", 0)
    )
    port = backend.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    spec = TableSpec(
        listeners=(Listener("quic", "127.0.0.1", 0, "quic"),),
        backends=(
            Backend(
                "raw",
                "raw",
                (
                    *(Endpoint("127.0.0.1", p) for p in closed_udp_ports(dead)),
                    Endpoint("127.0.0.1", port),
                ),
            ),
        ),
        routes=(Route("raw.example", (WeightedBackend("raw"),)),),
    )
    plane = await data_plane(spec, **settings)
    _, client = await loop.create_datagram_endpoint(
        Client, remote_addr=("127.0.0.1", plane.bound_ports()["quic"])
    )
    return plane, backend, client


async def test_never_more_than_three_times_to_an_unvalidated_client(
    data_plane: PlaneFactory,
) -> None:
    # A server that answers one datagram with ten: an amplifier, were sniffer to let it.
    plane, backend, client = await raw_pair(data_plane, lambda d: [b"\xc0" + bytes(1199)] * 10)
    first = aioquic_datagrams("raw.example")[0]
    assert len(first) == 1200
    assert client.transport is not None
    client.transport.sendto(first)
    await until(
        lambda: (
            counters(plane).get(("sniffer_dropped_datagrams", ("quic", "amplification_limit")), 0)
            == 7
        )
    )
    assert sum(map(len, client.got)) == 3 * 1200
    # A short-header packet from the client shows it got the server's Initial: validated.
    client.transport.sendto(b"\x40" + bytes(40))
    await until(lambda: len(client.got) == 13)
    backend.transport.close()  # type: ignore[union-attr]
    client.transport.close()


async def test_datagrams_before_the_hello_is_complete_are_held_in_order(
    data_plane: PlaneFactory,
) -> None:
    plane, backend, client = await raw_pair(data_plane, lambda d: [])
    first, second = aioquic_datagrams("raw.example", quantum=True)
    early = bytes([0xD0]) + first[1:200]  # a long-header 0-RTT packet's first bytes (v1)
    assert client.transport is not None
    for data in (first, early, second):
        client.transport.sendto(data)
    await until(lambda: len(backend.got) == 3)
    assert backend.got == [first, early, second]
    client.transport.sendto(b"\x40after")
    await until(lambda: len(backend.got) == 4)
    assert backend.got[3] == b"\x40after"
    backend.transport.close()  # type: ignore[union-attr]
    client.transport.close()


async def test_hello_timeout(data_plane: PlaneFactory) -> None:
    plane, backend, client = await raw_pair(data_plane, lambda d: [], hello_timeout=0.2)
    first, _ = aioquic_datagrams("raw.example", quantum=True)
    assert client.transport is not None
    client.transport.sendto(first)
    await until(
        lambda: counters(plane).get(("sniffer_refused_connections", ("quic", "hello_timeout"))) == 1
    )
    assert backend.got == [] and plane.flow_total == 0
    backend.transport.close()  # type: ignore[union-attr]
    client.transport.close()


def test_routes_file_quic_listener() -> None:
    from sniffer.routing.sources.file import RoutesFileError, parse_routes

    text = """\
listeners:
  - {name: h3, address: "0.0.0.0:443", protocol: quic, deny_ja4: [q13d0307h3_55b375c5d22e_1cecd519fee8]}
backends:
  - {name: a, endpoints: ["10.0.0.5:443"]}
routes:
  - {host: a.example, backend: a, alpn: [h3]}
"""  # noqa: E501
    spec = parse_routes(text)
    (lis,) = spec.listeners
    assert lis.protocol == "quic" and lis.deny_ja4
    with pytest.raises(RoutesFileError, match="not on quic listeners"):
        parse_routes(text.replace("protocol: quic,", "protocol: quic, proxy_protocol_in: true,"))


async def test_serve_with_workers_routes_quic_and_drains_on_sigterm(
    start_sniffer: Any, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("a", pki, "a.example"))
    port = free_port_udp()
    text = (
        f"listeners:\n  - {{name: h3, address: '127.0.0.1:{port}', protocol: quic}}\n"
        f"backends:\n  - {{name: a, endpoints: ['127.0.0.1:{tenants[0].port}']}}\n"
        "routes:\n  - {host: a.example, backend: a}\n"
    )
    s: Sniffer = await start_sniffer(text, port, "--workers", "2")
    for i in range(4):  # four client ports, all on worker 0 (the one QUIC socket)
        async with connect("127.0.0.1", port, configuration=client_config(pki, "a.example")) as c:
            assert await exchange(c, b"%d" % i) == b"a\n%d" % i
    await s.wait_for(
        lambda: (
            s.metrics().get('sniffer_connections_total{backend="a",listener="h3",tenant="a"}')
            == 4.0
        )
    )
    s.proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    assert await asyncio.to_thread(s.proc.wait, 30) == 0
    # Silent flows count as finished after DRAIN_IDLE (5 s), well inside the 30 s grace.
    assert time.monotonic() - began < 15
    lines = [json.loads(x) for x in s.stdout.read_text().splitlines()]
    assert [(x["protocol"], x["outcome"]) for x in lines] == [("quic", "drained")] * 4


async def test_serve_with_workers_keeps_rebound_flows(
    start_sniffer: Any, pki: PKI, tenants: list[Tenant]
) -> None:
    """With --workers 2, a client whose source port changes keeps its connection: 12
    moves in all. Sockets spread over workers by a 4-tuple hash would send each move to
    the worker without the flow half the time (all 12 surviving: 1 in 4,096)."""
    await start(tenants, Tenant("a", pki, "a.example"))
    port, tcp = free_port_udp(), free_port()
    listeners = (
        f"listeners:\n  - {{name: h3, address: '127.0.0.1:{port}', protocol: quic}}\n"
        f"  - {{name: web, address: '127.0.0.1:{tcp}', protocol: tls}}\n"
    )
    rest = (
        f"backends:\n  - {{name: a, endpoints: ['127.0.0.1:{tenants[0].port}']}}\n"
        "routes:\n  - {host: a.example, backend: a}\n"
    )
    s: Sniffer = await start_sniffer(listeners + rest, port, "--workers", "2")

    def healthz() -> dict[str, Any]:
        status, body = s.get("/healthz")
        assert status == 200
        listeners: dict[str, Any] = json.loads(body)["listeners"]
        return listeners

    for i in range(3):
        async with connect("127.0.0.1", port, configuration=client_config(pki, "a.example")) as c:
            assert await exchange(c, b"%d" % i) == b"a\n%d" % i
            for j in range(4):
                old = c._transport
                await rebind(c)
                old.close()  # type: ignore[union-attr]
                payload = b"%d.%d " % (i, j) * 300
                assert await exchange(c, payload) == b"a\n" + payload
            if i == 0:  # /healthz: the flow is open on h3, held by one process of two
                await s.wait_for(lambda: healthz()["h3"]["open"] == 1)
                assert healthz()["h3"] == {
                    "protocol": "quic",
                    "address": f"127.0.0.1:{port}",
                    "bound": 1,
                    "open": 1,
                }
                # Each worker's figures reach /healthz with its next snapshot.
                await s.wait_for(lambda: healthz()["web"]["bound"] == 2)
    await s.wait_for(lambda: s.metrics().get('sniffer_quic_rebinds_total{listener="h3"}') == 12.0)
    m = s.metrics()
    assert m['sniffer_connections_total{backend="a",listener="h3",tenant="a"}'] == 3.0
    assert not [k for k in m if k.startswith("sniffer_dropped_datagrams_total")]
    # A quic listener whose port another process holds: listed, bound by nobody.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        s.routes.write_text(
            listeners + f"  - {{name: h3b, address: '127.0.0.1:{busy}', protocol: quic}}\n" + rest
        )
        await s.wait_for(lambda: "h3b" in healthz())
        assert healthz()["h3b"]["bound"] == 0


async def test_unknown_version_gets_a_version_negotiation(data_plane: PlaneFactory) -> None:
    plane, backend, client = await raw_pair(data_plane, lambda d: [])
    assert client.transport is not None

    def datagram(scid: bytes, size: int) -> bytes:
        head = b"\xc3\x1a\x2a\x3a\x4a\x08" + b"\x0d" * 8 + bytes((len(scid),)) + scid
        return head + bytes(size - len(head))

    client.transport.sendto(datagram(b"\x01" * 8, 1000))  # under 1,200: not answered
    client.transport.sendto(datagram(b"\x02" * 8, 1200))
    await until(lambda: len(client.got) == 1)
    answer = client.got[0]
    assert answer[1:5] == bytes(4) and answer[5:14] == b"\x08" + b"\x02" * 8
    assert answer[-8:] == bytes.fromhex("000000016b3343cf")  # v1, v2
    c = counters(plane)
    assert c[("sniffer_dropped_datagrams", ("quic", "unsupported_version"))] == 2
    assert backend.got == [] and plane.flow_total == 0
    backend.transport.close()  # type: ignore[union-attr]
    client.transport.close()


def closed_udp_ports(n: int) -> list[int]:
    """Ports that were just bound and closed: nothing listens (the kernel answers a
    datagram with ICMP port unreachable)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [int(sock.getsockname()[1]) for sock in socks]
    for sock in socks:
        sock.close()
    return ports


async def test_dead_endpoint_fails_over_replaying_held_datagrams_in_order(
    data_plane: PlaneFactory,
) -> None:
    plane, backend, client = await raw_pair(data_plane, lambda d: [], dead=1)
    first, second = aioquic_datagrams("raw.example", quantum=True)
    early = bytes([0xD0]) + first[1:200]
    assert client.transport is not None
    for data in (first, early, second):
        client.transport.sendto(data)
    await until(lambda: len(backend.got) == 3)
    assert backend.got == [first, early, second]
    client.transport.sendto(b"\x40after")
    await until(lambda: len(backend.got) == 4)
    assert backend.got[3] == b"\x40after"
    c = counters(plane)
    assert c[("sniffer_quic_failovers", ("quic",))] == 1
    assert c[("sniffer_backend_connect_errors", ("raw", "raw", "refused"))] == 1
    backend.transport.close()  # type: ignore[union-attr]
    client.transport.close()


async def test_no_failover_once_the_endpoint_answered(data_plane: PlaneFactory) -> None:
    """An ICMP error after the server spoke is the server going away mid-connection:
    replaying the client's Initial elsewhere would be wrong; the flow stays put."""
    plane, backend, client = await raw_pair(data_plane, lambda d: [b"\xc0" + bytes(100)])
    first = aioquic_datagrams("raw.example")[0]
    assert client.transport is not None
    client.transport.sendto(first)
    await until(lambda: len(client.got) == 1)
    backend.transport.close()  # type: ignore[union-attr]
    client.transport.sendto(b"\x40gone")
    await until(
        lambda: (
            counters(plane).get(("sniffer_backend_connect_errors", ("raw", "raw", "refused"))) == 1
        )
    )
    assert counters(plane)[("sniffer_quic_failovers", ("quic",))] == 0
    assert plane.flow_total == 1
    client.transport.close()


async def test_every_endpoint_dead_refuses_with_a_close(data_plane: PlaneFactory, pki: PKI) -> None:
    spec = TableSpec(
        listeners=(Listener("quic", "127.0.0.1", 0, "quic"),),
        backends=(Backend("d", "d", tuple(Endpoint("127.0.0.1", p) for p in closed_udp_ports(2))),),
        routes=(Route("d.example", (WeightedBackend("d"),)),),
    )
    plane = await data_plane(spec)
    began = time.monotonic()
    with pytest.raises(ConnectionError):
        async with connect(
            "127.0.0.1", plane.bound_ports()["quic"], configuration=client_config(pki, "d.example")
        ):
            pass
    assert time.monotonic() - began < 5  # a close, not a handshake timeout
    c = counters(plane)
    assert c[("sniffer_refused_connections", ("quic", "backend_unavailable"))] == 1
    assert c[("sniffer_quic_failovers", ("quic",))] == 1
    assert c[("sniffer_backend_connect_errors", ("d", "d", "refused"))] == 2
    await until(lambda: plane.flow_total == 0)


async def test_aioquic_through_a_dead_first_endpoint(
    data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]
) -> None:
    await start(tenants, Tenant("a", pki, "a.example"))
    (dead,) = closed_udp_ports(1)
    spec = quic_spec(tenants, {"a.example": "a"})
    (b,) = spec.backends
    spec = TableSpec(
        spec.listeners,
        (Backend("a", "a", (Endpoint("127.0.0.1", dead), *b.endpoints)),),
        spec.routes,
    )
    plane = await data_plane(spec)
    async with connect(
        "127.0.0.1", plane.bound_ports()["quic"], configuration=client_config(pki, "a.example")
    ) as c:
        assert await exchange(c, b"hi") == b"a\nhi"
    assert counters(plane)[("sniffer_quic_failovers", ("quic",))] == 1


async def test_healthz_in_process(start_sniffer: Any, pki: PKI, tenants: list[Tenant]) -> None:
    await start(tenants, Tenant("a", pki, "a.example"))
    port = free_port_udp()
    text = (
        f"listeners:\n  - {{name: h3, address: '127.0.0.1:{port}', protocol: quic}}\n"
        f"backends:\n  - {{name: a, endpoints: ['127.0.0.1:{tenants[0].port}']}}\n"
        "routes:\n  - {host: a.example, backend: a}\n"
    )
    s: Sniffer = await start_sniffer(text, port, "--workers", "0")
    async with connect("127.0.0.1", port, configuration=client_config(pki, "a.example")) as c:
        assert await exchange(c, b"x") == b"a\nx"
        status, body = s.get("/healthz")
        assert status == 200
        assert json.loads(body) == {
            "status": "ok",
            "listeners": {
                "h3": {"protocol": "quic", "address": f"127.0.0.1:{port}", "bound": 1, "open": 1}
            },
        }


def free_port_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_ipv6_listener(data_plane: PlaneFactory, pki: PKI, tenants: list[Tenant]) -> None:
    await start(tenants, Tenant("a", pki, "a.example"))
    spec = quic_spec(tenants, {"a.example": "a"})
    spec = TableSpec((Listener("quic", "::1", 0, "quic"),), spec.backends, spec.routes)
    plane = await data_plane(spec, quic_idle_timeout=0.3)
    port = plane.bound_ports()["quic"]
    async with connect("::1", port, configuration=client_config(pki, "a.example")) as c:
        assert await exchange(c, b"six") == b"a\nsix"
    log = plane.recorded  # type: ignore[attr-defined]
    await until(lambda: len(log.records) == 1)
    assert log.records[0]["client"].startswith("[::1]:")
