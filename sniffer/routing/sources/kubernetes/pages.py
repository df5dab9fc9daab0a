"""Typed decoding of the list pages of the numerous kinds (Services, EndpointSlices).

A first sync at 2,000 tenants lists ~240,000 objects, nearly all Services and
EndpointSlices. Decoding each page into dicts (`json.loads`), walking them in Python
(`parsers`) and freeing them again was two thirds of the sync's CPU. Here msgspec
decodes a page straight into small structs that declare only the fields routing reads
(the rest, `managedFields` included, is skipped in C), which are then turned into the
very records `parsers` makes.

This module owns those schemas and conversions. Its contract: for every page it
accepts, the result is exactly what `json.loads` + `parsers` give (tests/k8s/
test_pages.py compares them); anything it is not sure of (a field of another type, a
value the parser would refuse, JSON that does not parse) makes it return None for the
whole page, and the caller decodes that page the generic way, which reports the bad
object and keeps the rest. It must never do I/O, keep the page's bytes, report
problems itself, or accept what `parsers` would refuse.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from sniffer.routing.sources.kubernetes.fields import shared
from sniffer.routing.sources.kubernetes.kinds import SERVICE_NAME_LABEL
from sniffer.routing.sources.kubernetes.limits import limit_annotations
from sniffer.routing.sources.kubernetes.parsers import port_ref
from sniffer.routing.sources.kubernetes.records import (
    EndpointSliceRec,
    ServicePort,
    ServiceRec,
    SliceTarget,
)

R = TypeVar("R")
T = TypeVar("T")

PageDecoder = Callable[[bytes], "TypedPage[R] | None"]
"""Decodes a list page's body, or None: decode it the generic way."""

_intern = sys.intern

# Every field is optional (None where the parser reads "absent"), so a value of another
# shape fails validation and sends the page to the generic path. `gc=False`: the structs
# live for one page, hold no cycles, and need not cost the collector.


class _ServiceMeta(msgspec.Struct, gc=False):
    name: str
    namespace: str | None = None
    annotations: dict[str, str] | None = None


class _SliceLabels(msgspec.Struct, gc=False):
    service: str | None = msgspec.field(default=None, name=SERVICE_NAME_LABEL)


class _SliceMeta(msgspec.Struct, gc=False):
    name: str
    namespace: str | None = None
    labels: _SliceLabels | None = None


class _ListMeta(msgspec.Struct, gc=False):
    resourceVersion: str | None = None
    continue_: str | None = msgspec.field(default=None, name="continue")


class _ServicePort(msgspec.Struct, gc=False):
    port: int
    name: str | None = None
    targetPort: int | str | None = None
    protocol: str | None = None


class _ServiceSpec(msgspec.Struct, gc=False):
    type: str | None = None
    clusterIP: str | None = None
    externalName: str | None = None
    ports: list[_ServicePort] | None = None


class _Service(msgspec.Struct, gc=False):
    metadata: _ServiceMeta
    spec: _ServiceSpec | None = None


class _SlicePort(msgspec.Struct, gc=False):
    name: str | None = None
    port: int | None = None


class _Conditions(msgspec.Struct, gc=False):
    ready: bool | None = None


class _Endpoint(msgspec.Struct, gc=False):
    addresses: list[str] | None = None
    conditions: _Conditions | None = None


class _Slice(msgspec.Struct, gc=False):
    metadata: _SliceMeta
    ports: list[_SlicePort] | None = None
    endpoints: list[_Endpoint] | None = None


class _Page(msgspec.Struct, Generic[T], gc=False):
    metadata: _ListMeta | None = None
    items: list[T] | None = None


class _Unsure(Exception):
    """A value the generic path must see (it may refuse or report it)."""


_NO_SPEC = _ServiceSpec()
_NO_LIST_META = _ListMeta()

Cache = dict[object, object]
"""Within one page: the shared part made of each raw layout, so a layout repeated
(most Services of a page, the slices of one Service name) is converted and looked up in
`fields.shared` once, not per object. Dropped with the page."""


def _service(item: _Service, annotation: str, keep_cluster_ip: bool, cache: Cache) -> ServiceRec:
    """`parsers.parse_service` of the same object."""
    spec = item.spec or _NO_SPEC
    ann = item.metadata.annotations
    cip = spec.clusterIP if keep_cluster_ip else None
    raw_ports = spec.ports or ()
    layout: tuple[object, ...] | None = None
    if not ann and not cip and spec.type != "ExternalName":
        # No address, name or annotation of its own: one of the cluster's few layouts.
        layout = (spec.type, *[(p.name, p.port, p.targetPort, p.protocol) for p in raw_ports])
        hit = cache.get(layout)
        if hit is not None:
            return hit  # type: ignore[return-value]
    stype = _intern(spec.type or "ClusterIP")
    ports = []
    for p in raw_ports:
        number = p.port
        target = p.targetPort
        ports.append(
            shared(
                ServicePort(
                    _intern(p.name or ""),
                    number,
                    number if target is None else port_ref(target),
                    _intern(p.protocol or "TCP"),
                )
            )
        )
    ann = ann or {}
    http = ann.get(annotation)
    rec = ServiceRec(
        stype,
        cip if cip and cip != "None" else None,
        _opt_intern(spec.externalName) if stype == "ExternalName" else None,
        shared(tuple(ports)),
        port_ref(http.strip()) if http is not None and http.strip() else None,
        limit_annotations(ann.items()) if ann else (),
    )
    if rec.cluster_ip is None and rec.external_name is None:
        rec = shared(rec)
        if layout is not None:
            cache[layout] = rec
    return rec


def _opt_intern(value: str | None) -> str | None:
    return None if value is None else _intern(value)


def _slice(item: _Slice, cache: Cache) -> EndpointSliceRec:
    """`parsers.parse_endpoint_slice` of the same object."""
    name = item.metadata.name
    if "\t" in name or "\n" in name:
        raise _Unsure
    labels = item.metadata.labels
    svc = labels.service if labels is not None else None
    raw_ports = item.ports or ()
    layout = (svc, *[(p.name, p.port) for p in raw_ports])
    target = cache.get(layout)
    if target is None:
        ports = []
        for p in raw_ports:
            if p.port is not None:
                pname = _intern(p.name or "")
                if "\t" in pname or "\n" in pname or "," in pname:
                    raise _Unsure
                ports.append((pname, p.port))
        target = cache[layout] = shared(
            SliceTarget(None if svc is None else _intern(svc), tuple(sorted(ports)))
        )
    addresses = []
    for ep in item.endpoints or ():
        if ep.conditions is not None and ep.conditions.ready is False:
            continue
        addrs = ep.addresses
        if addrs:
            first = addrs[0]
            if "," not in first and "\t" not in first and "\n" not in first:
                addresses.append(first)
    if len(addresses) > 1:
        addresses.sort()
    return EndpointSliceRec(target, ",".join(addresses))  # type: ignore[arg-type]


class TypedPage(Generic[R]):
    """A list page decoded typed: its version and continue token at once, its records
    when asked (`entries`), so the next page can be asked for in between."""

    __slots__ = ("_convert", "_items", "continue_", "resource_version")

    def __init__(
        self,
        resource_version: str,
        continue_: str | None,
        items: list[T],
        convert: Callable[[T, Cache], R],
    ) -> None:
        self.resource_version = resource_version
        self.continue_ = continue_
        self._items: list[object] = items  # type: ignore[assignment]
        self._convert: Callable[[object, Cache], R] = convert  # type: ignore[assignment]

    def entries(self) -> list[tuple[str, str, R]] | None:
        """(namespace, name, record) of every item; None: decode the page generically."""
        convert = self._convert
        cache: Cache = {}
        out = []
        try:
            for item in self._items:
                meta = item.metadata  # type: ignore[attr-defined]
                out.append((_intern(meta.namespace or ""), meta.name, convert(item, cache)))
        except (_Unsure, ValueError):
            return None
        finally:
            self._items = []
        return out


def _decoder(item_type: type[T], convert: Callable[[T, Cache], R]) -> PageDecoder[R]:
    decoder = msgspec.json.Decoder(_Page[item_type])  # type: ignore[valid-type]

    def decode(body: bytes) -> TypedPage[R] | None:
        try:
            page = decoder.decode(body)
        except msgspec.DecodeError:  # msgspec.ValidationError is one
            return None
        meta = page.metadata or _NO_LIST_META
        rv, continue_ = meta.resourceVersion or "", meta.continue_ or None
        return TypedPage(rv, continue_, page.items or [], convert)

    return decode


def service_pages(annotation: str, keep_cluster_ip: bool) -> PageDecoder[ServiceRec]:
    """Decoder of Service list pages (`parse_service(obj, annotation, keep_cluster_ip)`)."""

    def convert(item: _Service, cache: Cache) -> ServiceRec:
        return _service(item, annotation, keep_cluster_ip, cache)

    return _decoder(_Service, convert)


def slice_pages() -> PageDecoder[EndpointSliceRec]:
    """Decoder of EndpointSlice list pages (`parse_endpoint_slice`)."""
    return _decoder(_Slice, _slice)
