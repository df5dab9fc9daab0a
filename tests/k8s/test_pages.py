"""The typed list-page decoders (`pages`) against the generic path (`json.loads` + `parsers`).

The contract: a page the typed decoder accepts gives exactly the records, keys, version
and continue token the generic path gives; a page it is unsure of (None) is one the
generic path decodes, reporting the objects it refuses. Checked on the synthetic cluster,
on the shapes sniffer reads differently (annotations, ExternalName, headless, not-ready
endpoints, unlabelled slices), on random objects, and end to end through a source.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniffer.routing.sources.kubernetes.fields import MalformedObject
from sniffer.routing.sources.kubernetes.pages import PageDecoder, service_pages, slice_pages
from sniffer.routing.sources.kubernetes.parsers import (
    object_key,
    parse_endpoint_slice,
    parse_service,
)
from tests.k8s.conftest import needs_crds
from tests.kubeapi import objects as o

ANNOTATION = "sniffer.dev/http-port"
Obj = dict[str, Any]


def page(items: list[Obj], meta: Obj | None = None) -> bytes:
    """A list page's body as the API server sends it."""
    body = {"kind": "List", "apiVersion": "v1", "metadata": meta or {}, "items": items}
    return json.dumps(body, separators=(",", ":")).encode()


def generic(body: bytes, parse: Callable[[Obj], Any]) -> tuple[str, str | None, list[Any]]:
    """What the informer makes of a page without a typed decoder."""
    data = json.loads(body)
    meta = data.get("metadata") or {}
    out = []
    for obj in data.get("items") or ():
        ns, name = object_key(obj)
        out.append((ns, name, parse(obj)))
    return str(meta.get("resourceVersion") or ""), meta.get("continue") or None, out


def typed_of(decoder: PageDecoder[Any]) -> Callable[[bytes], Any]:
    """What the informer makes of a page with the typed decoder, or None (unsure)."""

    def typed(body: bytes) -> tuple[str, str | None, list[Any]] | None:
        page = decoder(body)
        entries = page.entries() if page is not None else None
        if page is None or entries is None:
            return None
        return page.resource_version, page.continue_, entries

    return typed


def decoders(keep_cluster_ip: bool) -> dict[str, tuple[Any, Callable[[Obj], Any]]]:
    return {
        "Service": (
            typed_of(service_pages(ANNOTATION, keep_cluster_ip)),
            lambda obj: parse_service(obj, ANNOTATION, keep_cluster_ip),
        ),
        "EndpointSlice": (typed_of(slice_pages()), parse_endpoint_slice),
    }


def synthetic(kind: str, tenants: int = 12) -> list[Obj]:
    out = []
    for i, obj in enumerate(o.synthetic_cluster(tenants)):
        if obj["kind"] == kind:
            obj["metadata"] |= {"uid": f"u-{i}", "resourceVersion": str(100 + i)}
            obj["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:x": {}}}]
            out.append(obj)
    return out


@pytest.mark.parametrize("keep_cluster_ip", [False, True])
@pytest.mark.parametrize("kind", ["Service", "EndpointSlice"])
def test_synthetic_cluster_pages_decode_typed_as_the_parsers_do(kind, keep_cluster_ip):
    typed, parse = decoders(keep_cluster_ip)[kind]
    items = synthetic(kind)
    for meta in ({"resourceVersion": "812", "continue": "abc=="}, {"resourceVersion": "813"}, {}):
        body = page(items, meta)
        got = typed(body)
        assert got is not None, "the typed path must serve the common shapes"
        assert got == generic(body, parse)
    rv, cont, entries = typed(page(items, {"resourceVersion": "812", "continue": "abc=="}))
    assert (rv, cont, len(entries)) == ("812", "abc==", len(items))


def _services() -> list[Obj]:
    return [
        o.service("a", "plain"),
        o.service("a", "named-target", [("https", 443, "tls"), ("http", 80, "8080", "TCP")]),
        o.service("a", "udp", [("quic", 443, 443, "UDP")]),
        o.service("a", "headless", cluster_ip=None),
        o.service("a", "ext", type="ExternalName", external_name="db.example.com"),
        o.service(
            "a",
            "annotated",
            annotations={
                ANNOTATION: " http ",
                "sniffer.dev/max-connections": "10",
                "other/annotation": "x",
            },
        ),
        o.service("a", "http-number", annotations={ANNOTATION: "80"}),
        o.service("a", "http-blank", annotations={ANNOTATION: "  "}),
        {"metadata": {"name": "bare", "namespace": "a"}},
        {"metadata": {"name": "nulls", "namespace": "a"}, "spec": {"ports": None, "type": None}},
        {"metadata": {"name": "cluster-scoped?"}, "spec": {"ports": [{"port": 1}]}},
        {"metadata": {"name": "np", "namespace": "a"}, "spec": {"ports": [{"port": 9}]}},
    ]


def _slices() -> list[Obj]:
    unlabelled = o.endpoint_slice("a", "x", ["10.0.0.9"], name="orphan")
    del unlabelled["metadata"]["labels"]
    return [
        o.endpoint_slice("a", "web", ["10.0.0.2", "10.0.0.1"], not_ready=["10.0.0.3"]),
        o.endpoint_slice("a", "web", [], name="web-empty"),
        o.endpoint_slice("a", "web", ["10.0.0.1"], ports=(("b", 2), ("a", 1)), name="web-2"),
        unlabelled,
        {
            "metadata": {"name": "odd", "namespace": "a"},
            "ports": [{"name": None, "port": 5}, {"name": "noport"}],
            "endpoints": [
                {"addresses": []},
                {"addresses": ["10.0.0.5", "10.0.0.6"], "conditions": {}},
                {"addresses": ["10.0.0.7"], "conditions": {"ready": None}},
                {"addresses": ["10.0.0.8,evil"]},
            ],
        },
    ]


@pytest.mark.parametrize("keep_cluster_ip", [False, True])
def test_the_shapes_routing_reads_differently_decode_alike(keep_cluster_ip):
    for kind, items in (("Service", _services()), ("EndpointSlice", _slices())):
        typed, parse = decoders(keep_cluster_ip)[kind]
        body = page(items, {"resourceVersion": "5"})
        got = typed(body)
        assert got is not None, kind
        assert got == generic(body, parse), kind
        # Repeated layouts within a page come out as one shared object, as `shared` makes.
        again = typed(page(items + items))
        assert again is not None
        assert [r for _, _, r in again[2][: len(items)]] == [r for _, _, r in got[2]]


REFUSED_OR_UNSURE: list[tuple[str, Obj]] = [
    ("Service", {"metadata": {"namespace": "a"}}),  # no name
    ("Service", {"metadata": {"name": "n", "namespace": 3}}),
    ("Service", {"metadata": {"name": "n"}, "spec": []}),
    ("Service", {"metadata": {"name": "n"}, "spec": {"ports": [{"port": "443"}]}}),
    ("Service", {"metadata": {"name": "n"}, "spec": {"ports": [{"name": "x"}]}}),
    ("Service", {"metadata": {"name": "n"}, "spec": {"ports": [{"port": 1, "targetPort": True}]}}),
    ("Service", {"metadata": {"name": "n"}, "spec": {"ports": [{"port": 1, "targetPort": "²"}]}}),
    ("Service", {"metadata": {"name": "n", "annotations": {ANNOTATION: "²"}}, "spec": {}}),
    ("Service", {"metadata": {"name": "n", "annotations": {"k": 1}}}),  # generic: accepted
    ("Service", {"metadata": {"name": "n"}, "spec": {"type": "ExternalName", "externalName": 1}}),
    ("Service", {"metadata": {"name": "n"}, "spec": {"clusterIP": 7}}),  # generic: accepted
    ("EndpointSlice", {"metadata": {"name": "tab\there", "namespace": "a"}}),
    ("EndpointSlice", {"metadata": {"name": "n"}, "ports": [{"name": "a,b", "port": 1}]}),
    ("EndpointSlice", {"metadata": {"name": "n"}, "ports": [{"name": "p", "port": "1"}]}),
    ("EndpointSlice", {"metadata": {"name": "n"}, "ports": [{"name": "p", "port": True}]}),
    ("EndpointSlice", {"metadata": {"name": "n", "labels": {"kubernetes.io/service-name": 1}}}),
    ("EndpointSlice", {"metadata": {"name": "n"}, "endpoints": [{"addresses": [1]}]}),
    ("EndpointSlice", {"metadata": {"name": "n"}, "endpoints": [{"conditions": []}]}),
    ("EndpointSlice", {"metadata": {"name": "n"}, "endpoints": [{"conditions": {"ready": 1}}]}),
]


@pytest.mark.parametrize(("kind", "bad"), REFUSED_OR_UNSURE)
def test_a_page_with_an_odd_object_goes_the_generic_way(kind, bad):
    """The typed path never decides about an object the parser might refuse or read
    leniently: the whole page is left to the generic path (None)."""
    typed, parse = decoders(False)[kind]
    good = synthetic(kind, 1)[:3]
    assert typed(page([*good, bad])) is None
    try:
        parse(bad)
        object_key(bad)
    except (MalformedObject, ValueError, TypeError, KeyError, AttributeError):
        pass  # refused: the generic path reports it and keeps the good objects


@pytest.mark.parametrize("body", [b"", b"[]", b"{", b'{"items":{}}', b'{"metadata":[]}', b"null"])
def test_bodies_that_are_no_list_page_go_the_generic_way(body):
    for typed, _ in decoders(False).values():
        assert typed(body) is None


_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 70000),
    st.sampled_from(["", "a", "https", "443", "None", "TCP", "ExternalName", "x,y", "t\tb", "²"]),
)
_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "port", "targetPort", "protocol", "ready", "addresses"]),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=6,
)


def _maybe(d: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`d`'s keys with its values or a random value instead, some keys left out."""
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, _value) for k, v in d.items()})


_port = _maybe(
    {
        "name": st.sampled_from(["", "https", "a,b"]),
        "port": st.integers(0, 65535),
        "targetPort": st.one_of(st.integers(0, 65535), st.sampled_from(["tls", "8443", "²"])),
        "protocol": st.sampled_from(["TCP", "UDP"]),
    }
)
_meta = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["n", "m", "t\tab"]), _value)},
    optional={
        "namespace": st.one_of(st.sampled_from(["a", ""]), _value),
        "labels": st.one_of(
            st.dictionaries(
                st.sampled_from(["kubernetes.io/service-name", "app"]),
                st.sampled_from(["web", "db"]),
            ),
            _value,
        ),
        "annotations": st.one_of(
            st.dictionaries(
                st.sampled_from([ANNOTATION, "sniffer.dev/max-connections", "x"]),
                st.sampled_from(["80", " https ", "", "7", "x"]),
            ),
            _value,
        ),
    },
)
_service = st.fixed_dictionaries(
    {"metadata": _meta},
    optional={
        "spec": _maybe(
            {
                "type": st.sampled_from(["ClusterIP", "ExternalName", "NodePort"]),
                "clusterIP": st.sampled_from(["10.0.0.1", "None", ""]),
                "externalName": st.sampled_from(["db.example.com"]),
                "ports": st.lists(_port, max_size=3),
            }
        )
    },
)
_slice = st.fixed_dictionaries(
    {"metadata": _meta},
    optional={
        "ports": st.lists(_maybe({"name": st.sampled_from(["", "https"]), "port": _scalar})),
        "endpoints": st.lists(
            _maybe(
                {
                    "addresses": st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "x,y"])),
                    "conditions": _maybe({"ready": st.booleans()}),
                }
            ),
            max_size=3,
        ),
    },
)


def _check(kind: str, items: list[Obj], keep_cluster_ip: bool) -> None:
    typed, parse = decoders(keep_cluster_ip)[kind]
    body = page(items, {"resourceVersion": "9"})
    got = typed(body)
    try:
        want = generic(body, parse)
    except (MalformedObject, ValueError, TypeError, KeyError, AttributeError):
        assert got is None, "typed accepted a page the parser refuses an object of"
        return
    if got is not None:
        assert got == want


@settings(max_examples=300, deadline=None)
@given(st.lists(_service, min_size=1, max_size=4), st.booleans())
def test_random_services_decode_typed_as_the_parsers_do_or_not_at_all(items, keep_cluster_ip):
    _check("Service", items, keep_cluster_ip)


@settings(max_examples=300, deadline=None)
@given(st.lists(_slice, min_size=1, max_size=4))
def test_random_slices_decode_typed_as_the_parsers_do_or_not_at_all(items):
    _check("EndpointSlice", items, False)


@needs_crds
async def test_an_odd_service_in_a_list_is_reported_and_its_page_still_served(
    api_server, harness_factory
):
    """End to end: the page holding a malformed Service goes the generic way; the
    Service is reported and ignored, the others of its page route."""
    objs: list[Obj] = []
    for i in range(30):
        objs.append(o.service("team-a", f"s{i:02d}"))
        objs.append(o.endpoint_slice("team-a", f"s{i:02d}", [f"10.0.1.{i + 1}"]))
    bad = o.service("team-a", "s15")
    bad["spec"]["ports"][0]["port"] = "not-a-number"
    objs[30] = bad
    objs.append(
        o.ingress("team-a", "web", [(f"h{i}.example.com", f"s{i:02d}", 443) for i in (3, 15, 29)])
    )
    for obj in objs:
        api_server.create(obj)
    h = harness_factory(page_size=50)
    await h.start()
    assert h.lookup("h3.example.com")[1] == "team-a/s03:443"
    assert h.lookup("h29.example.com")[1] == "team-a/s29:443"
    assert set(h.source.view.services("team-a")) == {f"s{i:02d}" for i in range(30)} - {"s15"}
    assert any(
        "Service team-a/s15" in p and "port is not a number" in p for p in h.source.problems()
    )
