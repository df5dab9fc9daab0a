"""The test bench: certificates, free ports, TLS backends (nginx), processes, name mapping."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import resource
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAMES = ("a.bench.test", "b.bench.test")
UNKNOWN = "unknown.bench.test"
SMALL_PATH = "/"
MEDIUM_PATH = "/1m"
MEDIUM_SIZE = 1 << 20


def raise_nofile() -> int:
    """Raise the soft fd limit to the hard one (children inherit it); return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """Self-signed ECDSA P-256 certificate for `name` (clients here do not verify)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


@dataclass
class Process:
    """A started server; `pid` is the root of the tree we measure."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, cwd: Path, stdout_devnull: bool = False) -> None:
        self.log = cwd / f"{self.name}.log"
        logf = open(self.log, "wb")  # noqa: SIM115 - lives as long as the process
        out = subprocess.DEVNULL if stdout_devnull else logf
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdout=out,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, 9)
            self.popen.wait(timeout)

    def log_tail(self, n: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def wait_port(port: int, timeout: float, proc: Process | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.05)
    return False


def tls_get(port: int, name: str, path: str = "/", timeout: float = 3.0) -> bytes | None:
    """GET `path` over TLS with SNI `name`; body or None when refused/failed."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as s,
        ):
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
    except (OSError, ssl.SSLError):
        return None
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    return body if head.startswith(b"HTTP/1.1 200") else None


NGINX_BACKEND = """\
daemon off;
master_process on;
user root;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {dir}/backend-{tag}.pid;
error_log {dir}/backend-{tag}.error.log warn;
events {{ worker_connections {conns}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp-{tag}-body;
    proxy_temp_path {dir}/tmp-{tag}-proxy;
    fastcgi_temp_path {dir}/tmp-{tag}-fcgi;
    uwsgi_temp_path {dir}/tmp-{tag}-uwsgi;
    scgi_temp_path {dir}/tmp-{tag}-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    client_header_timeout 600s;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        location = / {{ default_type text/plain; return 200 "backend {tag}\\n"; }}
        location / {{ root {dir}/www; default_type application/octet-stream; }}
    }}
}}
"""


@dataclass
class Bench:
    """Temp dir, certificates, and the two nginx TLS backends `a` and `b`."""

    dir: Path
    big_size: int
    backend_workers: int = 1
    nofile: int = 20000
    ports: dict[str, int] = field(default_factory=dict)
    procs: list[Process] = field(default_factory=list)

    def setup(self) -> None:
        www = self.dir / "www"
        www.mkdir(parents=True, exist_ok=True)
        with open(www / "big", "wb") as f:  # sparse: nginx reads zeros fast, no disk I/O
            f.truncate(self.big_size)
        (www / "1m").write_bytes(os.urandom(MEDIUM_SIZE))
        for name in NAMES:
            tag = name.split(".")[0]
            crt, key = make_cert(self.dir, name)
            port = free_port()
            self.ports[tag] = port
            conf = self.dir / f"backend-{tag}.conf"
            conf.write_text(
                NGINX_BACKEND.format(
                    workers=self.backend_workers,
                    nofile=self.nofile,
                    conns=self.nofile - 100,
                    dir=self.dir,
                    tag=tag,
                    port=port,
                    crt=crt,
                    key=key,
                )
            )
            p = Process(f"backend-{tag}", [nginx_bin(), "-e", "stderr", "-c", str(conf)])
            p.start(self.dir)
            self.procs.append(p)
        for tag, port in self.ports.items():
            if not wait_port(port, 10):
                raise RuntimeError(f"backend {tag} did not start:\n" + self.procs[0].log_tail())
            if tls_get(port, f"{tag}.bench.test") != f"backend {tag}\n".encode():
                raise RuntimeError(f"backend {tag} does not answer over TLS")

    def teardown(self) -> None:
        for p in self.procs:
            p.stop()


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def hosts_file(directory: Path) -> Path:
    path = directory / "hosts"
    path.write_text(
        "127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {n}\n" for n in (*NAMES, UNKNOWN))
    )
    return path


@contextlib.contextmanager
def name_mapping(directory: Path) -> Iterator[list[str]]:
    """A command prefix under which the bench names resolve to 127.0.0.1.

    wrk takes the TLS SNI from the URL host and resolves it with getaddrinfo. A private
    mount namespace with a bind-mounted hosts file maps the names for wrk alone; where
    unshare is not allowed, /etc/hosts is edited and restored when the block exits.
    """
    hosts = hosts_file(directory)
    probe = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            f"mount --bind {hosts} /etc/hosts && getent hosts {NAMES[0]}",
        ],
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0:
        yield ["unshare", "-m", "sh", "-c", f'mount --bind {hosts} /etc/hosts && exec "$@"', "sh"]
        return
    etc = Path("/etc/hosts")
    original = etc.read_bytes()
    try:
        etc.write_bytes(
            original + b"\n# sniffer-benchmarks (removed at exit)\n" + hosts.read_bytes()
        )
        yield []
    finally:
        etc.write_bytes(original)
