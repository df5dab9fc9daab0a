"""Admission: the walls between tenants, checked once per connection before the dial.

`Admission` keeps, per process, how many connections each tenant, backend and client
address holds, how many dials each backend has in flight, and a token bucket per
tenant and backend with a rate. A routed connection takes its backend's `Ticket` (one dict
probe), `check`s it (a few attribute compares and adds), and gives its counts back at
close; nothing here is touched while bytes flow.

A pod's limits are split between its worker processes: worker i of n enforces
`limit // n` (plus one for the first `limit % n` workers), rates `rate / n`, so the
workers together never admit more than the pod's limit without sharing any state (the
kernel spreads connections over SO_REUSEPORT sockets by a hash of the 4-tuple, so each
worker sees about 1/n of every tenant's connections). This module never touches sockets.
"""

from __future__ import annotations

import time
from typing import Protocol

from sniffer.observe.counting import count
from sniffer.routing.table import Backend, Limits, Listener, RouteTable

# Refusal reasons (the `reason` label of sniffer_refused_connections_total) and the
# `limit` label of sniffer_limited_connections_total that goes with each check.
TENANT_LIMIT = "tenant_limit"
BACKEND_LIMIT = "backend_limit"
CLIENT_LIMIT = "client_limit"
RATE_LIMITED = "rate_limited"
OVERLOADED = "overloaded"

Refusal = tuple[str, str]
"""(reason, limit): e.g. ("backend_limit", "max_pending_dials")."""

_FAR = float("inf")
"""The maximum of what has no limit: every count is below it."""


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


class _Count:
    """What one tenant or backend holds in this process; outlives tables."""

    __slots__ = ("active", "pending")

    def __init__(self) -> None:
        self.active = 0
        self.pending = 0
        """Dials in flight (backends only)."""


class Ticket:
    """A backend's limits under one table, cut to this worker's share, with the counts
    they are checked against; an admitted connection holds it until it closes."""

    __slots__ = (
        "backend",
        "backend_bucket",
        "backend_max",
        "pending_max",
        "tenant",
        "tenant_bucket",
        "tenant_max",
    )

    def __init__(
        self,
        tenant: _Count,
        backend: _Count,
        tenant_lim: tuple[float, TokenBucket | None],
        backend_lim: tuple[float, TokenBucket | None],
        pending_max: float,
    ) -> None:
        self.tenant = tenant
        self.backend = backend
        self.tenant_max, self.tenant_bucket = tenant_lim
        self.backend_max, self.backend_bucket = backend_lim
        self.pending_max = pending_max

    def check(self) -> Refusal | None:
        """Every tenant and backend limit for one new connection; on success it counts."""
        tenant, backend = self.tenant, self.backend
        if tenant.active >= self.tenant_max:
            return TENANT_LIMIT, "tenant_max_connections"
        if backend.active >= self.backend_max:
            return BACKEND_LIMIT, "backend_max_connections"
        if backend.pending >= self.pending_max:
            return BACKEND_LIMIT, "max_pending_dials"
        tb, bb = self.tenant_bucket, self.backend_bucket
        if tb is not None or bb is not None:
            now = time.monotonic()
            if tb is not None and not tb.take(now):
                return RATE_LIMITED, "tenant_connections_per_second"
            if bb is not None and not bb.take(now):
                return RATE_LIMITED, "backend_connections_per_second"
        tenant.active += 1
        backend.active += 1
        backend.pending += 1
        return None


def split(value: int, index: int, count: int) -> int:
    """Worker `index`'s share of an integer limit: the shares add up to `value`."""
    return value // count + (1 if index < value % count else 0)


class Admission:
    """Per-process admission state; `install` each new table."""

    __slots__ = (
        "_buckets",
        "_table",
        "_tickets",
        "backends",
        "client_active",
        "client_max",
        "count",
        "index",
        "tenants",
    )

    def __init__(self, index: int = 0, count: int = 1) -> None:
        self.index = index
        self.count = max(1, count)
        self.tenants: dict[str, _Count] = {}
        self.backends: dict[str, _Count] = {}
        self.client_active: dict[tuple[str, str], int] = {}
        """Open connections per (listener, client address); kept only while a client
        limit is set (a limit set later counts the connections opened from then on)."""
        self.client_max: float = _FAR
        self._table = RouteTable.empty()
        self._tickets: dict[str, Ticket] = {}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        """Kept across tables while a bucket's rate and burst stay the same, so an
        unrelated route change does not refill anyone's bucket."""

    def install(self, table: RouteTable) -> None:
        """Take limits from `table`. Tickets are made lazily, on a backend's first
        connection under this table: installing costs nothing per tenant."""
        self._table = table
        self._tickets = {}
        client = table.limits.client.max_connections
        self.client_max = _FAR if client is None else split(client, self.index, self.count)
        if client is None:
            self.client_active.clear()
        if len(self._buckets) + len(self.tenants) + len(self.backends) > (
            4 * len(table.backends) + 64
        ):
            self._forget(table)

    def _forget(self, table: RouteTable) -> None:
        """Tenants and backends come and go for weeks: drop state of gone idle ones."""
        names = set(table.backends)
        tenants = {b.tenant for b in table.backends.values()}
        self.tenants = {k: c for k, c in self.tenants.items() if k in tenants or c.active}
        self.backends = {
            k: c for k, c in self.backends.items() if k in names or c.active or c.pending
        }
        self._buckets = {
            k: v
            for k, v in self._buckets.items()
            if (k[1] in tenants if k[0] == "tenant" else k[1] in names)
        }

    def _share(self, scope: str, name: str, lim: Limits) -> tuple[float, TokenBucket | None]:
        n, i = self.count, self.index
        maxc = _FAR if lim.max_connections is None else split(lim.max_connections, i, n)
        bucket = None
        if lim.connections_per_second is not None:
            rate = lim.connections_per_second / n
            size = lim.burst if lim.burst is not None else lim.connections_per_second
            burst = max(1.0, size / n)
            key = (scope, name)
            bucket = self._buckets.get(key)
            if bucket is None or bucket.rate != rate or bucket.burst != burst:
                bucket = self._buckets[key] = TokenBucket(rate, burst)
        return maxc, bucket

    def ticket(self, backend: Backend) -> Ticket:
        """The backend's ticket under the current table (made on first use)."""
        t = self._tickets.get(backend.name)
        if t is not None:
            return t
        table = self._table
        blim = backend.limits.under(table.limits.backend)
        pend = blim.max_pending_dials
        tenant = self.tenants.get(backend.tenant)
        if tenant is None:
            tenant = self.tenants[backend.tenant] = _Count()
        bcount = self.backends.get(backend.name)
        if bcount is None:
            bcount = self.backends[backend.name] = _Count()
        t = self._tickets[backend.name] = Ticket(
            tenant,
            bcount,
            self._share("tenant", backend.tenant, table.tenant_limit_set(backend.tenant)),
            self._share("backend", backend.name, blim),
            _FAR if pend is None else split(pend, self.index, self.count),
        )
        return t

    def admit(self, conn: Holder, backend: Backend) -> Refusal | None:
        """Check every limit for `conn`'s new connection to `backend`: None and the
        connection holds its counts (and one dial slot) until `release`, or a refusal."""
        client = None
        if self.client_max != _FAR:
            addr = conn.client_addr
            if addr is not None:
                client = (conn.listener.name, addr[0])
                if self.client_active.get(client, 0) >= self.client_max:
                    return CLIENT_LIMIT, "client_max_connections"
        ticket = self._tickets.get(backend.name) or self.ticket(backend)
        refusal = ticket.check()
        if refusal is None:
            conn.ticket = ticket
            conn.dial_held = True
            if client is not None:
                count(self.client_active, client)
                conn.client_key = client
        return refusal

    def release(self, conn: Holder) -> None:
        """An admitted connection closed (or was refused after all): give back its counts."""
        ticket = conn.ticket
        if ticket is None:
            return
        conn.ticket = None
        ticket.tenant.active -= 1
        ticket.backend.active -= 1
        if conn.dial_held:
            conn.dial_held = False
            ticket.backend.pending -= 1
        key = conn.client_key
        if key is not None:
            conn.client_key = None
            n = self.client_active.get(key, 0) - 1
            if n > 0:
                self.client_active[key] = n
            else:
                self.client_active.pop(key, None)


class Holder(Protocol):
    """What admission needs of a connection: its client and what it holds."""

    client_addr: tuple[str, int] | None
    listener: Listener
    ticket: Ticket | None
    dial_held: bool
    client_key: tuple[str, str] | None
