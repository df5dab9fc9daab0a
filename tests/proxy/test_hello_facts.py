"""What the ClientHello tells beyond the name, through a real data plane on loopback:
ALPN routes, the access log's id/alpn/ja4/ech, the ECH counter and the JA4 deny list."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import replace

from ja4plus.fingerprinters.ja4 import generate_ja4
from ja4plus.utils.tls_utils import parse_tls_handshake

from sniffer.routing.table import Backend, Endpoint, Listener, Route, TableSpec, WeightedBackend
from sniffer.wire.ja4 import ja4
from sniffer.wire.tls import ClientHello, ClientHelloReader
from tests.conftest import PlaneFactory
from tests.support.pki import PKI
from tests.support.servers import RawBackend, TLSBackend
from tests.wire.hellos import modern_hello, records

ID = re.compile(r"[0-9a-f]{16}-[0-9a-f]+")


def python_hello(pki: PKI, name: str, alpn: list[str] | None) -> bytes:
    """The ClientHello the verifying client of `ask` sends (same context settings)."""
    ctx = pki.client_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


async def ask(pki: PKI, port: int, name: str, alpn: list[str] | None = None) -> bytes:
    """`who` over a TLS connection through sniffer that verifies the backend for `name`."""
    ctx = pki.client_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    writer.write(b"who\n")
    async with asyncio.timeout(10):
        answer = await reader.readline()
    writer.close()
    return answer


async def records_after(plane: object, n: int) -> list[dict[str, object]]:
    async with asyncio.timeout(10):
        while len(plane.recorded.records) < n:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
    return plane.recorded.records  # type: ignore[attr-defined, no-any-return]


def backend(name: str, port: int) -> Backend:
    return Backend(name, f"tenant-{name}", (Endpoint("127.0.0.1", port),))


def route(host: str, target: str, alpn: tuple[str, ...] = ()) -> Route:
    return Route(host, (WeightedBackend(target),), alpn=alpn)


async def test_alpn_route_wins_for_its_protocols_only(data_plane: PlaneFactory, pki: PKI) -> None:
    leaf = pki.issue("app.a.example", "other.a.example", "x.w.example")
    tenant = await TLSBackend("tenant", leaf.server_context()).start()
    solver = await TLSBackend("solver", leaf.server_context()).start()
    plane = await data_plane(
        TableSpec(
            listeners=(Listener("main", "127.0.0.1", 0, "tls", default_backend="tenant"),),
            backends=(backend("tenant", tenant.port), backend("solver", solver.port)),
            routes=(
                route("app.a.example", "tenant"),
                route("app.a.example", "solver", ("acme-tls/1",)),
                # An alpn route alone: others fall through to the wildcard, then default.
                route("x.w.example", "solver", ("acme-tls/1", "h3x")),
                route("*.w.example", "tenant"),
            ),
        )
    )
    port = plane.bound_ports()["main"]
    assert await ask(pki, port, "app.a.example", ["acme-tls/1"]) == b"solver\n"
    assert await ask(pki, port, "app.a.example", ["h2", "http/1.1"]) == b"tenant\n"
    assert await ask(pki, port, "app.a.example") == b"tenant\n"
    assert await ask(pki, port, "x.w.example", ["acme-tls/1"]) == b"solver\n"
    assert await ask(pki, port, "x.w.example", ["h2"]) == b"tenant\n"
    assert await ask(pki, port, "other.a.example", ["acme-tls/1"]) == b"tenant\n"  # default
    log = await records_after(plane, 6)
    assert [r["backend"] for r in log] == [
        "solver",
        "tenant",
        "tenant",
        "solver",
        "tenant",
        "tenant",
    ]
    assert log[0]["alpn"] == ["acme-tls/1"] and log[2]["alpn"] == []
    await tenant.close()
    await solver.close()


async def test_access_log_id_alpn_ja4_ech(data_plane: PlaneFactory, pki: PKI) -> None:
    tenant = await TLSBackend("tenant", pki.issue("app.a.example").server_context()).start()
    raw = await RawBackend().start()
    plane = await data_plane(
        TableSpec(
            listeners=(Listener("main", "127.0.0.1", 0, "tls"),),
            backends=(backend("tenant", tenant.port), backend("raw", raw.port)),
            routes=(route("app.a.example", "tenant"), route("pq.example.test", "raw")),
        )
    )
    port = plane.bound_ports()["main"]
    assert await ask(pki, port, "app.a.example", ["h2", "http/1.1"]) == b"tenant\n"
    # A synthetic Chromium-shaped hello with (GREASE) ECH and 12 ALPN names of 40 bytes.
    names = [b"n%02d" % i + b"x" * 37 for i in range(12)]
    hello = records(modern_hello(alpn=names))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello)
    b_reader, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    assert await b_reader.readexactly(len(hello)) == hello
    writer.close()
    b_writer.close()
    log = await records_after(plane, 2)
    # Lines come in the order the connections close, which the test does not fix.
    first, second = sorted(log, key=lambda r: r["sni"] != "app.a.example")
    assert ID.fullmatch(str(first["id"])) and ID.fullmatch(str(second["id"]))
    assert first["id"] != second["id"]
    assert first["alpn"] == ["h2", "http/1.1"] and first["ech"] is False
    # The fingerprint of the same client's hello, by us and by ja4plus.
    sent = python_hello(pki, "app.a.example", ["h2", "http/1.1"])
    parsed = ClientHelloReader().feed(sent)
    assert isinstance(parsed, ClientHello)
    assert first["ja4"] == ja4(parsed) == generate_ja4(parse_tls_handshake(sent))
    assert second["ech"] is True
    assert second["alpn"] == [n.decode()[:32] for n in names[:8]] + ["...4 more"]
    assert str(second["ja4"]).startswith("t13d")
    counters = plane.stats.snapshot().counters
    assert counters[("sniffer_ech_connections", ("main", "tenant-raw"))] == 1
    assert ("sniffer_ech_connections", ("main", "tenant-tenant")) not in counters
    await tenant.close()
    await raw.close()


async def test_http_listener_log_has_no_hello_facts(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(
        TableSpec(
            listeners=(Listener("main", "127.0.0.1", 0, "http"),),
            backends=(backend("raw", raw.port),),
            routes=(route("www.r.example", "raw"),),
        )
    )
    port = plane.bound_ports()["main"]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: www.r.example\r\n\r\n")
    _, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    writer.close()
    b_writer.close()
    (line,) = await records_after(plane, 1)
    assert (line["alpn"], line["ja4"], line["ech"]) == ([], None, False)
    assert ID.fullmatch(str(line["id"]))
    await raw.close()


async def test_deny_ja4_refuses_matching_clients_only(data_plane: PlaneFactory, pki: PKI) -> None:
    tenant = await TLSBackend("tenant", pki.issue("app.a.example").server_context()).start()
    python_fp = ja4(ClientHelloReader().feed(python_hello(pki, "app.a.example", None)))  # type: ignore[arg-type]
    listener = Listener("main", "127.0.0.1", 0, "tls", deny_ja4=frozenset({python_fp}))
    spec = TableSpec(
        listeners=(listener,),
        backends=(backend("tenant", tenant.port),),
        routes=(route("app.a.example", "tenant"),),
    )
    plane = await data_plane(spec)
    port = plane.bound_ports()["main"]
    # The denied client gets a handshake_failure alert and never reaches the backend.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(python_hello(pki, "app.a.example", None))
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    assert answer == bytes((21, 3, 3, 0, 2, 2, 40))
    # A client with another fingerprint (ALPN changes part a) passes.
    assert await ask(pki, port, "app.a.example", ["h2"]) == b"tenant\n"
    assert tenant.connections == 1
    counters = plane.stats.snapshot().counters
    assert counters[("sniffer_refused_connections", ("main", "ja4_denied"))] == 1
    log = await records_after(plane, 2)
    assert log[0]["outcome"] == "ja4_denied" and log[0]["ja4"] == python_fp
    # Lifting the deny list (a new table) lets the same client in.
    await plane.install(
        type(plane.table).build(replace(spec, listeners=(replace(listener, deny_ja4=frozenset()),)))
    )
    assert await ask(pki, port, "app.a.example") == b"tenant\n"
    await tenant.close()


async def test_hostile_alpn_names_stay_valid_ascii_json(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    plane = await data_plane(
        TableSpec(
            listeners=(Listener("main", "127.0.0.1", 0, "tls"),),
            backends=(backend("raw", raw.port),),
            routes=(route("pq.example.test", "raw"),),
        )
    )
    port = plane.bound_ports()["main"]
    hello = records(modern_hello(alpn=[b'\xe9"\\', b"h2\x00"], ech=False))
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello)
    _, b_writer = await asyncio.wait_for(raw.accepted.get(), 10)
    writer.close()
    b_writer.close()
    (line,) = await records_after(plane, 1)
    assert line["alpn"] == ['\xe9"\\', "h2\x00"] and line["ech"] is False
    # The spec's hex rule for a non-alphanumeric first/last byte: 0xE9 ... 0x5C -> "ec".
    assert str(line["ja4"])[8:10] == "ec"
    await raw.close()
