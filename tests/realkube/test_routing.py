"""Routing from a real server: TLS connections through a sniffer pod to real backends.

An Ingress of sniffer's class routes a real TLS connection (SNI) to a TLS backend behind
an ExternalName Service (the real server refuses loopback EndpointSlice addresses); an
edit re-routes it. A burst of 100 TLSRoutes ends with every one Accepted. A real restart
of the API server (etcd and kube-apiserver stopped, started again on the same data): a
change made right after it answers again is routed within 2 s.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable

from tests.kubeapi import objects as o
from tests.realkube.conftest import Backends, Tenants, routed, until, who
from tests.realkube.world import endpoints, external_service, gateway, route, service
from tests.support.pki import PKI
from tests.support.realkube import Pod, RealKube


async def _ingress_routed(
    t: Tenants, pods: Callable[..., Pod], backends: Backends, pki: PKI
) -> tuple[str, str, Pod, ssl.SSLContext]:
    """An Ingress for web.<prefix> to backend alpha, routed by pod p0: (host, namespace,
    pod, client TLS context)."""
    host = f"web.{t.prefix}.example.com"
    app = t.namespace("app")
    alpha = await backends("alpha", host)
    t.create(external_service(app, "alpha", alpha.port))
    t.create(o.ingress(app, "web", [(host, "alpha", alpha.port)]))
    pod = pods("p0")
    ctx = pki.client_context()
    await routed(pod, host, "alpha", ctx, 60)
    return host, app, pod, ctx


async def test_ingress_routes_real_tls_and_follows_an_edit(
    kube: RealKube, tenants: Tenants, pods, backends: Backends, pki: PKI
) -> None:
    host, app, pod, ctx = await _ingress_routed(tenants, pods, backends, pki)
    beta = await backends("beta", host)
    tenants.create(external_service(app, "beta", beta.port))

    def to_beta(obj: dict) -> None:
        obj["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] = {
            "name": "beta",
            "port": {"number": beta.port},
        }

    kube.admin.edit("Ingress", app, "web", to_beta)
    took = await routed(pod, host, "beta", ctx, 5)
    print(f"Ingress edit routed {took:.2f}s after the write")
    assert beta.sni_seen[-1] == host


async def test_burst_of_100_tlsroutes_all_accepted(kube: RealKube, tenants: Tenants, pods) -> None:
    admin = kube.admin
    gw_ns, app = tenants.namespace("infra"), tenants.namespace("app")
    tenants.create(gateway(gw_ns))
    tenants.create(service(app))
    tenants.create(endpoints(app))
    pod = pods("p0")
    await until(lambda: pod.ready, 60, "pod ready")
    t0 = time.monotonic()
    for i in range(100):
        tenants.create(route(app, f"r{i:03}", [f"r{i}.{tenants.prefix}.example.com"], gw_ns))
    last_create = time.monotonic()

    def all_accepted() -> bool:
        items = admin.list("TLSRoute", app)["items"]
        ok = 0
        for item in items:
            for p in (item.get("status") or {}).get("parents") or []:
                for c in p["conditions"]:
                    ok += c["type"] == "Accepted" and c["status"] == "True"
        gw = admin.get("Gateway", gw_ns, "edge") or {}
        attached = ((gw.get("status") or {}).get("listeners") or [{}])[0].get("attachedRoutes")
        return ok == 100 and attached == 100

    took = await until(all_accepted, 30, "100 routes Accepted")
    print(
        f"burst of 100 TLSRoutes: created in {last_create - t0:.2f}s, "
        f"all Accepted {took:.2f}s after the last create"
    )
    assert "Traceback" not in pod.log()


async def test_a_change_right_after_an_api_server_restart_is_routed_within_2s(
    kube: RealKube, tenants: Tenants, pods, backends: Backends, pki: PKI
) -> None:
    host, app, pod, ctx = await _ingress_routed(tenants, pods, backends, pki)
    relists = pod.metric("sniffer_watch_relists_total")

    await asyncio.to_thread(kube.restart)
    print(
        f"restart: stopping took {kube.stopping[-1]:.1f}s "
        f"(SIGKILL needed: {kube.killed_on_restart[-1]}), up.sh {kube.startups[-1]:.1f}s"
    )
    host2 = f"new.{tenants.prefix}.example.com"
    gamma = await backends("gamma", host2)
    t0 = time.monotonic()
    tenants.create(external_service(app, "gamma", gamma.port))
    tenants.create(o.ingress(app, "new", [(host2, "gamma", gamma.port)]))
    await routed(pod, host2, "gamma", ctx, 10)
    took = time.monotonic() - t0
    print(f"after the restart: a new Ingress routed {took:.2f}s after its create")
    assert took <= 2.0
    assert await who(pod, host, ctx) == "alpha"  # the old route kept serving
    # The restarted server's watch cache starts at the present: resuming a watch from
    # before it is answered 410 Gone, and the pod re-listed.
    assert pod.metric("sniffer_watch_relists_total") > relists
