"""sniffer's own API client against the real server, with sniffer's own credentials.

Every write the source makes (Lease create and conditional replace, status merge patch)
goes through `KubeApi` as the ServiceAccount the shipped RBAC binds. A body sent without
`Content-Type: application/json` is refused by a real server with 415 (the in-repo test
server used to accept it, so no Lease was ever held on a real cluster).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sniffer.routing.sources.kubernetes.api import Conflict, KubeApi, NotFound, Unauthorized
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from tests.realkube.conftest import Tenants
from tests.realkube.world import gateway, route
from tests.support.realkube import SNIFFER_NS, RealKube, path_of


async def test_lease_writes_and_status_patch_as_the_service_account(
    kube: RealKube, tenants: Tenants, sniffer_kubeconfig: Path
) -> None:
    api = await KubeApi.connect(KubernetesSettings(kubeconfig=str(sniffer_kubeconfig)))
    try:
        name = f"lease-{tenants.prefix}-api"
        collection = path_of("Lease", SNIFFER_NS)
        created = await api.create(
            collection,
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": SNIFFER_NS},
                "spec": {"holderIdentity": "a", "leaseDurationSeconds": 3},
            },
        )
        tenants.created.append(("Lease", SNIFFER_NS, name))
        assert created["spec"]["holderIdentity"] == "a"
        stale = dict(created)
        created["spec"]["holderIdentity"] = "b"
        replaced = await api.replace(f"{collection}/{name}", created)
        assert replaced["spec"]["holderIdentity"] == "b"
        # The same resourceVersion again: someone else wrote first.
        stale["spec"] = dict(stale["spec"], holderIdentity="c")
        with pytest.raises(Conflict):
            await api.replace(f"{collection}/{name}", stale)
        with pytest.raises(NotFound):
            await api.get(f"{collection}/no-such-lease")

        gw_ns, app = tenants.namespace("infra"), tenants.namespace("app")
        tenants.create(gateway(gw_ns))
        tenants.create(route(app, "r", ["r.example.com"], gw_ns))
        path = path_of("TLSRoute", app, "r")
        parents = [
            {
                "parentRef": {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "name": "edge",
                    "namespace": gw_ns,
                },
                "controllerName": "sniffer.dev/gateway-controller",
                "conditions": [
                    {
                        "type": "Accepted",
                        "status": "True",
                        "reason": "Accepted",
                        "message": "",
                        "observedGeneration": 1,
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            }
        ]
        out = await api.merge_patch_status(path, {"status": {"parents": parents}})
        assert out["status"]["parents"][0]["conditions"][0]["reason"] == "Accepted"
        # The shipped RBAC grants status patches, never a spec write.
        with pytest.raises(Unauthorized):
            await api.replace(path, out)
    finally:
        await api.close()
