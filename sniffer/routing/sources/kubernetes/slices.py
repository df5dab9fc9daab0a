"""The EndpointSlices of one namespace, held as text: a tenth of a slice's Python objects.

EndpointSlices are the most numerous objects of a cluster (one or more per Service) and
routing reads few of them, yet each must be held: a route may name any Service next.
As a dict of records, a slice cost its name, its record and its address string, three
objects (~200 bytes) for ~30 characters of content; at 2,000 tenants that was a third
of the control process. `SliceBucket` keeps one string per Service instead, one line per
slice (`name<TAB>ports<TAB>addresses`), and decodes records when they are read. Finding
a slice by name scans the namespace's text, so a namespace past `INDEX_AT` slices also
keeps a name -> Service index.

This module owns that encoding; it must never read raw JSON (see `parsers`, which
refuses the characters the encoding reserves) or be used for another kind.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

from sniffer.routing.sources.kubernetes.fields import shared
from sniffer.routing.sources.kubernetes.records import EndpointSliceRec, SliceTarget

INDEX_AT = 128
"""Slices in a namespace past which names are indexed: a lookup then scans one Service's
lines instead of the namespace's (a list of 10,000 slices in one namespace would
otherwise scan quadratically)."""

RESERVED = ("\t", "\n")
"""Characters a slice's name, port names and addresses must not hold (they frame the
text); `,` and `:` are reserved in port names and addresses too (see `parsers`)."""


def _encode(name: str, rec: EndpointSliceRec) -> str:
    ports = ",".join(f"{p}:{n}" for p, n in rec.target.ports)
    return f"{name}\t{ports}\t{rec.addresses}\n"


def _decode(service: str | None, line: str) -> tuple[str, EndpointSliceRec]:
    name, ports, addresses = line.split("\t")
    pairs = []
    if ports:
        for p in ports.split(","):
            pname, _, number = p.rpartition(":")
            pairs.append((pname, int(number)))
    target = shared(SliceTarget(service, tuple(pairs)))
    return name, EndpointSliceRec(target, addresses)


def _find(text: str, name: str) -> int:
    """Where `name`'s line starts in `text`, or -1."""
    if text.startswith(name + "\t"):
        return 0
    at = text.find("\n" + name + "\t")
    return at + 1 if at != -1 else -1


class SliceBucket(MutableMapping[str, EndpointSliceRec]):
    """name -> `EndpointSliceRec` of one namespace, stored as one string per Service."""

    __slots__ = ("_len", "_text", "_where")

    def __init__(self) -> None:
        self._text: dict[str | None, str] = {}
        """Service name (None: a slice without the service-name label) -> its lines."""
        self._where: dict[str, str | None] | None = None
        """name -> Service, once the namespace holds more than `INDEX_AT` slices."""
        self._len = 0

    def _locate(self, name: str) -> tuple[str | None, int] | None:
        if self._where is not None:
            if name not in self._where:
                return None
            service = self._where[name]
            return service, _find(self._text[service], name)
        for service, text in self._text.items():
            at = _find(text, name)
            if at != -1:
                return service, at
        return None

    def __getitem__(self, name: str) -> EndpointSliceRec:
        found = self._locate(name)
        if found is None:
            raise KeyError(name)
        service, at = found
        text = self._text[service]
        return _decode(service, text[at : text.index("\n", at)])[1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._locate(name) is not None

    def __setitem__(self, name: str, rec: EndpointSliceRec) -> None:
        if name in self:
            del self[name]
        service = rec.target.service
        self._text[service] = self._text.get(service, "") + _encode(name, rec)
        self._len += 1
        if self._where is not None:
            self._where[name] = service
        elif self._len > INDEX_AT:
            self._where = dict(self._names())

    def __delitem__(self, name: str) -> None:
        found = self._locate(name)
        if found is None:
            raise KeyError(name)
        service, at = found
        text = self._text[service]
        rest = text[:at] + text[text.index("\n", at) + 1 :]
        if rest:
            self._text[service] = rest
        else:
            del self._text[service]
        self._len -= 1
        if self._where is not None:
            del self._where[name]

    def _names(self) -> Iterator[tuple[str, str | None]]:
        for service, text in self._text.items():
            for line in text.splitlines():
                yield line.partition("\t")[0], service

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._names())

    def __len__(self) -> int:
        return self._len

    def records(self) -> Iterator[tuple[str, EndpointSliceRec]]:
        """(name, record) of every slice: one pass over the text."""
        for service, text in self._text.items():
            for line in text.splitlines():
                yield _decode(service, line)

    def of_service(self, service: str) -> list[EndpointSliceRec]:
        """The slices labelled for `service` (what a route's backend reads)."""
        text = self._text.get(service)
        return [] if text is None else [_decode(service, ln)[1] for ln in text.splitlines()]

    def values(self) -> list[EndpointSliceRec]:  # type: ignore[override]
        return [rec for _, rec in self.records()]

    def items(self) -> list[tuple[str, EndpointSliceRec]]:  # type: ignore[override]
        return list(self.records())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SliceBucket):
            return dict(self.records()) == dict(other.records())
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]
