"""The floor a Python relay can reach: SNI routing on uvloop with nothing else.

No metrics, no logs, no timeouts, no PROXY protocol, no retries. sniffer's feature cost is
measured against this. Usage:
    python -m benchmarks.bare_relay --listen 127.0.0.1:8443 --workers 1 \
        --route a.bench.test=127.0.0.1:9001 --route b.bench.test=127.0.0.1:9002
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket

import uvloop

MAX_HELLO = 16384  # the same cap as Envoy's tls_inspector: stop buffering past this


def parse_sni(buf: bytes) -> str | bool | None:
    """Hostname, None when more bytes are needed, False when the hello is bad or nameless."""
    body = b""
    pos = 0
    while True:  # reassemble handshake records until the whole ClientHello is in `body`
        if len(body) >= 4:
            need = 4 + int.from_bytes(body[1:4], "big")
            if len(body) >= need:
                break
        if len(buf) < pos + 5:
            return None
        if buf[pos] != 22:
            return False
        rec_len = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if len(buf) < pos + 5 + rec_len:
            return None
        body += buf[pos + 5 : pos + 5 + rec_len]
        pos += 5 + rec_len
    if body[0] != 1:
        return False
    try:
        p = 4 + 2 + 32
        p += 1 + body[p]  # session id
        p += 2 + int.from_bytes(body[p : p + 2], "big")  # cipher suites
        p += 1 + body[p]  # compression methods
        end = p + 2 + int.from_bytes(body[p : p + 2], "big")
        p += 2
        while p + 4 <= end:
            ext, ext_len = (
                int.from_bytes(body[p : p + 2], "big"),
                int.from_bytes(body[p + 2 : p + 4], "big"),
            )
            if ext == 0:  # server_name: list len (2), type (1), name len (2), name
                name_len = int.from_bytes(body[p + 7 : p + 9], "big")
                return body[p + 9 : p + 9 + name_len].decode("ascii").lower().rstrip(".")
            p += 4 + ext_len
    except (IndexError, UnicodeDecodeError):
        return False
    return False


class Pipe(asyncio.Protocol):
    """One side of a relayed connection; `peer` is the other side's transport."""

    def __init__(self, peer: asyncio.Transport | None = None, other: Pipe | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self.other = other  # the protocol of the other side
        self.got_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.got_eof = True
        if self.peer is None:
            return True
        if self.other is not None and self.other.got_eof:  # both ways done: close, no 2nd FIN
            self.peer.close()
            return False
        self.peer.write_eof()
        return True  # keep our write side open: half-close propagates

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()

    # flow control: a slow peer pauses reading on this side
    def pause_writing(self) -> None:
        self.peer.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.peer.resume_reading()  # type: ignore[union-attr]


class Client(Pipe):
    def __init__(self, routes: dict[str, tuple[str, int]]) -> None:
        super().__init__()
        self.routes = routes
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)
            return
        self.buf += data
        name = parse_sni(self.buf)
        if name is None and len(self.buf) < MAX_HELLO:
            return
        target = self.routes.get(name) if isinstance(name, str) else None
        if target is None:
            self.transport.abort()  # type: ignore[union-attr]
            return
        self.transport.pause_reading()  # type: ignore[union-attr]
        asyncio.get_running_loop().create_task(self.dial(target))

    async def dial(self, target: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            up, other = await loop.create_connection(lambda: Pipe(self.transport, self), *target)
        except OSError:
            self.transport.abort()  # type: ignore[union-attr]
            return
        if self.transport.is_closing():  # type: ignore[union-attr]
            up.close()
            return
        self.peer, self.other = up, other
        up.write(self.buf)
        self.buf = b""
        self.transport.resume_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()


def serve(sock: socket.socket, routes: dict[str, tuple[str, int]]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
        server = await loop.create_server(lambda: Client(routes), sock=sock, backlog=4096)
        await stop
        server.close()

    uvloop.run(main())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--route", action="append", default=[], help="NAME=HOST:PORT")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    routes = {}
    for r in args.route:
        name, _, target = r.partition("=")
        host, _, port = target.rpartition(":")
        routes[name.lower()] = (host, int(port))
    host, _, port = args.listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(4096)
    children = []
    for _ in range(args.workers - 1):  # workers share one listening socket
        pid = os.fork()
        if pid == 0:
            serve(sock, routes)
            os._exit(0)
        children.append(pid)
    try:
        serve(sock, routes)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
