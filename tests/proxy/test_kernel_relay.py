"""The kernel relay inside a real data plane: what users rely on stays as it was.

Real sockets on loopback, the real kernel (CI runs as root). Every push is bounded
(64 MiB per connection here; the 1 GiB runs are behind `-m soak`): a redirected stream
gets no backpressure from the kernel, so an unbounded push could take the machine.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import logging
import random
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import sniffer.proxy.kernel.relay as relay_module
from sniffer.proxy.kernel.asm import Asm
from sniffer.proxy.kernel.btf import VMLINUX
from sniffer.proxy.kernel.relay import KernelRelay, Unavailable
from sniffer.proxy.server import DataPlane, ProxySettings
from sniffer.routing.model import TableSpec
from tests.conftest import REPO, PlaneFactory
from tests.proxy.test_kernel_engine import OfferedStream, recv_all, send, tcp_mem_pages
from tests.proxy.test_relay import client_hello, tls_spec
from tests.support.servers import free_port

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _kernel_relay_here() -> None:
    try:
        KernelRelay(capacity=1).close()
    except Unavailable as exc:  # pragma: no cover - CI runs as root
        pytest.skip(f"kernel relay unavailable here: {exc}")


class Backend:
    """A raw TCP backend that hands each accepted socket to the test."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[socket.socket] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Backend:
        lis = socket.create_server(("127.0.0.1", 0))
        lis.setblocking(False)
        self.port = lis.getsockname()[1]
        loop = asyncio.get_running_loop()

        async def accept() -> None:
            while True:
                s, _ = await loop.sock_accept(lis)
                s.setblocking(False)
                await self.accepted.put(s)

        self.task = loop.create_task(accept())
        self.lis = lis
        return self

    def close(self) -> None:
        self.task.cancel()
        self.lis.close()


@pytest.fixture
def data_plane(data_plane: PlaneFactory) -> PlaneFactory:
    """The shared factory, with the kernel relay asked for (`auto`: the tests that need it
    assert it is there; pairs move after `kernel_relay_after`)."""

    async def make(spec: TableSpec, **settings: object) -> DataPlane:
        settings.setdefault("kernel_relay", "auto")
        return await data_plane(spec, **settings)

    return make


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = await Backend().start()
    yield b
    b.close()


async def connect(port: int, name: str) -> tuple[socket.socket, bytes]:
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setblocking(False)
    await loop.sock_connect(s, ("127.0.0.1", port))
    hello = client_hello(name)
    await loop.sock_sendall(s, hello)
    return s, hello


async def read_exactly(s: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while len(out) < n:
        chunk = await loop.sock_recv(s, n - len(out))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return out


async def records_after(plane: DataPlane, n: int, timeout: float = 15) -> list[dict[str, object]]:
    async with asyncio.timeout(timeout):
        while len(plane.recorded.records) < n:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
    return plane.recorded.records  # type: ignore[attr-defined, no-any-return]


async def test_many_streams_of_random_sizes_exact_with_half_closes_both_orders(
    data_plane: PlaneFactory, backend: Backend
) -> None:
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"*.k.example": "k"}), kernel_relay_after=0
    )
    assert plane.kernel is not None
    port = plane.bound_ports()["main"]
    rnd = random.Random(1616)
    n = 16
    sizes = {}
    pairing = asyncio.Lock()  # one connect at a time: the backend's next accept is ours

    async def one(i: int) -> None:
        up_n, down_n = rnd.randrange(0, 8 * MiB), rnd.randrange(0, 8 * MiB)
        if i % 4 == 0:
            up_n = 0  # the client half-closes first, the backend goes on talking
        elif i % 4 == 1:
            down_n = 0  # and the other way round
        async with pairing:
            client, hello = await connect(port, f"s{i}.k.example")
            server = await asyncio.wait_for(backend.accepted.get(), 10)
            assert await read_exactly(server, len(hello)) == hello
        sizes[f"s{i}.k.example"] = (len(hello) + up_n, down_n)
        results = await asyncio.gather(
            send(client, up_n, i),
            send(server, down_n, 100 + i),
            recv_all(server),
            recv_all(client),
        )
        up_sha, down_sha, up_got, down_got = results
        assert up_got == (up_n, up_sha)
        assert down_got == (down_n, down_sha)
        client.close()
        server.close()

    async with asyncio.timeout(120):
        await asyncio.gather(*(one(i) for i in range(n)))
    logs = await records_after(plane, n)
    for r in logs:
        assert r["outcome"] == "closed", r
        assert (r["bytes_in"], r["bytes_out"]) == sizes[str(r["sni"])]
    snap = plane.stats.snapshot()
    assert snap.counters[("sniffer_kernel_relay_connections", ())] == n
    assert snap.gauges[("sniffer_kernel_relay_enabled", ())] == 1
    assert snap.gauges[("sniffer_kernel_relay_refill", ())] == int(plane.kernel.refill)
    up = sum(v[0] for v in sizes.values())
    down = sum(v[1] for v in sizes.values())
    assert snap.counters[("sniffer_bytes", ("k", "tenant-k", "client_to_backend"))] == up
    assert snap.counters[("sniffer_bytes", ("k", "tenant-k", "backend_to_client"))] == down


async def test_proxy_header_and_replay_come_first(
    data_plane: PlaneFactory, backend: Backend
) -> None:
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"app.k.example": "k"}, proxy_out={"k": "v1"}),
        kernel_relay_after=0,
    )
    client, hello = await connect(plane.bound_ports()["main"], "app.k.example")
    server = await asyncio.wait_for(backend.accepted.get(), 10)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(client, b"after the hello")
    head = await read_exactly(server, 200)
    assert head.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
    line_end = head.index(b"\r\n") + 2
    rest = head[line_end:] + await read_exactly(server, line_end + len(hello) + 15 - 200)
    assert rest == hello + b"after the hello"
    assert plane.kernel is not None and plane.kernel.handed == 1
    client.close()
    server.close()


@pytest.mark.parametrize("who", ["client", "backend"])
async def test_a_reset_is_passed_on_as_a_reset(
    data_plane: PlaneFactory, backend: Backend, who: str
) -> None:
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"app.k.example": "k"}), kernel_relay_after=0
    )
    client, hello = await connect(plane.bound_ports()["main"], "app.k.example")
    server = await asyncio.wait_for(backend.accepted.get(), 10)
    await read_exactly(server, len(hello))
    resetter, other = (client, server) if who == "client" else (server, client)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(resetter, b"x" * 5000)
    resetter.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    resetter.close()
    (record,) = await records_after(plane, 1)
    assert record["outcome"] == f"{who}_reset"
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(10):
            while await loop.sock_recv(other, 65536):
                pass
    other.close()


async def stall_then_resume(
    plane: DataPlane, backend: Backend, stalled: str, offered: int
) -> tuple[int, int]:
    """`offered` bytes to a peer that does not read until the sender is stalled; then
    it reads them all. Returns (bytes the sender got in while stalled, kernel TCP memory
    grown meanwhile)."""
    client, hello = await connect(plane.bound_ports()["main"], "app.k.example")
    server = await asyncio.wait_for(backend.accepted.get(), 10)
    await read_exactly(server, len(hello))
    sender, reader = (server, client) if stalled == "client" else (client, server)
    before = tcp_mem_pages()
    stream = OfferedStream(sender, offered, seed=5)
    await stream.push_until_stalled(within=30)
    stalled_at = stream.sent
    held = (tcp_mem_pages() - before) * 4096
    async with asyncio.timeout(120):
        _, got = await asyncio.gather(stream.finish(), recv_all(reader))
    assert got == (offered, stream.h.hexdigest())
    reader.shutdown(socket.SHUT_WR)
    (record,) = await records_after(plane, 1)
    assert record["outcome"] == "closed"
    key = "bytes_out" if stalled == "client" else "bytes_in"
    assert record[key] == offered + (0 if stalled == "client" else len(hello))
    client.close()
    server.close()
    return stalled_at, held


@pytest.mark.parametrize("stalled", ["client", "backend"])
async def test_a_never_reading_peer_is_bounded_then_served_exact(
    data_plane: PlaneFactory, backend: Backend, stalled: str
) -> None:
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"app.k.example": "k"}), kernel_relay_after=0
    )
    stalled_at, held = await stall_then_resume(plane, backend, stalled, 64 * MiB)
    # The budget (4 MiB) plus socket buffers; the user-space relay: 12-18 MiB.
    assert stalled_at < 32 * MiB, stalled_at
    assert held < 40 * MiB, held


@pytest.mark.soak
@pytest.mark.parametrize("stalled", ["client", "backend"])
async def test_a_never_reading_peer_offered_a_gibibyte(
    data_plane: PlaneFactory, backend: Backend, stalled: str
) -> None:
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"app.k.example": "k"}), kernel_relay_after=0
    )
    stalled_at, held = await stall_then_resume(plane, backend, stalled, 1024 * MiB)
    assert stalled_at < 32 * MiB, stalled_at
    assert held < 40 * MiB, held


async def test_idle_timeout_reads_the_kernels_counts(
    data_plane: PlaneFactory, backend: Backend
) -> None:
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"*.k.example": "k"}),
        idle_timeout=1.5,
        kernel_relay_after=0,
    )
    port = plane.bound_ports()["main"]
    busy, hello = await connect(port, "busy.k.example")
    busy_server = await asyncio.wait_for(backend.accepted.get(), 10)
    await read_exactly(busy_server, len(hello))
    idle, hello2 = await connect(port, "idle.k.example")
    idle_server = await asyncio.wait_for(backend.accepted.get(), 10)
    await read_exactly(idle_server, len(hello2))
    loop = asyncio.get_running_loop()
    # The busy pair talks every 0.1 s, all of it by the kernel; the idle one says nothing.
    async with asyncio.timeout(15):
        for _ in range(35):
            await loop.sock_sendall(busy, b"ping")
            assert await read_exactly(busy_server, 4) == b"ping"
            await asyncio.sleep(0.1)
    (record,) = await records_after(plane, 1)
    assert record["sni"] == "idle.k.example" and record["outcome"] == "idle_timeout"
    assert len(plane.connections) == 1
    for s in (busy, busy_server, idle, idle_server):
        s.close()


async def test_drain_lets_pairs_finish_then_drops_the_rest(
    data_plane: PlaneFactory, backend: Backend
) -> None:
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"*.k.example": "k"}), kernel_relay_after=0
    )
    port = plane.bound_ports()["main"]
    done, hello = await connect(port, "done.k.example")
    done_server = await asyncio.wait_for(backend.accepted.get(), 10)
    await read_exactly(done_server, len(hello))
    stuck, hello2 = await connect(port, "stuck.k.example")
    stuck_server = await asyncio.wait_for(backend.accepted.get(), 10)
    await read_exactly(stuck_server, len(hello2))
    loop = asyncio.get_running_loop()

    async def finish_soon() -> None:
        await asyncio.sleep(0.2)
        await loop.sock_sendall(done_server, b"bye")
        done_server.shutdown(socket.SHUT_WR)
        assert await read_exactly(done, 3) == b"bye"
        done.shutdown(socket.SHUT_WR)

    finishing = loop.create_task(finish_soon())
    dropped = await plane.drain(1.5)
    await finishing
    assert dropped == 1
    outcomes = {str(r["sni"]): r["outcome"] for r in plane.recorded.records}  # type: ignore[attr-defined]
    assert outcomes == {"done.k.example": "closed", "stuck.k.example": "drain_timeout"}
    for s in (done, done_server, stuck, stuck_server):
        s.close()


async def test_no_free_record_means_user_space_counted(
    data_plane: PlaneFactory, backend: Backend
) -> None:
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"app.k.example": "k"}), kernel_relay_after=0
    )
    assert plane.kernel is not None
    plane.kernel.free.clear()  # as if every record were taken
    client, hello = await connect(plane.bound_ports()["main"], "app.k.example")
    server = await asyncio.wait_for(backend.accepted.get(), 10)
    assert await read_exactly(server, len(hello)) == hello
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(client, b"still relayed")
    assert await read_exactly(server, 13) == b"still relayed"
    snap = plane.stats.snapshot()
    assert snap.counters[("sniffer_kernel_relay_fallbacks", ("map_full",))] == 1
    assert snap.counters[("sniffer_kernel_relay_connections", ())] == 0
    client.close()
    server.close()


def _refused_program(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = Asm()
    bad.exit()  # r0 never set
    monkeypatch.setattr(relay_module, "CODE", bad.assemble())
    monkeypatch.setattr(relay_module, "refill_code", lambda offset: bad.assemble())


async def test_a_refused_program_means_user_space_in_auto_and_no_start_in_on(
    monkeypatch: pytest.MonkeyPatch, backend: Backend, data_plane: PlaneFactory
) -> None:
    _refused_program(monkeypatch)
    with pytest.raises(Unavailable) as info:
        DataPlane(ProxySettings(kernel_relay="on"))
    assert info.value.reason == "program_refused"
    assert "R0 !read_ok" in str(info.value)
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"app.k.example": "k"}), kernel_relay_after=0
    )
    assert plane.kernel is None
    assert plane.stats.snapshot().gauges[("sniffer_kernel_relay_enabled", ())] == 0
    assert plane.stats.snapshot().gauges[("sniffer_kernel_relay_refill", ())] == 0
    client, hello = await connect(plane.bound_ports()["main"], "app.k.example")
    server = await asyncio.wait_for(backend.accepted.get(), 10)
    assert await read_exactly(server, len(hello)) == hello
    client.close()
    server.close()


_CAP_NET_ADMIN, _CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 12, 21, 38, 39
_PR_CAPBSET_DROP = 24


def _drop_bpf_capabilities() -> None:
    """In the child: CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON out of the
    bounding set (PR_CAPBSET_DROP), so that not even root gets them back at execve."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_NET_ADMIN, _CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")


async def test_auto_without_privileges_runs_the_user_space_relay(
    tmp_path: Path, backend: Backend
) -> None:
    port, admin = free_port(), free_port()
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "listeners:\n"
        f"  - {{name: tls, address: '127.0.0.1:{port}', protocol: tls}}\n"
        f"backends:\n  - {{name: k, endpoints: ['127.0.0.1:{backend.port}']}}\n"
        "routes:\n  - {host: app.k.example, backend: k}\n"
    )
    stderr = tmp_path / "stderr.log"
    argv = [sys.executable, "-m", "sniffer", "serve", "--routes", str(routes)]
    argv += ["--admin", f"127.0.0.1:{admin}", "--workers", "0"]
    on = subprocess.run(
        [*argv, "--kernel-relay", "on"],
        preexec_fn=_drop_bpf_capabilities,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert on.returncode == 1
    assert "--kernel-relay on, but it cannot run here" in on.stderr
    assert "CAP_BPF and CAP_NET_ADMIN" in on.stderr
    proc = subprocess.Popen(
        [*argv, "--kernel-relay", "auto"],
        preexec_fn=_drop_bpf_capabilities,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("wb"),
    )
    try:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(30):
            while True:
                try:
                    client, hello = await connect(port, "app.k.example")
                    break
                except OSError:
                    assert proc.poll() is None, stderr.read_text()
                    await asyncio.sleep(0.1)
            server = await backend.accepted.get()
            assert await read_exactly(server, len(hello)) == hello
            await loop.sock_sendall(server, b"from user space")
            assert await read_exactly(client, 15) == b"from user space"
        text = stderr.read_text()
        assert text.count("kernel relay unavailable (no_privilege)") == 1, text
        client.close()
        server.close()
    finally:
        proc.terminate()
        proc.wait(30)


async def test_a_pair_moves_to_the_kernel_mid_stream_without_losing_a_byte(
    data_plane: PlaneFactory, backend: Backend
) -> None:
    """`--kernel-relay-after`: the pair starts in user space and moves to the kernel
    while bytes flow both ways; every byte arrives once, in order."""
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"app.k.example": "k"}), kernel_relay_after=0.2
    )
    assert plane.kernel is not None
    client, hello = await connect(plane.bound_ports()["main"], "app.k.example")
    server = await asyncio.wait_for(backend.accepted.get(), 10)
    assert await read_exactly(server, len(hello)) == hello
    loop = asyncio.get_running_loop()
    kernel = plane.kernel

    async def trickle(sock: socket.socket, seed: int) -> str:
        """Small writes for about a second, then a FIN: across the move."""
        rnd = random.Random(seed)
        h = hashlib.sha256()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            chunk = rnd.randbytes(rnd.randrange(1, 20000))
            h.update(chunk)
            await loop.sock_sendall(sock, chunk)
            await asyncio.sleep(0.005)
        sock.shutdown(socket.SHUT_WR)
        return h.hexdigest()

    async with asyncio.timeout(30):
        up, down, (_, up_got), (_, down_got) = await asyncio.gather(
            trickle(client, 1), trickle(server, 2), recv_all(server), recv_all(client)
        )
    assert (up_got, down_got) == (up, down)
    assert kernel.handed == 1  # it did move
    (record,) = await records_after(plane, 1)
    assert record["outcome"] == "closed"
    client.close()
    server.close()


async def test_a_short_connection_never_reaches_the_kernel(
    data_plane: PlaneFactory, backend: Backend
) -> None:
    plane = await data_plane(
        tls_spec({"k": [backend.port]}, {"app.k.example": "k"}), kernel_relay_after=5
    )
    client, hello = await connect(plane.bound_ports()["main"], "app.k.example")
    server = await asyncio.wait_for(backend.accepted.get(), 10)
    assert await read_exactly(server, len(hello)) == hello
    client.close()
    server.close()
    (record,) = await records_after(plane, 1)
    assert record["bytes_in"] == len(hello)
    assert plane.kernel is not None and plane.kernel.handed == 0


def _keep_only_bpf_and_net_admin() -> None:
    """In the child: CAP_SYS_ADMIN and CAP_PERFMON out of the bounding set, CAP_BPF and
    CAP_NET_ADMIN kept (the manifests' least-privilege component)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_SYS_ADMIN, _CAP_PERFMON):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")


@pytest.mark.skipif(not Path(VMLINUX).exists(), reason="no kernel BTF: the refill is never tried")
def test_without_perfmon_the_fallback_verdict_loads_and_says_why() -> None:
    """CAP_BPF + CAP_NET_ADMIN only: `bpf_skc_to_tcp_sock` (and reading kernel memory
    through BTF) needs CAP_PERFMON, so the refilling verdict is refused, the fallback one
    is loaded, and the relay says why."""
    code = (
        "from sniffer.proxy.kernel.relay import KernelRelay\n"
        "r = KernelRelay(capacity=1)\n"
        "print(r.refill)\n"
        "print(r.verdict)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=_keep_only_bpf_and_net_admin,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    refill, why = out.stdout.split("\n", 1)
    assert refill == "False"
    assert "the budget refills from user space" in why
    assert "cannot use helper bpf_skc_to_tcp_sock" in why


def test_the_start_up_line_says_which_verdict_is_loaded(caplog: pytest.LogCaptureFixture) -> None:
    from sniffer.proxy.server import open_kernel_relay

    with caplog.at_level(logging.INFO, logger="sniffer.proxy"):
        relay = open_kernel_relay("on", 4)
    assert relay is not None
    try:
        assert relay.verdict in caplog.text
        which = "in the kernel" if relay.refill else "from user space"
        assert f"the budget refills {which}" in caplog.text
    finally:
        relay.close()
