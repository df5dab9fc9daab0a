"""The EndpointSlice cache held as text behaves as the dict of records it replaces."""

from __future__ import annotations

import random

import pytest

from sniffer.routing.sources.kubernetes.fields import MalformedObject
from sniffer.routing.sources.kubernetes.parsers import parse_endpoint_slice
from sniffer.routing.sources.kubernetes.records import EndpointSliceRec, SliceTarget
from sniffer.routing.sources.kubernetes.slices import INDEX_AT, SliceBucket


def _rec(rnd: random.Random) -> EndpointSliceRec:
    service = rnd.choice(["a", "b", "svc-00", None])
    ports = tuple(sorted(rnd.sample([("https", 443), ("", 80), ("h2", 8443)], rnd.randrange(3))))
    addresses = ",".join(sorted(f"10.0.{rnd.randrange(3)}.{i}" for i in range(rnd.randrange(3))))
    return EndpointSliceRec(SliceTarget(service, ports), addresses)


@pytest.mark.parametrize("size", [5, INDEX_AT * 3])
def test_random_edits_read_back_as_a_dict_would(size: int) -> None:
    rnd = random.Random(size)
    bucket, model = SliceBucket(), {}
    names = [f"s-{i}" for i in range(size)] + ["s", "s-1x"]  # prefixes of each other
    for _ in range(size * 6):
        name = rnd.choice(names)
        if rnd.random() < 0.25 and name in model:
            del bucket[name]
            del model[name]
        else:
            bucket[name] = model[name] = _rec(rnd)
        assert len(bucket) == len(model)
    assert dict(bucket.items()) == model
    assert sorted(bucket) == sorted(model)
    for name in names:
        assert bucket.get(name) == model.get(name)
        assert (name in bucket) == (name in model)
    for service in ["a", "b", "svc-00"]:
        got = sorted(bucket.of_service(service), key=repr)
        assert got == sorted((r for r in model.values() if r.service == service), key=repr)
    other = SliceBucket()
    for name in reversed(list(model)):
        other[name] = model[name]
    assert other == bucket
    with pytest.raises(KeyError):
        del bucket["absent"]


def test_a_slice_whose_text_would_break_the_encoding_is_refused() -> None:
    obj = {
        "metadata": {"name": "a\tb", "namespace": "n", "labels": {}},
        "ports": [],
        "endpoints": [],
    }
    with pytest.raises(MalformedObject):
        parse_endpoint_slice(obj)
    obj["metadata"]["name"] = "ok"
    obj["ports"] = [{"name": "a,b", "port": 1}]
    with pytest.raises(MalformedObject):
        parse_endpoint_slice(obj)


@pytest.mark.parametrize("size", [0, 1, INDEX_AT, INDEX_AT + 1, INDEX_AT * 2])
@pytest.mark.parametrize("fresh", [True, False])
def test_update_at_once_reads_back_as_a_dict_update(size: int, fresh: bool) -> None:
    """A list page's run of one namespace is set with one `update` (duplicates: the last
    wins), into an empty bucket or onto slices already there."""
    rnd = random.Random(size * 2 + fresh)
    bucket, model = SliceBucket(), {}
    if not fresh:
        for i in range(5):
            bucket[f"s-{i}"] = model[f"s-{i}"] = _rec(rnd)
    pairs = [(f"s-{rnd.randrange(size + 3)}", _rec(rnd)) for _ in range(size)]
    bucket.update(pairs)
    model.update(pairs)
    assert len(bucket) == len(model)
    assert dict(bucket.items()) == model
    for name in model:
        assert bucket[name] == model[name]
    for service in ["a", "b", "svc-00"]:
        want = sorted((r for r in model.values() if r.service == service), key=repr)
        assert sorted(bucket.of_service(service), key=repr) == want
    bucket.update({"s-x": model.setdefault("s-x", _rec(rnd))})
    assert dict(bucket.items()) == model
