"""Routes from the Kubernetes API: Ingresses and Gateway API TLSRoutes of sniffer's classes.

The package owns everything between the API server and a `TableSpec`, in layers:
- the API: settings (`settings`), the kinds and their RBAC (`kinds`), a raw-JSON client
  (`api`), the records kept of each object (`records`), decoding (`fields`, `parsers`,
  and `pages` for the big list pages) and status signatures (`signatures`);
- the caches: informers (`informer`), discovery and the typed view over them (`watches`,
  `view`);
- the translation, by API family: Services (`services`), Ingress (`ingress`), Gateway API
  (`gateway`), their results (`outcomes`) and the assembly (`translate`);
- the writes: wished-for status (`desired`), the status writer (`status`) and its Lease
  (`leader`); and the source itself (`source`).
It must never build the data plane's `RouteTable`, update the controller's rebuild/lag
metrics, or read Secrets.

The http-port annotation (default `sniffer.dev/http-port`) on a Service names the Service
port (number or name) that plaintext HTTP listeners route an Ingress rule's host to; a
Service without it gets no HTTP route (TLS listeners always use the rule's port).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sniffer.routing.sources.kubernetes.kinds import RBAC_RULES
from sniffer.routing.sources.kubernetes.settings import BackendMode, KubernetesSettings

if TYPE_CHECKING:
    from sniffer.routing.sources.kubernetes.source import KubernetesSource, compute_spec

__all__ = ["RBAC_RULES", "BackendMode", "KubernetesSettings", "KubernetesSource", "compute_spec"]


def __getattr__(name: str) -> Any:
    """The source (and the HTTP client under it) on first use: the CLI reads the settings
    at start-up without paying ~0.3 s for a client that `sniffer check` never needs."""
    if name in ("KubernetesSource", "compute_spec"):
        from sniffer.routing.sources.kubernetes import source

        return getattr(source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
