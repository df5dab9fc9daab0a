"""Settings of the Kubernetes route source: one frozen dataclass, a docstring per field.

This module owns the knobs and their defaults (and the reasons behind them). It must
never read the environment or the cluster: the CLI builds a `KubernetesSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BackendMode = Literal["endpoints", "clusterip"]


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    kubeconfig: str | None = None
    """Path of a kubeconfig file; None means in-cluster (service-account token and CA)."""

    ingress_class: str = "sniffer"
    """Ingress class served: `spec.ingressClassName` or the k8sniff-era annotation."""

    gateway_class: str = "sniffer"
    """GatewayClass name sniffer reports as its own (its controllerName must match too)."""

    controller_name: str = "sniffer.dev/gateway-controller"
    """GatewayClass `spec.controllerName` claimed by sniffer; also the status owner."""

    backend_mode: BackendMode = "endpoints"
    """Dial ready EndpointSlice addresses (no kube-proxy hop) or the Service ClusterIP."""

    http_port_annotation: str = "sniffer.dev/http-port"
    """Service annotation naming the port (number or name) plaintext HTTP listeners use."""

    debounce_quiet: float = 0.1
    """Seconds without events before a rebuild: a burst of edits becomes one table."""

    debounce_max_delay: float = 1.0
    """Seconds an event may wait at most for its rebuild, however busy the API is."""

    debounce_burst: int = 50
    """Events within one quiet period that make a burst worth waiting out.

    Below it (a steady trickle such as 1,000 changes/min) a rebuild happens `quiet` s after
    the first event instead of waiting for a silence that never comes.
    """

    watch_timeout: int = 300
    """Server-side `timeoutSeconds` of a watch: streams are renewed at least this often."""

    inactivity_timeout: float = 120.0
    """Seconds without an event or bookmark before a stream is presumed dead and reopened.

    API servers send a bookmark about every minute, so twice that is never a false alarm.
    """

    request_timeout: float = 60.0
    """Seconds a list page, discovery call or status write may take in total."""

    connect_timeout: float = 10.0
    """Seconds to open a connection to the API server."""

    backoff_initial: float = 0.5
    """Seconds before the first retry after an API error (doubled each time, jittered)."""

    backoff_max: float = 30.0
    """Cap of the retry delay in seconds. Only a persistent error (a 403 from RBAC) waits
    this long: when the server answers again after an outage, callers resume within
    `probe_interval` instead."""

    page_size: int = 500
    """Objects per list page (`limit`): bounds the memory of one response, as client-go."""

    namespaces: tuple[str, ...] | None = None
    """Namespaces watched; None watches the whole cluster with one stream per kind."""

    write_status: bool = True
    """Write TLSRoute, Gateway and GatewayClass status (off for read-only RBAC or dry runs)."""

    status_retry_limit: int = 5
    """Attempts of one status write (409 re-read, 429/5xx back off) before the round is
    retried as a whole after a backoff."""

    probe_interval: float = 1.0
    """Seconds between probes of the API server while any caller backs off after an
    error: when it answers again, every informer resumes at once (not after its backoff)."""

    lease_namespace: str | None = None
    """Namespace of the status Lease (the pod's own, from the downward API). None: no
    leader election, this process writes status alone (a single instance, a dry run)."""

    lease_name: str = "sniffer-status"
    """Name of the `coordination.k8s.io/v1` Lease whose holder writes Gateway API status."""

    identity: str = ""
    """This candidate's holder identity in the Lease (the pod name); "" means the host name."""

    lease_duration: float = 15.0
    """Seconds a candidate waits, after it last saw the Lease change, before taking it
    over (client-go's LeaseDuration)."""

    renew_deadline: float = 10.0
    """Seconds the leader keeps writing without a successful renewal; below the lease
    duration, so a leader that cannot renew stops before anyone may take over."""

    retry_period: float = 2.0
    """Seconds between acquire or renew attempts; bounds the hand-over after a release."""
