from __future__ import annotations

from tests.k8s.conftest import needs_crds
from tests.kubeapi import objects as o


@needs_crds
async def test_smoke(api_server, harness_factory):
    api_server.create(o.service("team-a", "web"))
    api_server.create(o.endpoint_slice("team-a", "web", ["10.0.0.1", "10.0.0.2"]))
    api_server.create(o.ingress("team-a", "web", [("a.example.com", "web", 443)]))
    h = harness_factory()
    await h.start()
    print(h.spec)
    print(h.source.health())
    assert h.lookup("a.example.com")[1] == "team-a/web:443"
