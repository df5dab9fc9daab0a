"""Route sources: where a `TableSpec` comes from (a routes file, the Kubernetes API).

A source runs as one long-lived task in the control process and calls `publish` with a
complete `TableSpec` each time its view changes (already debounced by the source).
It never touches sockets of the data plane and never builds `RouteTable`s itself: the
`RouteController` merges every source's latest spec and builds the one table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sniffer.routing.model import Conflict
from sniffer.routing.table import TableSpec


@dataclass(frozen=True, slots=True)
class Update:
    spec: TableSpec
    oldest_event: float | None = None
    """`time.monotonic()` of the oldest change folded into this spec (for update lag)."""


Publish = Callable[[Update], tuple[Conflict, ...] | None]
"""Hand a spec to the controller; returns the conflicts of the table it built from it
(what a source reports on its objects, e.g. Gateway API `HostnameConflict`), or None
from a publisher that builds no table."""


class RouteSource(Protocol):
    name: str
    """Short label for logs, metrics and `/readyz` (e.g. "file", "kubernetes")."""

    @property
    def synced(self) -> bool:
        """True once the first complete view has been published."""

    def health(self) -> dict[str, object]:
        """Detail for `/readyz`: per-watch state, last error, and so on."""

    async def run(self, publish: Publish) -> None:
        """Publish the first view, then every change, until cancelled."""
