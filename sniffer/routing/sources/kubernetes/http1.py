"""The HTTP/1.1 client the Kubernetes API calls go through, straight on asyncio streams.

The API client needs little of HTTP: a request with an optional JSON body, a response
read whole (lists, status patches) or chunk by chunk (watch streams), keep-alive between
calls, TLS with a given context and server name, and an `https` target through an HTTP
proxy (`proxy-url` in a kubeconfig) by CONNECT. aiohttp does all that and much more, and
importing it costs the control process ~14 MiB for good (a fifth of its budget at 2,000
tenants), so this module does exactly that much.

It owns connections (opening, CONNECT tunnels, the keep-alive pool) and the framing of
responses (Content-Length, chunked, or until the server closes). Every failure of the
connection or the framing is an `HttpError` (or the OSError/TimeoutError it came from);
it must never interpret a status, a body or a header beyond the framing, and never
send an `Accept-Encoding` (bodies stay uncompressed: the API server is on loopback or
a cluster network, and gzip would cost CPU on both ends).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from urllib.parse import unquote, urlencode, urlsplit

MAX_HEAD = 64 * 1024
"""Bytes of status line and headers a response may have: a server sending more is broken
(the API server's heads are a few hundred bytes)."""

MAX_IDLE_PER_HOST = 8
"""Idle keep-alive connections kept per server: the source's lists and status writes run
a few at a time; watches hold their own connection while they stream."""


class HttpError(Exception):
    """The connection failed, or the server's answer is not HTTP/1.x as framed."""


_Key = tuple[str, str, int, str | None, str | None]
"""(scheme, host, port, proxy, server name) of a pooled connection."""


class _Conn:
    def __init__(self, key: _Key, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.key = key
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class Response:
    """A response whose head has been read; the body is read with `read` or `readany`."""

    def __init__(self, client: Client, conn: _Conn, status: int, headers: dict[str, str]):
        self.status = status
        self.headers = headers
        """Header names lower-cased; a repeated header keeps its last value."""
        self._client = client
        self._conn: _Conn | None = conn
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._left: int | None = None
        if not self._chunked and length is not None:
            if not length.strip().isdigit():
                raise HttpError(f"bad Content-Length {length!r}")
            self._left = int(length)
        self._keep_alive = self._chunked or self._left is not None
        if headers.get("connection", "").lower() == "close":
            self._keep_alive = False
        self._done = self._left == 0 or status in (204, 304)

    async def readany(self) -> bytes:
        """The next piece of the body as it arrives; b"" once it has all been read."""
        if self._done or self._conn is None:
            return b""
        reader = self._conn.reader
        if self._chunked:
            line = await reader.readline()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: none are read
                self._done = True
                return b""
            data = await reader.readexactly(size)
            if (await reader.readline()) not in (b"\r\n", b"\n"):
                raise HttpError("chunk not followed by CRLF")
            return data
        if self._left is not None:
            data = await reader.read(min(self._left, 1 << 18))
            if not data:
                raise HttpError("connection closed before the end of the body")
            self._left -= len(data)
            self._done = self._left == 0
            return data
        data = await reader.read(1 << 18)
        self._done = not data
        return data

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        if self._left is not None and self._conn is not None and not self._done:
            data = await self._conn.reader.readexactly(self._left)
            self._left = 0
            self._done = True
            return data
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Done with the response: its connection goes back to the pool when the body
        was read to its end and the server keeps it open, else it is closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep_alive and conn.usable():
            self._client._put_back(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Done with the response, its body unread (a watch that ends): close it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Client:
    """Requests to one API server (or a few) with one TLS context; keeps connections."""

    def __init__(self, ssl_context: ssl.SSLContext | None, connect_timeout: float) -> None:
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._idle: dict[_Key, list[_Conn]] = {}
        self._closed = False

    def close(self) -> None:
        """Close the idle connections; responses in use close theirs when released."""
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()

    def _put_back(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if self._closed or len(idle) >= MAX_IDLE_PER_HOST:
            conn.close()
        else:
            idle.append(conn)

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        proxy: str | None = None,
        server_hostname: str | None = None,
    ) -> Response:
        """Send one request and read the response's head (not its body)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"unsupported URL {url!r}")
        host = parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
        target = parts.path or "/"
        query = parts.query
        if params:
            query = f"{query}&{urlencode(params)}" if query else urlencode(params)
        if query:
            target += "?" + query
        authority = f"[{host}]" if ":" in host else host
        if parts.port:
            authority += f":{port}"
        key: _Key = (scheme, host, port, proxy, server_hostname)
        if proxy and scheme == "http":
            target = f"http://{authority}{target}"  # absolute-form through a proxy
        head = [f"{method} {target} HTTP/1.1", f"Host: {authority}"]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}")
        if proxy and scheme == "http":
            head.extend(_proxy_auth(proxy))
        if data is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(data or b'')}")
        wire = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (data or b"")
        while True:
            conn, reused = self._idle_conn(key), True
            if conn is None:
                conn, reused = await self._open(key), False
            try:
                conn.writer.write(wire)
                await conn.writer.drain()
                status, resp_headers = await _read_head(conn.reader)
            except (HttpError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if reused and isinstance(exc, _Closed):
                    continue  # the server closed an idle connection: a fresh one
                if isinstance(exc, HttpError | OSError):
                    raise
                raise HttpError(f"bad response: {exc}") from exc
            except BaseException:
                conn.close()
                raise
            try:
                return Response(self, conn, status, resp_headers)
            except HttpError:
                conn.close()
                raise

    def _idle_conn(self, key: _Key) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def _open(self, key: _Key) -> _Conn:
        scheme, host, port, proxy, server_hostname = key
        tls = self._ssl if scheme == "https" else None
        if tls is None and scheme == "https":
            tls = ssl.create_default_context()
        async with asyncio.timeout(self._connect_timeout):
            if not proxy:
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=(server_hostname or host) if tls else None
                )
                return _Conn(key, reader, writer)
            p = urlsplit(proxy)
            if p.scheme.lower() != "http" or not p.hostname:
                raise HttpError(f"unsupported proxy {proxy!r} (only http:// proxies)")
            reader, writer = await asyncio.open_connection(p.hostname, p.port or 80)
            if tls is None:
                return _Conn(key, reader, writer)
            try:
                authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                head = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", *_proxy_auth(proxy)]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                await writer.drain()
                status, _ = await _read_head(reader)
                if status != 200:
                    raise HttpError(f"proxy {p.hostname}:{p.port} refused CONNECT: {status}")
                await writer.start_tls(tls, server_hostname=server_hostname or host)
            except BaseException:
                writer.close()
                raise
            return _Conn(key, reader, writer)


class _Closed(HttpError):
    """The connection ended before the first byte of a response."""


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise _Closed("connection closed before a response")
    size = len(line)
    try:
        version, code = line.decode("latin-1").split(None, 2)[:2]
        status = int(code)
    except ValueError:
        raise HttpError(f"bad status line {line[:60]!r}") from None
    if not version.startswith("HTTP/1."):
        raise HttpError(f"bad status line {line[:60]!r}")
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        size += len(line)
        if size > MAX_HEAD:
            raise HttpError("response head over 64 KiB")
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise HttpError("connection closed in the response head")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise HttpError(f"bad header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers["connection"] = "close"
    if 100 <= status < 200 and status != 101:
        return await _read_head(reader)  # an interim answer: the real one follows
    return status, headers


def _proxy_auth(proxy: str) -> list[str]:
    p = urlsplit(proxy)
    if p.username is None:
        return []
    cred = f"{unquote(p.username)}:{unquote(p.password or '')}"
    return [f"Proxy-Authorization: Basic {base64.b64encode(cred.encode()).decode()}"]
