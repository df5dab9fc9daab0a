"""Capture real ClientHellos from the TLS clients installed on this machine.

Run as ``python tests/wire/capture_hellos.py`` (root, for Chromium's --no-sandbox). For each
client it listens on a loopback port, starts the client against it, records the bytes up to
the end of the ClientHello handshake message (reassembling records independently of
``sniffer.wire.tls`` so a reader bug cannot shape its own fixtures), closes the connection,
and writes ``fixtures/<name>.hex``: ``# key: value`` metadata lines, then the hex.
Clients that are not installed are skipped.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

FIXTURES = Path(__file__).with_name("fixtures")
TIMEOUT = 20.0


def _hello_end(data: bytes) -> int | None:
    """End offset of the first handshake message in ``data``, reassembled from records."""
    handshake = b""
    pos = 0
    while len(data) >= pos + 5:
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if len(data) < pos + 5 + length:
            return None
        handshake += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(handshake[1:4], "big"):
            return pos
    return None


def _read_hello(listener: socket.socket) -> bytes:
    """Serve every connection the client opens (browsers preconnect idle sockets) and
    return the first complete ClientHello any of them sends."""
    deadline = time.monotonic() + TIMEOUT
    received: dict[socket.socket, bytes] = {}
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([listener, *received], [], [], 0.5)
            for sock in ready:
                if sock is listener:
                    conn, _ = listener.accept()
                    received[conn] = b""
                    continue
                chunk = sock.recv(65536)
                if not chunk:
                    sock.close()
                    del received[sock]
                    continue
                received[sock] += chunk
                end = _hello_end(received[sock])
                if end is not None:
                    return received[sock][:end]
        raise TimeoutError("no complete ClientHello")
    finally:
        for sock in received:
            sock.close()


def capture(name: str, argv: list[str], meta: dict[str, str], listener: socket.socket) -> None:
    # Own process group, so the kill reaches a browser's helper processes too.
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        hello = _read_hello(listener)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines = [f"# {key}: {value}" for key, value in meta.items()]
    lines.append(f"# bytes: {len(hello)}")
    lines += textwrap.wrap(hello.hex(), 64)
    (FIXTURES / f"{name}.hex").write_text("\n".join(lines) + "\n")
    print(f"{name}: {len(hello)} bytes")


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    # A fresh listener per client: a connection a previous client left in the backlog
    # must not be mistaken for the next client's.
    port = _free_port()
    py = sys.executable
    pyver = f"python {sys.version.split()[0]}"
    py_client = textwrap.dedent("""
        import socket, ssl, sys
        ctx = ssl.create_default_context()
        if sys.argv[3] == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(sys.argv[4].split(","))
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        ctx.wrap_socket(s, server_hostname=sys.argv[2])
    """)
    clients: list[tuple[str, list[str], dict[str, str]]] = [
        (
            "python_tls13",
            [py, "-c", py_client, str(port), "Python13.Example.Test", "1.3", "h2,http/1.1"],
            {"client": pyver, "sni": "python13.example.test", "alpn": "h2,http/1.1"},
        ),
        (
            "python_tls12",
            [py, "-c", py_client, str(port), "python12.example.test", "1.2", "http/1.1"],
            {"client": pyver + " TLS 1.2 only", "sni": "python12.example.test", "alpn": "http/1.1"},
        ),
    ]
    if shutil.which("openssl"):
        ver = _version(["openssl", "version"])
        clients += [
            (
                "openssl_s_client",
                [
                    "openssl",
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-servername",
                    "openssl.example.test",
                    "-alpn",
                    "h2,http/1.1",
                ],
                {"client": ver, "sni": "openssl.example.test", "alpn": "h2,http/1.1"},
            ),
            (
                "openssl_no_sni",
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-noservername"],
                {"client": ver + " -noservername", "sni": "", "alpn": ""},
            ),
        ]
    if shutil.which("curl"):
        clients.append(
            (
                "curl",
                [
                    "curl",
                    "-sk",
                    "--max-time",
                    "15",
                    "--resolve",
                    f"curl.example.test:{port}:127.0.0.1",
                    f"https://curl.example.test:{port}/",
                ],
                {
                    "client": _version(["curl", "--version"]),
                    "sni": "curl.example.test",
                    "alpn": "h2,http/1.1",
                },
            )
        )
    if shutil.which("node"):
        js = (
            f"require('tls').connect({{host:'127.0.0.1',port:{port},"
            "servername:'node.example.test',ALPNProtocols:['h2','http/1.1'],"
            "rejectUnauthorized:false}).on('error',()=>{})"
        )
        clients.append(
            (
                "node",
                ["node", "-e", js],
                {
                    "client": "node " + _version(["node", "--version"]),
                    "sni": "node.example.test",
                    "alpn": "h2,http/1.1",
                },
            )
        )
    if shutil.which("gnutls-cli"):
        clients.append(
            (
                "gnutls_cli",
                [
                    "gnutls-cli",
                    "--insecure",
                    "-p",
                    str(port),
                    "--sni-hostname",
                    "gnutls.example.test",
                    "--alpn",
                    "h2",
                    "--alpn",
                    "http/1.1",
                    "127.0.0.1",
                ],
                {
                    "client": _version(["gnutls-cli", "--version"]),
                    "sni": "gnutls.example.test",
                    "alpn": "h2,http/1.1",
                },
            )
        )
    if shutil.which("chromium"):
        profile = tempfile.mkdtemp(prefix="sniffer-chromium-")
        clients.append(
            (
                "chromium",
                [
                    "chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    f"--host-resolver-rules=MAP * 127.0.0.1:{port}",
                    "https://chromium.example.test/",
                ],
                {
                    "client": _version(["chromium", "--version"]),
                    "sni": "chromium.example.test",
                    "alpn": "h2,http/1.1",
                    "post_quantum": "X25519MLKEM768",
                },
            )
        )
    only = set(sys.argv[1:])
    for name, argv, meta in clients:
        if only and name not in only:
            continue
        with socket.create_server(("127.0.0.1", port)) as listener:
            try:
                capture(name, argv, meta, listener)
            except (OSError, EOFError) as exc:
                print(f"{name}: skipped ({exc})", file=sys.stderr)


if __name__ == "__main__":
    main()
