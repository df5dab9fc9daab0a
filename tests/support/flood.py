"""A noisy neighbour in its own process: a TLS backend for tenant A and a flood of TLS
clients towards it through sniffer, each completing its handshake and then idling.

    python -m tests.support.flood PORT NAME COUNT CONCURRENCY CA CERT KEY

Prints `backend PORT` once its backend listens, waits for a line on stdin, floods,
prints `done ADMITTED REFUSED`, then holds every admitted connection until stdin closes.
Loopback only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

from benchmarks.clients import tls_flood


async def main(argv: list[str]) -> None:
    port, name, count, concurrency = int(argv[0]), argv[1], int(argv[2]), int(argv[3])
    ca, cert, key = argv[4], argv[5], argv[6]
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    open_handlers = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_handlers
        open_handlers += 1
        try:
            await reader.read()
        except (OSError, ssl.SSLError):
            pass
        finally:
            open_handlers -= 1
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx, backlog=4096)
    print(f"backend {server.sockets[0].getsockname()[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await stdin.readline()
    client_ctx = ssl.create_default_context(cafile=ca)
    held, refused = await tls_flood(port, name, count, concurrency, client_ctx, timeout=30)
    print(f"done {len(held)} {refused}", flush=True)
    await stdin.read()
    for w in held:
        w.close()
    server.close()
    deadline = loop.time() + 10
    while open_handlers and loop.time() < deadline:  # let the backend side finish
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
