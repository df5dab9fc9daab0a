"""QUIC relaying: CPU per relayed datagram and download throughput, sniffer against a
bare Python UDP relay and against no relay at all.

    .venv/bin/python -m benchmarks.quic_relay                    # ~1 minute
    .venv/bin/python -m benchmarks.quic_relay --datagrams 200000 --mib 64

Rows: `direct` (the client talks to the server), `bare` (a 40-line uvloop UDP relay: one
connected socket per client address to a fixed server, nothing else: the floor of a
Python relay) and `sniffer` (`sniffer serve --workers 0` with a quic listener: Initial
decryption, routing, limits, metrics, access log). Two workloads:
- echo: a client opens a flow with a real aioquic Initial, then sends 1,200-byte
  short-header datagrams in windows of 64 to a UDP echo server and waits for the
  echoes; CPU (user+system from /proc) of the relay process over relayed datagrams
  (each direction counts one).
- download: an aioquic client fetches `--mib` MiB over one QUIC stream from an aioquic
  server (Python on both ends: they, not the relay, set the pace on this machine).

Loopback only; every loop bounded in count and time. Processes are started here and
stopped by their pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import uvloop

from benchmarks.env import Process, free_port, make_cert
from benchmarks.procstat import cpu_seconds

REPO = Path(__file__).resolve().parents[1]
WINDOW = 64
SIZE = 1200


# -- helper processes ------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.t.sendto(data, addr)


class _BareFlow(asyncio.DatagramProtocol):
    def __init__(self, front: asyncio.DatagramTransport, addr: tuple[str, int]) -> None:
        self.front, self.addr = front, addr

    def datagram_received(self, data: bytes, _: tuple[str, int]) -> None:
        self.front.sendto(data, self.addr)


class _Bare(asyncio.DatagramProtocol):
    """The floor: a flow per client address, a connected socket each, relay both ways."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flows: dict[tuple[str, int], asyncio.DatagramTransport] = {}
        self.pending: dict[tuple[str, int], list[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        up = self.flows.get(addr)
        if up is not None:
            up.sendto(data)
            return
        if addr in self.pending:
            self.pending[addr].append(data)
            return
        self.pending[addr] = [data]
        asyncio.get_running_loop().create_task(self._open(addr))

    async def _open(self, addr: tuple[str, int]) -> None:
        up, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _BareFlow(self.t, addr), remote_addr=self.target
        )
        self.flows[addr] = up
        for data in self.pending.pop(addr):
            up.sendto(data)


async def _serve_role(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    if args.role == "echo":
        await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", args.port))
    elif args.role == "bare":
        await loop.create_datagram_endpoint(
            lambda: _Bare(("127.0.0.1", args.to)), local_addr=("127.0.0.1", args.port)
        )
    else:  # a QUIC server: a stream "N\n" is answered with N bytes
        from aioquic.asyncio import serve
        from aioquic.quic.configuration import QuicConfiguration

        config = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
        config.load_cert_chain(args.cert, args.key)
        chunk = bytes(65536)
        tasks: set[asyncio.Task[None]] = set()

        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def answer() -> None:
                n = int((await reader.readline()).strip())
                while n > 0:
                    writer.write(chunk[: min(n, len(chunk))])
                    n -= len(chunk)
                    await writer.drain()
                writer.write_eof()

            task = loop.create_task(answer())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await serve("127.0.0.1", args.port, configuration=config, stream_handler=handler)
    await asyncio.sleep(3600)


# -- the clients -----------------------------------------------------------------------


class _Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got = 0
        self.event = asyncio.Event()
        self.want = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got += 1
        if self.got >= self.want:
            self.event.set()


async def echo_load(port: int, n: int, name: str) -> tuple[int, int, float]:
    """(sent, echoed, seconds): a flow opened by a real Initial, then `n` datagrams."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    conn = QuicConnection(
        configuration=QuicConfiguration(is_client=True, server_name=name, alpn_protocols=["h3"])
    )
    conn.connect(("127.0.0.1", port), now=0.0)
    initial = conn.datagrams_to_send(now=0.0)[0][0]
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Counter, remote_addr=("127.0.0.1", port)
    )
    proto.want = 1
    transport.sendto(initial)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proto.event.wait(), 5)
    payload = b"\x40" + os.urandom(SIZE - 1)  # a short header: validated from here on
    sent, began = 0, time.monotonic()
    base = proto.got
    while sent < n and time.monotonic() - began < 120:
        batch = min(WINDOW, n - sent)
        proto.want = base + sent + batch
        proto.event.clear()
        for _ in range(batch):
            transport.sendto(payload)
        sent += batch
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proto.event.wait(), 1.0)
    seconds = time.monotonic() - began
    echoed = proto.got - base
    transport.close()
    return sent, echoed, seconds


async def download(port: int, mib: int, name: str) -> float:
    """Seconds to fetch `mib` MiB over one QUIC stream."""
    import ssl

    from aioquic.asyncio import connect
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(
        is_client=True, alpn_protocols=["bench"], server_name=name, verify_mode=ssl.CERT_NONE
    )
    async with connect("127.0.0.1", port, configuration=config) as client:
        reader, writer = await client.create_stream()
        began = time.monotonic()
        writer.write(f"{mib << 20}\n".encode())
        writer.write_eof()
        got = 0
        while got < mib << 20:
            data = await asyncio.wait_for(reader.read(1 << 20), 60)
            if not data:
                break
            got += len(data)
        seconds = time.monotonic() - began
        assert got == mib << 20, got
    return seconds


# -- the run ---------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    cpu_us_per_datagram: float | None
    echo_loss: float
    echo_kdgram_s: float
    download_mib_s: float


def _start(work: Path, name: str, argv: list[str], port: int | None = None) -> Process:
    proc = Process(name, argv)
    proc.start(work, stdout_devnull=True)
    time.sleep(1.5 if port is None else 0.2)
    deadline = time.monotonic() + 15
    while port is not None and time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    if not proc.alive():
        raise SystemExit(f"{name} died: {proc.log_tail()}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datagrams", type=int, default=100_000)
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--role", choices=["echo", "bare", "server"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--to", type=int)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args()
    if args.role:
        uvloop.run(_serve_role(args))
        return
    os.environ["PYTHONPATH"] = str(REPO)  # the helper processes run this module too
    work = Path(tempfile.mkdtemp(prefix="sniffer-quic-bench-"))
    cert, key = make_cert(work, "dl.bench.test")
    me = [sys.executable, "-m", "benchmarks.quic_relay"]
    echo_port, server_port = free_port(), free_port()
    procs = [
        _start(work, "echo", [*me, "--role", "echo", "--port", str(echo_port)]),
        _start(
            work,
            "server",
            [
                *me,
                "--role",
                "server",
                "--port",
                str(server_port),
                "--cert",
                str(cert),
                "--key",
                str(key),
            ],
        ),
    ]
    rows: list[Row] = []
    try:
        for name in ("direct", "bare", "sniffer"):
            echo_at, dl_at, relay = echo_port, server_port, None
            relays: list[Process] = []
            if name == "bare":
                echo_at, dl_at = free_port(), free_port()
                relays = [
                    _start(
                        work,
                        "bare-echo",
                        [*me, "--role", "bare", "--port", str(echo_at), "--to", str(echo_port)],
                    ),
                    _start(
                        work,
                        "bare-dl",
                        [*me, "--role", "bare", "--port", str(dl_at), "--to", str(server_port)],
                    ),
                ]
                relay = relays[0]
            elif name == "sniffer":
                echo_at = dl_at = free_port()
                admin = free_port()
                routes = work / "routes.yaml"
                routes.write_text(
                    json.dumps(
                        {
                            "listeners": [
                                {
                                    "name": "h3",
                                    "address": f"127.0.0.1:{echo_at}",
                                    "protocol": "quic",
                                }
                            ],
                            "backends": [
                                {"name": "echo", "endpoints": [f"127.0.0.1:{echo_port}"]},
                                {"name": "dl", "endpoints": [f"127.0.0.1:{server_port}"]},
                            ],
                            "routes": [
                                {"host": "echo.bench.test", "backend": "echo"},
                                {"host": "dl.bench.test", "backend": "dl"},
                            ],
                        }
                    )
                )
                relays = [
                    _start(
                        work,
                        "sniffer",
                        [
                            sys.executable,
                            "-m",
                            "sniffer",
                            "serve",
                            "--routes",
                            str(routes),
                            "--workers",
                            "0",
                            "--admin",
                            f"127.0.0.1:{admin}",
                        ],
                        admin,
                    )
                ]
                relay = relays[0]
                time.sleep(1.0)  # the admin endpoint answers before the table is installed
            try:
                cpu0 = cpu_seconds(relay.pid) if relay else 0.0
                sent, echoed, secs = uvloop.run(
                    echo_load(echo_at, args.datagrams, "echo.bench.test")
                )
                cpu1 = cpu_seconds(relay.pid) if relay else 0.0
                relayed = sent + echoed
                dl = uvloop.run(download(dl_at, args.mib, "dl.bench.test"))
                rows.append(
                    Row(
                        name,
                        (cpu1 - cpu0) / relayed * 1e6 if relay else None,
                        1 - echoed / sent,
                        echoed / secs / 1000,
                        args.mib / dl,
                    )
                )
                print(rows[-1], flush=True)
            finally:
                for p in relays:
                    p.stop()
    finally:
        for p in procs:
            p.stop()
    print()
    print("| row | CPU per relayed datagram | echo loss | echoes/s | download |")
    print("|---|---|---|---|---|")
    for r in rows:
        cpu = "-" if r.cpu_us_per_datagram is None else f"{r.cpu_us_per_datagram:.1f} µs"
        print(
            f"| {r.name} | {cpu} | {r.echo_loss:.2%} | {r.echo_kdgram_s:.1f}k | "
            f"{r.download_mib_s:.1f} MiB/s |"
        )


if __name__ == "__main__":
    main()
