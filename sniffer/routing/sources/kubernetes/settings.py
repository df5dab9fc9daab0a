"""Settings of the Kubernetes route source: one frozen dataclass, each field with its help.

This module owns the knobs, their defaults, their ranges (declared with
`sniffer.settings`, checked when the object is made, as the data plane's) and the
reasons behind them; the CLI reads its Kubernetes flags' defaults and help from here.
It must never read the environment or the cluster: the CLI builds a `KubernetesSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sniffer.settings import SettingError, check_ranges, setting

BackendMode = Literal["endpoints", "clusterip"]

_MS = 0.001
"""The smallest duration a timer here may be set to (seconds)."""


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    """How the source reads the cluster (validated on construction)."""

    kubeconfig: str | None = setting(None, "Kubeconfig (default: in-cluster service account).")
    """Path of a kubeconfig file; None means in-cluster (service-account token and CA)."""

    ingress_class: str = setting("sniffer", "IngressClass name to serve.")
    """Served: `spec.ingressClassName` or the k8sniff-era annotation."""

    gateway_class: str = setting("sniffer", "GatewayClass name to serve.")
    """Reported as sniffer's own (its controllerName must match too)."""

    controller_name: str = setting(
        "sniffer.dev/gateway-controller",
        "GatewayClass `spec.controllerName` claimed by sniffer; also the status owner.",
    )

    backend_mode: BackendMode = setting(
        "endpoints", "endpoints (EndpointSlice addresses) or clusterip."
    )
    """Dial ready EndpointSlice addresses (no kube-proxy hop) or the Service ClusterIP."""

    http_port_annotation: str = setting(
        "sniffer.dev/http-port",
        "Service annotation naming the port (number or name) plaintext HTTP listeners use.",
    )

    debounce_quiet: float = setting(
        0.1, "Seconds without events before a rebuild: a burst of edits becomes one table.", 0
    )

    debounce_max_delay: float = setting(
        1.0, "Seconds an event may wait at most for its rebuild, however busy the API is.", 0
    )

    debounce_burst: int = setting(
        50, "Events within one quiet period that make a burst worth waiting out.", 1
    )
    """Below it (a steady trickle such as 1,000 changes/min) a rebuild happens `quiet` s after
    the first event instead of waiting for a silence that never comes."""

    watch_timeout: int = setting(
        90,
        "Server-side `timeoutSeconds` of a watch: streams are renewed at least this often.",
        1,
    )
    """Below the inactivity timeout: a real kube-apiserver sends no bookmark on a kind
    nothing changes (IngressClass, GatewayClass, a quiet Gateway), so a longer stream
    would trip the inactivity timeout on a healthy cluster, logging a warning and counting
    a watch error every two minutes per quiet kind (seen in the hour's soak against the
    real server). The server ends the stream cleanly instead, and it is reopened from the
    same resourceVersion without a re-list."""

    inactivity_timeout: float = setting(
        120.0,
        "Seconds without an event or bookmark before a stream is presumed dead and reopened.",
        _MS,
    )
    """A stream the server has not ended after `watch_timeout` plus this margin is dead
    (bookmarks, when the server sends them, also re-arm it)."""

    request_timeout: float = setting(
        60.0, "Seconds a list page, discovery call or status write may take in total.", _MS
    )

    connect_timeout: float = setting(10.0, "Seconds to open a connection to the API server.", _MS)

    backoff_initial: float = setting(
        0.5,
        "Seconds before the first retry after an API error (doubled each time, jittered).",
        _MS,
    )

    backoff_max: float = setting(30.0, "Cap of the retry delay in seconds.", _MS)
    """Only a persistent error (a 403 from RBAC) waits this long: when the server answers
    again after an outage, callers resume within `probe_interval` instead."""

    page_size: int = setting(
        500,
        "Objects per list page (`limit`): bounds the memory of one response, as client-go.",
        1,
    )

    namespaces: tuple[str, ...] | None = setting(
        None, "Namespaces watched; None watches the whole cluster with one stream per kind."
    )

    write_status: bool = setting(
        True,
        "Write TLSRoute, Gateway and GatewayClass status (off for read-only RBAC or dry runs).",
    )

    status_retry_limit: int = setting(
        5, "Attempts of one status write (409 re-read, 429/5xx back off).", 1
    )
    """After the last, the round is retried as a whole after a backoff."""

    probe_interval: float = setting(
        1.0,
        "Seconds between probes of the API server while any caller backs off after an error.",
        _MS,
    )
    """When it answers again, every informer resumes at once (not after its backoff)."""

    lease_namespace: str | None = setting(
        None,
        "Namespace of the status Lease: only its holder writes Gateway API status "
        "(unset: no election, this instance writes).",
    )
    """The pod's own, from the downward API. None: no leader election, this process writes
    status alone (a single instance, a dry run)."""

    lease_name: str = setting("sniffer-status", "Name of the status Lease.")
    """A `coordination.k8s.io/v1` Lease whose holder writes Gateway API status."""

    identity: str = setting("", "Holder identity in the Lease (default: host name).")
    """This candidate's holder identity (the pod name); "" means the host name."""

    lease_duration: float = setting(
        15.0, "Seconds before a silent leader's Lease may be taken over.", _MS
    )
    """A candidate waits this long, after it last saw the Lease change, before taking it
    over (client-go's LeaseDuration)."""

    renew_deadline: float = setting(
        10.0,
        "Seconds a leader keeps writing without renewing its Lease.",
        _MS,
        flag="lease-renew-deadline",
    )
    """Below the lease duration, so a leader that cannot renew stops before anyone may take
    over."""

    retry_period: float = setting(
        2.0,
        "Seconds between Lease acquire/renew attempts.",
        _MS,
        flag="lease-retry-period",
    )
    """Bounds the hand-over after a release."""

    def __post_init__(self) -> None:
        check_ranges(self)
        # A leader must stop writing before a standby may take over, and try to renew
        # more than once before it stops.
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise SettingError(
                "need 0 < --lease-retry-period < --lease-renew-deadline < --lease-duration,"
                f" got {self.retry_period:g} < {self.renew_deadline:g}"
                f" < {self.lease_duration:g}"
            )
