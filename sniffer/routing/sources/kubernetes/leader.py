"""Leader election for the once-per-cluster work (status writes) with a `coordination.k8s.io` Lease.

This module owns one candidate's side of client-go's leaderelection protocol: read the
Lease; create it when absent; take it over only when its holder is empty or its record
has not changed for the record's `leaseDurationSeconds` as timed by this process's own
clock (never by comparing timestamps written by another node's clock); renew it every
`retry_period` while held; stop leading as soon as `renew_deadline` has passed since the
last successful renewal began, which is before anyone else may take over; and release it
(holder cleared) when cancelled, so a pod stopped with SIGTERM hands over within one retry
period. Every write is a PUT carrying the resourceVersion read, so of two candidates
racing for the same record exactly one wins (the other gets 409 Conflict). It must never
write any object but its own Lease, and never decide what is written under leadership.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sniffer.observe import metrics
from sniffer.routing.sources.kubernetes.api import ApiError, Conflict, KubeApi, NotFound
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings

log = logging.getLogger("sniffer.kubernetes.leader")

LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
LEASE_RBAC_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("coordination.k8s.io", "leases", ("get", "create", "update")),
)
"""(api_group, resource, verbs) of the namespaced Role in sniffer's own namespace."""


def _micro_time(at: float | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    stamp = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(spec: Any) -> tuple[str, int, str, str, int]:
    """The fields of a Lease spec that make up client-go's LeaderElectionRecord."""
    spec = spec if isinstance(spec, dict) else {}
    duration = spec.get("leaseDurationSeconds")
    transitions = spec.get("leaseTransitions")
    return (
        str(spec.get("holderIdentity") or ""),
        duration if isinstance(duration, int) and duration > 0 else 0,
        str(spec.get("acquireTime") or ""),
        str(spec.get("renewTime") or ""),
        transitions if isinstance(transitions, int) and transitions >= 0 else 0,
    )


class LeaderElector:
    """One candidate for the status Lease; `is_leader` is what writers check before a write."""

    def __init__(
        self,
        api: KubeApi,
        settings: KubernetesSettings,
        namespace: str,
        identity: str,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        # where the Lease lives and who we are
        self._api = api
        self._settings = settings
        self.namespace = namespace
        self.identity = identity
        self._collection = LEASE_PATH.format(namespace=namespace)
        self._path = f"{self._collection}/{settings.lease_name}"
        self._on_change = on_change
        # what we last saw of the Lease, and when (by our own monotonic clock)
        self._observed: tuple[str, int, str, str, int] | None = None
        self._observed_at = 0.0
        # our leadership
        self._leading = False
        self._renew_started = 0.0
        """Monotonic time at which the last successful acquire/renew request was sent."""
        self.holder = ""
        self.transitions = 0
        self.last_error: str | None = None
        metrics.LEADER.set(0)

    @property
    def is_leader(self) -> bool:
        """True only while a renewal sent less than `renew_deadline` s ago succeeded."""
        return self._leading and (
            time.monotonic() - self._renew_started < self._settings.renew_deadline
        )

    def health(self) -> dict[str, object]:
        return {
            "identity": self.identity,
            "lease": f"{self.namespace}/{self._settings.lease_name}",
            "leader": self.is_leader,
            "holder": self.holder,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        """Acquire, renew while held, retry; release the Lease when cancelled."""
        try:
            while True:
                await self._attempt()
                if self._leading and not self.is_leader:
                    log.warning(
                        "leader election: could not renew Lease %s/%s within %.0fs; stepping down",
                        self.namespace,
                        self._settings.lease_name,
                        self._settings.renew_deadline,
                    )
                    self._set_leading(False)
                await asyncio.sleep(self._next_delay())
        finally:
            if self._leading:
                await self._release()

    def _next_delay(self) -> float:
        # A little jitter keeps candidates that started together from polling in lockstep;
        # never more than the period, so a released Lease is taken within one period.
        period = self._settings.retry_period
        return period * random.uniform(0.8, 1.0)

    async def _attempt(self) -> None:
        started = time.monotonic()
        try:
            acquired = await self._try_acquire_or_renew(started)
        except ApiError as exc:
            if str(exc) != self.last_error:  # once per distinct error, not every retry
                log.warning("leader election: Lease %s: %s", self._path, exc)
            self.last_error = str(exc)
            return
        self.last_error = None
        if acquired:
            self._renew_started = started
            if not self._leading:
                log.info(
                    "leader election: %s now holds Lease %s/%s; writing status",
                    self.identity,
                    self.namespace,
                    self._settings.lease_name,
                )
                self._set_leading(True)
        elif self._leading:
            log.warning("leader election: %s lost the Lease to %s", self.identity, self.holder)
            self._set_leading(False)

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        metrics.LEADER.set(1 if leading else 0)
        if self._on_change is not None:
            self._on_change(leading)

    def _spec(self, acquire_time: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self._settings.lease_duration)),
            "acquireTime": acquire_time,
            "renewTime": _micro_time(),
            "leaseTransitions": transitions,
        }

    async def _try_acquire_or_renew(self, now: float) -> bool:
        try:
            lease = await self._api.get(self._path)
        except NotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self._settings.lease_name, "namespace": self.namespace},
                "spec": self._spec(_micro_time(), 0),
            }
            try:
                await self._api.create(self._collection, body)
            except Conflict:  # AlreadyExists: another candidate created it first
                return False
            self.holder = self.identity
            return True
        record = _record(lease.get("spec"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder, duration, acquire_time, _, transitions = record
        self.holder = holder
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # held, and renewed within its duration as far as we can see
        if holder != self.identity:
            acquire_time, transitions = _micro_time(), transitions + 1
        lease["spec"] = self._spec(acquire_time, transitions)
        try:
            updated = await self._api.replace(self._path, lease)
        except Conflict:
            return False  # someone else wrote it since our read
        self._observed, self._observed_at = _record(updated.get("spec")), now
        self.holder = self.identity
        return True

    async def _release(self) -> None:
        """Clear the holder so a standby takes over at its next retry (client-go's
        ReleaseOnCancel); bounded, since it runs while the process stops."""
        self._set_leading(False)
        try:
            async with asyncio.timeout(max(1.0, self._settings.retry_period)):
                lease = await self._api.get(self._path)
                holder, _, _, _, transitions = _record(lease.get("spec"))
                if holder != self.identity:
                    return
                now = _micro_time()
                lease["spec"] = {
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": transitions,
                }
                await self._api.replace(self._path, lease)
            log.info(
                "leader election: released Lease %s/%s", self.namespace, self._settings.lease_name
            )
        except (ApiError, TimeoutError) as exc:
            log.warning("leader election: could not release the Lease: %s", exc)
