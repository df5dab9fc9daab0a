"""Assembling the namespaces' results into one spec, call after call with a memo, gives
what a fresh assembly gives; a re-translated namespace keeps its unchanged objects."""

from __future__ import annotations

import dataclasses
import random

from sniffer.routing.sources.kubernetes.outcomes import DefaultCandidate, NamespaceResult
from sniffer.routing.sources.kubernetes.translate import AssemblyMemo, assemble, keep_unchanged
from sniffer.routing.table import Backend, Endpoint, Limits, Listener, Route, WeightedBackend

LISTENERS = (Listener("tls", "0.0.0.0", 8443, "tls"), Listener("http", "0.0.0.0", 8080, "http"))


def result(rnd: random.Random, ns: str) -> NamespaceResult:
    # Backends named after another namespace stand for cross-namespace backendRefs:
    # two namespaces then hold the same name, and the first namespace's wins.
    owners = [ns, f"ns{rnd.randrange(6)}"]
    backends = {
        f"{o}/svc{k}:443": Backend(f"{o}/svc{k}:443", ns, (), source=f"from {ns}")
        for o in owners
        for k in range(rnd.randrange(3))
    }
    routes = tuple(
        Route(f"h{k}.{ns}.example.com", (WeightedBackend(name),), source=ns)
        for k, name in enumerate(backends)
    )
    defaults = tuple(
        DefaultCandidate((rnd.random(), ns), name, None) for name in backends if rnd.random() < 0.1
    )
    limits = Limits(max_connections=rnd.randrange(1, 9)) if rnd.random() < 0.2 else Limits()
    return NamespaceResult(routes, backends, defaults, tenant_limits=limits)


def test_an_assembly_with_a_memo_is_the_fresh_assembly_after_every_change() -> None:
    rnd = random.Random(5)
    results = {f"ns{i}": result(rnd, f"ns{i}") for i in range(6)}
    memo = AssemblyMemo()
    for _ in range(40):
        for _ in range(rnd.randrange(1, 3)):
            ns = f"ns{rnd.randrange(8)}"
            if rnd.random() < 0.2:
                results.pop(ns, None)
            else:
                results[ns] = result(rnd, ns)
        assert assemble(LISTENERS, results, memo) == assemble(LISTENERS, results)
    spec = assemble(LISTENERS, results)
    first = {}
    for ns in sorted(results):
        for name, b in results[ns].backends.items():
            first.setdefault(name, b)
    assert spec.backends == tuple(first[n] for n in sorted(first))


def test_a_retranslated_namespace_keeps_the_objects_that_did_not_change() -> None:
    rnd = random.Random(6)
    old = result(rnd, "ns0")
    while len(old.routes) < 2:
        old = result(rnd, "ns0")
    # A fresh translation: equal objects, new identities, one backend's endpoints moved.
    moved = next(iter(old.backends))
    new = NamespaceResult(
        tuple(dataclasses.replace(r) for r in old.routes),
        {
            n: dataclasses.replace(b, endpoints=(Endpoint("10.0.0.9", 1),) if n == moved else ())
            for n, b in old.backends.items()
        },
    )
    kept = keep_unchanged(new, old)
    assert kept.routes is old.routes
    assert all((b is old.backends[n]) == (n != moved) for n, b in kept.backends.items())
