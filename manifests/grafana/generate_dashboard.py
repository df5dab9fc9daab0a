"""Write manifests/grafana/sniffer.json, sniffer's Grafana dashboard, with Grafana's SDK.

The dashboard is reviewed as the short list of panels and PromQL queries below (LAYOUT);
`build` turns it into Grafana's dashboard model with the official `grafana-foundation-sdk`
builders, so every panel gets the same datasource, layout and legend settings and the
JSON follows Grafana's own schema. Adding a panel is one `Panel(...)` entry in LAYOUT
(title, description, unit, queries). Run it after editing a panel:

    python manifests/grafana/generate_dashboard.py

tests/deploy/test_dashboard.py fails when sniffer.json differs from what this prints, and
checks every query against sniffer's metric names; tests/deploy/test_dashboard_prometheus.py
runs every query against a real Prometheus scraping a real sniffer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

OUT = Path(__file__).with_name("sniffer.json")
DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TENANT = 'tenant=~"$tenant"'
TENANT_QUERY = "label_values(sniffer_connections_active, tenant)"
RI = "$__rate_interval"
SCHEMA_VERSION = 39
"""The Grafana dashboard schema the panels are written for (the SDK's model says 36)."""


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    title: str


def q(expr: str, legend: str) -> Query:
    return Query(" ".join(expr.split()), legend)


def quantiles(metric: str, by: str, selector: str = "") -> tuple[Query, ...]:
    """p50 and p99 of a histogram, one series per `by` label set."""
    sel = "{" + selector + "}" if selector else ""
    legend = " ".join("{{" + label.strip() + "}}" for label in by.split(",")) if by else ""
    out = []
    for quantile, name in ((0.5, "p50"), (0.99, "p99")):
        group = f"sum by ({by + ', ' if by else ''}le)"
        out.append(
            q(
                f"histogram_quantile({quantile}, {group} (rate({metric}_bucket{sel}[{RI}])))",
                f"{name} {legend}".strip(),
            )
        )
    return tuple(out)


LAYOUT: tuple[Row | Panel, ...] = (
    Row("Tenants"),
    Panel(
        "Active connections per tenant",
        "Connections open right now through sniffer, summed over every sniffer pod.",
        "short",
        (q(f"sum by (tenant) (sniffer_connections_active{{{TENANT}}})", "{{tenant}}"),),
        options={"stack": True},
    ),
    Panel(
        "New connections/s per tenant and backend",
        "Connections routed to a backend per second (after sniffing and routing).",
        "cps",
        (
            q(
                f"sum by (tenant, backend) (rate(sniffer_connections_total{{{TENANT}}}[{RI}]))",
                "{{tenant}}/{{backend}}",
            ),
        ),
    ),
    Panel(
        "Bytes/s client → backend",
        "Bytes relayed from clients to each tenant's routers (request direction).",
        "Bps",
        (
            q(
                f"sum by (tenant) (rate(sniffer_bytes_total"
                f'{{{TENANT}, direction="client_to_backend"}}[{RI}]))',
                "{{tenant}}",
            ),
        ),
    ),
    Panel(
        "Bytes/s backend → client",
        "Bytes relayed from each tenant's routers back to clients (response direction).",
        "Bps",
        (
            q(
                f"sum by (tenant) (rate(sniffer_bytes_total"
                f'{{{TENANT}, direction="backend_to_client"}}[{RI}]))',
                "{{tenant}}",
            ),
        ),
    ),
    Panel(
        "Connection duration p50 / p99",
        "How long relayed connections lived, from accept to the close of both directions.",
        "s",
        quantiles("sniffer_connection_duration_seconds", "tenant", TENANT),
    ),
    Panel(
        "Ready endpoints per routed backend",
        "Ready endpoints sniffer can dial for each backend a route points at. "
        "0 means the hostnames routed there are refused (alert SnifferRoutedHostNoEndpoints).",
        "short",
        (
            q(
                f"max by (tenant, backend) (sniffer_backend_endpoints{{{TENANT}}})",
                "{{tenant}}/{{backend}}",
            ),
        ),
    ),
    Panel(
        "Limited connections/s per tenant",
        "Connections refused by a limit (tenant/backend max_connections, rates, "
        "max_pending_dials, per-client max_connections), per tenant and limit: the noisy "
        "neighbour, shed at the door before it reaches the others (alert "
        "SnifferTenantAtLimit).",
        "cps",
        (
            q(
                f"sum by (tenant, limit) "
                f"(rate(sniffer_limited_connections_total{{{TENANT}}}[{RI}]))",
                "{{tenant}} {{limit}}",
            ),
        ),
    ),
    Row("Backends"),
    Panel(
        "Backend connect errors/s by reason",
        "Failed dials to tenant routers: timeout, refused, unreachable, error.",
        "cps",
        (
            q(
                f"sum by (tenant, backend, reason) "
                f"(rate(sniffer_backend_connect_errors_total{{{TENANT}}}[{RI}]))",
                "{{tenant}}/{{backend}} {{reason}}",
            ),
        ),
    ),
    Panel(
        "Backend connect latency p50 / p99",
        "Time to establish the TCP connection to a tenant router endpoint.",
        "s",
        quantiles("sniffer_backend_connect_duration_seconds", "tenant", TENANT),
    ),
    Row("Listeners"),
    Panel(
        "Accepted connections/s by listener",
        "Every TCP connection accepted, routed or not.",
        "cps",
        (
            q(
                f"sum by (listener) (rate(sniffer_accepted_connections_total[{RI}]))",
                "{{listener}}",
            ),
        ),
    ),
    Panel(
        "Refusals/s by reason",
        "Connections sniffer refused, by listener and reason (unknown_name, no_sni, "
        "bad_hello, hello_timeout, no_endpoints, ...). Not per tenant: a refused "
        "connection never reached one.",
        "cps",
        (
            q(
                f"sum by (listener, reason) (rate(sniffer_refused_connections_total[{RI}]))",
                "{{listener}} {{reason}}",
            ),
        ),
    ),
    Panel(
        "Connections shed at accept/s per pod",
        "New connections closed at accept because the pod is at --max-connections per "
        "worker (reason overloaded): every tenant's are refused, not one's (alert "
        "SnifferShedding). Open connections are never touched.",
        "cps",
        (
            q(
                f"sum by (instance) (rate(sniffer_refused_connections_total"
                f'{{reason="overloaded"}}[{RI}]))',
                "{{instance}}",
            ),
        ),
    ),
    Panel(
        "Sniff duration p50 / p99",
        "Accept to hostname known: how long sniffer waited for the ClientHello or Host header.",
        "s",
        quantiles("sniffer_sniff_duration_seconds", "listener"),
    ),
    Panel(
        "ECH connections/s per tenant",
        "Routed connections whose ClientHello carries encrypted_client_hello, routed by "
        "its outer name (public_name). Browsers send GREASE ECH that looks the same from "
        "the edge: this counts clients that send the extension, not connections that use "
        "ECH (see README).",
        "cps",
        (
            q(
                f"sum by (tenant) (rate(sniffer_ech_connections_total{{{TENANT}}}[{RI}]))",
                "{{tenant}}",
            ),
        ),
    ),
    Panel(
        "Open connections and QUIC flows per listener",
        "Client connections (on QUIC listeners: flows) open on each listener, sniffing or "
        "relaying, and how many processes hold its socket: every worker for TCP, one for "
        "QUIC (worker 0), 0 when its port could not be bound (see /readyz).",
        "short",
        (
            q("sum by (listener, protocol) (sniffer_listener_open)", "{{listener}} open"),
            q("sum by (listener, protocol) (sniffer_listener_bound)", "{{listener}} bound"),
        ),
    ),
    Row("Kernel relay"),
    Panel(
        "Workers relaying in the kernel",
        "Data-plane processes whose routed pairs go to the BPF sockmap relay "
        "(--kernel-relay auto|on where the kernel and capabilities allow it; 0 = every "
        "pair in user space, the default); refilling: those whose verdict refills its "
        "budget in the kernel (0: the fallback verdict, e.g. without CAP_PERFMON).",
        "short",
        (
            q("sum by (instance) (sniffer_kernel_relay_enabled)", "{{instance}}"),
            q("sum by (instance) (sniffer_kernel_relay_refill)", "{{instance}} refilling"),
        ),
        width=8,
    ),
    Panel(
        "Kernel relay hand-offs and fallbacks/s",
        "Routed pairs handed to the kernel, and pairs kept in (or moved back to) user "
        "space by reason (map_full, queued, half_closed, ...).",
        "ops",
        (
            q(f"sum(rate(sniffer_kernel_relay_connections_total[{RI}]))", "handed over"),
            q(
                f"sum by (reason) (rate(sniffer_kernel_relay_fallbacks_total[{RI}]))",
                "fallback {{reason}}",
            ),
        ),
        width=8,
    ),
    Panel(
        "Bytes/s carried by the kernel relay",
        "Bytes the kernel relayed without waking sniffer (both directions, all tenants; "
        "the rest of the bytes panels' traffic went through user space). Request/response "
        "traffic stays in the kernel; a sender faster than its receiver spends the "
        "per-pair budget and goes on in user space.",
        "Bps",
        (q(f"sum(rate(sniffer_kernel_relay_bytes_total[{RI}]))", "kernel"),),
        width=8,
    ),
    Row("HTTP/3 (QUIC)"),
    Panel(
        "QUIC datagrams/s per tenant",
        "Datagrams relayed on QUIC listeners, per tenant and direction (bytes are in the "
        "bytes panels, flows in the connection panels).",
        "pps",
        (
            q(
                f"sum by (tenant, direction) (rate(sniffer_datagrams_total{{{TENANT}}}[{RI}]))",
                "{{tenant}} {{direction}}",
            ),
        ),
    ),
    Panel(
        "QUIC datagrams dropped/s by reason",
        "Datagrams not relayed: not a client Initial from an unknown address, too short, "
        "unknown version, undecryptable, a refused flow's, over the 3x anti-amplification "
        "limit, held-datagram overflow, draining. Not per tenant: most never reached one.",
        "pps",
        (
            q(
                f"sum by (listener, reason) (rate(sniffer_dropped_datagrams_total[{RI}]))",
                "{{listener}} {{reason}}",
            ),
        ),
    ),
    Panel(
        "QUIC refusals/s by reason",
        "QUIC flows refused (with a CONNECTION_CLOSE in a server Initial), by listener "
        "and reason: the refusals panel's series of the quic listeners only.",
        "cps",
        (
            q(
                f"sum by (listener, reason) (rate(sniffer_refused_connections_total[{RI}]) "
                f'and on (instance, listener) sniffer_listener_bound{{protocol="quic"}})',
                "{{listener}} {{reason}}",
            ),
        ),
    ),
    Panel(
        "QUIC rebinds and failovers/s",
        "Flows moved to a new client address by the server's connection ID (NAT "
        "rebinding), and flows moved to a backend's next endpoint after an ICMP port "
        "unreachable from a dead one, before it answered.",
        "ops",
        (
            q(
                f"sum by (listener) (rate(sniffer_quic_rebinds_total[{RI}]))",
                "rebinds {{listener}}",
            ),
            q(
                f"sum by (listener) (rate(sniffer_quic_failovers_total[{RI}]))",
                "failovers {{listener}}",
            ),
        ),
    ),
    Row("Control plane"),
    Panel(
        "Route update lag p50 / p99",
        "Kubernetes event received to new route table live in every worker (Kubernetes "
        "source only). Alert SnifferRouteUpdateLagHigh fires above 10 s.",
        "s",
        quantiles("sniffer_route_update_lag_seconds", ""),
    ),
    Panel(
        "Route table size",
        "Routes, backends and hostname conflicts in the live table (max over pods).",
        "short",
        (
            q("max(sniffer_route_table_routes)", "routes"),
            q("max(sniffer_route_table_backends)", "backends"),
            q("max(sniffer_route_table_conflicts)", "conflicts"),
        ),
    ),
    Panel(
        "Route table rebuilds and reloads",
        "Rebuilds/s (one per debounced burst of events) and routes-file reloads by result.",
        "ops",
        (
            q(f"sum(rate(sniffer_route_table_rebuilds_total[{RI}]))", "rebuilds"),
            q(
                f"sum by (result) (rate(sniffer_route_table_reloads_total[{RI}]))",
                "reload {{result}}",
            ),
        ),
    ),
    Panel(
        "Route table rebuild duration p50 / p99",
        "Time to compile a new route table from the cached objects.",
        "s",
        quantiles("sniffer_route_table_rebuild_duration_seconds", ""),
    ),
    Panel(
        "Time since last route table load",
        "Seconds since the newest route table went live, per pod.",
        "s",
        (
            q(
                "time() - max by (instance) (sniffer_route_table_last_reload_timestamp_seconds)",
                "{{instance}}",
            ),
        ),
    ),
    Panel(
        "Watch health",
        "1 when the watch stream of a kind is healthy, lowest over pods "
        "(Kubernetes source only; alert SnifferWatchDown).",
        "short",
        (q("min by (kind) (sniffer_watch_up)", "{{kind}}"),),
        options={"max": 1, "min": 0},
    ),
    Panel(
        "Watch events, relists and errors/s",
        "Watch events by kind and type, re-lists (410 Gone, timeouts) and errors.",
        "ops",
        (
            q(f"sum by (kind, type) (rate(sniffer_watch_events_total[{RI}]))", "{{kind}} {{type}}"),
            q(
                f"sum by (kind, reason) (rate(sniffer_watch_relists_total[{RI}]))",
                "relist {{kind}} {{reason}}",
            ),
            q(f"sum by (kind) (rate(sniffer_watch_errors_total[{RI}]))", "error {{kind}}"),
        ),
    ),
    Panel(
        "Objects cached by kind",
        "Objects held in sniffer's informer caches (trimmed to the fields routing needs).",
        "short",
        (q("max by (kind) (sniffer_objects_cached)", "{{kind}}"),),
    ),
    Panel(
        "Status leader",
        "Pods holding the status Lease: exactly 1 in a healthy fleet (only the holder "
        "writes Gateway API status; 0 for more than a lease duration means nobody does: "
        "alert SnifferNoLeader).",
        "short",
        (q("sum(sniffer_leader)", "pods leading"),),
    ),
    Panel(
        "Status writes/s",
        "Gateway API status writes by kind and result (ok, conflict: retried after a "
        "fresh read, error); about one per spec change, from the leader only (alert "
        "SnifferStatusWritesFailing).",
        "ops",
        (
            q(
                f"sum by (kind, result) (rate(sniffer_status_writes_total[{RI}]))",
                "{{kind}} {{result}}",
            ),
        ),
    ),
    Row("Processes"),
    Panel(
        "Open connections and route table version per process",
        "TCP connections each data-plane process holds (sniffing, dialling or relaying), "
        "and the route table version each process has installed: workers of one pod at "
        "different versions for long means a table did not reach one of them.",
        "short",
        (
            q(
                "sum by (instance, worker) (sniffer_open_connections)",
                "{{instance}} {{worker}} open",
            ),
            q(
                "max by (instance, worker) (sniffer_route_table_version)",
                "{{instance}} {{worker}} table",
            ),
        ),
    ),
    Panel(
        "asyncio tasks and allocated blocks per process",
        "Runtime figures of the control process and each worker: asyncio tasks alive and "
        "pymalloc blocks in use (every Python object). Either growing without traffic "
        "growing is a leak (benchmarks/soak.py fails on such a trend).",
        "short",
        (
            q(
                "max by (instance, worker) (sniffer_process_asyncio_tasks)",
                "{{instance}} {{worker}} tasks",
            ),
            q(
                "max by (instance, worker) (sniffer_process_allocated_blocks)",
                "{{instance}} {{worker}} blocks",
            ),
        ),
    ),
    Panel(
        "Garbage collector per process",
        'Objects waiting per GC generation ("permanent": frozen after each table install, '
        "which must not grow with installs) and collections/s per generation.",
        "short",
        (
            q(
                "max by (worker, generation) (sniffer_process_gc_objects)",
                "{{worker}} gen {{generation}} objects",
            ),
            q(
                f"sum by (worker, generation) (rate(sniffer_process_gc_collections_total[{RI}]))",
                "{{worker}} gen {{generation}} collections/s",
            ),
        ),
    ),
    Panel(
        "Workers alive",
        "Data-plane worker processes alive per pod (--workers).",
        "short",
        (q('sum by (instance) (sniffer_workers{state="alive"})', "{{instance}}"),),
    ),
    Panel(
        "Worker restarts",
        "Worker processes restarted in the interval (alert SnifferWorkerRestarts).",
        "short",
        (
            q(
                f"sum by (instance) (increase(sniffer_worker_restarts_total[{RI}]))",
                "{{instance}}",
            ),
        ),
    ),
    Panel(
        "Event-loop lag p50 / p99 per worker",
        "How late a periodic timer fires in each data-plane process: time its event loop "
        "was busy elsewhere (long callbacks, table installs, garbage collection, a starved "
        "CPU), added to every connection of that worker (alert SnifferEventLoopLag).",
        "s",
        quantiles("sniffer_event_loop_lag_seconds", "worker"),
    ),
    Panel(
        "Access-log lines dropped/s and bad annotations",
        "Access-log lines dropped because stdout did not drain (the log shipper is stuck: "
        "the data plane never waits for it; alert SnifferAccessLogDropped), and malformed "
        "sniffer.dev/ limit annotations "
        "ignored (Kubernetes source; see route-table for which).",
        "ops",
        (
            q(f"sum(rate(sniffer_access_log_dropped_total[{RI}]))", "log lines dropped"),
            q(
                f"sum by (kind) (increase(sniffer_annotation_errors_total[{RI}]))",
                "bad annotations {{kind}}",
            ),
        ),
    ),
    Panel(
        "Versions running",
        "sniffer pods per version.",
        "short",
        (q("count by (version) (sniffer_build_info)", "{{version}}"),),
        kind="stat",
        width=24,
        height=4,
    ),
)


def _targets(panel: Panel) -> list[prometheus.Dataquery]:
    return [
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend)
        .range()
        .editor_mode(prometheus_model.QueryEditorMode.CODE)
        .ref_id(chr(ord("A") + i))
        .datasource(DS)
        for i, query in enumerate(panel.queries)
    ]


def _panel(panel: Panel, pid: int, x: int, y: int) -> timeseries.Panel | stat.Panel:
    builder: timeseries.Panel | stat.Panel
    if panel.kind == "timeseries":
        stacking = common.StackingMode.NORMAL if panel.options.get("stack") else None
        builder = (
            timeseries.Panel()
            .draw_style(common.GraphDrawStyle.LINE)
            .fill_opacity(10)
            .line_width(1)
            .show_points(common.VisibilityMode.NEVER)
            .span_nulls(False)
            .stacking(common_builders.StackingConfig().mode(stacking or common.StackingMode.NONE))
            .legend(
                common_builders.VizLegendOptions()
                .calcs(["lastNotNull", "max"])
                .display_mode(common.LegendDisplayMode.TABLE)
                .placement(common.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .tooltip(
                common_builders.VizTooltipOptions()
                .mode(common.TooltipDisplayMode.MULTI)
                .sort(common.SortOrder.DESCENDING)
            )
        )
    else:
        builder = (
            stat.Panel()
            .color_mode(common.BigValueColorMode.VALUE)
            .graph_mode(common.BigValueGraphMode.NONE)
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            .reduce_options(
                common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
            )
        )
    builder = (
        builder.id(pid)
        .title(panel.title)
        .description(panel.description)
        .datasource(DS)
        .unit(panel.unit)
        .grid_pos(model.GridPos(h=panel.height, w=panel.width, x=x, y=y))
        .targets(_targets(panel))  # type: ignore[arg-type]
    )
    if "min" in panel.options:
        builder = builder.min(float(panel.options["min"]))  # type: ignore[arg-type]
    if "max" in panel.options:
        builder = builder.max(float(panel.options["max"]))  # type: ignore[arg-type]
    return builder


def build() -> model.Dashboard:
    dash = (
        dashboard_builders.Dashboard("sniffer")
        .uid("sniffer-edge")
        .description(
            "sniffer edge router: per-tenant connections, bytes, backends, refusals, "
            "the walls (limits, shedding, dropped log lines, loop lag) and the route "
            "control plane."
        )
        .tags(["sniffer", "edge", "kubernetes"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .version(1)
        .with_variable(
            dashboard_builders.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
        )
        .with_variable(
            dashboard_builders.QueryVariable("tenant")
            .label("Tenant")
            .datasource(DS)
            .query(TENANT_QUERY)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )
    )
    # Positions are computed here, not by the SDK (which does not wrap a panel that
    # would overflow the 24-column grid): rows full width, panels left to right.
    pid, x, y, row_h = 1, 0, 0, 0
    for item in LAYOUT:
        if isinstance(item, Row):
            y += row_h
            x, row_h = 0, 0
            dash = dash.with_row(
                dashboard_builders.Row(item.title)
                .id(pid)
                .grid_pos(model.GridPos(h=1, w=24, x=0, y=y))
            )
            y += 1
        else:
            if x + item.width > 24:
                y += row_h
                x, row_h = 0, 0
            dash = dash.with_panel(_panel(item, pid, x, y))
            x += item.width
            row_h = max(row_h, item.height)
        pid += 1
    built = dash.build()
    built.schema_version = SCHEMA_VERSION
    return built


def render() -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
