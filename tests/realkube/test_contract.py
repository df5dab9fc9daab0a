"""The contract: the in-repo API test server answers sniffer's requests as the real one does.

One sequence of requests, in the order and shape sniffer makes them (discovery, paginated
list, watch with bookmarks from a list's resourceVersion, create,
replace, merge-patch and status writes, Lease create and conditional update) plus the
refusals a client must handle (stale resourceVersion, wrong content type, missing object,
invalid object), is played against the real kube-apiserver and against
`tests/kubeapi/server.py`. Each answer is reduced to its status code and the fields sniffer
or a test reads (values where they are deterministic, presence where they are not); the
two records must be equal, step by step. A disagreement is a bug in the fake (or a
deliberate test-only deviation, listed in DEVIATIONS with its reason).
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.kubeapi import objects as o
from tests.kubeapi.server import KubeApiServer
from tests.realkube.world import endpoints, gateway, route, service
from tests.support.realkube import Client, RealKube, path_of

Obj = dict[str, Any]
ABSENT = "<absent>"
GW = "gateway.networking.k8s.io"


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            return ABSENT
    return obj


def shape(answer: tuple[int, Any], *fields: str) -> Obj:
    """The status code and the named fields ("?field": only whether it is there)."""
    code, body = answer
    out: Obj = {"http": code}
    for f in fields:
        if f.startswith("?"):
            out[f] = _get(body, f[1:]) != ABSENT
        else:
            out[f] = _get(body, f)
    return out


ERROR = ("kind", "status", "reason", "code")
OBJ = (
    "kind",
    "apiVersion",
    "metadata.name",
    "metadata.namespace",
    "?metadata.uid",
    "?metadata.resourceVersion",
    "?metadata.creationTimestamp",
    "metadata.generation",
)


def sequence(c: Client, ns: str) -> list[tuple[str, Obj]]:
    """Play the requests; return (step, answer's shape) in order."""
    rec: list[tuple[str, Obj]] = []

    def step(name: str, answer: tuple[int, Any], *fields: str) -> Any:
        rec.append((name, shape(answer, *fields)))
        return answer[1]

    # -- discovery (what the source asks before choosing versions)
    step("discovery /apis", c.request("GET", "/apis"), "kind")
    found = c.request("GET", f"/apis/{GW}")[1]
    step(
        "discovery gateway group",
        (200, {"has_v1": any(v["version"] == "v1" for v in (found or {}).get("versions", []))}),
        "has_v1",
    )
    step("discovery missing group", c.request("GET", "/apis/nosuch.example.com"), "code")
    step("discovery missing version", c.request("GET", f"/apis/{GW}/v9"), *ERROR)
    step("missing resource", c.request("GET", f"/apis/{GW}/v1/nosuch"), *ERROR)

    # -- namespace and core objects
    step(
        "create Namespace",
        c.request(
            "POST",
            path_of("Namespace"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        ),
        "kind",
        "metadata.name",
        "?metadata.uid",
        "metadata.generation",
    )
    svc = step("create Service", c.request("POST", path_of("Service", ns), service(ns)), *OBJ)
    step(
        "create EndpointSlice",
        c.request("POST", path_of("EndpointSlice", ns), endpoints(ns)),
        *OBJ,
        "endpoints.0.addresses",
    )
    loopback = endpoints(ns, "loop")
    loopback["endpoints"][0]["addresses"] = ["127.0.0.1"]
    step(
        "create EndpointSlice with a loopback address",
        c.request("POST", path_of("EndpointSlice", ns), loopback),
        *ERROR,
    )
    step(
        "list Services page",
        c.request("GET", path_of("Service", ns), query={"limit": "500"}),
        "kind",
        "apiVersion",
        "?metadata.resourceVersion",
        "metadata.continue",
        "items.0.kind",
        "items.0.metadata.name",
    )
    listing = c.request("GET", path_of("Service", ns), query={"limit": "1"})[1]
    list_rv = listing["metadata"]["resourceVersion"]

    # -- watch from the list's resourceVersion: the next change arrives
    c.request("POST", path_of("Service", ns), service(ns, "second"))
    events = list(
        c.watch_lines(
            path_of("Service", ns),
            {
                "watch": "true",
                "resourceVersion": list_rv,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "1",
            },
        )
    )
    changes = [e for e in events if e["type"] != "BOOKMARK"]
    step(
        "watch from list rv",
        (
            200,
            {
                "types": [e["type"] for e in changes],
                "names": [e["object"]["metadata"]["name"] for e in changes],
                "bookmarks_carry_rv_only": all(
                    set(e["object"]["metadata"]) <= {"resourceVersion", "annotations"}
                    for e in events
                    if e["type"] == "BOOKMARK"
                ),
            },
        ),
        "types",
        "names",
        "bookmarks_carry_rv_only",
    )

    # -- Ingress: a host the real server refuses, and a good one
    bad = o.ingress(ns, "bad", [("A.Example.com.", "web", 443)])
    step(
        "create Ingress with an invalid host",
        c.request("POST", path_of("Ingress", ns), bad),
        *ERROR,
    )
    step(
        "create Ingress with an IP host",
        c.request("POST", path_of("Ingress", ns), o.ingress(ns, "ip", [("10.1.2.3", "web", 443)])),
        *ERROR,
    )
    ing = step(
        "create Ingress",
        c.request(
            "POST", path_of("Ingress", ns), o.ingress(ns, "web", [("a.example.com", "web", 443)])
        ),
        *OBJ,
    )

    # -- Gateway API objects: create, replace, status writes, generation
    step("create Gateway", c.request("POST", path_of("Gateway", ns), gateway(ns)), *OBJ)
    dup = gateway(ns, "dup", [o.tls_listener("a"), o.tls_listener("a", 8443)])
    step(
        "create Gateway with two listeners of one name (list-map key)",
        c.request("POST", path_of("Gateway", ns), dup),
        *ERROR,
    )
    cel = gateway(ns, "cel", [o.tls_listener("h", 80, protocol="HTTP")])
    cel["spec"]["listeners"][0]["tls"] = {"mode": "Terminate"}
    step(
        "create Gateway breaking a CEL rule (tls on an HTTP listener)",
        c.request("POST", path_of("Gateway", ns), cel),
        *ERROR,
    )
    rt = step(
        "create TLSRoute",
        c.request("POST", path_of("TLSRoute", ns), route(ns, "r", ["r.example.com"], ns)),
        *OBJ,
        "spec.hostnames",
        "status",
    )
    step(
        "create TLSRoute again",
        c.request("POST", path_of("TLSRoute", ns), route(ns, "r", ["r.example.com"], ns)),
        *ERROR,
    )
    step(
        "create TLSRoute with an invalid hostname",
        c.request("POST", path_of("TLSRoute", ns), route(ns, "bad", ["-bad-.example.com"], ns)),
        *ERROR,
    )
    rpath = path_of("TLSRoute", ns, "r")

    new = copy.deepcopy(rt)
    new["spec"]["hostnames"] = ["r.example.com", "s.example.com"]
    new["status"] = {"parents": []}
    put = step(
        "replace TLSRoute (spec change, status in body)",
        c.request("PUT", rpath, new),
        *OBJ,
        "spec.hostnames",
        "status",
    )
    step("replace TLSRoute with a stale resourceVersion", c.request("PUT", rpath, new), *ERROR)
    same = copy.deepcopy(put)
    step("replace TLSRoute unchanged", c.request("PUT", rpath, same), "metadata.generation")
    rv_before = put["metadata"]["resourceVersion"]
    noop = c.request("PUT", rpath, same)[1]
    step(
        "an unchanged replace keeps the resourceVersion",
        (200, {"same": noop["metadata"]["resourceVersion"] == rv_before}),
        "same",
    )

    parents = [
        {
            "parentRef": {"group": GW, "kind": "Gateway", "name": "edge", "namespace": ns},
            "controllerName": "sniffer.dev/gateway-controller",
            "conditions": [
                {
                    "type": "Accepted",
                    "status": "True",
                    "reason": "Accepted",
                    "message": "ok",
                    "observedGeneration": 2,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    ]
    step(
        "merge-patch status",
        c.request(
            "PATCH",
            rpath + "/status",
            {"status": {"parents": parents}},
            content_type="application/merge-patch+json",
        ),
        *OBJ,
        "spec.hostnames",
        "status.parents.0.conditions.0.reason",
    )
    step(
        "merge-patch status with a stale resourceVersion",
        c.request(
            "PATCH",
            rpath + "/status",
            {"metadata": {"resourceVersion": rv_before}, "status": {"parents": parents}},
            content_type="application/merge-patch+json",
        ),
        *ERROR,
    )
    held = c.request("GET", rpath)[1]
    changed = copy.deepcopy(held)
    changed["spec"]["hostnames"] = ["ignored.example.com"]
    changed["status"]["parents"][0]["conditions"][0]["message"] = "via put"
    step(
        "replace status (spec in body)",
        c.request("PUT", rpath + "/status", changed),
        *OBJ,
        "spec.hostnames",
        "status.parents.0.conditions.0.message",
    )
    step(
        "merge-patch labels (metadata only)",
        c.request(
            "PATCH",
            rpath,
            {"metadata": {"labels": {"a": "b"}}},
            content_type="application/merge-patch+json",
        ),
        *OBJ,
        "metadata.labels",
    )
    step(
        "merge-patch spec",
        c.request(
            "PATCH",
            rpath,
            {"spec": {"hostnames": ["t.example.com"]}},
            content_type="application/merge-patch+json",
        ),
        *OBJ,
        "spec.hostnames",
        "?status",
    )
    step(
        "patch status of a missing object",
        c.request(
            "PATCH",
            path_of("TLSRoute", ns, "nope") + "/status",
            {"status": {}},
            content_type="application/merge-patch+json",
        ),
        *ERROR,
    )

    # -- content types
    lease_path = path_of("Lease", ns)
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "l", "namespace": ns},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }
    step(
        "create without a content type",
        c.request("POST", lease_path, lease, content_type=None),
        *ERROR,
    )
    step(
        "create as octet-stream",
        c.request("POST", lease_path, lease, content_type="application/octet-stream"),
        *ERROR,
    )
    step(
        "replace as octet-stream",
        c.request("PUT", rpath, held, content_type="application/octet-stream"),
        *ERROR,
    )
    step(
        "patch as application/json",
        c.request("PATCH", rpath + "/status", {"status": {}}, content_type="application/json"),
        *ERROR,
    )

    # -- Lease: create, conditional update, conflicts (leader election)
    made = step("create Lease", c.request("POST", lease_path, lease), *OBJ, "spec.holderIdentity")
    step("create Lease again", c.request("POST", lease_path, lease), *ERROR)
    del made
    renewed = copy.deepcopy(c.request("GET", f"{lease_path}/l")[1])
    renewed["spec"]["holderIdentity"] = "b"
    step(
        "update Lease (current rv)",
        c.request("PUT", f"{lease_path}/l", renewed),
        *OBJ,
        "spec.holderIdentity",
    )
    step("update Lease (stale rv)", c.request("PUT", f"{lease_path}/l", renewed), *ERROR)
    step("get missing Lease", c.request("GET", f"{lease_path}/none"), *ERROR)

    # -- delete
    step("delete TLSRoute", c.request("DELETE", rpath), "kind", "?metadata.name")
    step("get deleted TLSRoute", c.request("GET", rpath), *ERROR)
    step("delete Ingress", c.request("DELETE", path_of("Ingress", ns, "web")), "?kind")
    del svc, ing
    return rec


DEVIATIONS: dict[str, str] = {
    "create EndpointSlice with a loopback address": (
        "the real server refuses 127.0.0.0/8 endpoints (422); the fake accepts them so that "
        "tests can route real connections to loopback backends through EndpointSlices "
        "(the real tier uses ExternalName Services instead)"
    ),
    "create Gateway breaking a CEL rule (tls on an HTTP listener)": (
        "the fake validates CRDs with their OpenAPI schema and list-map keys but does not "
        "evaluate CEL rules (x-kubernetes-validations); only the real tier catches those"
    ),
}
"""Steps where the fake differs on purpose (step -> why). The test fails if such a step
stops differing, so this list stays true."""


@pytest.fixture
async def fake() -> AsyncIterator[KubeApiServer]:
    server = KubeApiServer()
    await server.start()
    yield server
    await server.stop()


async def test_the_fake_answers_as_the_real_server(kube: RealKube, fake: KubeApiServer) -> None:
    ns = "contract-" + uuid.uuid4().hex[:6]
    real = await asyncio.to_thread(sequence, kube.admin, ns)
    ours = await asyncio.to_thread(sequence, Client(fake.url, fake.ca_pem, fake.token), ns)
    assert [s for s, _ in real] == [s for s, _ in ours]
    diffs = [
        f"{name}:\n    real: {a}\n    fake: {b}"
        for (name, a), (_, b) in zip(real, ours, strict=True)
        if a != b and name not in DEVIATIONS
    ]
    assert not diffs, "the fake disagrees with the real server:\n" + "\n".join(diffs)
    agreeing = [name for (name, a), (_, b) in zip(real, ours, strict=True) if a == b]
    assert not set(DEVIATIONS) & set(agreeing), "a listed deviation is gone: update DEVIATIONS"
