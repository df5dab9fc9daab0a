"""Limits per tenant, backend and client address, through a real in-process data plane.

Clients are real TLS clients (or real ClientHellos) on loopback; a refusal is the TLS
alert internal_error (or HTTP 503 with Retry-After) read off the socket.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import replace

import pytest

from sniffer.proxy.admission import Admission, split
from sniffer.routing.table import Backend, Endpoint, LimitDefaults, Limits, RouteTable
from sniffer.wire.answers import tls_alert
from tests.conftest import PlaneFactory
from tests.proxy.test_relay import client_hello, open_tls, tls_request, tls_spec
from tests.support.pki import PKI
from tests.support.servers import RawBackend, TLSBackend, answering_backend, blackholed_port

INTERNAL_ERROR = tls_alert(80)


@pytest.fixture
async def tenants(pki: PKI) -> dict[str, TLSBackend]:
    a = await TLSBackend("a", pki.issue("app.a.example").server_context()).start()
    b = await TLSBackend("b", pki.issue("app.b.example").server_context()).start()
    yield {"a": a, "b": b}  # type: ignore[misc]
    await a.close()
    await b.close()


_HELLOS: dict[str, bytes] = {}


async def _hello_answer(port: int, name: str, proxy: bytes = b"") -> bytes:
    """Send a ClientHello (after an optional PROXY header) and read the first answer."""
    hello = _HELLOS.get(name) or _HELLOS.setdefault(name, client_hello(name))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(proxy + hello)
    try:
        return await asyncio.wait_for(reader.read(64), 10)
    finally:
        writer.close()


async def _hold_tls(pki: PKI, port: int, name: str, n: int) -> list[asyncio.StreamWriter]:
    """`n` TLS connections through sniffer, each checked to reach its backend, held open."""
    held = []
    for _ in range(n):
        reader, writer = await open_tls(pki, port, name)
        writer.write(b"who\n")
        assert await reader.readline() == name.split(".")[1].encode() + b"\n"
        held.append(writer)
    return held


async def test_tenant_cap_refuses_excess_and_spares_other_tenants(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    spec = tls_spec(
        {"a": [tenants["a"].port], "b": [tenants["b"].port]},
        {"app.a.example": "a", "app.b.example": "b"},
    )
    spec = replace(spec, tenant_limits=(("tenant-a", Limits(max_connections=5)),))
    plane = await data_plane(spec)
    port = plane.bound_ports()["main"]
    held = await _hold_tls(pki, port, "app.a.example", 5)
    with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
        await tls_request(pki, port, "app.a.example")
    assert await _hello_answer(port, "app.a.example") == INTERNAL_ERROR
    assert await tls_request(pki, port, "app.b.example") == b"b\n"  # B is untouched
    c = plane.stats.snapshot().counters
    assert c[("sniffer_refused_connections", ("main", "tenant_limit"))] == 2
    assert c[("sniffer_limited_connections", ("a", "tenant-a", "tenant_max_connections"))] == 2
    # A closed connection gives its slot back.
    held.pop().close()
    async with asyncio.timeout(10):
        while plane.admission.tenants["tenant-a"].active != 4:
            await asyncio.sleep(0.01)
    assert await tls_request(pki, port, "app.a.example") == b"a\n"
    for w in held:
        w.close()


async def test_limits_change_without_restart_and_counts_survive(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    spec = tls_spec({"a": [tenants["a"].port]}, {"app.a.example": "a"})
    plane = await data_plane(spec)
    port = plane.bound_ports()["main"]
    held = await _hold_tls(pki, port, "app.a.example", 3)
    # A backend limit of 3 arrives with a new table: the 3 open ones count against it.
    limited = replace(
        spec,
        backends=tuple(replace(b, limits=Limits(max_connections=3)) for b in spec.backends),
    )
    await plane.install(RouteTable.build(limited, version=2))
    assert await _hello_answer(port, "app.a.example") == INTERNAL_ERROR
    c = plane.stats.snapshot().counters
    assert c[("sniffer_limited_connections", ("a", "tenant-a", "backend_max_connections"))] == 1
    assert c[("sniffer_refused_connections", ("main", "backend_limit"))] == 1
    await plane.install(RouteTable.build(spec, version=3))  # lifted again
    assert await tls_request(pki, port, "app.a.example") == b"a\n"
    for w in held:
        w.close()


async def test_http_refusal_is_503_with_retry_after(data_plane: PlaneFactory) -> None:
    raw = await RawBackend().start()
    spec = tls_spec({"r": [raw.port]}, {"app.r.example": "r"}, protocol="http")
    spec = replace(spec, limits=LimitDefaults(tenant=Limits(max_connections=0)))
    plane = await data_plane(spec)
    port = plane.bound_ports()["main"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: app.r.example\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nretry-after: 1\r\n" in answer
    assert b"tenant limit" in answer
    assert raw.accepted.empty()
    await raw.close()


async def test_token_bucket_admits_what_the_rate_allows(data_plane: PlaneFactory) -> None:
    """Start full (burst), then `rate` a second: never more (exactly), and not much less
    than had accrued by the last refusal (a refusal proves the bucket was empty then).

    The upper bound holds whatever the load. The lower one allows 25 %: tokens accrue
    only up to `burst`, so a stall of this process (clients and plane alike) longer than
    burst/rate = 0.25 s loses tokens nobody asked for; a bucket refilling at half its
    rate would still fail it.
    """

    server = await answering_backend()
    bport = server.sockets[0].getsockname()[1]
    rate, burst = 40.0, 10
    spec = tls_spec({"r": [bport]}, {"app.r.example": "r"})
    spec = replace(
        spec, tenant_limits=(("tenant-r", Limits(connections_per_second=rate, burst=burst)),)
    )
    plane = await data_plane(spec)
    port = plane.bound_ports()["main"]
    admitted = refused = 0
    last_refused_sent = 0.0
    began = time.monotonic()  # the bucket was filled (to `burst`, no more) before this

    async def client() -> None:
        nonlocal admitted, refused, last_refused_sent
        while time.monotonic() - began < 3.0:
            sent = time.monotonic()
            answer = await _hello_answer(port, "app.r.example")
            if answer == b"ok":
                admitted += 1
            else:
                assert answer == INTERNAL_ERROR
                refused += 1
                last_refused_sent = max(last_refused_sent, sent)

    await asyncio.gather(*(client() for _ in range(4)))
    ended = time.monotonic()
    assert refused > 0  # the offered load was above the rate
    # Upper: no more than the burst plus what accrued until the last answer (+1: the
    # bucket's fractional token at the start).
    assert admitted <= burst + rate * (ended - began) + 1, (admitted, ended - began)
    # Lower: the last refusal was decided after its hello was sent, with the bucket
    # empty: what had accrued until then was handed out (but for stalls, see above).
    owed = burst + rate * (last_refused_sent - began)
    assert admitted >= 0.75 * owed - 1, (admitted, owed, refused)
    print(f"token bucket: admitted {admitted}, owed {owed:.1f} by the last refusal")
    c = plane.stats.snapshot().counters
    assert c[("sniffer_refused_connections", ("main", "rate_limited"))] == refused
    key = ("r", "tenant-r", "tenant_connections_per_second")
    assert c[("sniffer_limited_connections", key)] == refused
    server.close()


async def test_client_address_limit_uses_the_proxy_header_source(
    data_plane: PlaneFactory,
) -> None:
    raw = await RawBackend().start()
    spec = tls_spec({"r": [raw.port]}, {"app.r.example": "r"}, proxy_in=True)
    spec = replace(spec, limits=LimitDefaults(client=Limits(max_connections=2)))
    plane = await data_plane(spec)
    port = plane.bound_ports()["main"]
    hello = client_hello("app.r.example")

    def proxy(src: str) -> bytes:
        return f"PROXY TCP4 {src} 127.0.0.1 40000 443\r\n".encode()

    held = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(proxy("203.0.113.7") + hello)
        held.append((writer, await asyncio.wait_for(raw.accepted.get(), 10)))
    assert await _hello_answer(port, "app.r.example", proxy("203.0.113.7")) == INTERNAL_ERROR
    # Another address (same TCP peer, 127.0.0.1) is its own count.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(proxy("203.0.113.8") + hello)
    held.append((writer, await asyncio.wait_for(raw.accepted.get(), 10)))
    c = plane.stats.snapshot().counters
    assert c[("sniffer_refused_connections", ("main", "client_limit"))] == 1
    assert c[("sniffer_limited_connections", ("r", "tenant-r", "client_max_connections"))] == 1
    for w, (_, bw) in held:
        w.close()
        bw.close()
    await raw.close()


async def test_max_pending_dials_against_a_blackholed_endpoint(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend]
) -> None:
    with blackholed_port() as dead:
        await _pending_dials_capped(data_plane, pki, tenants, dead)


async def _pending_dials_capped(
    data_plane: PlaneFactory, pki: PKI, tenants: dict[str, TLSBackend], dead_port: int
) -> None:
    spec = tls_spec(
        {"dead": [dead_port], "b": [tenants["b"].port]},
        {"app.dead.example": "dead", "app.b.example": "b"},
    )
    spec = replace(spec, limits=LimitDefaults(backend=Limits(max_pending_dials=3)))
    plane = await data_plane(spec, connect_timeout=3.0)
    port = plane.bound_ports()["main"]
    stuck = []
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(client_hello("app.dead.example"))
        stuck.append(writer)
    async with asyncio.timeout(10):
        while plane.admission.backends["dead"].pending != 3:
            await asyncio.sleep(0.01)
    assert await _hello_answer(port, "app.dead.example") == INTERNAL_ERROR
    # Refused at once, not after waiting for a slot: the three dials still hang.
    assert plane.admission.backends["dead"].pending == 3
    assert await tls_request(pki, port, "app.b.example") == b"b\n"  # others still dial
    c = plane.stats.snapshot().counters
    assert c[("sniffer_limited_connections", ("dead", "tenant-dead", "max_pending_dials"))] == 1
    assert c[("sniffer_refused_connections", ("main", "backend_limit"))] == 1
    async with asyncio.timeout(15):  # the dials time out: their slots are free again
        while plane.admission.backends["dead"].pending:
            await asyncio.sleep(0.01)
    for w in stuck:
        w.close()


def test_worker_shares_add_up_to_the_pod_limit() -> None:
    for value in (0, 1, 7, 300, 20000):
        for n in (1, 2, 3, 8):
            assert sum(split(value, i, n) for i in range(n)) == value


def test_admission_split_across_workers_never_exceeds_the_pod_limit() -> None:
    """Two workers each enforce half: together they admit at most the pod's limit."""
    backend = Backend("a", "t", (Endpoint("127.0.0.1", 1),))
    table = RouteTable.build(
        replace(
            tls_spec({}, {}),
            backends=(backend,),
            tenant_limits=(("t", Limits(max_connections=301)),),
        )
    )
    workers = [Admission(i, 2) for i in range(2)]
    for w in workers:
        w.install(table)
    admitted = [0, 0]
    for k in range(1000):
        w = k % 2
        if workers[w].ticket(backend).check() is None:
            admitted[w] += 1
    assert admitted == [151, 150]
