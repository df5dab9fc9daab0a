"""Where the API server is, how to trust it, and who sniffer is to it.

This module owns loading credentials two ways. From a kubeconfig: kubernetes-asyncio
interprets it in a short-lived child process (`kubeconfig_loader.py`), so this
long-running process never imports `kubernetes_asyncio.client` (~40 MiB of generated
models it would never use); the child is run again when the API says 401 (an exec
plugin's token expired) or when the token's announced expiry is near. In-cluster: the
service-account token and CA are read directly, and the token file is re-read every
minute (bound tokens rotate, kubelet rewrites the file) as client-go does. It must never
log a token or key, nor leave key material on disk longer than loading it takes.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LOADER = Path(__file__).with_name("kubeconfig_loader.py")

TOKEN_REREAD_SECONDS = 60.0
"""How often an in-cluster token file is re-read: kubelet rotates it well before expiry."""

EXPIRY_MARGIN_SECONDS = 30.0
"""Exec-plugin credentials are renewed this long before their announced expiry."""

LOADER_TIMEOUT_SECONDS = 60.0
"""An exec plugin may prompt a cloud API; past this the kubeconfig is presumed broken."""


class CredentialsError(Exception):
    """The kubeconfig or service account could not be turned into credentials."""


@dataclass(frozen=True, slots=True)
class Credentials:
    host: str
    """Base URL of the API server, e.g. https://10.96.0.1:443."""
    ca_pem: str | None = None
    """PEM of the CAs trusted for the server; None uses the system's."""
    cert_pem: str | None = None
    key_pem: str | None = None
    """Client certificate and key (PEM), when the kubeconfig authenticates by certificate."""
    authorization: str | None = None
    """The `Authorization` header value ("Bearer ..."), when it authenticates by token."""
    verify: bool = True
    """False only for `insecure-skip-tls-verify` kubeconfigs."""
    server_name: str | None = None
    """`tls-server-name`: the name the server certificate is checked against."""
    proxy: str | None = None
    expires: float | None = None
    """Unix time the token stops working (exec plugins that say so)."""
    token_file: Path | None = None
    """In-cluster: the file the token is re-read from."""

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca_pem)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_pem and self.key_pem:
            # OpenSSL loads a chain only from files: a private directory, gone at once.
            with tempfile.TemporaryDirectory(prefix="sniffer-tls-") as tmp:
                cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
                cert.write_text(self.cert_pem)
                fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(self.key_pem)
                ctx.load_cert_chain(cert, key)
        return ctx

    def same_tls(self, other: Credentials) -> bool:
        return (self.host, self.ca_pem, self.cert_pem, self.key_pem, self.verify) == (
            other.host,
            other.ca_pem,
            other.cert_pem,
            other.key_pem,
            other.verify,
        )


async def from_kubeconfig(path: str, context: str | None = None) -> Credentials:
    """Run the loader child process and read its JSON (see the module docstring)."""
    args = [sys.executable, str(LOADER), path] + ([context] if context else [])
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(LOADER_TIMEOUT_SECONDS):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CredentialsError(f"loading {path} took over {LOADER_TIMEOUT_SECONDS:.0f}s") from None
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        raise CredentialsError(f"loading {path}: {message[-1] if message else proc.returncode}")
    try:
        data = json.loads(out)
        return Credentials(
            host=str(data["host"]).rstrip("/"),
            ca_pem=data.get("ca_pem"),
            cert_pem=data.get("cert_pem"),
            key_pem=data.get("key_pem"),
            authorization=data.get("authorization"),
            verify=bool(data.get("verify", True)),
            server_name=data.get("server_name"),
            proxy=data.get("proxy"),
            expires=data.get("expires"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CredentialsError(f"loading {path}: unreadable loader output ({exc})") from exc


def in_cluster(directory: Path | None = None) -> Credentials:
    """The pod's service account, as `rest.InClusterConfig` reads it."""
    directory = directory or SERVICE_ACCOUNT_DIR
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise CredentialsError(
            "not in a cluster (KUBERNETES_SERVICE_HOST/PORT unset): pass --kubeconfig"
        )
    if ":" in host:
        host = f"[{host}]"
    token_file = directory / "token"
    try:
        token = token_file.read_text().strip()
        ca = (directory / "ca.crt").read_text()
    except OSError as exc:
        raise CredentialsError(f"service account: {exc}") from exc
    return Credentials(
        host=f"https://{host}:{port}",
        ca_pem=ca,
        authorization=f"Bearer {token}",
        token_file=token_file,
    )


async def load(kubeconfig: str | None) -> Credentials:
    return await from_kubeconfig(kubeconfig) if kubeconfig else in_cluster()


class CredentialStore:
    """The current credentials, renewed on demand (401), on expiry and, in-cluster, by age."""

    def __init__(self, kubeconfig: str | None, creds: Credentials) -> None:
        self.kubeconfig = kubeconfig
        self.current = creds
        self.generation = 0
        """Bumped whenever `current` is replaced (the API client rebuilds TLS on change)."""
        self._token_read_at = time.monotonic()
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, kubeconfig: str | None) -> CredentialStore:
        return cls(kubeconfig, await load(kubeconfig))

    def authorization(self) -> str | None:
        """The header to send now; re-reads an in-cluster token file once a minute."""
        creds = self.current
        if creds.token_file is not None:
            now = time.monotonic()
            if now - self._token_read_at >= TOKEN_REREAD_SECONDS:
                self._token_read_at = now
                try:
                    token = creds.token_file.read_text().strip()
                except OSError:
                    token = ""  # keep the old one: a rotation may be half-written
                if token and f"Bearer {token}" != creds.authorization:
                    self._replace(_with_token(creds, token))
        return self.current.authorization

    def expiring(self) -> bool:
        expires = self.current.expires
        return expires is not None and time.time() > expires - EXPIRY_MARGIN_SECONDS

    async def renew(self, seen_generation: int) -> bool:
        """Load again unless someone already did since `seen_generation`; True if renewed.

        Many streams see the same 401 at once; one reload serves them all.
        """
        async with self._lock:
            if self.generation != seen_generation:
                return True
            creds = self.current
            if creds.token_file is not None:
                try:
                    token = creds.token_file.read_text().strip()
                except OSError:
                    return False
                self._token_read_at = time.monotonic()
                new = _with_token(creds, token)
            else:
                try:
                    new = await load(self.kubeconfig)
                except CredentialsError:
                    return False
            if new == creds:
                return False
            self._replace(new)
            return True

    def _replace(self, creds: Credentials) -> None:
        self.current = creds
        self.generation += 1


def _with_token(creds: Credentials, token: str) -> Credentials:
    return Credentials(
        host=creds.host,
        ca_pem=creds.ca_pem,
        authorization=f"Bearer {token}",
        token_file=creds.token_file,
    )
