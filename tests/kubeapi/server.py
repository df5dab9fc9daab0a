"""An in-process Kubernetes API test server (HTTPS, bearer token) for the kinds sniffer reads.

It owns faithful-enough API conventions for a real client to run against it: discovery
(`/api`, `/apis`, `/apis/GROUP[/VERSION]`), list with `limit`/`continue` (consistent
snapshots, expiring with history) and `resourceVersion`, watch with `resourceVersion`,
`allowWatchBookmarks`, `timeoutSeconds`, BOOKMARK events and ERROR 410 when the version is
older than the bounded history, JSON `Status` bodies for errors, create/update/delete,
status subresource PUT/PATCH (merge, strategic-as-merge, JSON patch, apply-as-merge) with
resourceVersion preconditions (409 Conflict on a stale one, as for Lease updates),
`metadata.generation` bumped on spec changes only, Leases (coordination.k8s.io/v1), and
Gateway API objects validated against the upstream CRD schemas read from the shared
folder. Fault injection: go down (sockets closed, new connections refused), go silent
(open streams stay open and say nothing), expire history, 410 or close every stream,
answer 403 to everything (an authorizer still loading after a restart), fail the next
status writes with given codes. It must never be used outside tests and never listen
beyond loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import itertools
import json
import os
import shutil
import ssl
import tempfile
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.kubeapi.certs import make_pki

GW = "gateway.networking.k8s.io"


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str
    plural: str
    versions: tuple[str, ...]
    namespaced: bool = True
    crd: str | None = None
    """CRD file name under gateway-api/<channel>/ whose schema validates writes."""
    generation: bool = True
    """`metadata.generation` is kept (bumped on spec changes); Leases have none."""


RESOURCES = (
    Resource("Service", "", "services", ("v1",)),
    Resource("Namespace", "", "namespaces", ("v1",), namespaced=False),
    Resource("Lease", "coordination.k8s.io", "leases", ("v1",), generation=False),
    Resource("Ingress", "networking.k8s.io", "ingresses", ("v1",)),
    Resource("IngressClass", "networking.k8s.io", "ingressclasses", ("v1",), namespaced=False),
    Resource("EndpointSlice", "discovery.k8s.io", "endpointslices", ("v1",)),
    Resource(
        "GatewayClass",
        GW,
        "gatewayclasses",
        ("v1", "v1beta1"),
        False,
        "gateway.networking.k8s.io_gatewayclasses.yaml",
    ),
    Resource(
        "Gateway",
        GW,
        "gateways",
        ("v1", "v1beta1"),
        True,
        "gateway.networking.k8s.io_gateways.yaml",
    ),
    Resource(
        "TLSRoute",
        GW,
        "tlsroutes",
        ("v1", "v1alpha3", "v1alpha2"),
        True,
        "gateway.networking.k8s.io_tlsroutes.yaml",
    ),
    Resource(
        "ReferenceGrant",
        GW,
        "referencegrants",
        ("v1", "v1beta1"),
        True,
        "gateway.networking.k8s.io_referencegrants.yaml",
    ),
)
BY_PLURAL = {r.plural: r for r in RESOURCES}
BY_KIND = {r.kind: r for r in RESOURCES}


def shared_crd_dir() -> Path | None:
    """`$SNIFFER_SHARED_DIR/crds` or `<repo>/../shared/crds`, if it exists."""
    env = os.environ.get("SNIFFER_SHARED_DIR")
    base = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"
    crds = base / "crds" / "gateway-api"
    return crds if crds.is_dir() else None


class Schemas:
    """openAPIV3Schema per (plural, version) from the upstream CRDs (nothing copied)."""

    def __init__(self, crd_dir: Path) -> None:
        import jsonschema

        self._validators: dict[tuple[str, str], Any] = {}
        for res in RESOURCES:
            if res.crd is None:
                continue
            channel = "experimental" if res.plural == "tlsroutes" else "standard"
            doc = yaml.safe_load((crd_dir / channel / res.crd).read_text())
            for v in doc["spec"]["versions"]:
                schema = v["schema"]["openAPIV3Schema"]
                self._validators[(res.plural, v["name"])] = jsonschema.Draft7Validator(schema)

    def validate(self, plural: str, version: str, obj: dict[str, Any]) -> list[str]:
        validator = self._validators.get((plural, version))
        if validator is None:
            return []
        return [
            f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in validator.iter_errors(obj)
        ]


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class ApiFailure(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch: add, replace, remove, test (enough for status writes)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1] if parts else ""
        kind = op["op"]
        if kind == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op.get("value"):
                raise ApiFailure(422, "Invalid", f"test failed at {op['path']}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                parent.pop(last, None)
        else:
            raise ApiFailure(422, "Invalid", f"unsupported op {kind}")
    return doc


@dataclass(eq=False)
class _Watch:
    plural: str
    namespace: str | None
    version: str
    bookmarks: bool
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    silenced: bool = False
    transport: asyncio.BaseTransport | None = None


@dataclass
class _Snapshot:
    rv: int
    items: list[dict[str, Any]]


class KubeApiServer:
    """See the module docstring. Start with `await server.start()`; stop with `stop()`."""

    def __init__(
        self,
        *,
        token: str = "sniffer-test-token",
        history: int = 2000,
        tls_route_versions: tuple[str, ...] = ("v1",),
        serve_gateway_api: bool = True,
        bookmark_interval: float | None = None,
        validate: bool = True,
    ) -> None:
        # what the server serves
        self.token = token
        self.tls_route_versions = tls_route_versions
        self.serve_gateway_api = serve_gateway_api
        self.bookmark_interval = bookmark_interval
        crd_dir = shared_crd_dir()
        self.schemas = Schemas(crd_dir) if (validate and crd_dir is not None) else None
        # state: objects by plural then (namespace, name); history of events
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            r.plural: {} for r in RESOURCES
        }
        self.rv = 1000
        self.history: deque[tuple[int, str, str, dict[str, Any]]] = deque()
        self.history_limit = history
        self.floor = self.rv
        """Watches from a resourceVersion below this get 410 Gone."""
        self._snapshots: OrderedDict[str, _Snapshot] = OrderedDict()
        self._encoded: dict[tuple[str, str, str, str], tuple[dict[str, Any], bytes]] = {}
        """(plural, namespace, name, version) -> (stored object, its JSON as served)."""
        self._watches: set[_Watch] = set()
        # observability for tests
        self.requests: deque[tuple[str, str, str]] = deque(maxlen=5000)
        self.watch_opened = 0
        self.status_writes: list[tuple[str, str, str]] = []
        self.status_faults: deque[int] = deque()
        """HTTP codes the next status writes answer with (409, 429, 500...) before applying."""
        self.changed = asyncio.Condition()
        # network
        self._tmp = Path(tempfile.mkdtemp(prefix="kubeapi-"))
        self._pki = make_pki(self._tmp)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(self._pki.cert_file, self._pki.key_file)
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.down = False
        self.forbidden = False
        """Answer 403 to every request, as a restarting server does until its authorizer
        has loaded."""
        self.forbidden_resources: set[str] = set()
        """Plurals answered with 403 (an RBAC that does not grant them)."""

    # -- life cycle ----------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.host,
            port or self.port,
            ssl_context=self._ssl,
            reuse_address=True,
        )
        await site.start()
        self._runner = runner
        sockets = runner.addresses
        self.port = sockets[0][1]
        self.down = False

    async def stop(self) -> None:
        await self._shutdown()
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def _shutdown(self) -> None:
        for w in list(self._watches):
            if w.transport is not None:
                w.transport.abort()
            w.queue.put_nowait(("close", None))
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self._pki.ca_pem

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "test", "user": {"token": token or self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    # -- fault injection -----------------------------------------------------------------

    async def go_down(self) -> None:
        """Close every connection and stop listening: clients see resets, then refusals."""
        self.down = True
        await self._shutdown()

    async def go_up(self) -> None:
        await self.start(self.port)

    def go_silent(self) -> int:
        """Open streams stay open but never carry another byte (a dead proxy in between)."""
        for w in self._watches:
            w.silenced = True
        return len(self._watches)

    def expire_history(self) -> None:
        """Forget every event: any watch or continue token from before now gets 410."""
        self.history.clear()
        self.floor = self.rv
        self._snapshots.clear()

    def send_gone(self) -> None:
        """Send `ERROR 410 Gone` on every open stream, then close it (compaction mid-watch)."""
        self.expire_history()
        for w in self._watches:
            w.queue.put_nowait(("gone", None))

    def close_watches(self) -> None:
        """End every stream cleanly, as an API server restart or timeout would."""
        for w in self._watches:
            w.queue.put_nowait(("close", None))

    def send_bookmarks(self) -> None:
        for w in self._watches:
            if w.bookmarks:
                w.queue.put_nowait(("bookmark", None))

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    # -- object operations (also used directly by tests) -------------------------------

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def _record(self, plural: str, etype: str, obj: dict[str, Any]) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self.history.append((rv, plural, etype, obj))
        while len(self.history) > self.history_limit:
            old_rv = self.history.popleft()[0]
            self.floor = max(self.floor, old_rv)
        ns = obj["metadata"].get("namespace")
        for w in self._watches:
            if w.plural == plural and (w.namespace is None or w.namespace == ns):
                w.queue.put_nowait(("event", (etype, obj)))

    def _validate(self, plural: str, version: str, obj: dict[str, Any]) -> None:
        if self.schemas is None:
            return
        errors = self.schemas.validate(plural, version, obj)
        if errors:
            kind = BY_PLURAL[plural].kind
            raise ApiFailure(
                422,
                "Invalid",
                f"{kind} {obj['metadata'].get('name')} is invalid: " + "; ".join(errors[:5]),
            )

    def _version_of(self, res: Resource, obj: dict[str, Any]) -> str:
        api_version = str(obj.get("apiVersion") or "")
        version = api_version.rsplit("/", 1)[-1] if api_version else res.versions[0]
        return version

    def create(self, obj: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        res = BY_KIND[obj["kind"]]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace", ""), meta["name"])
        if key in self.objects[res.plural]:
            raise ApiFailure(409, "AlreadyExists", f"{res.plural} {meta['name']!r} already exists")
        obj.setdefault("apiVersion", f"{res.group}/{res.versions[0]}" if res.group else "v1")
        self._validate(res.plural, self._version_of(res, obj), obj)
        meta["uid"] = str(uuid.uuid4())
        # Test-only deviation: a creationTimestamp given by the test is kept, so conflict
        # tests can say which object is older without waiting for the clock.
        meta.setdefault("creationTimestamp", _now())
        if res.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        meta["resourceVersion"] = str(self._bump())
        self.objects[res.plural][key] = obj
        self._record(res.plural, "ADDED", obj)
        self._notify()
        return obj

    def update(self, obj: dict[str, Any], *, status: bool = False) -> dict[str, Any]:
        """Replace the main resource (status kept) or, with `status=True`, only the status."""
        res = BY_KIND[obj["kind"]]
        meta = obj.get("metadata", {})
        key = (meta.get("namespace", "") if res.namespaced else "", meta["name"])
        held = self.objects[res.plural].get(key)
        if held is None:
            raise ApiFailure(404, "NotFound", f"{res.plural} {meta['name']!r} not found")
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != held["metadata"]["resourceVersion"]:
            raise ApiFailure(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on {res.plural} {meta['name']!r}: the object "
                "has been modified; please apply your changes to the latest version and try again",
            )
        new = copy.deepcopy(held)
        if status:
            if "status" in obj:
                new["status"] = copy.deepcopy(obj["status"])
            else:
                new.pop("status", None)
        else:
            for k, v in obj.items():
                if k not in ("metadata", "status"):
                    new[k] = copy.deepcopy(v)
            for k in list(new):
                if k not in obj and k not in ("metadata", "status", "apiVersion", "kind"):
                    del new[k]
            for k in ("labels", "annotations"):
                if k in meta:
                    new["metadata"][k] = copy.deepcopy(meta[k])
                else:
                    new["metadata"].pop(k, None)
            if res.generation and new.get("spec") != held.get("spec"):
                new["metadata"]["generation"] = held["metadata"].get("generation", 1) + 1
        self._validate(res.plural, self._version_of(res, new), new)
        if new == held:
            return held  # a no-op write does not bump the resourceVersion (as the API)
        new["metadata"]["resourceVersion"] = str(self._bump())
        self.objects[res.plural][key] = new
        self._record(res.plural, "MODIFIED", new)
        self._notify()
        return new

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace (tests' convenience)."""
        res = BY_KIND[obj["kind"]]
        meta = obj["metadata"]
        key = (meta.get("namespace", "default") if res.namespaced else "", meta["name"])
        if key in self.objects[res.plural]:
            return self.update(obj)
        return self.create(obj)

    def delete(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        res = BY_KIND[kind]
        key = (namespace or "" if res.namespaced else "", name)
        held = self.objects[res.plural].pop(key, None)
        if held is None:
            raise ApiFailure(404, "NotFound", f"{res.plural} {name!r} not found")
        for version in res.versions:
            self._encoded.pop((res.plural, *key, version), None)
        gone = copy.deepcopy(held)
        gone["metadata"]["resourceVersion"] = str(self._bump())
        self._record(res.plural, "DELETED", gone)
        self._notify()
        return gone

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        res = BY_KIND[kind]
        return self.objects[res.plural].get((namespace or "" if res.namespaced else "", name))

    def load_bulk(self, objs: Iterable[dict[str, Any]]) -> int:
        """Insert objects without validation or events (synthetic clusters before a list)."""
        n = 0
        stamp = _now()
        for obj in objs:
            res = BY_KIND[obj["kind"]]
            meta = obj["metadata"]
            meta.setdefault("creationTimestamp", stamp)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = str(self._bump())
            self.objects[res.plural][(meta.get("namespace", ""), meta["name"])] = obj
            n += 1
        self.floor = self.rv
        return n

    def _notify(self) -> None:
        async def _wake() -> None:
            async with self.changed:
                self.changed.notify_all()

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(_wake())

    # -- HTTP ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.query_string))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        if self.forbidden:
            return _status(403, "Forbidden", "forbidden: the authorizer is not ready yet")
        try:
            return await self._route(request)
        except ApiFailure as f:
            return _status(f.code, f.reason, f.message)

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for res in RESOURCES:
            if res.group == GW and not self.serve_gateway_api:
                continue
            for v in self._served(res):
                versions = groups.setdefault(res.group, [])
                if v not in versions:
                    versions.append(v)
        return groups

    def _served(self, res: Resource) -> tuple[str, ...]:
        if res.group == GW and not self.serve_gateway_api:
            return ()
        if res.plural == "tlsroutes":
            return self.tls_route_versions
        return res.versions

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if not parts:
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        if parts[0] == "_test" and request.method == "POST":
            return await self._test_control(request, parts[1:])
        groups = self._groups()
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis"]:
            return web.json_response(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [_group_json(g, vs) for g, vs in groups.items() if g],
                }
            )
        if parts[0] == "apis" and len(parts) == 2:
            if parts[1] not in groups:
                raise ApiFailure(
                    404, "NotFound", "the server could not find the requested resource"
                )
            return web.json_response(_group_json(parts[1], groups[parts[1]]) | {"kind": "APIGroup"})
        if parts[0] == "api":
            group, rest = "", parts[1:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, rest = parts[1], parts[2:]
        else:
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        version, rest = rest[0], rest[1:]
        if version not in groups.get(group, []):
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return web.json_response(self._resource_list(group, version))
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, rest = rest[0], rest[1:]
        res = BY_PLURAL.get(plural)
        if res is None or res.group != group or version not in self._served(res):
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        if plural in self.forbidden_resources:
            raise ApiFailure(403, "Forbidden", f"{plural} is forbidden: RBAC does not allow it")
        name = rest[0] if rest else None
        sub = rest[1] if len(rest) > 1 else None
        if sub not in (None, "status"):
            raise ApiFailure(404, "NotFound", f"no subresource {sub}")
        q = request.query
        if request.method in ("POST", "PUT") and request.content_type not in _BODY_TYPES:
            # As the real server: a body must say what it is (aiohttp's default for bytes,
            # application/octet-stream, is refused).
            raise ApiFailure(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
            )
        if name is None:
            if request.method == "GET":
                if q.get("watch") in ("true", "1"):
                    return await self._watch(request, res, version, namespace)
                return self._list(res, version, namespace, q)
            if request.method == "POST":
                obj = await request.json()
                return web.json_response(
                    self._out(self.create(obj, namespace=namespace), res, version), status=201
                )
            raise ApiFailure(405, "MethodNotAllowed", "method not allowed")
        key_ns = namespace if res.namespaced else None
        if request.method == "GET":
            held = self.get(res.kind, key_ns, name)
            if held is None:
                raise ApiFailure(404, "NotFound", f'{plural}.{group} "{name}" not found')
            return web.json_response(self._out(held, res, version))
        if request.method == "DELETE":
            gone = self.delete(res.kind, key_ns, name)
            return web.json_response(self._out(gone, res, version))
        if request.method in ("PUT", "PATCH"):
            held = self.get(res.kind, key_ns, name)
            if held is None:
                raise ApiFailure(404, "NotFound", f'{plural}.{group} "{name}" not found')
            body = await request.read()
            if request.method == "PUT":
                new = json.loads(body)
            else:
                new = self._patched(held, body, request.content_type)
            new.setdefault("kind", res.kind)
            new.setdefault("metadata", {}).setdefault("name", name)
            if res.namespaced:
                new["metadata"]["namespace"] = namespace
            new["apiVersion"] = f"{group}/{version}" if group else version
            if sub == "status":
                self.status_writes.append((res.kind, namespace or "", name))
                if self.status_faults:
                    code = self.status_faults.popleft()
                    raise ApiFailure(code, "Injected", f"injected status-write fault {code}")
            out = self.update(new, status=sub == "status")
            return web.json_response(self._out(out, res, version))
        raise ApiFailure(405, "MethodNotAllowed", "method not allowed")

    def _patched(self, held: dict[str, Any], body: bytes, ctype: str) -> dict[str, Any]:
        base = copy.deepcopy(held)
        base["metadata"].pop("resourceVersion", None)  # only a patch's own RV is a precondition
        if ctype == "application/json-patch+json":
            return dict(json_patch(base, json.loads(body)))
        if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            return dict(merge_patch(base, json.loads(body)))
        if ctype == "application/apply-patch+yaml":
            return dict(merge_patch(base, yaml.safe_load(body)))
        raise ApiFailure(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format: {ctype}",
        )

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources = []
        for res in RESOURCES:
            if res.group != group or version not in self._served(res):
                continue
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            resources.append(
                {
                    "name": res.plural,
                    "singularName": res.kind.lower(),
                    "namespaced": res.namespaced,
                    "kind": res.kind,
                    "verbs": verbs,
                }
            )
            if res.group == GW or res.plural == "services":
                resources.append(
                    {
                        "name": res.plural + "/status",
                        "singularName": "",
                        "namespaced": res.namespaced,
                        "kind": res.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        gv = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }

    def _out(self, obj: dict[str, Any], res: Resource, version: str) -> dict[str, Any]:
        api_version = f"{res.group}/{version}" if res.group else version
        if obj.get("apiVersion") == api_version:
            return obj
        return obj | {"apiVersion": api_version}

    def _encode(self, obj: dict[str, Any], res: Resource, version: str) -> bytes:
        """An object's JSON as served at `version`, encoded once per stored object.

        Valid because writes replace a stored object and never mutate it: the cache entry
        holds the object it was made from and is used only while that is still the one.
        A large list is then a join of cached bytes, not a re-encoding of every item.
        """
        meta = obj["metadata"]
        key = (res.plural, meta.get("namespace", ""), meta["name"], version)
        hit = self._encoded.get(key)
        if hit is not None and hit[0] is obj:
            return hit[1]
        data = json.dumps(self._out(obj, res, version), separators=(",", ":")).encode()
        if self.objects[res.plural].get(key[1:3]) is obj:
            self._encoded[key] = (obj, data)
        else:
            self._encoded.pop(key, None)
        return data

    def _matching(self, res: Resource, namespace: str | None) -> list[dict[str, Any]]:
        items = self.objects[res.plural]
        keys = sorted(k for k in items if namespace is None or k[0] == namespace)
        return [items[k] for k in keys]

    def _list(self, res: Resource, version: str, namespace: str | None, q: Any) -> web.Response:
        limit = int(q.get("limit") or 0)
        token = q.get("continue")
        if token:
            try:
                snap_id, offset_s = base64.urlsafe_b64decode(token.encode()).decode().split(":")
                offset = int(offset_s)
            except ValueError as exc:
                raise ApiFailure(400, "BadRequest", "invalid continue token") from exc
            snap = self._snapshots.get(snap_id)
            if snap is None or snap.rv < self.floor:
                raise ApiFailure(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter.",
                )
        else:
            snap_id, offset = uuid.uuid4().hex, 0
            snap = _Snapshot(self.rv, self._matching(res, namespace))
        end = len(snap.items) if not limit else min(len(snap.items), offset + limit)
        page = snap.items[offset:end]
        meta: dict[str, Any] = {"resourceVersion": str(snap.rv)}
        if end < len(snap.items):
            self._snapshots[snap_id] = snap
            self._snapshots.move_to_end(snap_id)
            while len(self._snapshots) > 32:
                self._snapshots.popitem(last=False)
            meta["continue"] = base64.urlsafe_b64encode(f"{snap_id}:{end}".encode()).decode()
            meta["remainingItemCount"] = len(snap.items) - end
        else:
            self._snapshots.pop(snap_id, None)
        api_version = f"{res.group}/{version}" if res.group else version
        head = {"kind": res.kind + "List", "apiVersion": api_version, "metadata": meta}
        body = b"".join(
            (
                json.dumps(head, separators=(",", ":")).encode()[:-1],
                b',"items":[',
                b",".join(self._encode(o, res, version) for o in page),
                b"]}",
            )
        )
        return web.Response(body=body, content_type="application/json")

    async def _watch(
        self, request: web.Request, res: Resource, version: str, namespace: str | None
    ) -> web.StreamResponse:
        q = request.query
        rv_s = q.get("resourceVersion") or ""
        timeout = float(q.get("timeoutSeconds") or 1800)
        w = _Watch(res.plural, namespace, version, q.get("allowWatchBookmarks") in ("true", "1"))
        replay: list[tuple[str, dict[str, Any]]] = []
        gone = False
        if rv_s in ("", "0"):
            replay = [("ADDED", o) for o in self._matching(res, namespace)]
        else:
            rv = int(rv_s)
            if rv < self.floor:
                gone = True
            else:
                replay = [
                    (t, o)
                    for (erv, plural, t, o) in self.history
                    if erv > rv
                    and plural == res.plural
                    and (namespace is None or o["metadata"].get("namespace") == namespace)
                ]
        if not gone:
            # Registered in the same step as the replay is taken: no event falls between.
            w.transport = request.transport
            self._watches.add(w)
            self.watch_opened += 1
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            if gone:
                await _write_event(resp, "ERROR", _gone_status(rv_s))
                return resp
            for t, o in replay:
                await _write_event(resp, t, self._encode(o, res, version))
            async with asyncio.timeout(timeout):
                while True:
                    if self.bookmark_interval and w.bookmarks:
                        try:
                            async with asyncio.timeout(self.bookmark_interval):
                                what, payload = await w.queue.get()
                        except TimeoutError:
                            what, payload = "bookmark", None
                    else:
                        what, payload = await w.queue.get()
                    if what == "close":
                        break
                    if w.silenced:
                        continue
                    if what == "gone":
                        await _write_event(resp, "ERROR", _gone_status(rv_s))
                        break
                    if what == "bookmark":
                        await _write_event(
                            resp,
                            "BOOKMARK",
                            {
                                "kind": res.kind,
                                "apiVersion": self._out({}, res, version)["apiVersion"],
                                "metadata": {"resourceVersion": str(self.rv)},
                            },
                        )
                        continue
                    etype, obj = payload
                    await _write_event(resp, etype, self._encode(obj, res, version))
        except TimeoutError:
            pass
        except (ConnectionResetError, RuntimeError):
            return resp
        finally:
            self._watches.discard(w)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp

    async def _test_control(self, request: web.Request, parts: list[str]) -> web.Response:
        """`POST /_test/apply` {"objects": [...]}: upsert many objects at once (a burst)."""
        body = await request.json()
        if parts == ["apply"]:
            for obj in body["objects"]:
                self.apply(obj)
            return web.json_response({"resourceVersion": str(self.rv)})
        raise ApiFailure(404, "NotFound", "unknown test control")


_BODY_TYPES = frozenset(
    {"application/json", "application/yaml", "application/vnd.kubernetes.protobuf"}
)


def _group_json(group: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": vs, "preferredVersion": vs[0]}


def _gone_status(rv: str) -> dict[str, Any]:
    return status_body(410, "Expired", f"too old resource version: {rv}")


async def _write_event(resp: web.StreamResponse, etype: str, obj: dict[str, Any] | bytes) -> None:
    encoded = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    await resp.write(b'{"type":"' + etype.encode() + b'","object":' + encoded + b"}\n")


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_body(code, reason, message), status=code)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_counter = itertools.count()
