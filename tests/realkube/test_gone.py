"""410 Gone from a real server after etcd compaction, and routing goes on.

A second server runs without the watch cache (`--watch-cache=false`), so a watch resumed
from a compacted resourceVersion reaches etcd and is answered 410, and compacts every 2 s
(`--etcd-compaction-interval=2s`). A pod reaches it through a forwarder the test cuts:
while the pod is cut off, an Ingress is added and compacted history passes the pod's
resourceVersion; once reconnected, the pod's watches get 410, it re-lists, and the new
Ingress is routed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.kubeapi import objects as o
from tests.realkube.conftest import Backends, Tenants, routed, start_server, stop_server, until
from tests.realkube.world import external_service
from tests.support.pki import PKI
from tests.support.realkube import Cutter, Pod, RealKube


@pytest.fixture(scope="module")
def compacting() -> Iterator[RealKube]:
    server = start_server("--watch-cache=false --etcd-compaction-interval=2s")
    yield server
    stop_server(server)


@pytest.fixture
async def cutter(compacting: RealKube) -> AsyncIterator[Cutter]:
    c = await Cutter(compacting.port).start()
    yield c
    await c.close()


def _compacted(kube: RealKube, rv: int) -> bool:
    """True once `rv` is gone from etcd (an exact read at it is answered 410)."""
    status, _ = kube.admin.request(
        "GET",
        "/apis/networking.k8s.io/v1/ingresses",
        query={"resourceVersion": str(rv), "resourceVersionMatch": "Exact", "limit": "1"},
    )
    return status == 410


async def test_410_after_compaction_relists_and_routes_the_change(
    compacting: RealKube,
    cutter: Cutter,
    tmp_path: Path,
    backends: Backends,
    pki: PKI,
) -> None:
    kube = compacting
    t = Tenants(kube.admin)
    try:
        config = kube.kubeconfig(tmp_path / "kubeconfig", kube.token(), server=cutter.url)
        app = t.namespace("app")
        host, host2 = f"a.{t.prefix}.example.com", f"b.{t.prefix}.example.com"
        alpha, beta = await backends("alpha", host), await backends("beta", host2)
        t.create(external_service(app, "alpha", alpha.port))
        t.create(external_service(app, "beta", beta.port))
        t.create(o.ingress(app, "a", [(host, "alpha", alpha.port)]))
        pod = Pod(f"{t.prefix}-p0", config, tmp_path)
        try:
            ctx = pki.client_context()
            await routed(pod, host, "alpha", ctx, 60)
            relists = pod.metric("sniffer_watch_relists_total")

            cutter.cut()
            created = t.create(o.ingress(app, "b", [(host2, "beta", beta.port)]))
            rv = int(created["metadata"]["resourceVersion"])
            waited = await until(lambda: _compacted(kube, rv - 1), 30, "history compacted")
            t0 = time.monotonic()
            cutter.restore()
            await routed(pod, host2, "beta", ctx, 15)
            print(
                f"compacted {waited:.1f}s after the change; routed {time.monotonic() - t0:.2f}s "
                "after the pod could reach the server again"
            )
            assert pod.metric("sniffer_watch_relists_total") > relists
            # The real server's words for a 410 on a watch from a compacted revision.
            assert "Ingress: The resourceVersion for the provided watch is too old" in pod.log()
        finally:
            pod.stop()
            print(pod.log()[-3000:])
    finally:
        t.cleanup()
