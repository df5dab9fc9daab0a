"""Python load clients for what wrk cannot do: hello-only connections and idle connections.

    python -m benchmarks.clients hello --port P --name a.bench.test --duration 5 --concurrency 32
    python -m benchmarks.clients idle --port P --name a.bench.test --count 9000 --hold 60

Both print one JSON line. `idle` prints it once every connection is open (TLS handshake
completed through the proxy), then holds them until a line arrives on stdin or --hold
seconds pass, then closes them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import ssl
import sys
import time

import uvloop


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_hello(name: str, alpn: list[str] | None = None) -> bytes:
    """The bytes of a real ClientHello with SNI `name` (Python's OpenSSL builds it)."""
    ctx = client_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


async def hello(args: argparse.Namespace) -> dict[str, object]:
    """Connect, send a ClientHello, wait for the backend's first bytes, close; repeat."""
    loop = asyncio.get_running_loop()
    payload = client_hello(args.name)
    deadline = time.monotonic() + args.duration
    lat: list[float] = []
    errors = 0

    async def one_loop() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            sock = socket.socket()
            sock.setblocking(False)
            t0 = time.perf_counter()
            try:
                await loop.sock_connect(sock, ("127.0.0.1", args.port))
                await loop.sock_sendall(sock, payload)
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
                if data:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1
            except (OSError, TimeoutError):
                errors += 1
                await asyncio.sleep(0.01)
            finally:
                sock.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one_loop() for _ in range(args.concurrency)))
    secs = time.monotonic() - t0
    return {"count": len(lat), "errors": errors, "seconds": secs, "latencies": lat}


class Idle(asyncio.Protocol):
    def connection_lost(self, exc: Exception | None) -> None:
        pass


async def idle(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    ctx = client_context()
    sem = asyncio.Semaphore(args.concurrency)
    transports: list[asyncio.BaseTransport] = []
    failed = 0
    deadline = time.monotonic() + args.open_timeout

    async def open_one() -> None:
        nonlocal failed
        async with sem:
            if time.monotonic() > deadline:
                failed += 1
                return
            try:
                tr, _ = await asyncio.wait_for(
                    loop.create_connection(
                        Idle, "127.0.0.1", args.port, ssl=ctx, server_hostname=args.name
                    ),
                    10,
                )
                transports.append(tr)
            except (OSError, ssl.SSLError, TimeoutError):
                failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(args.count)))
    opened = time.monotonic() - t0
    alive = sum(1 for t in transports if not t.is_closing())
    print(json.dumps({"open": alive, "failed": failed, "open_seconds": opened}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.readline(), args.hold)
    still = sum(1 for t in transports if not t.is_closing())
    for t in transports:
        t.abort()
    await asyncio.sleep(0.2)
    return {"done": True, "still_open_at_release": still}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["hello", "idle"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="a.bench.test")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--latencies", help="hello: write latencies (s) here, one a line")
    ap.add_argument("--hold", type=float, default=60.0)
    ap.add_argument("--open-timeout", type=float, default=120.0)
    args = ap.parse_args()
    result = uvloop.run(hello(args) if args.mode == "hello" else idle(args))
    lat = result.pop("latencies", None)
    if args.latencies and isinstance(lat, list):  # a file: 100k floats is too much for a line
        with open(args.latencies, "w") as f:
            f.write("".join(f"{x:.6f}\n" for x in lat))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()


async def tls_flood(
    port: int, name: str, count: int, concurrency: int, ctx: ssl.SSLContext, timeout: float = 15
) -> tuple[list[asyncio.StreamWriter], int]:
    """`count` TLS connections for `name`, `concurrency` handshakes at a time: the ones
    that completed (held open, for the caller to close) and how many failed."""
    held: list[asyncio.StreamWriter] = []
    failed = 0
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal failed
        async with gate:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name),
                    timeout,
                )
            except (OSError, ssl.SSLError, TimeoutError):
                failed += 1
                return
            held.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))
    return held, failed
