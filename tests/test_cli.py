"""`sniffer check`, `sniffer route-table` and `sniffer --version`, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from sniffer import __version__
from tests.conftest import REPO
from tests.support.sources import IdleSource

GOOD = """\
listeners:
  - name: tls
    address: 127.0.0.1:8443
    protocol: tls
    default_backend: fallback
  - name: web
    address: "[::1]:8080"
    protocol: http
backends:
  - name: tenant-a
    tenant: team-a
    endpoints: ["10.0.0.5:443", "10.0.0.6:443"]
  - name: ingress-style
    endpoints: ["10.0.0.7:443"]
  - name: fallback
    endpoints: ["127.0.0.1:9443"]
routes:
  - host: App.Tenant-A.example.
    backend: tenant-a
  - host: "*.tenant-a.example"
    backend: tenant-a
    listeners: [tls]
  - host: "*.deep.tenant-a.example"
    backend: ingress-style
"""

BAD = """\
listeners:
  - name: tls
    address: 127.0.0.1:99999
    protocol: tls
    default_backend: nowhere
backends:
  - name: a
    endpoints: ["10.0.0.5"]
    proxy_protocol: v3
routes:
  - host: "bad host.example"
    backend: a
  - host: ok.example
    backend: missing
    listeners: [nope]
  - host: 10.0.0.1
    backend: a
    extra: 1
"""


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sniffer", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=check,
    )


def test_version() -> None:
    out = run("--version", check=True)
    assert out.stdout.strip() == f"sniffer {__version__}"


def test_check_accepts_the_shipped_example_and_a_good_file(tmp_path: Path) -> None:
    assert run("check", "examples/routes.yaml").returncode == 0
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    out = run("check", str(good))
    assert out.returncode == 0, out.stderr
    assert "3 routes" in out.stdout


def test_check_names_every_error_by_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    out = run("check", str(bad))
    assert out.returncode == 1
    err = out.stderr
    expected = [
        f"{bad}:3: listeners[0].address: bad address '127.0.0.1:99999': port must be 1-65535",
        f"{bad}:5: listeners[0].default_backend: unknown backend 'nowhere'",
        f"{bad}:8: backends[0].endpoints[0]: bad address '10.0.0.5': expected host:port",
        f"{bad}:9: backends[0].proxy_protocol: must be none, v1 or v2",
        f"{bad}:11: routes[0].host: bad hostname",
        f"{bad}:14: routes[1].backend: unknown backend 'missing'",
        f"{bad}:15: routes[1].listeners[0]: unknown listener 'nope'",
        f"{bad}:16: routes[2].host: bad hostname",
        f"{bad}:18: routes[2].extra: unknown key",
    ]
    for line in expected:
        assert line in err, f"missing {line!r} in:\n{err}"
    assert f"9 problem(s) in {bad}" in err


def test_check_reports_yaml_syntax_errors_with_line(tmp_path: Path) -> None:
    bad = tmp_path / "syntax.yaml"
    bad.write_text("listeners:\n  - name: [unclosed\n")
    out = run("check", str(bad))
    assert out.returncode == 1
    assert f"{bad}:3: not valid YAML" in out.stderr or f"{bad}:2: not valid YAML" in out.stderr


def test_route_table_formats(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    table = run("route-table", "--routes", str(good), check=True).stdout
    assert "app.tenant-a.example" in table  # normalised: lower-case, trailing dot gone
    assert "10.0.0.5:443,10.0.0.6:443" in table
    data = json.loads(run("route-table", "--routes", str(good), "-o", "json", check=True).stdout)
    assert {r["host"] for r in data["routes"]} == {
        "app.tenant-a.example",
        "*.tenant-a.example",
        "*.deep.tenant-a.example",
    }
    assert data["backends"][0]["tenant"] == "team-a"
    as_yaml = yaml.safe_load(run("route-table", "--routes", str(good), "-o", "yaml").stdout)
    assert as_yaml["routes"] == data["routes"]


def test_route_table_explains_a_host(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)

    def explain(name: str, listener: str = "tls") -> dict[str, object]:
        out = run(
            "route-table",
            "--routes",
            str(good),
            "--host",
            name,
            "--listener",
            listener,
            "-o",
            "json",
        )
        result: dict[str, object] = json.loads(out.stdout)[0]
        return result

    assert explain("APP.tenant-a.example")["match"] == "exact"
    hit = explain("x.y.deep.tenant-a.example")
    assert hit["match"] == "wildcard" and hit["route"] == "*.deep.tenant-a.example"
    assert explain("other.example")["match"] == "default"
    assert explain("x.tenant-a.example", listener="web")["match"] == "none"  # route is tls-only
    text = run("route-table", "--routes", str(good), "--host", "x.tenant-a.example").stdout
    assert "tls: x.tenant-a.example -> wildcard: tenant-a" in text
    assert "web: x.tenant-a.example -> none: refused" in text


def test_listen_flags() -> None:
    from sniffer.cli import parse_listen

    tls, http, v6 = parse_listen(["tls:0.0.0.0:8443@443", "http:0.0.0.0:80", "tls:[::]:9443"])
    assert (tls.name, tls.host, tls.port, tls.serves_port) == ("tls-443", "0.0.0.0", 8443, 443)
    assert (http.name, http.protocol, http.serves_port) == ("http-80", "http", 80)
    assert (v6.name, v6.host, v6.port) == ("tls-9443", "::", 9443)
    (quic,) = parse_listen(["quic:0.0.0.0:443"])
    assert (quic.name, quic.protocol, quic.port) == ("quic-443", "quic", 443)
    fp = "q13d0307h3_55b375c5d22e_1cecd519fee8"
    from sniffer.cli import deny_ja4_on

    denied = deny_ja4_on((tls, http, quic), [fp])
    assert [lis.deny_ja4 for lis in denied] == [frozenset({fp}), frozenset(), frozenset({fp})]
    for bad in ("udp:0.0.0.0:53", "tls:0.0.0.0", "tls:0.0.0.0:8443@x", "tls:::443"):
        out = run("serve", "--listen", bad, "--workers", "0")
        assert out.returncode == 2 and "Invalid value" in out.stderr, (bad, out.stderr)


LIMITS = """\
listeners:
  - {name: tls, address: "127.0.0.1:8443", protocol: tls}
limits:                          # defaults; absent = unlimited, except the process limit
  tenant:    {max_connections: 20000, connections_per_second: 2000, burst: 4000}
  backend:   {max_connections: 10000, max_pending_dials: 256}
  client:    {max_connections: 512}
tenants:                         # optional per-tenant overrides, by tenant name
  - name: tenant-a
    limits: {max_connections: 300, connections_per_second: 50, burst: 50}
backends:
  - name: tenant-a
    endpoints: ["10.0.0.5:443"]
    limits: {max_connections: 200}   # optional per-backend override
  - name: tenant-b
    endpoints: ["10.0.0.6:443"]
routes:
  - {host: a.example, backend: tenant-a}
  - {host: b.example, backend: tenant-b}
"""


def test_route_table_shows_effective_limits_and_where_they_came_from(tmp_path: Path) -> None:
    f = tmp_path / "limits.yaml"
    f.write_text(LIMITS)
    data = json.loads(run("route-table", "--routes", str(f), "-o", "json", check=True).stdout)
    backends = {b["name"]: b["limits"] for b in data["backends"]}
    assert backends["tenant-a"]["max_connections"] == {"value": 200, "from": f"backends[0] {f}:11"}
    assert backends["tenant-a"]["max_pending_dials"] == {
        "value": 256,
        "from": f"limits.backend {f}:5",
    }
    assert backends["tenant-b"]["max_connections"]["from"] == f"limits.backend {f}:5"
    tenants = {t["name"]: t["limits"] for t in data["tenants"]}
    assert tenants["tenant-a"]["max_connections"]["value"] == 300
    assert tenants["tenant-a"]["burst"] == {"value": 50, "from": f"tenants[0] {f}:8"}
    assert tenants["tenant-b"]["max_connections"] == {
        "value": 20000,
        "from": f"limits.tenant {f}:4",
    }
    assert data["limits"]["client"]["max_connections"] == 512
    text = run("route-table", "--routes", str(f), check=True).stdout
    assert f"limits: backend tenant-a: max_connections=200 (backends[0] {f}:11)" in text
    hit = json.loads(
        run("route-table", "--routes", str(f), "--host", "a.example", "-o", "json").stdout
    )[0]
    assert hit["backends"][0]["limits"]["tenant"]["connections_per_second"]["value"] == 50
    assert hit["backends"][0]["limits"]["client"]["max_connections"]["value"] == 512


def test_check_names_bad_limits(tmp_path: Path) -> None:
    f = tmp_path / "bad-limits.yaml"
    f.write_text(
        LIMITS.replace("max_connections: 300", "max_connections: -3")
        .replace("client:    {max_connections: 512}", "client:    {burst: 5}")
        .replace("max_pending_dials: 256", "max_pending_dials: lots")
    )
    out = run("check", str(f))
    assert out.returncode == 1
    for line in (
        f"{f}:5: limits.backend.max_pending_dials: expected a whole number",
        f"{f}:6: limits.client.burst: unknown key (expected one of: max_connections)",
        f"{f}:9: tenants[0].limits.max_connections: expected a whole number",
    ):
        assert line in out.stderr, out.stderr


def test_serve_limit_flags_fill_in_under_the_file(tmp_path: Path) -> None:
    """`serve` flags are defaults: a routes file's `limits:` wins, the flags fill the rest."""
    from sniffer.cli import _flag_limits
    from sniffer.routing.controller import RouteController
    from sniffer.routing.sources import Update
    from sniffer.routing.sources.file import parse_routes

    flags = _flag_limits(100, 2.5, None, 9, None, 7)

    controller = RouteController([IdleSource()], flags)  # type: ignore[list-item]
    publish = controller._publisher(controller.sources[0])  # type: ignore[arg-type]
    publish(Update(parse_routes(LIMITS)))
    table = controller.table
    tenant_b = table.effective_limits("tenant", "tenant-b")
    assert tenant_b["max_connections"].value == 20000  # the file's limits.tenant wins
    assert table.effective_limits("client")["max_connections"].value == 512
    # The same file without its `limits:` and `tenants:` sections.
    listeners, rest = LIMITS.split("limits:", 1)
    publish(Update(parse_routes(listeners + "backends:" + rest.split("backends:", 1)[1])))
    table = controller.table
    assert table.effective_limits("tenant", "tenant-b")["max_connections"].source == ("serve flags")
    assert table.effective_limits("tenant", "tenant-b")["connections_per_second"].value == 2.5
    assert table.effective_limits("client")["max_connections"].value == 7
    assert table.effective_limits("backend", "tenant-b")["max_connections"].value == 9
    assert table.effective_limits("backend", "tenant-a")["max_connections"].value == 200
