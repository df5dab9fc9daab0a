"""sniffer's metrics and Kubernetes API contract as the deployment artefacts rely on it.

The metric list is the one the dashboard and the alerts are written against (names as
exposed on /metrics, histograms by their base name). Keep it in step with
sniffer/observe/metrics.py: test_dashboard_prometheus.py checks both against a live
/metrics page.
"""

from __future__ import annotations

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

METRICS: dict[str, tuple[str, frozenset[str]]] = {
    name: (kind, frozenset(labels))
    for name, kind, labels in (
        ("sniffer_connections_total", COUNTER, ("listener", "backend", "tenant")),
        ("sniffer_connections_active", GAUGE, ("backend", "tenant")),
        ("sniffer_bytes_total", COUNTER, ("backend", "tenant", "direction")),
        ("sniffer_connection_duration_seconds", HISTOGRAM, ("backend", "tenant")),
        ("sniffer_backend_connect_errors_total", COUNTER, ("backend", "tenant", "reason")),
        ("sniffer_backend_connect_duration_seconds", HISTOGRAM, ("backend", "tenant")),
        ("sniffer_refused_connections_total", COUNTER, ("listener", "reason")),
        ("sniffer_accepted_connections_total", COUNTER, ("listener",)),
        ("sniffer_sniff_duration_seconds", HISTOGRAM, ("listener",)),
        ("sniffer_ech_connections_total", COUNTER, ("listener", "tenant")),
        ("sniffer_listener_open", GAUGE, ("listener", "protocol")),
        ("sniffer_listener_bound", GAUGE, ("listener", "protocol")),
        ("sniffer_datagrams_total", COUNTER, ("backend", "tenant", "direction")),
        ("sniffer_dropped_datagrams_total", COUNTER, ("listener", "reason")),
        ("sniffer_quic_rebinds_total", COUNTER, ("listener",)),
        ("sniffer_quic_failovers_total", COUNTER, ("listener",)),
        ("sniffer_route_table_routes", GAUGE, ()),
        ("sniffer_route_table_backends", GAUGE, ()),
        ("sniffer_route_table_conflicts", GAUGE, ()),
        ("sniffer_route_table_last_reload_timestamp_seconds", GAUGE, ()),
        ("sniffer_route_table_reloads_total", COUNTER, ("result",)),
        ("sniffer_route_table_rebuilds_total", COUNTER, ()),
        ("sniffer_route_table_rebuild_duration_seconds", HISTOGRAM, ()),
        ("sniffer_route_update_lag_seconds", HISTOGRAM, ()),
        ("sniffer_backend_endpoints", GAUGE, ("backend", "tenant")),
        ("sniffer_watch_events_total", COUNTER, ("kind", "type")),
        ("sniffer_watch_relists_total", COUNTER, ("kind", "reason")),
        ("sniffer_watch_errors_total", COUNTER, ("kind",)),
        ("sniffer_watch_up", GAUGE, ("kind",)),
        ("sniffer_objects_cached", GAUGE, ("kind",)),
        ("sniffer_leader", GAUGE, ()),
        ("sniffer_status_writes_total", COUNTER, ("kind", "result")),
        ("sniffer_workers", GAUGE, ("state",)),
        ("sniffer_worker_restarts_total", COUNTER, ()),
        ("sniffer_build_info", GAUGE, ("version",)),
        ("sniffer_limited_connections_total", COUNTER, ("backend", "tenant", "limit")),
        ("sniffer_access_log_dropped_total", COUNTER, ()),
        ("sniffer_event_loop_lag_seconds", HISTOGRAM, ("worker",)),
        ("sniffer_annotation_errors_total", COUNTER, ("kind",)),
        ("sniffer_kernel_relay_enabled", GAUGE, ()),
        ("sniffer_kernel_relay_refill", GAUGE, ()),
        ("sniffer_kernel_relay_connections_total", COUNTER, ()),
        ("sniffer_kernel_relay_bytes_total", COUNTER, ()),
        ("sniffer_kernel_relay_fallbacks_total", COUNTER, ("reason",)),
        ("sniffer_open_connections", GAUGE, ("worker",)),
        ("sniffer_route_table_version", GAUGE, ("worker",)),
        ("sniffer_process_asyncio_tasks", GAUGE, ("worker",)),
        ("sniffer_process_allocated_blocks", GAUGE, ("worker",)),
        ("sniffer_process_gc_objects", GAUGE, ("worker", "generation")),
        ("sniffer_process_gc_collections_total", COUNTER, ("worker", "generation")),
    )
}

# Labels Prometheus adds to every scraped series (plus `node` from the ServiceMonitor).
TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "service", "node"})

# Values of enumerated labels the dashboard and the alerts select on.
DIRECTIONS = frozenset({"client_to_backend", "backend_to_client"})
CONNECT_ERROR_REASONS = frozenset({"timeout", "refused", "unreachable", "error"})
RELOAD_RESULTS = frozenset({"ok", "error"})

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def base_metric(series_name: str) -> str | None:
    """The contract metric a PromQL series name refers to, or None if it is not one."""
    if series_name in METRICS:
        return series_name
    for suffix in _HISTOGRAM_SUFFIXES:
        if series_name.endswith(suffix):
            base = series_name[: -len(suffix)]
            if METRICS.get(base, ("",))[0] == HISTOGRAM:
                return base
    return None


# The ClusterRole, as (api_group, resource, verbs): what sniffer's Kubernetes source does.
# The source of truth is sniffer.routing.sources.kubernetes.kinds.RBAC_RULES;
# test_rbac.py compares the manifest with it once it exists, and with this until then.
READ = ("get", "list", "watch")
# The brief allowed update and patch on status; the code only patches (kinds.py).
STATUS_WRITE = ("patch",)
EXPECTED_RBAC: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("networking.k8s.io", "ingresses", READ),
    ("networking.k8s.io", "ingressclasses", READ),
    ("", "services", READ),
    ("", "namespaces", ("list", "watch")),
    ("discovery.k8s.io", "endpointslices", READ),
    ("gateway.networking.k8s.io", "gateways", READ),
    ("gateway.networking.k8s.io", "gatewayclasses", READ),
    ("gateway.networking.k8s.io", "tlsroutes", READ),
    ("gateway.networking.k8s.io", "referencegrants", READ),
    ("gateway.networking.k8s.io", "tlsroutes/status", STATUS_WRITE),
    ("gateway.networking.k8s.io", "gateways/status", STATUS_WRITE),
    ("gateway.networking.k8s.io", "gatewayclasses/status", STATUS_WRITE),
)
