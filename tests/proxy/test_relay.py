"""The path of one connection through a real, in-process data plane on loopback.

Clients are Python `ssl` clients verifying the backend's own certificate: a handshake
that succeeds proves sniffer passed the TLS bytes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import socket
import ssl

import pytest

from sniffer.proxy.connection import ClientConnection
from sniffer.proxy.relay.userspace import ClientSide, Pump
from sniffer.routing.table import (
    Backend,
    Endpoint,
    Listener,
    Route,
    RouteTable,
    TableSpec,
    WeightedBackend,
)
from tests.conftest import PlaneFactory
from tests.support.pki import PKI
from tests.support.servers import (
    RawBackend,
    TLSBackend,
    blackholed_port,
    pseudo_random_chunks,
)


def client_hello(name: str | None, alpn: list[str] | None = None) -> bytes:
    """A real ClientHello from Python's ssl, captured through memory BIOs."""
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    if name is None:
        ctx.check_hostname = False
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def tls_spec(
    backends: dict[str, list[int]],
    routes: dict[str, str | list[tuple[str, int]]],
    default: str | None = None,
    protocol: str = "tls",
    proxy_in: bool = False,
    proxy_out: dict[str, str] | None = None,
) -> TableSpec:
    listener = Listener(
        "main", "127.0.0.1", 0, "tls" if protocol == "tls" else "http", default, proxy_in
    )
    return TableSpec(
        listeners=(listener,),
        backends=tuple(
            Backend(
                name,
                f"tenant-{name}",
                tuple(Endpoint("127.0.0.1", p) for p in ports),
                proxy_protocol=(proxy_out or {}).get(name, "none"),  # type: ignore[arg-type]
            )
            for name, ports in backends.items()
        ),
        routes=tuple(
            Route(
                host,
                (WeightedBackend(target),)
                if isinstance(target, str)
                else tuple(WeightedBackend(n, w) for n, w in target),
            )
            for host, target in routes.items()
        ),
    )


async def open_tls(
    pki: PKI, port: int, name: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection through sniffer that verifies the backend's certificate for `name`."""
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=pki.client_context(), server_hostname=name
    )


async def tls_request(pki: PKI, port: int, name: str, line: bytes = b"who\n") -> bytes:
    reader, writer = await open_tls(pki, port, name)
    writer.write(line)
    answer = await reader.readline()
    writer.close()
    return answer


@pytest.fixture
async def tenants(pki: PKI) -> dict[str, TLSBackend]:
    leaf = pki.issue("app.a.example", "*.a.example", "deep.x.a.example")
    a = await TLSBackend("a", leaf.server_context()).start()
    b = await TLSBackend("b", pki.issue("app.b.example").server_context()).start()
    yield {"a": a, "b": b}  # type: ignore[misc]
    await a.close()
    await b.close()


async def test_routes_by_sni_with_passthrough_verified_by_client(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    plane = await data_plane(
        tls_spec(
            {"a": [tenants["a"].port], "b": [tenants["b"].port]},
            {"app.a.example": "a", "app.b.example": "b", "*.a.example": "a"},
        )
    )
    port = plane.bound_ports()["main"]
    assert await tls_request(pki, port, "app.a.example") == b"a\n"
    assert await tls_request(pki, port, "app.b.example") == b"b\n"
    assert await tls_request(pki, port, "deep.x.a.example") == b"a\n"  # multi-label wildcard
    assert await tls_request(pki, port, "APP.B.Example") == b"b\n"  # names are case-insensitive
    assert tenants["a"].sni_seen == ["app.a.example", "deep.x.a.example"]
    logs = plane.recorded.records  # type: ignore[attr-defined]
    assert {r["backend"] for r in logs} == {"a", "b"}
    assert all(r["outcome"] == "closed" for r in logs)
    stats = plane.stats.snapshot()
    assert stats.counters[("sniffer_connections", ("main", "a", "tenant-a"))] == 2
    assert stats.counters[("sniffer_connections", ("main", "b", "tenant-b"))] == 2


async def test_large_bodies_both_ways_hash_equal(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    plane = await data_plane(tls_spec({"a": [tenants["a"].port]}, {"app.a.example": "a"}))
    port = plane.bound_ports()["main"]
    reader, writer = await open_tls(pki, port, "app.a.example")
    size = 24 * 1024 * 1024 + 17
    h = hashlib.sha256()
    writer.write(f"sha {size}\n".encode())
    for chunk in pseudo_random_chunks(size):
        h.update(chunk)
        writer.write(chunk)
        await writer.drain()
    assert (await reader.readline()).strip().decode() == h.hexdigest()

    writer.write(f"send {size}\n".encode())
    got = await reader.readexactly(size)
    trailer = (await reader.readline(), await reader.readline())
    assert trailer[0] == b"\n"
    assert hashlib.sha256(got).hexdigest() == trailer[1].strip().decode()
    writer.close()
    await writer.wait_closed()


async def test_hello_bytes_replayed_exactly_even_one_byte_at_a_time(
    data_plane: PlaneFactory,
) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"app.r.example": "r"}))
    port = plane.bound_ports()["main"]
    hello = client_hello("app.r.example", ["h2", "http/1.1"])
    trailer = b"\x17\x03\x03\x00\x05hello-after-the-hello"
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    async with asyncio.timeout(30):
        while not plane.connections:
            await asyncio.sleep(0.001)
        (conn,) = plane.connections
        for i in range(len(hello) - 1):
            sock.sendall(hello[i : i + 1])
            # each byte is its own read on the proxy side (the first makes the Sniffer)
            while conn.sniffer is None or len(conn.sniffer.pending) < i + 1:
                await asyncio.sleep(0.0005)
    sock.sendall(hello[-1:] + trailer)
    reader, writer = await asyncio.wait_for(raw.accepted.get(), 10)
    got = await reader.readexactly(len(hello) + len(trailer))
    assert got == hello + trailer
    sock.close()
    writer.close()
    await raw.close()


async def test_half_close_each_way(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"app.r.example": "r"}))
    port = plane.bound_ports()["main"]

    # Client finishes sending first; the backend still answers afterwards.
    c_reader, c_writer = await asyncio.open_connection("127.0.0.1", port)
    hello = client_hello("app.r.example")
    c_writer.write(hello + b"request")
    c_writer.write_eof()
    b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    assert await b_reader.read() == hello + b"request"  # read() to EOF: the FIN arrived
    b_writer.write(b"response after your FIN")
    b_writer.close()
    assert await c_reader.read() == b"response after your FIN"
    c_writer.close()

    # Backend finishes first; the client keeps sending and the backend keeps reading.
    c_reader, c_writer = await asyncio.open_connection("127.0.0.1", port)
    c_writer.write(hello)
    b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    assert await b_reader.readexactly(len(hello)) == hello
    b_writer.write(b"all I have")
    b_writer.write_eof()
    assert await c_reader.read() == b"all I have"
    c_writer.write(b"still talking")
    c_writer.write_eof()
    assert await b_reader.read() == b"still talking"
    b_writer.close()
    c_writer.close()
    await raw.close()


async def _refusal(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_unknown_name_gets_unrecognized_name_alert(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    plane = await data_plane(tls_spec({"a": [tenants["a"].port]}, {"app.a.example": "a"}))
    port = plane.bound_ports()["main"]
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        await tls_request(pki, port, "nobody.example")
    assert await _refusal(port, client_hello("other.example")) == bytes.fromhex("15030300020270")
    assert await _refusal(port, client_hello(None)) == bytes.fromhex("15030300020270")
    # A ServerHello where a ClientHello belongs: malformed, decode_error like every
    # structural defect (TLS would also allow unexpected_message; one answer is simpler).
    assert await _refusal(port, bytes.fromhex("16030100050200000100")) == bytes.fromhex(
        "15030300020232"
    )
    # A ClientHello whose body is too short for its fields: decode_error.
    assert await _refusal(port, bytes.fromhex("160301000601000002 0303".replace(" ", ""))) == (
        bytes.fromhex("15030300020232")
    )
    assert await _refusal(port, b"GET / HTTP/1.1\r\n\r\n") == b""  # not TLS: just closed
    refused = plane.stats.snapshot().counters
    assert refused[("sniffer_refused_connections", ("main", "unknown_name"))] == 2
    assert refused[("sniffer_refused_connections", ("main", "no_name"))] == 1
    assert refused[("sniffer_refused_connections", ("main", "not_tls"))] == 1
    assert tenants["a"].connections == 0


async def test_default_backend_catches_unknown_and_missing_names(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    plane = await data_plane(
        tls_spec(
            {"a": [tenants["a"].port], "b": [tenants["b"].port]},
            {"app.a.example": "a"},
            default="b",
        )
    )
    port = plane.bound_ports()["main"]
    assert await tls_request(pki, port, "app.a.example") == b"a\n"
    reader, writer = await open_tls(pki, port, "app.b.example")
    writer.write(b"who\n")
    assert await reader.readline() == b"b\n"
    writer.close()


async def test_dead_endpoint_is_skipped_and_all_dead_is_refused(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]  # bound, never listening: connection refused
    plane = await data_plane(
        tls_spec(
            {"a": [dead_port, tenants["a"].port], "gone": [dead_port]},
            {"app.a.example": "a", "app.gone.example": "gone"},
        )
    )
    port = plane.bound_ports()["main"]
    for _ in range(4):  # round-robin start: some dials hit the dead endpoint first
        assert await tls_request(pki, port, "app.a.example") == b"a\n"
    assert await _refusal(port, client_hello("app.gone.example")) == bytes.fromhex(
        "15030300020250"
    )  # internal_error
    c = plane.stats.snapshot().counters
    assert c[("sniffer_backend_connect_errors", ("a", "tenant-a", "refused"))] == 2
    assert c[("sniffer_refused_connections", ("main", "backend_unavailable"))] == 1
    dead.close()


async def test_weight_zero_backend_gets_nothing(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    plane = await data_plane(
        tls_spec(
            {"a": [tenants["a"].port], "b": [tenants["b"].port]},
            {"app.a.example": [("a", 1), ("b", 0)]},
        )
    )
    port = plane.bound_ports()["main"]
    answers = {await tls_request(pki, port, "app.a.example") for _ in range(12)}
    assert answers == {b"a\n"}


async def test_route_whose_weights_are_all_zero_is_refused_no_backend(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    """A TLSRoute whose every backendRef has weight 0 still claims its hostname (the
    Gateway API: nothing gets traffic), so the name is refused, not passed to a default."""
    plane = await data_plane(
        tls_spec(
            {"a": [tenants["a"].port], "b": [tenants["b"].port]},
            {"app.a.example": [("a", 0), ("b", 0)], "app.b.example": "b"},
            default="b",
        )
    )
    port = plane.bound_ports()["main"]
    internal_error = bytes.fromhex("15030300020250")
    assert await _refusal(port, client_hello("app.a.example")) == internal_error
    assert await tls_request(pki, port, "app.b.example") == b"b\n"  # others unaffected
    c = plane.stats.snapshot().counters
    assert c[("sniffer_refused_connections", ("main", "no_backend"))] == 1
    assert tenants["a"].connections == 0


async def test_http_listener_routes_by_host(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"www.r.example": "r"}, protocol="http"))
    port = plane.bound_ports()["main"]
    request = b"GET /x HTTP/1.1\r\nHost: WWW.R.example:8080\r\nUser-Agent: t\r\n\r\nbody"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    assert await b_reader.readexactly(len(request)) == request
    b_writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert await reader.readexactly(27) == b"HTTP/1.1 204 No Content\r\n\r\n"
    writer.close()
    b_writer.close()

    unknown = await _refusal(port, b"GET / HTTP/1.1\r\nHost: nope.example\r\n\r\n")
    assert unknown.startswith(b"HTTP/1.1 421 Misdirected Request\r\n")
    malformed = await _refusal(port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert malformed.startswith(b"HTTP/1.1 400 ")
    await raw.close()


def _http_answer(answer: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """(status line, lower-cased headers, body) of one complete HTTP/1.1 response."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    assert int(headers[b"content-length"]) == len(body)  # complete: nothing cut, nothing more
    return status, headers, body


async def test_http_listener_answers_408_502_503_off_the_socket(data_plane: PlaneFactory) -> None:
    """Each refusal of a plaintext client is a complete `connection: close` response
    naming the reason, then a clean close; each is counted by reason."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: every dial is refused
    raw = await RawBackend().start()
    spec = tls_spec(
        {"r": [raw.port], "dead": [dead.getsockname()[1]], "empty": []},
        {
            "www.r.example": "r",
            "dead.example": "dead",
            "empty.example": "empty",
            "zero.example": [("r", 0)],
        },
        protocol="http",
    )
    plane = await data_plane(spec, hello_timeout=0.3)
    port = plane.bound_ports()["main"]

    def get(host: str) -> bytes:
        return f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    answers = {
        "hello_timeout": await _refusal(port, b"GET / HTTP/1.1\r\nHost: www.r.exa"),
        "backend_unavailable": await _refusal(port, get("dead.example")),
        "no_endpoints": await _refusal(port, get("empty.example")),
        "no_backend": await _refusal(port, get("zero.example")),
    }
    expected = {
        "hello_timeout": b"HTTP/1.1 408 Request Timeout",
        "backend_unavailable": b"HTTP/1.1 502 Bad Gateway",
        "no_endpoints": b"HTTP/1.1 503 Service Unavailable",
        "no_backend": b"HTTP/1.1 503 Service Unavailable",
    }
    for reason, answer in answers.items():
        status, headers, body = _http_answer(answer)
        assert status == expected[reason], (reason, answer)
        assert headers[b"connection"] == b"close"
        assert b"retry-after" not in headers  # only a limit says when to come back
        assert body == status[9:] + b": " + reason.replace("_", " ").encode() + b"\n"
    c = plane.stats.snapshot().counters
    for reason in answers:
        assert c[("sniffer_refused_connections", ("main", reason))] == 1, reason
    assert c[("sniffer_backend_connect_errors", ("dead", "tenant-dead", "refused"))] == 1
    assert raw.accepted.empty()  # weight 0 sent nothing to r
    dead.close()
    await raw.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_proxy_protocol_out_then_exact_bytes(data_plane: PlaneFactory, version: str) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(
        tls_spec({"r": [raw.port]}, {"app.r.example": "r"}, proxy_out={"r": version})
    )
    port = plane.bound_ports()["main"]
    hello = client_hello("app.r.example")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client_port = writer.get_extra_info("sockname")[1]
    writer.write(hello)
    b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    if version == "v1":
        line = await b_reader.readline()
        assert line == f"PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\n".encode()
    else:
        head = await b_reader.readexactly(16)
        assert head[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and head[12] == 0x21 and head[13] == 0x11
        body = await b_reader.readexactly(int.from_bytes(head[14:16], "big"))
        assert body[:8] == socket.inet_aton("127.0.0.1") * 2
        assert int.from_bytes(body[8:10], "big") == client_port
        assert int.from_bytes(body[10:12], "big") == port
    assert await b_reader.readexactly(len(hello)) == hello
    writer.close()
    b_writer.close()
    await raw.close()


async def test_proxy_protocol_in_is_consumed_and_client_address_used(
    data_plane: PlaneFactory,
) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"app.r.example": "r"}, proxy_in=True))
    port = plane.bound_ports()["main"]
    hello = client_hello("app.r.example")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n" + hello[:10])
    await writer.drain()
    writer.write(hello[10:])
    b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    assert await b_reader.readexactly(len(hello)) == hello
    writer.close()
    b_writer.close()
    await b_reader.read()
    await _closed(plane)
    assert plane.recorded.records[-1]["client"] == "203.0.113.7:40000"  # type: ignore[attr-defined]
    # A listener that expects PROXY refuses a client that sends none.
    assert await _refusal(port, hello) == b""
    c = plane.stats.snapshot().counters
    assert c[("sniffer_refused_connections", ("main", "bad_proxy_header"))] == 1
    await raw.close()


async def _closed(plane: object) -> None:
    """Wait until the data plane has no open connections."""
    async with asyncio.timeout(10):
        while plane.connections:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)


async def test_hello_timeout_closes_slow_client(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"app.r.example": "r"}), hello_timeout=0.2)
    port = plane.bound_ports()["main"]
    hello = client_hello("app.r.example")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello[:20])  # then nothing: a slowloris
    assert await asyncio.wait_for(reader.read(), 10) == b""
    c = plane.stats.snapshot().counters
    assert c[("sniffer_refused_connections", ("main", "hello_timeout"))] == 1
    assert raw.accepted.empty()
    writer.close()
    await raw.close()


async def test_a_silent_client_waits_in_the_kernel_then_times_out(data_plane: PlaneFactory) -> None:
    """Listeners accept a connection with its first bytes (TCP_DEFER_ACCEPT): one that
    says nothing costs no descriptor for its first second, then is accepted anyway and
    the hello timeout still closes it."""
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"app.r.example": "r"}), hello_timeout=0.2)
    (server,) = plane._servers.values()
    assert server.sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
    port = plane.bound_ports()["main"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # then silence
    assert await asyncio.wait_for(reader.read(), 10) == b""
    c = plane.stats.snapshot().counters
    assert c[("sniffer_refused_connections", ("main", "hello_timeout"))] == 1
    assert raw.accepted.empty()
    writer.close()
    await raw.close()


async def test_idle_timeout_closes_silent_relay(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"app.r.example": "r"}), idle_timeout=0.3)
    port = plane.bound_ports()["main"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(client_hello("app.r.example"))
    b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert plane.recorded.records[-1]["outcome"] == "idle_timeout"  # type: ignore[attr-defined]
    writer.close()
    b_writer.close()
    await raw.close()


async def test_slow_reader_pauses_backend_and_memory_stays_bounded(
    data_plane: PlaneFactory,
) -> None:
    raw = await RawBackend().start()
    high = 64 * 1024
    # The user-space engine's own buffer is what this measures (the kernel engine's
    # bound: tests/proxy/test_kernel_engine.py and test_kernel_relay.py).
    plane = await data_plane(
        tls_spec({"r": [raw.port]}, {"app.r.example": "r"}),
        write_buffer_high=high,
        kernel_relay="off",
    )
    port = plane.bound_ports()["main"]
    hello = client_hello("app.r.example")
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.sendall(hello)
    b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    await b_reader.readexactly(len(hello))
    total = 64 * 1024 * 1024
    h = hashlib.sha256()

    async def flood() -> None:
        for chunk in pseudo_random_chunks(total):
            h.update(chunk)
            b_writer.write(chunk)
            await b_writer.drain()
        b_writer.close()

    flooding = asyncio.get_running_loop().create_task(flood())
    # The client reads nothing: the backend must end up blocked on drain(), and
    # sniffer's buffer towards the client must stay near its high-water mark.
    (conn,) = plane.connections
    async with asyncio.timeout(10):
        while not (conn.transport.get_write_buffer_size() >= high // 2 and not flooding.done()):
            await asyncio.sleep(0.01)
    sizes = []
    for _ in range(20):
        await asyncio.sleep(0.01)
        sizes.append(conn.transport.get_write_buffer_size())
    assert not flooding.done()
    assert max(sizes) <= high + 256 * 1024  # one read's worth past the mark at most
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    got = hashlib.sha256()
    n = 0
    while n < total:
        data = await loop.sock_recv(sock, 1 << 20)
        assert data
        got.update(data)
        n += len(data)
    await flooding
    assert got.hexdigest() == h.hexdigest()
    sock.close()
    await raw.close()


async def test_open_connection_keeps_backend_across_table_swap(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    spec = tls_spec({"a": [tenants["a"].port]}, {"app.a.example": "a"})
    plane = await data_plane(spec)
    port = plane.bound_ports()["main"]
    reader, writer = await open_tls(pki, port, "app.a.example")
    writer.write(b"who\n")
    assert await reader.readline() == b"a\n"
    # A scrape while the connection is open already counts its bytes both ways.
    open_bytes = plane.stats.snapshot().counters
    assert open_bytes[("sniffer_bytes", ("a", "tenant-a", "client_to_backend"))] > 0
    assert open_bytes[("sniffer_bytes", ("a", "tenant-a", "backend_to_client"))] > 0
    emptied = TableSpec(listeners=spec.listeners, backends=spec.backends, routes=())
    await plane.install(RouteTable.build(emptied, version=2))
    writer.write(b"who\n")  # the open connection still talks to its backend
    assert await reader.readline() == b"a\n"
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        await tls_request(pki, port, "app.a.example")  # new connections see the new table
    writer.close()


async def test_connect_timeout_moves_on_to_the_next_endpoint(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    with blackholed_port() as dead:
        plane = await data_plane(
            tls_spec({"a": [dead, tenants["a"].port]}, {"app.a.example": "a"}),
            connect_timeout=0.3,
        )
        port = plane.bound_ports()["main"]
        assert await tls_request(pki, port, "app.a.example") == b"a\n"  # first: endpoint 0
    c = plane.stats.snapshot().counters
    assert c[("sniffer_backend_connect_errors", ("a", "tenant-a", "timeout"))] == 1


async def test_ipv6_listener_and_backend(data_plane: PlaneFactory) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    backend = await asyncio.start_server(lambda r, w: w.write(b"v6 backend"), "::1", 0)
    b_port = backend.sockets[0].getsockname()[1]
    spec = TableSpec(
        listeners=(Listener("v6", "::1", 0, "tls"),),
        backends=(Backend("b", "t", (Endpoint("::1", b_port),)),),
        routes=(Route("app.v6.example", (WeightedBackend("b"),)),),
    )
    plane = await data_plane(spec)
    reader, writer = await asyncio.open_connection("::1", plane.bound_ports()["v6"])
    writer.write(client_hello("app.v6.example"))
    assert await reader.readexactly(10) == b"v6 backend"
    writer.close()
    backend.close()


async def test_drain_closes_what_outlives_the_grace(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(tls_spec({"r": [raw.port]}, {"app.r.example": "r"}))
    port = plane.bound_ports()["main"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(client_hello("app.r.example"))
    b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    dropped = await plane.drain(0.2)
    assert dropped == 1
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert plane.recorded.records[-1]["outcome"] == "drain_timeout"  # type: ignore[attr-defined]
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    b_writer.close()
    await raw.close()


async def test_dial_failure_after_client_half_close_still_answers(
    data_plane: PlaneFactory,
) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, not listening: refused
    plane = await data_plane(
        tls_spec({"gone": [dead.getsockname()[1]]}, {"app.gone.example": "gone"})
    )
    port = plane.bound_ports()["main"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(client_hello("app.gone.example"))
    writer.write_eof()  # hello, then FIN: the dial fails after the client half-closed
    assert await asyncio.wait_for(reader.read(), 10) == bytes.fromhex("15030300020250")
    writer.close()
    dead.close()
    # The process is fine: the next connection is answered the same way.
    assert await _refusal(port, client_hello("app.gone.example")) == bytes.fromhex("15030300020250")


async def test_a_crowd_of_bad_clients_never_disturbs_good_ones(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    import random

    rng = random.Random(7)
    plane = await data_plane(
        tls_spec({"a": [tenants["a"].port]}, {"app.a.example": "a"}), hello_timeout=1.0
    )
    port = plane.bound_ports()["main"]
    hello = client_hello("app.a.example")
    huge = bytearray(client_hello("app.a.example"))
    huge[3:5] = (16000).to_bytes(2, "big")  # record claims 16000 bytes...
    huge[6:9] = (70000).to_bytes(3, "big")  # ...and a hello larger than any cap

    async def bad(kind: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        if kind == 0:  # random bytes that start like TLS
            writer.write(b"\x16\x03\x01" + rng.randbytes(rng.randrange(1, 600)))
        elif kind == 1:  # half a hello, then a reset
            writer.write(hello[: rng.randrange(1, len(hello))])
            await writer.drain()
            linger_zero = (1).to_bytes(4, "little") + bytes(4)  # close() sends an RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
        elif kind == 2:  # an oversized hello
            writer.write(bytes(huge))
        elif kind == 3:  # garbage that is not TLS at all
            writer.write(rng.randbytes(64))
        else:  # a truncated hello and silence until the hello timeout
            writer.write(hello[:7])
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 10)
        writer.close()

    async def good() -> bytes:
        return await tls_request(pki, port, "app.a.example")

    jobs = [bad(i % 5) for i in range(100)] + [good() for _ in range(20)]
    rng.shuffle(jobs)
    results = await asyncio.gather(*jobs)
    assert [r for r in results if r is not None] == [b"a\n"] * 20
    await _closed(plane)
    snap = plane.stats.snapshot().counters
    refused = sum(v for (name, _), v in snap.items() if name == "sniffer_refused_connections")
    assert snap[("sniffer_accepted_connections", ("main",))] == 120
    assert refused == 100
    assert snap[("sniffer_connections", ("main", "a", "tenant-a"))] == 20
    reasons = {labels[1] for (name, labels) in snap if name == "sniffer_refused_connections"}
    assert {"not_tls", "hello_too_large", "hello_timeout"} <= reasons


async def test_series_of_a_removed_backend_go_once_its_connections_close(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    spec = tls_spec(
        {"a": [tenants["a"].port], "b": [tenants["b"].port]},
        {"app.a.example": "a", "app.b.example": "b"},
    )
    plane = await data_plane(spec)
    port = plane.bound_ports()["main"]
    reader, writer = await open_tls(pki, port, "app.b.example")
    writer.write(b"who\n")
    assert await reader.readline() == b"b\n"
    assert await tls_request(pki, port, "app.a.example") == b"a\n"
    only_a = TableSpec(spec.listeners, spec.backends[:1], spec.routes[:1])
    await plane.install(RouteTable.build(only_a, version=2))
    # "b" still carries an open connection: its series stay.
    key_b = ("sniffer_connections", ("main", "b", "tenant-b"))
    key_a = ("sniffer_connections", ("main", "a", "tenant-a"))
    assert key_b in plane.stats.snapshot().counters
    writer.write(b"bye\n")
    await reader.read()
    writer.close()
    await _closed(plane)
    await plane.install(RouteTable.build(only_a, version=3))
    counters = plane.stats.snapshot().counters
    assert key_b not in counters and counters[key_a] == 1


def _live_connections() -> int:
    return sum(isinstance(o, ClientConnection | Pump | ClientSide) for o in gc.get_objects())


async def test_closed_connections_are_freed_without_the_cycle_collector(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    """A closed connection's objects go when it closes, not at some later cyclic GC.

    Protocols and transports point at each other; sniffer breaks those cycles on close,
    so a busy edge neither pays the collector per connection nor holds dead connections
    (and their buffers) until it runs. With the collector off, none may stay alive.
    """
    plane = await data_plane(tls_spec({"a": [tenants["a"].port]}, {"app.a.example": "a"}))
    port = plane.bound_ports()["main"]
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            assert await tls_request(pki, port, "app.a.example") == b"a\n"
        await _closed(plane)
        # connection_lost callbacks run on the loop's next iterations: let it turn.
        for _ in range(100):
            if not _live_connections():
                break
            await asyncio.sleep(0)
        live = _live_connections()
    finally:
        gc.enable()
    assert live == 0
