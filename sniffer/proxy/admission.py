"""Admission: the walls between tenants, checked once per connection before the dial.

`Admission` keeps, per process, how many connections each tenant, backend and client
address holds, how many dials each backend has in flight, and a token bucket per
tenant and backend with a rate. `admit` runs once per routed connection (a handful of
dict probes), `release` once at close; nothing here is touched while bytes flow.

A pod's limits are split between its worker processes: worker i of n enforces
`limit // n` (plus one for the first `limit % n` workers), rates `rate / n`, so the
workers together never admit more than the pod's limit without sharing any state (the
kernel spreads connections over SO_REUSEPORT sockets by a hash of the 4-tuple, so each
worker sees about 1/n of every tenant's connections). This module never touches sockets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sniffer.routing.table import Backend, Limits, RouteTable

# Refusal reasons (the `reason` label of sniffer_refused_connections_total) and the
# `limit` label of sniffer_limited_connections_total that goes with each check.
TENANT_LIMIT = "tenant_limit"
BACKEND_LIMIT = "backend_limit"
CLIENT_LIMIT = "client_limit"
RATE_LIMITED = "rate_limited"
OVERLOADED = "overloaded"

Refusal = tuple[str, str]
"""(reason, limit): e.g. ("backend_limit", "max_pending_dials")."""

_UNLIMITED = -1


class TokenBucket:
    """`rate` tokens a second up to `burst`; starts full. One call per admission."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


@dataclass(slots=True)
class _Rule:
    """One tenant's or backend's limits, already cut to this worker's share."""

    max_connections: int
    bucket: TokenBucket | None
    max_pending_dials: int


def split(value: int, index: int, count: int) -> int:
    """Worker `index`'s share of an integer limit: the shares add up to `value`."""
    return value // count + (1 if index < value % count else 0)


class Admission:
    """Per-process admission state; `install` each new table."""

    __slots__ = (
        "_backend_rules",
        "_buckets",
        "_table",
        "_tenant_rules",
        "backend_active",
        "client_active",
        "client_max",
        "count",
        "index",
        "pending",
        "tenant_active",
    )

    def __init__(self, index: int = 0, count: int = 1) -> None:
        self.index = index
        self.count = max(1, count)
        self.tenant_active: dict[str, int] = {}
        self.backend_active: dict[str, int] = {}
        self.client_active: dict[tuple[str, str], int] = {}
        self.pending: dict[str, int] = {}
        """Dials in flight per backend."""
        self.client_max = _UNLIMITED
        self._table = RouteTable.empty()
        self._tenant_rules: dict[str, _Rule] = {}
        self._backend_rules: dict[str, _Rule] = {}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        """Kept across tables while a bucket's rate and burst stay the same, so an
        unrelated route change does not refill anyone's bucket."""

    def install(self, table: RouteTable) -> None:
        """Take limits from `table`. Rules are made lazily, on a tenant's or backend's
        first connection under this table: installing costs nothing per tenant."""
        self._table = table
        self._tenant_rules = {}
        self._backend_rules = {}
        if len(self._buckets) > 2 * len(table.backends) + 64:
            # Tenants and backends come and go for weeks: forget buckets of gone ones.
            live = {("backend", n) for n in table.backends}
            live.update(("tenant", b.tenant) for b in table.backends.values())
            self._buckets = {k: v for k, v in self._buckets.items() if k in live}
        client = table.limits.client.max_connections
        self.client_max = (
            _UNLIMITED if client is None else split(client, self.index, self.count)
        )

    def _rule(self, scope: str, name: str, lim: Limits) -> _Rule:
        n, i = self.count, self.index
        maxc = _UNLIMITED if lim.max_connections is None else split(lim.max_connections, i, n)
        pend = (
            _UNLIMITED if lim.max_pending_dials is None else split(lim.max_pending_dials, i, n)
        )
        bucket = None
        if lim.connections_per_second is not None:
            rate = lim.connections_per_second / n
            size = lim.burst if lim.burst is not None else lim.connections_per_second
            burst = max(1.0, size / n)
            key = (scope, name)
            bucket = self._buckets.get(key)
            if bucket is None or bucket.rate != rate or bucket.burst != burst:
                bucket = self._buckets[key] = TokenBucket(rate, burst)
        return _Rule(maxc, bucket, pend)

    def _tenant_rule(self, tenant: str) -> _Rule:
        rule = self._tenant_rules[tenant] = self._rule(
            "tenant", tenant, self._table.tenant_limit_set(tenant)
        )
        return rule

    def _backend_rule(self, backend: Backend) -> _Rule:
        lim = backend.limits.under(self._table.limits.backend)
        rule = self._backend_rules[backend.name] = self._rule("backend", backend.name, lim)
        return rule

    def admit(self, backend: Backend, client: tuple[str, str] | None) -> Refusal | None:
        """Check every limit for one new connection to `backend` from `client`
        ((listener, address)); on success count it (and its dial) and return None."""
        tenant = backend.tenant
        name = backend.name
        trule = self._tenant_rules.get(tenant) or self._tenant_rule(tenant)
        brule = self._backend_rules.get(name) or self._backend_rule(backend)
        if (
            client is not None
            and self.client_max != _UNLIMITED
            and self.client_active.get(client, 0) >= self.client_max
        ):
            return CLIENT_LIMIT, "client_max_connections"
        t_active = self.tenant_active.get(tenant, 0)
        if trule.max_connections != _UNLIMITED and t_active >= trule.max_connections:
            return TENANT_LIMIT, "tenant_max_connections"
        b_active = self.backend_active.get(name, 0)
        if brule.max_connections != _UNLIMITED and b_active >= brule.max_connections:
            return BACKEND_LIMIT, "backend_max_connections"
        pending = self.pending.get(name, 0)
        if brule.max_pending_dials != _UNLIMITED and pending >= brule.max_pending_dials:
            return BACKEND_LIMIT, "max_pending_dials"
        if trule.bucket is not None or brule.bucket is not None:
            now = time.monotonic()
            if trule.bucket is not None and not trule.bucket.take(now):
                return RATE_LIMITED, "tenant_connections_per_second"
            if brule.bucket is not None and not brule.bucket.take(now):
                return RATE_LIMITED, "backend_connections_per_second"
        self.tenant_active[tenant] = t_active + 1
        self.backend_active[name] = b_active + 1
        self.pending[name] = pending + 1
        if client is not None:
            self.client_active[client] = self.client_active.get(client, 0) + 1
        return None

    def dial_done(self, backend: Backend) -> None:
        """A dial admitted for `backend` connected, failed or was abandoned."""
        _drop(self.pending, backend.name)

    def release(self, backend: Backend, client: tuple[str, str] | None) -> None:
        """An admitted connection closed."""
        _drop(self.tenant_active, backend.tenant)
        _drop(self.backend_active, backend.name)
        if client is not None:
            _drop(self.client_active, client)


def _drop(counts: dict[str, int] | dict[tuple[str, str], int], key: object) -> None:
    """Count one down; forget keys at zero so the dicts hold only what is open now."""
    n = counts[key] - 1  # type: ignore[index]
    if n:
        counts[key] = n  # type: ignore[index]
    else:
        del counts[key]  # type: ignore[arg-type]
