"""HTTP/3 from Kubernetes objects: a quic listener routes the hosts of an Ingress or a
TLSRoute to the Service's UDP port of the same number as the TLS one (no new CRD)."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from aioquic.asyncio import connect

from sniffer.routing.table import Endpoint, Listener, MatchKind
from tests.k8s.conftest import TLS, needs_crds, spawn_sniffer
from tests.k8s.test_end_to_end import _eventually, _readyz
from tests.kubeapi import objects as o
from tests.proxy.test_quic import Tenant, client_config, exchange, free_port_udp
from tests.support.servers import free_port

QUIC = Listener("quic-443", "127.0.0.1", 443, "quic")
H3_PORTS = (("https", 443, 8443, "TCP"), ("h3", 443, 8443, "UDP"))


def _tenant(server, ns, svc, ports, slice_ports, addr="10.0.0.1"):
    server.create(o.service(ns, svc, ports))
    server.create(o.endpoint_slice(ns, svc, [addr], slice_ports))


async def test_ingress_hosts_reach_the_udp_twin_of_the_tls_port(api_server, harness_factory):
    # The UDP port listed first must not take the TLS listeners' resolution by number.
    _tenant(
        api_server,
        "team-a",
        "web",
        (("h3", 443, 9443, "UDP"), ("https", 443, 8443, "TCP")),
        (("h3", 9443), ("https", 8443)),
    )
    _tenant(api_server, "team-b", "tcp-only", (("https", 443, 8443),), (("https", 8443),))
    api_server.create(o.ingress("team-a", "web", [("a.example.com", "web", 443)]))
    api_server.create(o.ingress("team-b", "tcp", [("b.example.com", "tcp-only", 443)]))
    h = harness_factory(listeners=(TLS, QUIC))
    await h.start()
    await h.routes_to("a.example.com", "team-a/web:443/udp", listener="quic-443")
    assert h.backend("team-a/web:443/udp").endpoints == (Endpoint("10.0.0.1", 9443),)
    assert h.backend("team-a/web:443/udp").tenant == "team-a"
    assert h.lookup("a.example.com") == (MatchKind.EXACT, "team-a/web:443")
    assert h.backend("team-a/web:443").endpoints == (Endpoint("10.0.0.1", 8443),)
    # A Service without a UDP twin serves TLS only: quic listeners refuse the name.
    assert h.lookup("b.example.com") == (MatchKind.EXACT, "team-b/tcp-only:443")
    assert h.lookup("b.example.com", "quic-443")[0] is MatchKind.NONE
    # The UDP port goes away: so does the QUIC route, not the TLS one.
    api_server.update(o.service("team-a", "web", (("https", 443, 8443, "TCP"),)))
    await h.routes_to("a.example.com", None, listener="quic-443")
    assert h.lookup("a.example.com")[1] == "team-a/web:443"


@needs_crds
async def test_tlsroute_hosts_on_the_quic_listener_of_the_gateway_port(api_server, harness_factory):
    api_server.create(o.gateway_class())
    api_server.create(o.gateway("infra", "edge", None))
    _tenant(api_server, "team-a", "web", H3_PORTS, (("https", 8443), ("h3", 8443)))
    api_server.create(o.tls_route("team-a", "r", ["*.a.example.com"], [o.backend_ref("web", 443)]))
    h = harness_factory(listeners=(TLS, QUIC))
    await h.start()
    await h.routes_to("x.y.a.example.com", "team-a/web:443/udp", listener="quic-443")
    assert h.lookup("x.y.a.example.com") == (MatchKind.WILDCARD, "team-a/web:443")


async def test_http3_through_sniffer_serve_kubernetes(api_server, kubeconfig, pki):
    """`sniffer serve --kubernetes --listen quic:...` routes an aioquic client to the
    tenant's UDP port once the Ingress exists, and refuses it at once before."""
    tenant = await Tenant("team-a", pki, "app.example.com").start()
    listen, admin = free_port_udp(), free_port()
    api_server.create(o.service("team-a", "web", H3_PORTS))
    api_server.create(
        o.endpoint_slice(
            "team-a", "web", ["127.0.0.1"], (("https", free_port()), ("h3", tenant.port))
        )
    )
    proc = spawn_sniffer(kubeconfig, f"quic:127.0.0.1:{listen}", admin, "--workers", "1")
    try:

        async def ready() -> bool:
            return await asyncio.to_thread(_readyz, admin) == 200

        await _eventually(ready, 30, "/readyz 200")
        config = client_config(pki, "app.example.com")
        with pytest.raises(ConnectionError):  # no route yet: refused
            async with connect("127.0.0.1", listen, configuration=config):
                pass
        api_server.create(o.ingress("team-a", "web", [("app.example.com", "web", 443)]))

        async def routed() -> bool:
            try:
                async with connect("127.0.0.1", listen, configuration=config) as c:
                    return await exchange(c, b"h3") == b"team-a\nh3"
            except ConnectionError:
                return False

        await _eventually(routed, 20, "QUIC route live")
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        tenant.close()
