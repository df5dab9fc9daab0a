"""Gateway API status written by a sniffer pod on a real server, as the conventions want it.

One Gateway whose listener admits routes `from: Selector` (a namespace label). Checked:
Accepted/ResolvedRefs on a good route; RefNotPermitted for a cross-namespace backend
without a ReferenceGrant; HostnameConflict for the younger of two routes on one name;
NotAllowedByListeners for a route from an unlabelled namespace, Accepted once it is
labelled; the Gateway's own conditions; `lastTransitionTime` kept across a spec change
that does not flip a condition, `observedGeneration` following the generation the real
server bumps (and does not bump for status writes).
"""

from __future__ import annotations

import copy

from tests.kubeapi import objects as o
from tests.realkube.conftest import Tenants, until
from tests.realkube.world import (
    accepted,
    endpoints,
    gateway,
    parent_conditions,
    route,
    service,
)
from tests.support.realkube import RealKube

OLD = "2020-01-01T00:00:00Z"


async def test_conditions_reasons_and_transition_times(
    kube: RealKube, tenants: Tenants, pods
) -> None:
    admin = kube.admin
    t = tenants
    label = {"edge": t.prefix}
    gw_ns = t.namespace("infra")
    a, b, c = t.namespace("a", label), t.namespace("b"), t.namespace("c")
    listener = o.tls_listener(allowed_from="Selector")
    listener["allowedRoutes"]["namespaces"]["selector"] = {"matchLabels": label}
    t.create(gateway(gw_ns, listeners=[listener]))
    for ns in (a, b, c):
        t.create(service(ns))
        t.create(endpoints(ns))
    host = f"h.{t.prefix}.example.com"
    t.create(route(a, "good", [host], gw_ns))
    t.create(service(a, "other"))
    t.create(endpoints(a, "other"))
    # Same hostname, another backend (the same backend would not be a conflict); created
    # in the same second, so the name decides: "good" < "younger".
    t.create(route(a, "younger", [host], gw_ns, backend="other"))
    cross = route(a, "cross", [f"x.{t.prefix}.example.com"], gw_ns)
    cross["spec"]["rules"][0]["backendRefs"] = [o.backend_ref("web", namespace=c)]
    t.create(cross)
    t.create(route(b, "outsider", [f"b.{t.prefix}.example.com"], gw_ns))
    pods("p0")

    def resolved(ns: str, name: str) -> tuple[str, str] | None:
        cond = parent_conditions(admin.get("TLSRoute", ns, name)).get("ResolvedRefs")
        return None if cond is None else (cond["status"], cond["reason"])

    await until(lambda: accepted(admin, a, "good") == ("True", "Accepted", 1), 30, "good")
    assert resolved(a, "good") == ("True", "ResolvedRefs")
    await until(lambda: resolved(a, "cross") == ("False", "RefNotPermitted"), 5, "cross")
    await until(
        lambda: accepted(admin, a, "younger") == ("False", "HostnameConflict", 1),
        5,
        "younger",
        lambda: admin.get("TLSRoute", a, "younger"),
    )
    await until(
        lambda: accepted(admin, b, "outsider") == ("False", "NotAllowedByListeners", 1),
        5,
        "outsider",
    )
    gw = admin.get("Gateway", gw_ns, "edge")
    assert gw is not None
    await until(
        lambda: any(
            c["type"] == "Accepted" and c["status"] == "True"
            for c in (admin.get("Gateway", gw_ns, "edge") or {})
            .get("status", {})
            .get("conditions", [])
        ),
        5,
        "Gateway Accepted",
    )
    gw_conds = {c["type"]: c for c in admin.get("Gateway", gw_ns, "edge")["status"]["conditions"]}
    assert gw_conds["Accepted"]["observedGeneration"] == 1

    # Pretend the conditions flipped long ago, so any rewrite of the stamp shows.
    good = admin.get("TLSRoute", a, "good")
    assert good is not None
    aged = copy.deepcopy(good)
    for p in aged["status"]["parents"]:
        for cond in p["conditions"]:
            cond["lastTransitionTime"] = OLD
    admin.replace_status(aged)
    admin.edit(
        "TLSRoute", a, "good", lambda obj: obj["spec"]["hostnames"].append(f"g2.{t.prefix}.com")
    )
    await until(lambda: accepted(admin, a, "good") == ("True", "Accepted", 2), 5, "generation 2")
    after = admin.get("TLSRoute", a, "good")
    assert after is not None and after["metadata"]["generation"] == 2
    conds = parent_conditions(after)
    assert conds["Accepted"]["lastTransitionTime"] == OLD
    assert conds["ResolvedRefs"]["lastTransitionTime"] == OLD
    assert conds["ResolvedRefs"]["observedGeneration"] == 2

    # A flip moves the stamp: labelling b admits its route.
    before = parent_conditions(admin.get("TLSRoute", b, "outsider"))["Accepted"]
    admin.edit("Namespace", None, b, lambda obj: obj["metadata"]["labels"].update(label))
    await until(lambda: accepted(admin, b, "outsider") == ("True", "Accepted", 1), 5, "admitted")
    flipped = parent_conditions(admin.get("TLSRoute", b, "outsider"))["Accepted"]
    assert flipped["lastTransitionTime"] >= before["lastTransitionTime"]
    assert flipped["message"] != before["message"]
