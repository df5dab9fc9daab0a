"""A thin JSON client of the Kubernetes API, on the small HTTP client of `http1.py`.

kubernetes-asyncio interprets kubeconfigs (in a child process, see `credentials.py`);
this module sends the few calls the source makes and reads the bodies itself, because
deserialising every list item into model objects is exactly the cost (time and memory)
sniffer exists to avoid, and because importing the generated client alone costs ~40 MiB.
It owns the API error hierarchy (mapped from HTTP status, as kopf does), the one retry
after a 401 with renewed credentials, and outage recovery: while callers back off after
the server went away, one probe asks it every `probe_interval` s, and the first answer
(or any successful call) wakes them all, however long their backoff had grown. It must
never cache objects, decide anything about routing, or call an endpoint outside
`kinds.RBAC_RULES` and `leader.LEASE_RBAC_RULES` (besides discovery).
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

from sniffer.routing.sources.kubernetes.credentials import (
    Credentials,
    CredentialsError,
    CredentialStore,
)
from sniffer.routing.sources.kubernetes.http1 import Client, HttpError, Response
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings

# Watch lines are single JSON objects; etcd caps one object at 1.5 MiB, so a line that
# grows past 4 MiB is a broken stream, not a big object, and must not eat memory.
MAX_WATCH_LINE = 4 * 1024 * 1024

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class Backoff:
    """Exponential backoff with full jitter (AWS style): concurrent retries spread out.

    Waited with `KubeApi.back_off`, which ends it early when the server comes back."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return random.uniform(ceiling / 2, ceiling)


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


def decode_json(raw: bytes, path: str, status: int = 200) -> dict[str, Any]:
    """A successful answer's body as a JSON object (`path` names the call in the error)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiError(status, "BadJSON", f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(status, "BadJSON", f"{path}: not an object")
    return data


class KubeApi:
    """The calls the source makes: discovery, list pages, watch streams, status patches."""

    def __init__(self, store: CredentialStore, settings: KubernetesSettings) -> None:
        self._store = store
        self._settings = settings
        self._session: Client | None = None
        self._ssl: ssl.SSLContext | None = None
        self._session_generation = -1
        self._tls_of: Credentials = store.current
        # outage recovery (see `back_off`)
        self._down = False
        """A call failed as if the server were away (unreachable, 5xx, 429) and none has
        succeeded since."""
        self._recovered = asyncio.Event()
        self._pausing = 0
        self._probe: asyncio.Task[None] | None = None
        self.recoveries = 0

    @classmethod
    async def connect(cls, settings: KubernetesSettings) -> KubeApi:
        """Load the kubeconfig (or in-cluster credentials); no request yet."""
        try:
            store = await CredentialStore.open(settings.kubeconfig)
        except CredentialsError as exc:
            raise ApiUnavailable(0, "Credentials", str(exc)) from exc
        return cls(store, settings)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._session is not None:
            self._session.close()
            self._session = None

    def _client(self) -> Client:
        """The session for the current credentials (rebuilt when their TLS part changed)."""
        store = self._store
        if self._session is not None and self._session_generation == store.generation:
            return self._session
        creds = store.current
        if self._session is None or self._ssl is None or not self._tls_of.same_tls(creds):
            old = self._session
            self._ssl = creds.ssl_context()
            # One connection per watch stream plus a few for lists and status writes;
            # no pool-wide cap, since a queued watch would silently never start.
            self._session = Client(self._ssl, self._settings.connect_timeout)
            if old is not None:
                old.close()
        self._tls_of = creds
        self._session_generation = store.generation
        assert self._session is not None
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | None = -1.0,
    ) -> Response:
        """Send a request and read the response's head (within `timeout` s: the request
        timeout by default, None for a watch); an error status raises its `ApiError`."""
        if timeout is not None and timeout < 0:
            timeout = self._settings.request_timeout
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        store = self._store
        if store.expiring():
            await store.renew(store.generation)
        for attempt in (1, 2):
            generation = store.generation
            session = self._client()
            creds = store.current
            headers = {"Accept": "application/json"}
            if content_type:
                headers["Content-Type"] = content_type
            auth = store.authorization()
            if auth:
                headers["Authorization"] = auth
            try:
                async with asyncio.timeout(timeout):
                    resp = await session.request(
                        method,
                        creds.host + path,
                        params=query or None,
                        data=data,
                        headers=headers,
                        proxy=creds.proxy,
                        server_hostname=creds.server_name,
                    )
            except (HttpError, OSError, TimeoutError) as exc:
                self._mark_down()
                raise ApiUnavailable(0, type(exc).__name__, str(exc) or repr(exc)) from exc
            if resp.status < 400:
                self._mark_up()
                return resp
            if resp.status >= 500 or resp.status == 429:
                self._mark_down()
            try:
                async with asyncio.timeout(self._settings.request_timeout):
                    raw = await resp.read()
                payload: Any = json.loads(raw) if raw else None
            except (ValueError, HttpError, OSError, TimeoutError, asyncio.IncompleteReadError):
                payload = None
            finally:
                resp.release()
            # A 401 (not 403: that is RBAC) may mean an exec plugin's or a bound token
            # expired: load the credentials again and retry once.
            if resp.status == 401 and attempt == 1 and await store.renew(generation):
                continue
            raise error_from(resp.status, payload)
        raise AssertionError("unreachable")

    # -- outage recovery -----------------------------------------------------------------

    async def back_off(self, backoff: Backoff) -> None:
        """Wait `backoff`'s next delay after an error, or less: woken early because the
        server answers again after an outage, reset `backoff` (the next error starts small)."""
        self._pausing += 1
        recovered = self._recovered
        self._ensure_probe()
        try:
            async with asyncio.timeout(backoff.next_delay()):
                await recovered.wait()
            backoff.reset()
        except TimeoutError:
            pass
        finally:
            self._pausing -= 1

    def _mark_down(self) -> None:
        self._down = True
        self._ensure_probe()

    def _mark_up(self) -> None:
        if self._down:
            self._down = False
            self.recoveries += 1
            self._recovered.set()
            self._recovered = asyncio.Event()

    def _ensure_probe(self) -> None:
        if self._down and self._pausing and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        """One cheap discovery call per interval while the server is away and callers
        wait: a fixed small load, whatever the callers' backoffs have grown to."""
        interval = self._settings.probe_interval
        timeout = max(1.0, 2 * interval)
        while self._down and self._pausing:
            await asyncio.sleep(interval)
            if not (self._down and self._pausing):
                break
            try:
                resp = await self._call("GET", "/api", timeout=timeout)
                resp.release()
            except ApiError:
                # A restarting server answers 403 until its authorizer has loaded: that
                # is still the outage, not a recovery.
                self._down = True

    # -- calls -----------------------------------------------------------------------------

    async def request_json(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        status, raw = await self.request_body(method, path, query, body, content_type)
        return decode_json(raw, path, status)

    async def request_body(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> tuple[int, bytes]:
        """The status and body of a successful answer, undecoded."""
        resp = await self._call(method, path, query, body, content_type)
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                return resp.status, await resp.read()
        except (HttpError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise ApiUnavailable(0, type(exc).__name__, str(exc) or repr(exc)) from exc
        finally:
            resp.release()

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request_json("GET", path)

    async def list_page(self, path: str, limit: int, continue_: str | None) -> dict[str, Any]:
        return decode_json(await self.list_page_body(path, limit, continue_), path)

    async def list_page_body(self, path: str, limit: int, continue_: str | None) -> bytes:
        """One list page's body, undecoded (see `pages` and `decode_json`)."""
        query = [("limit", str(limit))]
        if continue_:
            query.append(("continue", continue_))
        return (await self.request_body("GET", path, query))[1]

    # A body must carry its media type: the real API server answers 415 to aiohttp's
    # default for bytes (application/octet-stream).
    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request_json("POST", path, body=dict(body), content_type=JSON)

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the whole object; its `metadata.resourceVersion` makes it conditional."""
        return await self.request_json("PUT", path, body=dict(body), content_type=JSON)

    async def merge_patch_status(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request_json(
            "PATCH", path + "/status", body=dict(body), content_type=MERGE_PATCH
        )

    async def open_watch(self, path: str, resource_version: str) -> Response:
        """Start a watch; returns once the server accepted it (status 200)."""
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self._settings.watch_timeout)),
        ]
        async with asyncio.timeout(self._settings.request_timeout):
            return await self._call("GET", path, query, timeout=None)

    @staticmethod
    async def events(resp: Response, inactivity: float) -> AsyncIterator[dict[str, Any]]:
        """Yield a watch's events; raise `TimeoutError` after `inactivity` s of silence.

        The stream ends normally when the server closes it (`timeoutSeconds`, restarts).
        """
        try:
            buf = b""
            while True:
                try:
                    async with asyncio.timeout(inactivity):
                        chunk = await resp.readany()
                except TimeoutError:
                    raise  # inactivity: the caller reopens the stream (TimeoutError is an OSError)
                except (HttpError, OSError, asyncio.IncompleteReadError) as exc:
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
