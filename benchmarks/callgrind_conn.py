"""User-space instructions per connection, counted by callgrind: a noise-free A/B meter.

Timings on a 2-core shared machine wobble by 20%; instruction counts repeat to three
digits. This runs `sniffer serve --workers 0` (or the bare relay) under
`valgrind --tool=callgrind` in front of a raw backend, warms up, zeroes the counters,
drives N hello-then-close connections, dumps, and prints instructions per connection.

    .venv/bin/python -m benchmarks.callgrind_conn --n 1000            # sniffer
    .venv/bin/python -m benchmarks.callgrind_conn --n 1000 --bare     # the floor
    .venv/bin/python -m benchmarks.callgrind_conn --n 1000 -- --no-access-log
    .venv/bin/python -m benchmarks.callgrind_conn --n 1000 --alpn     # ALPN routes in play
    .venv/bin/python -m benchmarks.callgrind_conn --keep /tmp/cg.out   # then callgrind_annotate
    .venv/bin/python -m benchmarks.callgrind_conn --reply-on-data -- --kernel-relay-after 0
                                          # every pair handed to the kernel (the counts say)

Needs Debian's `valgrind`. Loopback only; every step is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.clients import client_hello
from benchmarks.env import free_port

REPO = Path(__file__).resolve().parents[1]


async def backend(port: int, ready: asyncio.Event, on_data: bool = False) -> None:
    """Answers every connection at once with a few bytes, like a ServerHello would (with
    `on_data`: once the hello has arrived, as a ServerHello does)."""

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            if not on_data:
                transport.write(b"\x16\x03\x03\x00\x01x")  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            if on_data:  # (a hello may come in pieces: one answer per piece is fine)
                self.transport.write(b"\x16\x03\x03\x00\x01x")  # type: ignore[attr-defined]

    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", port, backlog=4096)
    ready.set()
    async with server:
        await asyncio.Event().wait()


async def drive(port: int, n: int, alpn: bool, concurrency: int = 4) -> None:
    loop = asyncio.get_running_loop()
    payload = client_hello("a.bench.test", ["h2", "http/1.1"] if alpn else None)
    left = n

    async def one() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            with socket.socket() as s:
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", port))
                await loop.sock_sendall(s, payload)
                data = await asyncio.wait_for(loop.sock_recv(s, 65536), 30)
                if not data:
                    raise RuntimeError("connection refused by the proxy")

    await asyncio.gather(*(one() for _ in range(concurrency)))


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("proxy exited during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.5)
    raise TimeoutError("proxy did not start listening")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="connections measured")
    ap.add_argument("--bare", action="store_true", help="measure benchmarks/bare_relay.py")
    ap.add_argument("--keep", type=Path, help="copy the callgrind dump here (callgrind_annotate)")
    ap.add_argument(
        "--alpn",
        action="store_true",
        help="clients offer h2,http/1.1 and the host also has an acme-tls/1 route (the ACME"
        " layout: every lookup takes the ALPN path and falls through to the plain route)",
    )
    ap.add_argument(
        "--reply-on-data",
        action="store_true",
        help="the backend answers once the hello arrives (not at connect): a pair handed to"
        " the kernel at once is in the kernel before the backend speaks",
    )
    ap.add_argument("serve_args", nargs="*", help="extra `sniffer serve` flags (after --)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("needs valgrind (apt-get install valgrind)")
    listen, upstream = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="sniffer-callgrind-"))
    routes = work / "routes.yaml"
    routes.write_text(
        "listeners:\n"
        f"  - {{name: tls, address: '127.0.0.1:{listen}', protocol: tls}}\n"
        f"backends:\n  - {{name: a, endpoints: ['127.0.0.1:{upstream}']}}\n"
        "routes:\n  - {host: a.bench.test, backend: a}\n"
        + ("  - {host: a.bench.test, backend: a, alpn: [acme-tls/1]}\n" if args.alpn else "")
    )
    if args.bare:
        target = [
            str(REPO / "benchmarks" / "bare_relay.py"),
            "--listen",
            f"127.0.0.1:{listen}",
            "--route",
            f"a.bench.test=127.0.0.1:{upstream}",
        ]
    else:
        admin = free_port()
        target = [
            "-m",
            "sniffer",
            "serve",
            "--routes",
            str(routes),
            "--workers",
            "0",
            "--admin",
            f"127.0.0.1:{admin}",
            *args.serve_args,
        ]
    out = work / "callgrind.out"
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    server_task = loop.create_task(backend(upstream, ready, args.reply_on_data))
    loop.run_until_complete(ready.wait())
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=yes",  # `sniffer serve` execs its serving interpreter
            f"--callgrind-out-file={out}",
            sys.executable,
            *target,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        wait_listening(listen, proc)
        if not args.bare:  # readiness also means the table is installed
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                url = f"http://127.0.0.1:{admin}/readyz"
                with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5):
                    break
                time.sleep(0.5)
        # Warm-up: imports, caches, code paths.
        loop.run_until_complete(drive(listen, 200, args.alpn))
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        loop.run_until_complete(drive(listen, args.n, args.alpn))
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        if not args.bare:  # what the kernel relay did (pairs handed over, fallbacks)
            url = f"http://127.0.0.1:{admin}/metrics"
            with urllib.request.urlopen(url, timeout=60) as r:
                text = r.read().decode()
            kernel = [x for x in text.splitlines() if x.startswith("sniffer_kernel_relay_")]
            print("\n".join(kernel))
    finally:
        server_task.cancel()
        loop.run_until_complete(asyncio.gather(server_task, return_exceptions=True))
        loop.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    dump = Path(f"{out}.1").read_text(errors="replace")
    m = re.search(r"^summary:\s+(\d+)", dump, re.M)
    if m is None:
        sys.exit("no summary in the callgrind dump")
    label = "bare-relay" if args.bare else "sniffer " + " ".join(args.serve_args)
    if args.alpn:
        label += " (ALPN routes)"
    print(
        f"{label.strip()}: {int(m.group(1)) // args.n} instructions per connection "
        f"({args.n} connections)"
    )
    if args.keep is not None:
        shutil.copyfile(f"{out}.1", args.keep)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
