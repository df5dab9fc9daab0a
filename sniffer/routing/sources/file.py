"""The routes file: parse and validate it, and watch it for changes.

Every problem is reported with the file, line and path of the value (`routes[2].backend`),
all at once, so one `sniffer check` run lists everything to fix. A file that fails
validation never replaces the last good table: `FileSource` logs the errors, counts
them, and keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from sniffer.observe import metrics
from sniffer.routing.sources import Publish, Update
from sniffer.routing.table import (
    SCOPE_FIELDS,
    Backend,
    Endpoint,
    LimitDefaults,
    Limits,
    Listener,
    Route,
    TableSpec,
    WeightedBackend,
    split_host_port,
    validate_alpn,
)
from sniffer.wire.errors import WireError
from sniffer.wire.hostname import normalize_route_host
from sniffer.wire.ja4 import is_ja4

log = logging.getLogger("sniffer.routes")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routes.yaml"
"""The routes file shipped inside the package: what `sniffer serve` runs by default."""


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    line: int | None
    message: str

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class RoutesFileError(ValueError):
    def __init__(self, filename: str, problems: Sequence[Problem]) -> None:
        self.filename = filename
        self.problems = tuple(problems)
        super().__init__("\n".join(p.format(filename) for p in problems))


_TOP = {"listeners", "backends", "routes", "limits", "tenants"}
_LISTENER_KEYS = {"name", "address", "protocol", "default_backend", "proxy_protocol_in", "deny_ja4"}
_BACKEND_KEYS = {"name", "endpoints", "proxy_protocol", "tenant", "limits"}
_ROUTE_KEYS = {"host", "backend", "backends", "listeners", "alpn"}


class _Checker:
    """Walks the composed YAML tree so every value keeps its line number."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, path: str, node: yaml.Node | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.problems.append(Problem(path, line, message))

    def mapping(self, path: str, node: yaml.Node, allowed: set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(path, node, "expected a mapping")
            return {}
        out: dict[str, yaml.Node] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            if not isinstance(key, str) or key not in allowed:
                self.fail(
                    f"{path}.{key}" if path else str(key),
                    knode,
                    f"unknown key (expected one of: {', '.join(sorted(allowed))})",
                )
                continue
            if key in out:
                self.fail(f"{path}.{key}" if path else key, knode, "duplicate key")
                continue
            out[key] = vnode
        return out

    def sequence(self, path: str, node: yaml.Node | None) -> list[yaml.Node]:
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.fail(path, node, "expected a list")
            return []
        return list(node.value)

    def string(self, path: str, node: yaml.Node | None, required: bool = True) -> str | None:
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            self.fail(path, node, "expected a string")
            return None
        value = str(node.value).strip()
        if required and not value:
            self.fail(path, node, "must not be empty")
            return None
        return value

    def boolean(self, path: str, node: yaml.Node | None) -> bool:
        if node is None:
            return False
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            return bool(yaml.safe_load(node.value))
        self.fail(path, node, "expected true or false")
        return False

    def integer(self, path: str, node: yaml.Node, low: int, high: int) -> int | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
            value = int(node.value, 0)
            if low <= value <= high:
                return value
        self.fail(path, node, f"expected a whole number from {low} to {high}")
        return None

    def limits(self, path: str, node: yaml.Node | None, scope: str, source: str) -> Limits:
        """A `limits:` mapping of `scope` (tenant, backend, client); absent = none set."""
        if node is None:
            return Limits()
        m = self.mapping(path, node, set(SCOPE_FIELDS[scope]))
        got: dict[str, float] = {}
        for key, vnode in m.items():
            if (
                key == "connections_per_second"
                and isinstance(vnode, yaml.ScalarNode)
                and (vnode.tag == "tag:yaml.org,2002:float")
            ):
                rate = float(vnode.value)
                if 0 < rate <= 10_000_000:
                    got[key] = rate
                    continue
            low = 0 if key == "max_connections" else 1
            value = self.integer(f"{path}.{key}", vnode, low, 10_000_000)
            if value is not None:
                got[key] = value
        return Limits(**got, source=source)  # type: ignore[arg-type]


def parse_routes(text: str, filename: str = "<routes>") -> TableSpec:
    """Parse a routes file; raise `RoutesFileError` listing every problem found."""
    chk = _Checker()
    top = chk.mapping("", _compose(text, filename), _TOP)
    defaults, tenant_limits = _parse_limits(chk, top, filename)
    listeners, default_backends = _parse_listeners(chk, top)
    backends = _parse_backends(chk, top, filename)
    for path, dnode, default in default_backends:
        if default not in backends:
            chk.fail(path, dnode, f"unknown backend {default!r}")
    routes = _parse_route_list(chk, top, backends, {lis.name for lis in listeners}, filename)
    if chk.problems:
        raise RoutesFileError(filename, sorted(chk.problems, key=lambda p: p.line or 0))
    return TableSpec(
        tuple(listeners), tuple(backends.values()), tuple(routes), defaults, tenant_limits
    )


def _compose(text: str, filename: str) -> yaml.Node:
    """The YAML node tree (nodes keep their line numbers for the problem list)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise RoutesFileError(filename, [Problem("", line, f"not valid YAML: {exc}")]) from None
    if root is None:
        raise RoutesFileError(filename, [Problem("", None, "empty file")])
    return root


def _parse_listeners(
    chk: _Checker, top: dict[str, yaml.Node]
) -> tuple[list[Listener], list[tuple[str, yaml.Node, str]]]:
    """`listeners:`, and each default_backend named (checked once backends are known)."""
    listeners: list[Listener] = []
    default_backends: list[tuple[str, yaml.Node, str]] = []
    for i, node in enumerate(chk.sequence("listeners", top.get("listeners"))):
        p = f"listeners[{i}]"
        m = chk.mapping(p, node, _LISTENER_KEYS)
        name = chk.string(f"{p}.name", m.get("name"))
        address = chk.string(f"{p}.address", m.get("address"))
        proto = chk.string(f"{p}.protocol", m.get("protocol"))
        for key in ("name", "address", "protocol"):
            if key not in m and isinstance(node, yaml.MappingNode):
                chk.fail(p, node, f"missing {key!r}")
        if proto is not None and proto not in ("tls", "http", "quic"):
            chk.fail(f"{p}.protocol", m["protocol"], "must be 'tls', 'http' or 'quic'")
            proto = None
        host_port = None
        if address is not None:
            try:
                host_port = split_host_port(address)
            except ValueError as exc:
                chk.fail(f"{p}.address", m["address"], str(exc))
        if name and name in {lis.name for lis in listeners}:
            chk.fail(f"{p}.name", m["name"], f"duplicate listener name {name!r}")
        default = chk.string(f"{p}.default_backend", m.get("default_backend"))
        if default is not None:
            default_backends.append((f"{p}.default_backend", m["default_backend"], default))
        deny: set[str] = set()
        for j, jnode in enumerate(chk.sequence(f"{p}.deny_ja4", m.get("deny_ja4"))):
            fp = chk.string(f"{p}.deny_ja4[{j}]", jnode)
            if fp is not None and not is_ja4(fp):
                chk.fail(f"{p}.deny_ja4[{j}]", jnode, f"{fp!r} is not a JA4 fingerprint")
            elif fp is not None:
                deny.add(fp)
        if proto == "quic" and m.get("proxy_protocol_in") is not None:
            chk.fail(f"{p}.proxy_protocol_in", m["proxy_protocol_in"], "not on quic listeners")
        if deny and proto == "http":
            chk.fail(
                f"{p}.deny_ja4",
                m["deny_ja4"],
                "JA4 needs a ClientHello: tls and quic listeners only",
            )
        if name and host_port and proto:
            listeners.append(
                Listener(
                    name=name,
                    host=host_port[0],
                    port=host_port[1],
                    protocol="quic" if proto == "quic" else "tls" if proto == "tls" else "http",
                    default_backend=default,
                    proxy_protocol_in=chk.boolean(
                        f"{p}.proxy_protocol_in", m.get("proxy_protocol_in")
                    ),
                    deny_ja4=frozenset(deny),
                )
            )
    return listeners, default_backends


def _parse_backends(chk: _Checker, top: dict[str, yaml.Node], filename: str) -> dict[str, Backend]:
    """`backends:`, by name."""
    backends: dict[str, Backend] = {}
    for i, node in enumerate(chk.sequence("backends", top.get("backends"))):
        p = f"backends[{i}]"
        m = chk.mapping(p, node, _BACKEND_KEYS)
        name = chk.string(f"{p}.name", m.get("name"))
        if "name" not in m and isinstance(node, yaml.MappingNode):
            chk.fail(p, node, "missing 'name'")
        endpoints: list[Endpoint] = []
        ep_nodes = chk.sequence(f"{p}.endpoints", m.get("endpoints"))
        if "endpoints" not in m and isinstance(node, yaml.MappingNode):
            chk.fail(p, node, "missing 'endpoints'")
        for j, ep in enumerate(ep_nodes):
            text_ep = chk.string(f"{p}.endpoints[{j}]", ep)
            if text_ep is None:
                continue
            try:
                endpoints.append(Endpoint(*split_host_port(text_ep)))
            except ValueError as exc:
                chk.fail(f"{p}.endpoints[{j}]", ep, str(exc))
        pp = chk.string(f"{p}.proxy_protocol", m.get("proxy_protocol")) or "none"
        if pp not in ("none", "v1", "v2"):
            chk.fail(f"{p}.proxy_protocol", m.get("proxy_protocol"), "must be none, v1 or v2")
            pp = "none"
        tenant = chk.string(f"{p}.tenant", m.get("tenant"))
        line = node.start_mark.line + 1
        limits = chk.limits(f"{p}.limits", m.get("limits"), "backend", f"{p} {filename}:{line}")
        if name is None:
            continue
        if name in backends:
            chk.fail(f"{p}.name", m["name"], f"duplicate backend name {name!r}")
            continue
        backends[name] = Backend(
            name=name,
            tenant=tenant or name,
            endpoints=tuple(endpoints),
            proxy_protocol="v1" if pp == "v1" else "v2" if pp == "v2" else "none",
            source=f"file {filename}:{line}",
            limits=limits,
        )
    return backends


def _parse_route_list(
    chk: _Checker,
    top: dict[str, yaml.Node],
    backends: dict[str, Backend],
    listener_names: set[str],
    filename: str,
) -> list[Route]:
    """`routes:`; each route's backends and listeners must exist."""
    routes: list[Route] = []
    for i, node in enumerate(chk.sequence("routes", top.get("routes"))):
        p = f"routes[{i}]"
        m = chk.mapping(p, node, _ROUTE_KEYS)
        host = chk.string(f"{p}.host", m.get("host"))
        if "host" not in m and isinstance(node, yaml.MappingNode):
            chk.fail(p, node, "missing 'host'")
        if host is not None:
            try:
                host = normalize_route_host(host)
            except WireError as exc:
                chk.fail(f"{p}.host", m["host"], f"bad hostname: {exc}")
                host = None
        targets = _route_targets(chk, p, m, node, backends)
        only = _route_listeners(chk, p, m, listener_names)
        alpn = _route_alpn(chk, p, m)
        if host is not None and targets:
            line = node.start_mark.line + 1
            routes.append(
                Route(
                    host=host,
                    backends=tuple(targets),
                    listeners=only,
                    multi_label=True,
                    source=f"file {filename}:{line}",
                    precedence=(0.0, f"{i:08d}"),
                    alpn=alpn,
                )
            )
    return routes


def _route_targets(
    chk: _Checker, p: str, m: dict[str, yaml.Node], node: yaml.Node, backends: dict[str, Backend]
) -> list[WeightedBackend]:
    """A route's `backend:` or weighted `backends:`."""
    targets: list[WeightedBackend] = []
    if ("backend" in m) == ("backends" in m):
        chk.fail(p, node, "give exactly one of 'backend' or 'backends'")
    elif "backend" in m:
        bname = chk.string(f"{p}.backend", m["backend"])
        if bname is not None:
            targets.append(WeightedBackend(bname, 1))
    else:
        for j, wnode in enumerate(chk.sequence(f"{p}.backends", m["backends"])):
            wm = chk.mapping(f"{p}.backends[{j}]", wnode, {"name", "weight"})
            bname = chk.string(f"{p}.backends[{j}].name", wm.get("name"))
            weight = 1
            if "weight" in wm:
                got = chk.integer(f"{p}.backends[{j}].weight", wm["weight"], 0, 1_000_000)
                weight = got or 0
            if bname is not None:
                targets.append(WeightedBackend(bname, weight))
        if targets and not any(w.weight for w in targets):
            chk.fail(f"{p}.backends", m["backends"], "every weight is 0")
    for j, w in enumerate(targets):
        if w.backend not in backends:
            key = "backend" if "backend" in m else f"backends[{j}]"
            chk.fail(
                f"{p}.{key}",
                m.get("backend") or m.get("backends"),
                f"unknown backend {w.backend!r}",
            )
    return targets


def _route_listeners(
    chk: _Checker, p: str, m: dict[str, yaml.Node], listener_names: set[str]
) -> frozenset[str] | None:
    """A route's `listeners:` (None: every listener)."""
    only: frozenset[str] | None = None
    if "listeners" in m:
        names = [
            chk.string(f"{p}.listeners[{j}]", n)
            for j, n in enumerate(chk.sequence(f"{p}.listeners", m["listeners"]))
        ]
        for j, n in enumerate(names):
            if n is not None and n not in listener_names:
                chk.fail(f"{p}.listeners[{j}]", m["listeners"], f"unknown listener {n!r}")
        only = frozenset(n for n in names if n)
    return only


def _route_alpn(chk: _Checker, p: str, m: dict[str, yaml.Node]) -> tuple[str, ...]:
    """A route's `alpn:` list, validated."""
    alpn: tuple[str, ...] = ()
    if "alpn" in m:
        names = [
            chk.string(f"{p}.alpn[{j}]", n)
            for j, n in enumerate(chk.sequence(f"{p}.alpn", m["alpn"]))
        ]
        try:
            alpn = validate_alpn(n for n in names if n is not None)
        except ValueError as exc:
            chk.fail(f"{p}.alpn", m["alpn"], str(exc))
    return alpn


def _parse_limits(
    chk: _Checker, top: dict[str, yaml.Node], filename: str
) -> tuple[LimitDefaults, tuple[tuple[str, Limits], ...]]:
    """The `limits:` defaults and the `tenants:` overrides."""
    defaults = LimitDefaults()
    if "limits" in top:
        node = top["limits"]
        m = chk.mapping("limits", node, set(SCOPE_FIELDS))
        defaults = LimitDefaults(
            *(
                chk.limits(
                    f"limits.{scope}",
                    m.get(scope),
                    scope,
                    f"limits.{scope} {filename}:{m[scope].start_mark.line + 1}"
                    if scope in m
                    else "",
                )
                for scope in ("tenant", "backend", "client")
            )
        )
    tenants: dict[str, Limits] = {}
    for i, node in enumerate(chk.sequence("tenants", top.get("tenants"))):
        p = f"tenants[{i}]"
        m = chk.mapping(p, node, {"name", "limits"})
        name = chk.string(f"{p}.name", m.get("name"))
        if "name" not in m and isinstance(node, yaml.MappingNode):
            chk.fail(p, node, "missing 'name'")
        lim = chk.limits(
            f"{p}.limits", m.get("limits"), "tenant", f"{p} {filename}:{node.start_mark.line + 1}"
        )
        if name is None:
            continue
        if name in tenants:
            chk.fail(f"{p}.name", m["name"], f"duplicate tenant {name!r}")
            continue
        tenants[name] = lim
    return defaults, tuple(tenants.items())


def load_routes(path: str | os.PathLike[str]) -> TableSpec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutesFileError(str(p), [Problem("", None, f"cannot read: {exc}")]) from None
    return parse_routes(text, str(p))


def override_listeners(spec: TableSpec, listeners: tuple[Listener, ...]) -> TableSpec:
    """Replace the file's listeners with `--listen` ones.

    A route limited to file listeners is kept on the new listeners of the same protocol,
    and a file listener's default backend moves to new listeners of its protocol.
    """
    proto = {lis.name: lis.protocol for lis in spec.listeners}
    defaults: dict[str, str] = {}
    for lis in spec.listeners:
        if lis.default_backend:
            defaults.setdefault(lis.protocol, lis.default_backend)
    new_listeners = tuple(
        replace(lis, default_backend=lis.default_backend or defaults.get(lis.protocol))
        for lis in listeners
    )
    routes = []
    for r in spec.routes:
        if r.listeners is None:
            routes.append(r)
            continue
        protos = {proto[n] for n in r.listeners if n in proto}
        routes.append(
            replace(r, listeners=frozenset(lis.name for lis in listeners if lis.protocol in protos))
        )
    return replace(spec, listeners=new_listeners, routes=tuple(routes))


class FileSource:
    """Publishes the routes file, then re-reads it whenever it changes on disk."""

    name = "file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        listeners: tuple[Listener, ...] | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.listeners = listeners
        self.poll_interval = poll_interval
        """Seconds between reads of the file (a few KB to a few MB; needs no inotify)."""
        self.polls = 0
        """Polls done since start (tests wait on it instead of sleeping)."""
        self._synced = False
        self._last_error: str | None = None
        self._loaded_at: float | None = None

    @property
    def synced(self) -> bool:
        return self._synced

    def health(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "synced": self._synced,
            "last_error": self._last_error,
            "loaded_at": self._loaded_at,
        }

    def _stamp(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def load(self, text: bytes | None = None) -> TableSpec:
        if text is None:
            spec = load_routes(self.path)
        else:
            try:
                decoded = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RoutesFileError(
                    str(self.path), [Problem("", None, f"cannot read: {exc}")]
                ) from None
            spec = parse_routes(decoded, str(self.path))
        return override_listeners(spec, self.listeners) if self.listeners else spec

    def _reload(self, publish: Publish, text: bytes | None = None) -> None:
        started = time.monotonic()
        try:
            spec = self.load(text)
        except RoutesFileError as exc:
            self._last_error = str(exc)
            metrics.RELOADS.labels("error").inc()
            log.error("routes file rejected, keeping the previous table:\n%s", exc)
            return
        self._last_error = None
        self._loaded_at = time.time()
        self._synced = True
        metrics.RELOADS.labels("ok").inc()
        publish(Update(spec, oldest_event=started))

    async def run(self, publish: Publish) -> None:
        """Load the file, then poll it; a changed content is applied only once two polls
        in a row read the same bytes. A file rewritten in place (truncated, then written
        in pieces) can parse half-written, listeners and backends without `routes:`;
        waiting for a quiet poll keeps that from being served. Writing by rename (as a
        ConfigMap mount does) is atomic and needs no such wait."""
        stamp = self._stamp()
        applied = self._read()
        self._reload(publish, applied)
        seen = applied
        while True:
            await asyncio.sleep(self.poll_interval)
            self.polls += 1
            new_stamp = self._stamp()
            if new_stamp == stamp and seen == applied:
                continue  # untouched since it was applied: a stat() is enough
            stamp = new_stamp
            text = self._read()
            if text is None:
                if seen is not None:
                    log.error("routes file %s is gone; keeping the previous table", self.path)
                seen = None
                continue
            if text != seen:  # changing (or just changed): wait for it to settle
                seen = text
                continue
            if text != applied:
                applied = text
                log.info("routes file %s changed; reloading", self.path)
                self._reload(publish, text)
