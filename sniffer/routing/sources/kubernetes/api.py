"""A thin JSON client of the Kubernetes API on top of kubernetes-asyncio's `ApiClient`.

kubernetes-asyncio gives us configuration (kubeconfig or in-cluster), authentication and
TLS; this module sends the few calls the source makes with `_preload_content=False` and
reads the bodies itself, because deserialising every list item into model objects is
exactly the cost (time and memory) sniffer exists to avoid. It owns the API error
hierarchy (mapped from HTTP status, as kopf does). It must never cache objects, decide
anything about routing, or call an endpoint outside `kinds.RBAC_RULES`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from sniffer.routing.sources.kubernetes.settings import KubernetesSettings

# Watch lines are single JSON objects; etcd caps one object at 1.5 MiB, so a line that
# grows past 4 MiB is a broken stream, not a big object, and must not eat memory.
MAX_WATCH_LINE = 4 * 1024 * 1024


class ApiError(Exception):
    """The API server answered with an error `Status` (or none could be read)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Gone(ApiError):
    """410: the resourceVersion is older than the server's history; re-list."""


class Conflict(ApiError):
    """409: a precondition (resourceVersion) failed; re-read and retry."""


class NotFound(ApiError):
    """404: no such object, or the group/version/resource is not served."""


class Unauthorized(ApiError):
    """401/403: the token is wrong or the RBAC does not allow the call."""


class ApiUnavailable(ApiError):
    """The server could not be reached, timed out, or answered 5xx/429."""


def error_from(status: int, body: Any) -> ApiError:
    reason = ""
    message = ""
    if isinstance(body, Mapping):
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or "")
    cls: type[ApiError] = ApiError
    if status == 410:
        cls = Gone
    elif status == 409:
        cls = Conflict
    elif status == 404:
        cls = NotFound
    elif status in (401, 403):
        cls = Unauthorized
    elif status >= 500 or status == 429:
        cls = ApiUnavailable
    return cls(status, reason or "Error", message or f"HTTP {status}")


class KubeApi:
    """The calls the source makes: discovery, list pages, watch streams, status patches."""

    def __init__(self, client: Any, settings: KubernetesSettings) -> None:
        self._client = client
        self._settings = settings

    @classmethod
    async def connect(cls, settings: KubernetesSettings) -> KubeApi:
        """Load the kubeconfig (or in-cluster config) and open a client; no request yet."""
        from kubernetes_asyncio import config
        from kubernetes_asyncio.client import ApiClient, Configuration

        cfg = Configuration()
        if settings.kubeconfig:
            await config.load_kube_config(
                config_file=settings.kubeconfig, client_configuration=cfg, persist_config=False
            )
        else:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cls(ApiClient(configuration=cfg), settings)

    async def close(self) -> None:
        await self._client.close()

    async def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if timeout is None:
            timeout = aiohttp.ClientTimeout(
                total=self._settings.request_timeout, sock_connect=self._settings.connect_timeout
            )
        try:
            resp: aiohttp.ClientResponse = await self._client.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiUnavailable(0, type(exc).__name__, str(exc) or repr(exc)) from exc
        if resp.status >= 400:
            try:
                raw = await resp.read()
                payload: Any = json.loads(raw) if raw else None
            except (ValueError, aiohttp.ClientError, OSError, TimeoutError):
                payload = None
            finally:
                resp.release()
            raise error_from(resp.status, payload)
        return resp

    async def request_json(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        resp = await self._call(method, path, query, body, content_type)
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiUnavailable(0, type(exc).__name__, str(exc) or repr(exc)) from exc
        finally:
            resp.release()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ApiError(resp.status, "BadJSON", f"{path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ApiError(resp.status, "BadJSON", f"{path}: not an object")
        return data

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request_json("GET", path)

    async def list_page(self, path: str, limit: int, continue_: str | None) -> dict[str, Any]:
        query = [("limit", str(limit))]
        if continue_:
            query.append(("continue", continue_))
        return await self.request_json("GET", path, query)

    async def merge_patch_status(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request_json(
            "PATCH", path + "/status", body=dict(body), content_type="application/merge-patch+json"
        )

    async def open_watch(self, path: str, resource_version: str) -> aiohttp.ClientResponse:
        """Start a watch; returns once the server accepted it (status 200)."""
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self._settings.watch_timeout)),
        ]
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._settings.connect_timeout, sock_read=None
        )
        async with asyncio.timeout(self._settings.request_timeout):
            return await self._call("GET", path, query, timeout=timeout)

    @staticmethod
    async def events(
        resp: aiohttp.ClientResponse, inactivity: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield a watch's events; raise `TimeoutError` after `inactivity` s of silence.

        The stream ends normally when the server closes it (`timeoutSeconds`, restarts).
        """
        try:
            buf = b""
            while True:
                try:
                    async with asyncio.timeout(inactivity):
                        chunk = await resp.content.readany()
                except TimeoutError:
                    raise  # inactivity: the caller reopens the stream (TimeoutError is an OSError)
                except (aiohttp.ClientError, OSError) as exc:
                    raise ApiUnavailable(0, type(exc).__name__, str(exc) or repr(exc)) from exc
                if not chunk:
                    return
                buf += chunk
                if b"\n" not in chunk:
                    if len(buf) > MAX_WATCH_LINE:
                        raise ApiError(0, "LineTooLong", "watch line over 4 MiB")
                    continue
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError as exc:
                        raise ApiError(0, "BadJSON", f"watch line: {exc}") from exc
                    if isinstance(event, dict):
                        yield event
        finally:
            resp.close()
