"""In-process micro benchmark of status planning per publish at the seed's scale.

Builds the caches of `k8s_scale.py`'s synthetic cluster (N tenants alternating Ingress and
TLSRoute, 60 Services and slices each, one Gateway) through the informers' own record
path, translates every namespace, and brings every status to the steady state (each
object carrying what sniffer wishes, as after its writes' echoes). Then times, per
publish of one changed namespace (one endpoint change):

- `full`: a plan of every TLSRoute and Gateway (what every round did before);
- `incremental`: a plan of the changed namespace's TLSRoutes and every Gateway (now).

Both must plan no write in the steady state (checked). No I/O, no server; not part of the
test run:

    .venv/bin/python -m benchmarks.status_plan --tenants 2000 --repeat 200
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sniffer.routing.sources.kubernetes.api import KubeApi  # noqa: E402
from sniffer.routing.sources.kubernetes.kinds import ALL_KINDS  # noqa: E402
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings  # noqa: E402
from sniffer.routing.sources.kubernetes.status import StatusWriter  # noqa: E402
from sniffer.routing.sources.kubernetes.translate import (  # noqa: E402
    assemble,
    translate_namespace,
)
from sniffer.routing.sources.kubernetes.watches import Watches  # noqa: E402
from sniffer.routing.table import Listener, RouteTable  # noqa: E402
from tests.kubeapi.objects import synthetic_cluster  # noqa: E402

TLS = Listener("tls-443", "127.0.0.1", 443, "tls")


def _ms(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"median {statistics.median(samples) * 1e3:.3f} ms, p99 {q[98] * 1e3:.3f} ms"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tenants", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=200)
    args = p.parse_args()

    settings = KubernetesSettings()
    versions: dict[str, str | None] = {k.name: k.versions[0] for k in ALL_KINDS}
    watches = Watches(cast(KubeApi, None), settings, versions, lambda k, ns, at: None)
    informers = {name: infs[0] for name, infs in watches.by_kind.items()}
    started = time.perf_counter()
    for obj in synthetic_cluster(args.tenants):
        inf = informers[obj["kind"]]
        keyed = inf._record(obj, inf.problems)  # the informers' own path from JSON to records
        assert keyed is not None, obj
        inf._put(*keyed, 0.0)
    view = watches.view
    listeners = (TLS,)
    results = {
        ns: translate_namespace(view, settings, listeners, ns) for ns in sorted(view.namespaces())
    }
    conflicts = RouteTable.build(assemble(listeners, results)).conflicts
    print(
        f"{args.tenants} tenants: caches and translation in {time.perf_counter() - started:.1f} s"
    )

    writer = StatusWriter(cast(KubeApi, None), settings, {}, listeners)
    # The steady state: every object already carries the status sniffer wishes.
    for w in writer.plan(view, results, conflicts):
        inf = informers[w.kind.name]
        bucket = cast(dict[str, Any], inf.store[w.namespace or ""])
        bucket[w.name] = dataclasses.replace(bucket[w.name], status_sig=w.sig)
    assert writer.plan(view, results, conflicts) == []
    routes = sum(len(view.tls_routes(ns)) for ns in view.namespaces())
    route_ns = sorted(ns for ns in view.namespaces() if view.tls_routes(ns))

    timings: dict[str, list[float]] = {"full": [], "incremental": []}
    for i in range(args.repeat):
        ns = route_ns[i % len(route_ns)]
        for mode, dirty in (("full", None), ("incremental", {ns})):
            t0 = time.perf_counter()
            planned = writer.plan(view, results, conflicts, dirty)
            timings[mode].append(time.perf_counter() - t0)
            assert planned == [], planned
    print(f"TLSRoutes {routes}, Gateways {len(view.all_gateways())}, repeat {args.repeat}")
    for mode, samples in timings.items():
        print(f"  plan per publish, {mode:<11}: {_ms(samples)}")
    ratio = statistics.median(timings["full"]) / statistics.median(timings["incremental"])
    print(f"  full / incremental (medians): {ratio:.0f}x")


if __name__ == "__main__":
    asyncio.run(main())
