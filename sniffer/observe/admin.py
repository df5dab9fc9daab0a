"""The admin HTTP endpoint: /metrics, /healthz, /readyz, /routes.

A deliberately tiny HTTP/1.1 server on asyncio streams (one request per connection),
so the data-plane processes need no web framework. It only reads state through the
callables it is given; it never changes routing or connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("sniffer.admin")

_MAX_HEAD = 8192


class AdminServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, dict[str, Any]]],
        routes: Callable[[], dict[str, Any]],
        health: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.routes = routes
        self.health = health
        """What /healthz shows besides `"status": "ok"` (listeners); never its status."""
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._handle, host, port, limit=_MAX_HEAD)
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3:
                await self._send(writer, 400, "text/plain", b"bad request\n")
                return
            method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._send(writer, 405, "text/plain", b"method not allowed\n")
                return
            status, ctype, body = self._route(path)
            await self._send(writer, status, ctype, b"" if method == "HEAD" else body)
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        except Exception:
            log.exception("admin request failed")
            await self._send(writer, 500, "text/plain", b"internal error\n")
        finally:
            writer.close()

    def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            # Liveness: always 200 while the process answers (a port another process
            # holds is readiness's business, not a reason to restart); the body says
            # what each listener holds.
            health = json.dumps({"status": "ok", **self.health()}, indent=2, default=str)
            return 200, "application/json", health.encode() + b"\n"
        if path == "/readyz":
            ok, detail = self.ready()
            body = json.dumps({"ready": ok, **detail}, indent=2, default=str).encode() + b"\n"
            return (200 if ok else 503), "application/json", body
        if path == "/routes":
            return 200, "application/json", json.dumps(self.routes()).encode() + b"\n"
        return 404, "text/plain", b"not found: try /metrics /healthz /readyz /routes\n"

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes
    ) -> None:
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
