"""Real backends for tests: TLS servers that say who they are, and raw TCP recorders.

Each runs on the test's event loop on 127.0.0.1 with an OS-chosen port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field


def free_port() -> int:
    """A port nothing listens on now, for a process the test starts (it binds it itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class TLSBackend:
    """Terminates TLS with its own certificate and runs a tiny command protocol.

    Lines the client sends: `who` -> the backend's name; `echo N` -> echo the next N
    bytes back; `sha N` -> read N bytes, answer their SHA-256; `send N` -> send N
    pseudo-random bytes then their SHA-256 on a final line; `bye` -> close.
    """

    name: str
    context: ssl.SSLContext
    server: asyncio.Server | None = None
    port: int = 0
    connections: int = 0
    sni_seen: list[str | None] = field(default_factory=list)

    async def start(self) -> TLSBackend:
        def on_sni(sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            self.sni_seen.append(name)

        self.context.sni_callback = on_sni  # type: ignore[assignment]
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                cmd, _, arg = line.decode().strip().partition(" ")
                if cmd == "who":
                    writer.write(f"{self.name}\n".encode())
                elif cmd == "echo":
                    writer.write(await reader.readexactly(int(arg)))
                elif cmd == "sha":
                    h = hashlib.sha256()
                    left = int(arg)
                    while left:
                        chunk = await reader.read(min(left, 65536))
                        if not chunk:
                            raise ConnectionError("short upload")
                        h.update(chunk)
                        left -= len(chunk)
                    writer.write(h.hexdigest().encode() + b"\n")
                elif cmd == "send":
                    h = hashlib.sha256()
                    for chunk in pseudo_random_chunks(int(arg)):
                        h.update(chunk)
                        writer.write(chunk)
                        await writer.drain()
                    writer.write(b"\n" + h.hexdigest().encode() + b"\n")
                elif cmd == "bye":
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def pseudo_random_chunks(total: int, size: int = 65536) -> list[bytes]:
    out = []
    seed = hashlib.sha256(str(total).encode()).digest()
    block = (seed * (size // len(seed) + 1))[:size]
    i = 0
    while total > 0:
        n = min(size, total)
        prefix = i.to_bytes(8, "big")
        out.append((prefix + block)[:n])
        total -= n
        i += 1
    return out


@dataclass
class RawBackend:
    """A raw TCP backend: each accepted connection is handed to the test to script."""

    server: asyncio.Server | None = None
    port: int = 0
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(
        default_factory=asyncio.Queue
    )

    async def start(self) -> RawBackend:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.accepted.put((reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@contextlib.contextmanager
def blackholed_port() -> Iterator[int]:
    """A port whose dials hang, as to a dead host, without leaving loopback: a listener
    whose accept queue is full drops further SYNs."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(hung.getsockname())
        fillers.append(s)
    try:
        yield hung.getsockname()[1]
    finally:
        for s in [*fillers, hung]:
            s.close()


async def answering_backend(answer: bytes = b"ok") -> asyncio.Server:
    """A backend that writes `answer` to every connection at once and closes it once the
    client's first bytes arrive (closing with them unread would send a reset instead)."""

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            transport.write(answer)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.transport.close()

    return await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0)
