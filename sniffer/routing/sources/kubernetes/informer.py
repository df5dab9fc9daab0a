"""One informer: list a kind (paginated), then watch it from the list's resourceVersion.

The informer owns the cache of one kind's records (namespace -> name -> record) and the
list/watch life cycle: bookmarks advance the resourceVersion, a 410 Gone (as an HTTP
status or an ERROR event) clears nothing but re-lists and diffs, an inactivity timeout
re-armed on every event reopens a silently dead stream, and errors back off with jitter
while the cache keeps serving (the backoff ends early when the API server answers again
after an outage, see `KubeApi.back_off`). It reports what changed as "namespace N is
dirty" (and, for kinds with a status, "only the generation or status of an object in
namespace N changed", which only the status writer cares about), and never translates
records to routes, builds tables or holds raw objects past one event.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from itertools import groupby
from operator import itemgetter
from typing import Any, Generic, TypeVar

from sniffer.observe import metrics
from sniffer.routing.sources.kubernetes.api import (
    ApiError,
    Backoff,
    Gone,
    KubeApi,
    decode_json,
    error_from,
)
from sniffer.routing.sources.kubernetes.fields import JSON, MalformedObject
from sniffer.routing.sources.kubernetes.kinds import Kind
from sniffer.routing.sources.kubernetes.pages import PageDecoder
from sniffer.routing.sources.kubernetes.parsers import object_key
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings

log = logging.getLogger("sniffer.kubernetes")

OnChange = Callable[[Kind, str, float], None]
"""Called with (kind, namespace, monotonic time of the event) when a record changed."""

OnStatus = Callable[[Kind, str], None]
"""Called with (kind, namespace) when only what records compare without changed: an
object's `generation` or `status_sig` (its status was written, by us or someone else)."""

R = TypeVar("R")
"""The record type of one kind (see `records`)."""

Store = dict[str, MutableMapping[str, R]]


def _status_key(rec: object) -> tuple[object, object]:
    """What status planning reads of a record that record equality leaves out."""
    return getattr(rec, "generation", None), getattr(rec, "status_sig", None)


def _status_differs(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Two equal buckets (same names, equal records) whose generation or status differ."""
    return any(_status_key(rec) != _status_key(old[name]) for name, rec in new.items())


class Informer(Generic[R]):
    """List+watch of one kind (optionally one namespace) into a record cache."""

    def __init__(
        self,
        api: KubeApi,
        kind: Kind,
        version: str,
        parse: Callable[[JSON], R],
        settings: KubernetesSettings,
        on_change: OnChange,
        namespace: str | None = None,
        on_state: Callable[[], None] | None = None,
        bucket: Callable[[], MutableMapping[str, R]] = dict,
        on_status: OnStatus | None = None,
        pages: PageDecoder[R] | None = None,
    ) -> None:
        # what to watch
        self.api = api
        self.kind = kind
        self.version = version
        self.namespace = namespace
        self.path = kind.path(version, namespace)
        self._parse = parse
        self._settings = settings
        self._on_change = on_change
        self._on_state = on_state
        self._on_status = on_status
        """For kinds with a status (else None): see `OnStatus`."""
        self._new_bucket = bucket
        """Makes one namespace's name -> record mapping (a dict, or `SliceBucket`)."""
        self._pages = pages
        """Typed decoder of whole list pages (see `pages`), for the numerous kinds; a page
        it is unsure of (None) is decoded as JSON and parsed object by object."""
        # the cache and where the stream stands
        self.store: Store[R] = {}
        self.count = 0
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.problems: dict[tuple[str, str], str] = {}
        # health, for /readyz detail and metrics
        self.state = "starting"
        self.up = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_event_at: float | None = None
        self.relists = 0
        self.errors = 0
        self._event_counters: dict[str, Any] = {}
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max)

    # -- reading the cache -------------------------------------------------------------

    def health(self) -> dict[str, object]:
        return {
            "state": self.state,
            "up": self.up,
            "synced": self.synced.is_set(),
            "version": self.version,
            "resource_version": self.resource_version,
            "objects": self.count,
            "relists": self.relists,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_error_age_seconds": (
                None
                if self.last_error_at is None
                else round(time.monotonic() - self.last_error_at, 3)
            ),
            "last_event_age_seconds": (
                None
                if self.last_event_at is None
                else round(time.monotonic() - self.last_event_at, 3)
            ),
        }

    # -- life cycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch forever; only cancellation ends it."""
        need_list, reason = True, "initial"
        try:
            while True:
                try:
                    if need_list:
                        await self.list_all(reason)
                        need_list = False
                    started = time.monotonic()
                    events = await self._watch()
                    if events:
                        self._backoff.reset()
                    elif time.monotonic() - started < 1.0:
                        # A server that closes every stream at once must not become a
                        # hot loop of reconnects.
                        await self._sleep_backoff()
                except Gone as exc:
                    log.info("%s: %s; re-listing", self.kind.name, exc.message or "410 Gone")
                    need_list, reason = True, "gone"
                except TimeoutError:
                    self._error("no event or bookmark within the inactivity timeout")
                    log.warning(
                        "%s: watch silent for %.0fs; reopening from resourceVersion %s",
                        self.kind.name,
                        self._settings.inactivity_timeout,
                        self.resource_version,
                    )
                except ApiError as exc:
                    self._error(str(exc))
                    log.warning("%s: %s (%s); backing off", self.kind.name, exc, self.state)
                    if not self.resource_version:
                        need_list, reason = True, "error"
                    await self._sleep_backoff()
        finally:
            self._set_up(False)
            self.state = "stopped"

    def _error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        self.last_error_at = time.monotonic()
        metrics.WATCH_ERRORS.labels(self.kind.name).inc()
        self._set_up(False)

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            metrics.WATCH_UP.labels(self.kind.name).set(1 if up else 0)
            self._state()
        elif not up:
            self._state()

    def _state(self) -> None:
        if self._on_state is not None:
            self._on_state()

    async def _sleep_backoff(self) -> None:
        self.state = "backoff"
        self._state()
        await self.api.back_off(self._backoff)

    async def list_all(self, reason: str) -> None:
        """List every page, swap the cache in, report namespaces that differ."""
        self.state = "listing"
        self.relists += 1
        metrics.WATCH_RELISTS.labels(self.kind.name, reason).inc()
        new: Store[R] = {}
        problems: dict[tuple[str, str], str] = {}
        count = 0
        continue_: str | None = None
        rv = ""
        kind = self.kind
        size = self._settings.page_size
        fetch: asyncio.Future[bytes] | None = None
        try:
            while True:
                if fetch is None:
                    body = await self.api.list_page_body(self.path, size, continue_)
                else:
                    body, fetch = await fetch, None
                typed = self._pages(body) if self._pages is not None else None
                page: JSON | None = None
                if typed is not None:
                    page_rv, continue_ = typed.resource_version, typed.continue_
                else:
                    page = decode_json(body, self.path)
                    meta = page.get("metadata") or {}
                    page_rv = str(meta.get("resourceVersion") or "")
                    continue_ = meta.get("continue") or None
                if continue_:
                    # The next page is asked for now: the server makes it while this
                    # one is read into records.
                    fetch = asyncio.ensure_future(
                        self.api.list_page_body(self.path, size, continue_)
                    )
                entries = typed.entries() if typed is not None else None
                if entries is not None:
                    intern = sys.intern if kind.shared_names else str
                    keyed_all = [
                        (kind.bucket(ns, name), intern(name), rec) for ns, name, rec in entries
                    ]
                else:
                    if page is None:
                        page = decode_json(body, self.path)
                    keyed_all = []
                    for obj in page.get("items") or ():
                        keyed = self._record(obj, problems)
                        if keyed is not None:
                            keyed_all.append(keyed)
                del body, typed, page, entries
                rv = page_rv or rv
                # A page is in namespace order: each namespace's run is set at once.
                for ns, run in groupby(keyed_all, itemgetter(0)):
                    bucket = new.get(ns)
                    if bucket is None:
                        bucket = new[ns] = self._new_bucket()
                    before = len(bucket)
                    bucket.update((name, rec) for _, name, rec in run)
                    count += len(bucket) - before
                del keyed_all
                if not continue_:
                    break
        finally:
            if fetch is not None:
                fetch.cancel()
                # Its error, if it ended with one before the cancel, is not news.
                fetch.add_done_callback(lambda f: f.cancelled() or f.exception())
        old = self.store
        self.store = new
        self.problems = problems
        metrics.OBJECTS_CACHED.labels(self.kind.name).inc(count - self.count)
        self.count = count
        self.resource_version = rv
        now = time.monotonic()
        if self.synced.is_set():
            for ns in old.keys() | new.keys():
                was, now_ = old.get(ns), new.get(ns)
                if was != now_:
                    self._on_change(self.kind, ns, now)
                elif (
                    self._on_status is not None
                    and was is not None
                    and now_ is not None
                    and _status_differs(was, now_)
                ):
                    self._on_status(self.kind, ns)
        self.synced.set()
        self._backoff.reset()
        self._state()

    async def _watch(self) -> int:
        self.state = "watching"
        events = 0
        resp = await self.api.open_watch(self.path, self.resource_version)
        self._set_up(True)
        async for event in self.api.events(resp, self._settings.inactivity_timeout):
            events += 1
            self._apply(event)
        return events

    def _apply(self, event: Mapping[str, Any]) -> None:
        now = time.monotonic()
        self.last_event_at = now
        etype = str(event.get("type") or "")
        counter = self._event_counters.get(etype)
        if counter is None:
            counter = self._event_counters[etype] = metrics.WATCH_EVENTS.labels(
                self.kind.name, etype
            )
        counter.inc()
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            raise ApiError(0, "BadEvent", f"{etype} event without an object")
        if etype == "ERROR":
            raise error_from(int(obj.get("code") or 500), obj)
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if etype == "BOOKMARK":
            if rv:
                self.resource_version = str(rv)
            return
        name = str(meta.get("name") or "")
        ns = self.kind.bucket(sys.intern(str(meta.get("namespace") or "")), name)
        if etype in ("ADDED", "MODIFIED"):
            keyed = self._record(obj, self.problems)
            if keyed is None:
                self._remove(ns, name, now)
            else:
                self.problems.pop((ns, name), None)
                self._put(*keyed, now)
        elif etype == "DELETED":
            self.problems.pop((ns, name), None)
            self._remove(ns, name, now)
        if rv:
            self.resource_version = str(rv)

    def _record(self, obj: JSON, problems: dict[tuple[str, str], str]) -> tuple[str, str, R] | None:
        """(namespace, name, record) of a raw object, or None (and a problem) if malformed."""
        try:
            rec = self._parse(obj)
            ns, name = object_key(obj)
            ns = self.kind.bucket(ns, name)
            return ns, sys.intern(name) if self.kind.shared_names else name, rec
        except (MalformedObject, ValueError, TypeError, KeyError, AttributeError) as exc:
            meta = obj.get("metadata") if isinstance(obj, Mapping) else None
            meta = meta if isinstance(meta, Mapping) else {}
            ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "?")
            message = f"{self.kind.name} {ns + '/' if ns else ''}{name}: {exc}; ignored"
            problems[(ns, name)] = message
            log.warning("%s", message)
            return None

    def _put(self, ns: str, name: str, rec: R, now: float) -> None:
        bucket = self.store.get(ns)
        if bucket is None:
            bucket = self.store[ns] = self._new_bucket()
        old = bucket.get(name)
        bucket[name] = rec
        if old is None:
            self.count += 1
            metrics.OBJECTS_CACHED.labels(self.kind.name).inc()
        if old != rec:
            self._on_change(self.kind, ns, now)
        elif self._on_status is not None and _status_key(old) != _status_key(rec):
            self._on_status(self.kind, ns)

    def _remove(self, ns: str, name: str, now: float) -> None:
        bucket = self.store.get(ns)
        if bucket is None or name not in bucket:
            return
        del bucket[name]
        if not bucket:
            del self.store[ns]
        self.count -= 1
        metrics.OBJECTS_CACHED.labels(self.kind.name).dec()
        self._on_change(self.kind, ns, now)
