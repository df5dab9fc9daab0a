"""`route-table` with ALPN routes (column, `--host NAME --alpn P`) and `serve --deny-ja4`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from sniffer.cli import deny_ja4_on, parse_listen
from tests.test_cli import run

FP = "t13d1516h2_8daaf6152771_e5627efa2ab1"
ROUTES = """\
listeners:
  - {name: tls, address: 127.0.0.1:8443, protocol: tls}
backends:
  - {name: tenant, endpoints: ["10.0.0.5:443"]}
  - {name: solver, endpoints: ["10.0.0.9:443"]}
routes:
  - {host: a.example, backend: tenant}
  - {host: a.example, backend: solver, alpn: [acme-tls/1]}
"""


def test_route_table_shows_and_explains_alpn(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    text = run("route-table", "--routes", str(routes), check=True).stdout
    header, *rows = text.splitlines()
    assert header.split()[:3] == ["HOST", "ALPN", "MATCH"]
    assert any(r.split()[:2] == ["a.example", "acme-tls/1"] for r in rows)
    assert any(r.split()[:2] == ["a.example", "*"] for r in rows)

    def explain(*alpn: str) -> dict[str, object]:
        flags = [x for p in alpn for x in ("--alpn", p)]
        out = run(
            "route-table",
            "--routes",
            str(routes),
            "--host",
            "a.example",
            *flags,
            "-o",
            "json",
            check=True,
        )
        result: dict[str, object] = json.loads(out.stdout)[0]
        return result

    acme = explain("h2", "acme-tls/1")
    assert acme["backends"][0]["name"] == "solver"  # type: ignore[index]
    assert acme["why"] == "exact route a.example for ALPN acme-tls/1"
    assert explain("h2")["backends"][0]["name"] == "tenant"  # type: ignore[index]
    assert explain()["backends"][0]["name"] == "tenant"  # type: ignore[index]
    plain = run(
        "route-table", "--routes", str(routes), "--host", "a.example", "--alpn", "acme-tls/1"
    ).stdout
    assert "tls: a.example (ALPN acme-tls/1) -> exact: solver (10.0.0.9:443)" in plain


def test_deny_ja4_flag() -> None:
    listeners = parse_listen(["tls:0.0.0.0:443", "http:0.0.0.0:80"])
    tls, http = deny_ja4_on(listeners, [FP])
    assert tls.deny_ja4 == frozenset({FP}) and http.deny_ja4 == frozenset()
    assert deny_ja4_on(listeners, []) == listeners
    with pytest.raises(typer.BadParameter, match="not a JA4"):
        deny_ja4_on(listeners, ["nope"])
    out = run("serve", "--deny-ja4", FP, "--admin", "")
    assert out.returncode != 0 and "--deny-ja4 needs --listen" in out.stderr
