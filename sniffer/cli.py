"""The `sniffer` command line: serve, route-table, check.

Parses flags into settings objects and hands them to `sniffer.app`; prints tables.
Heavy imports (Kubernetes client, uvloop) happen inside the commands that need them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml

from sniffer import __version__
from sniffer.proxy.settings import ProxySettings, WorkerSettings
from sniffer.routing.sources.file import EXAMPLE, RoutesFileError, load_routes, override_listeners
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.table import Listener, MatchKind, RouteTable, parse_port, split_host_port
from sniffer.settings import SettingError, default_of, flag_help

_S = TypeVar("_S")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Route TCP connections by TLS SNI or HTTP Host to tenant backends, bytes untouched.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sniffer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    """sniffer: the SNI edge router for multi-tenant Kubernetes."""


def parse_listen(values: list[str]) -> tuple[Listener, ...]:
    """`tls:0.0.0.0:443` / `http:[::]:80` / `tls:0.0.0.0:8443@443` -> Listener(...).

    `@PORT` names the port clients reach when a hostPort or NAT maps it onto the bound
    one; Gateway listeners are matched against it and it names the listener (`tls-443`).
    """
    out: list[Listener] = []
    for v in values:
        proto, sep, addr = v.partition(":")
        if not sep or proto not in ("tls", "http", "quic"):
            raise typer.BadParameter(
                f"{v!r}: expected tls:HOST:PORT[@PUBLIC], http:... or quic:... (UDP)"
            )
        addr, at, public = addr.partition("@")
        try:
            host, port = split_host_port(addr)
            public_port = parse_port(public, f"public port {public!r}") if at else None
        except ValueError as exc:
            raise typer.BadParameter(f"{v!r}: {exc}") from None
        name = f"{proto}-{public_port or port}"
        if any(lis.name == name for lis in out):
            name = f"{proto}-{host}-{port}"
        out.append(
            Listener(
                name,
                host,
                port,
                "quic" if proto == "quic" else "tls" if proto == "tls" else "http",
                public_port=public_port,
            )
        )
    return tuple(out)


def deny_ja4_on(listeners: tuple[Listener, ...], values: list[str]) -> tuple[Listener, ...]:
    """`--deny-ja4 FP` (repeatable): refuse these JA4 fingerprints on every TLS and QUIC
    listener."""
    from sniffer.wire.ja4 import is_ja4

    for v in values:
        if not is_ja4(v):
            raise typer.BadParameter(f"--deny-ja4 {v!r} is not a JA4 fingerprint")
    if not values:
        return listeners
    deny = frozenset(values)
    return tuple(
        replace(lis, deny_ja4=deny) if lis.protocol in ("tls", "quic") else lis for lis in listeners
    )


def _kube_settings(**kw: Any) -> KubernetesSettings:
    """`KubernetesSettings` of the flags given (None: the default), a value out of range
    refused as a bad flag (exit 2)."""
    return _checked_settings(KubernetesSettings, **{k: v for k, v in kw.items() if v is not None})


def _kube_option(name: str, **kw: Any) -> Any:
    return typer.Option(help=flag_help(KubernetesSettings, name), **kw)


def _K(name: str) -> Any:
    return default_of(KubernetesSettings, name)


def _proxy_option(name: str) -> Any:
    return typer.Option(help=flag_help(ProxySettings, name))


def _worker_option(name: str) -> Any:
    return typer.Option(help=flag_help(WorkerSettings, name))


def _P(name: str) -> Any:
    return default_of(ProxySettings, name)


def _W(name: str) -> Any:
    return default_of(WorkerSettings, name)


@app.command()
def serve(
    routes: Annotated[
        Path | None, typer.Option(help="Routes file (default: the bundled example).")
    ] = None,
    kubernetes: Annotated[bool, typer.Option(help="Build routes from the Kubernetes API.")] = False,
    kubeconfig: Annotated[Path | None, _kube_option("kubeconfig")] = None,
    ingress_class: Annotated[str, _kube_option("ingress_class")] = _K("ingress_class"),
    gateway_class: Annotated[str, _kube_option("gateway_class")] = _K("gateway_class"),
    backend_mode: Annotated[str, _kube_option("backend_mode")] = _K("backend_mode"),
    listen: Annotated[
        list[str] | None,
        typer.Option(help="PROTO:HOST:PORT, repeatable; overrides the file's listeners."),
    ] = None,
    deny_ja4: Annotated[
        list[str] | None,
        typer.Option(
            help="JA4 fingerprint refused on the --listen TLS listeners (Kubernetes), repeatable;"
            " a routes file says deny_ja4 per listener."
        ),
    ] = None,
    admin: Annotated[str, typer.Option(help="Admin HTTP HOST:PORT ('' disables).")] = (
        "127.0.0.1:9190"
    ),
    workers: Annotated[
        int | None,
        typer.Option(help="Data-plane processes (default: usable CPUs; 0 = in-process)."),
    ] = None,
    drain_grace: Annotated[float, _proxy_option("drain_grace")] = _P("drain_grace"),
    lease_namespace: Annotated[
        str | None, _kube_option("lease_namespace", envvar="POD_NAMESPACE")
    ] = None,
    identity: Annotated[str | None, _kube_option("identity", envvar="POD_NAME")] = None,
    lease_name: Annotated[str, _kube_option("lease_name")] = _K("lease_name"),
    lease_duration: Annotated[float, _kube_option("lease_duration")] = _K("lease_duration"),
    lease_renew_deadline: Annotated[float, _kube_option("renew_deadline")] = _K("renew_deadline"),
    lease_retry_period: Annotated[float, _kube_option("retry_period")] = _K("retry_period"),
    hello_timeout: Annotated[float, _proxy_option("hello_timeout")] = _P("hello_timeout"),
    idle_timeout: Annotated[float, _proxy_option("idle_timeout")] = _P("idle_timeout"),
    quic_idle_timeout: Annotated[float, _proxy_option("quic_idle_timeout")] = _P(
        "quic_idle_timeout"
    ),
    connect_timeout: Annotated[float, _proxy_option("connect_timeout")] = _P("connect_timeout"),
    max_hello_bytes: Annotated[int, _proxy_option("max_hello_bytes")] = _P("max_hello_bytes"),
    access_log: Annotated[bool, _worker_option("access_log")] = _W("access_log"),
    access_log_buffer: Annotated[int, _worker_option("access_log_buffer")] = _W(
        "access_log_buffer"
    ),
    log_level: Annotated[str, _worker_option("log_level")] = _W("log_level"),
    max_connections: Annotated[int, _proxy_option("max_connections")] = _P("max_connections"),
    kernel_relay: Annotated[str, _proxy_option("kernel_relay")] = _P("kernel_relay"),
    kernel_relay_after: Annotated[float, _proxy_option("kernel_relay_after")] = _P(
        "kernel_relay_after"
    ),
    tenant_max_connections: Annotated[
        int | None, typer.Option(help="Default per-tenant connection limit (per pod).")
    ] = None,
    tenant_connections_per_second: Annotated[
        float | None, typer.Option(help="Default per-tenant new connections a second.")
    ] = None,
    tenant_connections_burst: Annotated[
        int | None, typer.Option(help="Token-bucket size for the per-tenant rate.")
    ] = None,
    backend_max_connections: Annotated[
        int | None, typer.Option(help="Default per-backend connection limit (per pod).")
    ] = None,
    backend_max_pending_dials: Annotated[
        int | None, typer.Option(help="Default per-backend dials in flight (per pod).")
    ] = None,
    client_max_connections: Annotated[
        int | None, typer.Option(help="Default connections per client address and listener.")
    ] = None,
) -> None:
    """Run the router."""
    from sniffer.app import ServeOptions
    from sniffer.launch import ServePlan, exec_plan
    from sniffer.launch import run as run_plan

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    proxy = _checked_settings(
        ProxySettings,
        hello_timeout=hello_timeout,
        idle_timeout=idle_timeout,
        quic_idle_timeout=quic_idle_timeout,
        connect_timeout=connect_timeout,
        max_hello_bytes=max_hello_bytes,
        drain_grace=drain_grace,
        max_connections=max_connections,
        kernel_relay=kernel_relay,
        kernel_relay_after=kernel_relay_after,
    )
    proxy = replace(proxy, kernel_relay=_kernel_relay_mode(kernel_relay))
    _checked_settings(
        WorkerSettings,
        proxy=proxy,
        access_log=access_log,
        access_log_buffer=access_log_buffer,
        log_level=log_level,
    )
    flag_limits = _flag_limits(
        tenant_max_connections,
        tenant_connections_per_second,
        tenant_connections_burst,
        backend_max_connections,
        backend_max_pending_dials,
        client_max_connections,
    )
    listeners = parse_listen(listen or [])
    kube: KubernetesSettings | None = None
    if kubernetes:
        listeners = listeners or parse_listen(["tls:0.0.0.0:443", "http:0.0.0.0:80"])
        listeners = deny_ja4_on(listeners, deny_ja4 or [])
        kube = _kube_settings(
            kubeconfig=str(kubeconfig) if kubeconfig else None,
            ingress_class=ingress_class,
            gateway_class=gateway_class,
            backend_mode=backend_mode,
            lease_namespace=lease_namespace or None,
            identity=identity or None,
            lease_name=lease_name,
            lease_duration=lease_duration,
            renew_deadline=lease_renew_deadline,
            retry_period=lease_retry_period,
        )
    elif deny_ja4:
        if not listeners:
            raise typer.BadParameter("--deny-ja4 needs --listen (or deny_ja4 in the routes file)")
        listeners = deny_ja4_on(listeners, deny_ja4)
    routes_file = None
    if routes is not None or not kubernetes:
        routes_file = _checked_routes_file(routes if routes is not None else EXAMPLE)
    opts = ServeOptions(
        proxy=proxy,
        admin=split_host_port(admin) if admin else None,
        workers=len(os.sched_getaffinity(0)) if workers is None else workers,
        access_log=access_log,
        access_log_buffer=access_log_buffer,
        log_level=log_level,
        limits=flag_limits,
    )
    plan = ServePlan(opts, listeners, kube, routes_file)
    # The command (`main`) serves from a fresh interpreter without typer's ~10 MiB (see
    # sniffer/launch.py); called in-process (tests' CliRunner), it serves right here.
    code = exec_plan(plan) if _EXEC_SERVE else run_plan(plan)
    raise typer.Exit(code)


def _kernel_relay_mode(mode: str) -> str:
    """Check once, before any worker starts, that the kernel relay can run here.

    `on` without it refuses to start (exit 1, saying why); `auto` without it says why in
    one log line and runs every worker with the user-space relay.
    """
    if mode == "off":
        return mode
    from sniffer.proxy.kernel.relay import KernelRelay, Unavailable

    try:
        KernelRelay(capacity=1).close()
    except Unavailable as exc:
        if mode == "on":
            typer.echo(f"error: --kernel-relay on, but it cannot run here: {exc}", err=True)
            raise typer.Exit(1) from None
        logging.getLogger("sniffer").warning(
            "kernel relay unavailable (%s): %s; relaying in user space", exc.reason, exc
        )
        return "off"
    return mode


def _checked_settings(cls: Callable[..., _S], **values: Any) -> _S:
    """`cls(**values)`, a setting out of range refused as a bad flag (exit 2)."""
    try:
        return cls(**values)
    except SettingError as exc:
        raise typer.BadParameter(str(exc)) from None


def _checked_routes_file(path: Path) -> Path:
    """The routes file, read once now: a bad file fails at start-up (exit 2); later bad
    edits keep the old table."""
    try:
        load_routes(path)
    except RoutesFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    return path


def _flag_limits(
    tenant_max: int | None,
    tenant_rate: float | None,
    tenant_burst: int | None,
    backend_max: int | None,
    backend_pending: int | None,
    client_max: int | None,
) -> Any:
    """`serve`'s limit flags as table defaults (a routes file's `limits:` wins)."""
    from sniffer.routing.table import LimitDefaults, Limits

    for flag, value in (
        ("--tenant-max-connections", tenant_max),
        ("--tenant-connections-per-second", tenant_rate),
        ("--tenant-connections-burst", tenant_burst),
        ("--backend-max-connections", backend_max),
        ("--backend-max-pending-dials", backend_pending),
        ("--client-max-connections", client_max),
    ):
        if value is not None and value < 0:
            raise typer.BadParameter(f"{flag} must not be negative")
    return LimitDefaults(
        tenant=Limits(
            max_connections=tenant_max,
            connections_per_second=tenant_rate,
            burst=tenant_burst,
            source="serve flags",
        ),
        backend=Limits(
            max_connections=backend_max, max_pending_dials=backend_pending, source="serve flags"
        ),
        client=Limits(max_connections=client_max, source="serve flags"),
    )


@app.command()
def check(file: Annotated[Path, typer.Argument(help="Routes file to validate.")]) -> None:
    """Validate a routes file; every problem is named by path and line."""
    try:
        spec = load_routes(file)
    except RoutesFileError as exc:
        typer.echo(str(exc), err=True)
        typer.echo(f"{len(exc.problems)} problem(s) in {file}", err=True)
        raise typer.Exit(1) from None
    table = RouteTable.build(spec)
    typer.echo(
        f"{file}: ok ({len(spec.listeners)} listeners, {len(spec.backends)} backends, "
        f"{len(spec.routes)} routes, {len(table.conflicts)} conflicts)"
    )
    for c in table.conflicts:
        typer.echo(f"conflict: {c.host} on {c.listener}: {c.winner} wins over {c.loser}")


@app.command("route-table")
def route_table(
    routes: Annotated[Path | None, typer.Option(help="Compute from a routes file.")] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="Fetch from a running sniffer's admin URL.")
    ] = None,
    kubeconfig: Annotated[
        Path | None, typer.Option(help="Compute what this cluster implies.")
    ] = None,
    all_namespaces: Annotated[bool, typer.Option("-A", "--all-namespaces")] = False,
    namespace: Annotated[list[str] | None, typer.Option("-n", "--namespace")] = None,
    ingress_class: Annotated[str, _kube_option("ingress_class")] = _K("ingress_class"),
    gateway_class: Annotated[str, _kube_option("gateway_class")] = _K("gateway_class"),
    listen: Annotated[list[str] | None, typer.Option(help="PROTO:HOST:PORT listeners.")] = None,
    host: Annotated[str | None, typer.Option(help="Explain which route NAME hits.")] = None,
    alpn: Annotated[
        list[str] | None,
        typer.Option(help="With --host: an ALPN protocol the client offers (repeatable)."),
    ] = None,
    listener: Annotated[
        str | None, typer.Option(help="Listener for --host (default: each).")
    ] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="table, json or yaml.")] = "table",
) -> None:
    """Print a route table: from a file, a running instance, or a cluster."""
    if output not in ("table", "json", "yaml"):
        raise typer.BadParameter("--output must be table, json or yaml")
    problems: list[str] = []
    listeners = parse_listen(listen or [])
    if from_:
        url = from_.rstrip("/") + "/routes"
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                table = RouteTable.from_dict(json.load(resp))
        except OSError as exc:
            typer.echo(f"cannot fetch {url}: {exc}", err=True)
            raise typer.Exit(1) from None
    elif kubeconfig is not None:
        from sniffer.routing.sources.kubernetes import compute_spec

        if not listeners:
            listeners = parse_listen(["tls:0.0.0.0:443", "http:0.0.0.0:80"])
        namespaces = None if all_namespaces or not namespace else tuple(namespace)
        settings = _kube_settings(
            kubeconfig=str(kubeconfig),
            ingress_class=ingress_class,
            gateway_class=gateway_class,
            namespaces=namespaces,
            write_status=False,
        )
        spec, problems = asyncio.run(compute_spec(settings, listeners))
        table = RouteTable.build(spec)
    else:
        path = routes if routes is not None else EXAMPLE
        try:
            spec = load_routes(path)
        except RoutesFileError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
        if listeners:
            spec = override_listeners(spec, listeners)
        table = RouteTable.build(spec)

    if host is not None:
        _explain(table, host, listener, output, tuple(alpn or ()))
        return
    data = table.to_dict()
    if problems:
        data["problems"] = problems
    if output == "json":
        typer.echo(json.dumps(data, indent=2))
    elif output == "yaml":
        typer.echo(yaml.safe_dump(data, sort_keys=False))
    else:
        typer.echo(_render_table(table))
        for p in problems:
            typer.echo(f"problem: {p}")


def _explain(
    table: RouteTable, host: str, listener: str | None, output: str, alpn: tuple[str, ...] = ()
) -> None:
    from sniffer.wire.errors import WireError
    from sniffer.wire.hostname import normalize_hostname

    try:
        name: str | None = normalize_hostname(host)
    except WireError as exc:
        typer.echo(f"{host!r} is not a routable name: {exc}", err=True)
        raise typer.Exit(1) from None
    names = [listener] if listener else [lis.name for lis in table.listeners]
    results: list[dict[str, Any]] = []
    for lname in names:
        m = table.lookup(lname, name, alpn)
        results.append(
            {
                "host": name,
                "alpn": list(alpn),
                "listener": lname,
                "match": m.kind.value,
                "route": m.route.host if m.route else None,
                "source": m.route.source if m.route else None,
                "backends": [
                    {
                        "name": w.backend,
                        "weight": w.weight,
                        "endpoints": [str(e) for e in table.backends[w.backend].endpoints]
                        if w.backend in table.backends
                        else [],
                        "limits": _limits_json(table, w.backend),
                    }
                    for w in m.backends
                ],
                "why": m.explain(name, lname, alpn),
            }
        )
    if output == "json":
        typer.echo(json.dumps(results, indent=2))
    elif output == "yaml":
        typer.echo(yaml.safe_dump(results, sort_keys=False))
    else:
        for r in results:
            targets = ", ".join(
                f"{b['name']} ({', '.join(b['endpoints']) or 'no endpoints'})"
                for b in r["backends"]
            )
            offer = f" (ALPN {','.join(r['alpn'])})" if r["alpn"] else ""
            typer.echo(
                f"{r['listener']}: {r['host']}{offer} -> {r['match']}: {targets or 'refused'}"
            )
            typer.echo(f"  why: {r['why']}" + (f" [{r['source']}]" if r["source"] else ""))
            for b in r["backends"]:
                for scope, eff in b["limits"].items():
                    if eff:
                        shown = ", ".join(
                            f"{k}={v['value']:g} ({v['from']})" for k, v in eff.items()
                        )
                        typer.echo(f"  limits ({scope}): {shown}")
    if all(r["match"] == MatchKind.NONE.value for r in results):
        raise typer.Exit(3)


def _render_table(table: RouteTable) -> str:
    rows = [("HOST", "ALPN", "MATCH", "LISTENERS", "BACKEND", "ENDPOINTS", "SOURCE")]
    for r in sorted(table.routes, key=lambda r: (r.host.lstrip("*."), r.host)):
        for w in r.backends:
            b = table.backends.get(w.backend)
            eps = ",".join(str(e) for e in b.endpoints) if b else "(unknown backend)"
            weight = f" w={w.weight}" if len(r.backends) > 1 else ""
            kind = "exact"
            if r.is_wildcard:
                kind = "wildcard+" if r.multi_label else "wildcard1"
            rows.append(
                (
                    r.host,
                    ",".join(r.alpn) or "*",
                    kind,
                    ",".join(sorted(r.listeners)) if r.listeners is not None else "*",
                    w.backend + weight,
                    eps or "(none ready)",
                    r.source,
                )
            )
    for lis in table.listeners:
        if lis.default_backend:
            b = table.backends.get(lis.default_backend)
            eps = ",".join(str(e) for e in b.endpoints) if b else "(unknown backend)"
            rows.append(("(default)", "*", "default", lis.name, lis.default_backend, eps, ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.append("")
    lines.append(
        "listeners: "
        + ", ".join(f"{lis.name} ({lis.protocol} {lis.address})" for lis in table.listeners)
    )
    for c in table.conflicts:
        lines.append(f"conflict: {c.host} on {c.listener}: {c.winner} wins over {c.loser}")
    lines.extend(_render_limits(table))
    return "\n".join(lines)


def _limits_json(table: RouteTable, backend: str) -> dict[str, Any]:
    """The limits a connection routed to `backend` meets: its backend's, its tenant's,
    its client address's, each with where it came from."""
    b = table.backends.get(backend)
    views = {
        "backend": table.effective_limits("backend", backend),
        "tenant": table.effective_limits("tenant", b.tenant) if b is not None else {},
        "client": table.effective_limits("client"),
    }
    return {
        scope: {k: {"value": e.value, "from": e.source} for k, e in eff.items()}
        for scope, eff in views.items()
    }


def _render_limits(table: RouteTable) -> list[str]:
    """Each tenant's and backend's limits in force, with where each came from."""

    def fmt(eff: dict[str, Any]) -> str:
        return ", ".join(f"{k}={e.value:g} ({e.source})" for k, e in eff.items())

    out: list[str] = []
    client = table.effective_limits("client")
    if client:
        out.append(f"limits: client address: {fmt(client)}")
    for tenant in sorted({b.tenant for b in table.backends.values()}):
        eff = table.effective_limits("tenant", tenant)
        if eff:
            out.append(f"limits: tenant {tenant}: {fmt(eff)}")
    for name in sorted(table.backends):
        eff = table.effective_limits("backend", name)
        if eff:
            out.append(f"limits: backend {name}: {fmt(eff)}")
    return out


_EXEC_SERVE = False
"""Set by `main`: `serve` then runs in a fresh interpreter (see sniffer/launch.py)."""


def main() -> None:
    global _EXEC_SERVE
    _EXEC_SERVE = True
    app()
