"""What the source watches: API discovery, one informer per kind and scope, and the view.

This module owns which version of each kind the cluster serves (`discover`), the
informers of a process (one per kind, or per kind and namespace when the source is
limited to some namespaces; one watch set however many workers) with each kind's parser,
and the typed `ClusterView` over their caches. It must never translate records, start
the informers' tasks (the source does) or decide when to rebuild.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

from sniffer.routing.sources.kubernetes.api import KubeApi, NotFound
from sniffer.routing.sources.kubernetes.fields import JSON
from sniffer.routing.sources.kubernetes.informer import Informer, OnChange, OnStatus
from sniffer.routing.sources.kubernetes.kinds import (
    ALL_KINDS,
    ENDPOINT_SLICE,
    GATEWAY,
    GATEWAY_CLASS,
    GATEWAY_GROUP,
    INGRESS,
    INGRESS_CLASS,
    NAMESPACE,
    REFERENCE_GRANT,
    SERVICE,
    TLS_ROUTE,
    Kind,
)
from sniffer.routing.sources.kubernetes.pages import PageDecoder, service_pages, slice_pages
from sniffer.routing.sources.kubernetes.parsers import (
    parse_endpoint_slice,
    parse_gateway,
    parse_gateway_class,
    parse_ingress,
    parse_ingress_class,
    parse_namespace,
    parse_reference_grant,
    parse_service,
    parse_tls_route,
)
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from sniffer.routing.sources.kubernetes.slices import SliceBucket
from sniffer.routing.sources.kubernetes.view import ClusterView

R = TypeVar("R")

_STATUS_KINDS = frozenset({GATEWAY_CLASS.name, GATEWAY.name, TLS_ROUTE.name})


async def discover(api: KubeApi) -> tuple[dict[str, str | None], list[str]]:
    """The version to use of each kind (None: not served) and what is missing, in words."""
    versions: dict[str, str | None] = {}
    problems: list[str] = []
    served: dict[str, set[str]] = {}
    try:
        group = await api.get(f"/apis/{GATEWAY_GROUP}")
        for v in group.get("versions") or ():
            version = str(v.get("version") or "")
            try:
                res = await api.get(f"/apis/{GATEWAY_GROUP}/{version}")
            except NotFound:
                continue
            served[version] = {
                str(r.get("name"))
                for r in res.get("resources") or ()
                if "/" not in str(r.get("name"))
            }
    except NotFound:
        problems.append(
            f"API group {GATEWAY_GROUP} is not served (Gateway API CRDs not installed): "
            "TLSRoutes are not watched"
        )
    for kind in ALL_KINDS:
        if kind.group != GATEWAY_GROUP:
            versions[kind.name] = kind.versions[0]
            continue
        versions[kind.name] = next(
            (v for v in kind.versions if kind.plural in served.get(v, ())), None
        )
        if versions[kind.name] is None and served:
            problems.append(
                f"{kind.name} is not served in any of {', '.join(kind.versions)}: not watched"
            )
    return versions, problems


class KindStore(Mapping[str, Mapping[str, R]]):
    """One kind's caches (one per watched scope) as a single namespace -> name -> record
    mapping; live: it reads the informers' current caches on every access."""

    def __init__(self, informers: list[Informer[R]]) -> None:
        self._informers = informers

    def __getitem__(self, ns: str) -> Mapping[str, R]:
        for inf in self._informers:
            bucket = inf.store.get(ns)
            if bucket is not None:
                return bucket
        raise KeyError(ns)

    def __iter__(self) -> Iterator[str]:
        for inf in self._informers:
            yield from inf.store

    def __len__(self) -> int:
        return sum(len(inf.store) for inf in self._informers)


class Watches:
    """The informers of every kind the cluster serves, typed by their records."""

    def __init__(
        self,
        api: KubeApi,
        settings: KubernetesSettings,
        versions: Mapping[str, str | None],
        on_change: OnChange,
        on_state: Callable[[], None] | None = None,
        on_status: OnStatus | None = None,
    ) -> None:
        self.by_kind: dict[str, list[Informer[Any]]] = {}
        """Kind name -> its informers, for the kinds the cluster serves."""

        def watch(
            kind: Kind,
            parse: Callable[[JSON], R],
            bucket: Callable[[], MutableMapping[str, R]] = dict,
            pages: PageDecoder[R] | None = None,
        ) -> list[Informer[R]]:
            version = versions.get(kind.name)
            if version is None:
                return []
            scopes: tuple[str | None, ...] = (
                settings.namespaces
                if kind.namespaced and settings.namespaces is not None
                else (None,)
            )
            # Only the kinds sniffer writes the status of tell status-only changes.
            status = on_status if kind.name in _STATUS_KINDS else None
            infs = [
                Informer(
                    api,
                    kind,
                    version,
                    parse,
                    settings,
                    on_change,
                    ns,
                    on_state,
                    bucket,
                    status,
                    pages,
                )
                for ns in scopes
            ]
            self.by_kind[kind.name] = list(infs)
            return infs

        annotation = settings.http_port_annotation
        clusterip = settings.backend_mode == "clusterip"
        controller = settings.controller_name
        # In ALL_KINDS order: the informers start (and list) in this order.
        self.view = ClusterView(
            ingress_classes=KindStore(watch(INGRESS_CLASS, parse_ingress_class)),
            ingresses=KindStore(watch(INGRESS, parse_ingress)),
            # The numerous kinds' list pages are decoded typed (see `pages`).
            services=KindStore(
                watch(
                    SERVICE,
                    lambda o: parse_service(o, annotation, clusterip),
                    pages=service_pages(annotation, clusterip),
                )
            ),
            slices=KindStore(
                watch(ENDPOINT_SLICE, parse_endpoint_slice, SliceBucket, slice_pages())
            ),
            gateway_classes=KindStore(watch(GATEWAY_CLASS, parse_gateway_class)),
            gateways=KindStore(watch(GATEWAY, parse_gateway)),
            tls_routes=KindStore(watch(TLS_ROUTE, lambda o: parse_tls_route(o, controller))),
            grants=KindStore(watch(REFERENCE_GRANT, parse_reference_grant)),
            namespaces=KindStore(watch(NAMESPACE, parse_namespace)),
        )
        """The typed view over every informer's cache."""

    def all(self) -> list[Informer[Any]]:
        """Every informer, kind by kind."""
        return [inf for infs in self.by_kind.values() for inf in infs]
