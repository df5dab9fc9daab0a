"""Routes from the Kubernetes API: Ingresses and Gateway API TLSRoutes of sniffer's classes.

The package owns everything between the API server and a `TableSpec`: settings
(`settings`), the kinds and their compact records (`kinds`), a raw-JSON API client
(`api`), informers (`informer`), the translation to routes (`translate`), status writes
(`status`) and the source itself (`source`). It must never build the data plane's
`RouteTable`, update the controller's rebuild/lag metrics, or read Secrets.

The http-port annotation (default `sniffer.dev/http-port`) on a Service names the Service
port (number or name) that plaintext HTTP listeners route an Ingress rule's host to; a
Service without it gets no HTTP route (TLS listeners always use the rule's port).
"""

from sniffer.routing.sources.kubernetes.kinds import RBAC_RULES
from sniffer.routing.sources.kubernetes.settings import BackendMode, KubernetesSettings
from sniffer.routing.sources.kubernetes.source import KubernetesSource, compute_spec

__all__ = ["RBAC_RULES", "BackendMode", "KubernetesSettings", "KubernetesSource", "compute_spec"]
