"""The EndpointSlices of one namespace, held as text: a tenth of a slice's Python objects.

EndpointSlices are the most numerous objects of a cluster (one or more per Service) and
routing reads few of them, yet each must be held: a route may name any Service next.
As a dict of records, a slice cost its name, its record and its address string, three
objects (~200 bytes) for ~30 characters of content; at 2,000 tenants that was a third
of the control process. `SliceBucket` keeps one string per Service instead, one line per
slice (`name<TAB>ports<TAB>addresses`), and decodes records when they are read; a
name -> Service index (text too, or a dict in a big namespace) finds a slice's line.

This module owns that encoding; it must never read raw JSON (see `parsers`, which
refuses the characters the encoding reserves) or be used for another kind.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

from sniffer.routing.sources.kubernetes.fields import shared
from sniffer.routing.sources.kubernetes.records import EndpointSliceRec, SliceTarget

INDEX_AT = 128
"""Slices in a namespace past which the name -> Service index is a dict: below, it is
text too (`\nname<TAB>service` lines, one `find` per lookup); above, updating that text
would copy it on every event and a list of 10,000 slices in one namespace would be
quadratic."""

RESERVED = ("\t", "\n")
"""Characters a slice's name, port names and addresses must not hold (they frame the
text); `,` is reserved in port names and addresses too (see `parsers`)."""


def _encode(name: str, rec: EndpointSliceRec) -> str:
    ports = ",".join(f"{p}:{n}" for p, n in rec.target.ports)
    return f"\n{name}\t{ports}\t{rec.addresses}"


def _decode(service: str, line: str) -> tuple[str, EndpointSliceRec]:
    name, ports, addresses = line.split("\t")
    pairs = []
    if ports:
        for p in ports.split(","):
            pname, _, number = p.rpartition(":")
            pairs.append((pname, int(number)))
    target = shared(SliceTarget(service or None, tuple(pairs)))
    return name, EndpointSliceRec(target, addresses)


def _span(text: str, name: str) -> tuple[int, int]:
    """Start (its `\n`) and end of `name`'s line in `text`, or (-1, -1)."""
    at = text.find("\n" + name + "\t")
    if at == -1:
        return -1, -1
    end = text.find("\n", at + 1)
    return at, len(text) if end == -1 else end


class SliceBucket(MutableMapping[str, EndpointSliceRec]):
    """name -> `EndpointSliceRec` of one namespace, stored as one string per Service."""

    __slots__ = ("_index", "_len", "_text")

    def __init__(self) -> None:
        self._text: dict[str, str] = {}
        """Service name ("" for a slice without the service-name label) -> its lines."""
        self._index: str | dict[str, str] = ""
        """name -> Service: `\nname<TAB>service` lines, a dict past `INDEX_AT` slices."""
        self._len = 0

    def _service_of(self, name: str) -> str | None:
        index = self._index
        if isinstance(index, dict):
            return index.get(name)
        at, end = _span(index, name)
        return None if at == -1 else index[at + len(name) + 2 : end]

    def __getitem__(self, name: str) -> EndpointSliceRec:
        service = self._service_of(name)
        if service is None:
            raise KeyError(name)
        text = self._text[service]
        at, end = _span(text, name)
        return _decode(service, text[at + 1 : end])[1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._service_of(name) is not None

    def __setitem__(self, name: str, rec: EndpointSliceRec) -> None:
        old = self._service_of(name)
        if old is not None:
            self._drop(name, old)
        service = rec.target.service or ""
        self._text[service] = self._text.get(service, "") + _encode(name, rec)
        self._len += 1
        if isinstance(self._index, dict):
            self._index[name] = service
        elif self._len > INDEX_AT:
            self._index = {n: svc for svc, n in self._names()}
        else:
            self._index += f"\n{name}\t{service}"

    def __delitem__(self, name: str) -> None:
        service = self._service_of(name)
        if service is None:
            raise KeyError(name)
        self._drop(name, service)

    def _drop(self, name: str, service: str) -> None:
        text = self._text[service]
        at, end = _span(text, name)
        rest = text[:at] + text[end:]
        if rest:
            self._text[service] = rest
        else:
            del self._text[service]
        self._len -= 1
        if isinstance(self._index, dict):
            del self._index[name]
        else:
            at, end = _span(self._index, name)
            self._index = self._index[:at] + self._index[end:]

    def _names(self) -> Iterator[tuple[str, str]]:
        """(service, name) of every slice."""
        for service, text in self._text.items():
            for line in text[1:].split("\n"):
                yield service, line.partition("\t")[0]

    def __iter__(self) -> Iterator[str]:
        return (name for _, name in self._names())

    def __len__(self) -> int:
        return self._len

    def records(self) -> Iterator[tuple[str, EndpointSliceRec]]:
        """(name, record) of every slice: one pass over the text."""
        for service, text in self._text.items():
            for line in text[1:].split("\n"):
                yield _decode(service, line)

    def of_service(self, service: str) -> list[EndpointSliceRec]:
        """The slices labelled for `service` (what a route's backend reads)."""
        text = self._text.get(service)
        if not service or text is None:
            return []
        return [_decode(service, line)[1] for line in text[1:].split("\n")]

    def values(self) -> list[EndpointSliceRec]:  # type: ignore[override]
        return [rec for _, rec in self.records()]

    def items(self) -> list[tuple[str, EndpointSliceRec]]:  # type: ignore[override]
        return list(self.records())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SliceBucket):
            return dict(self.records()) == dict(other.records())
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]
