"""The EndpointSlices of one namespace, held as text: a tenth of a slice's Python objects.

EndpointSlices are the most numerous objects of a cluster (one or more per Service) and
routing reads few of them, yet each must be held: a route may name any Service next.
As a dict of records, a slice cost its name, its record and its address string, three
objects (~200 bytes) for ~30 characters of content; at 2,000 tenants that was a third
of the control process. `SliceBucket` keeps the namespace's slices as one string
instead, one line per slice (`name<TAB>service<TAB>ports<TAB>addresses`, ~40
characters), and decodes records when they are read; a big namespace's text is split
by Service and its names indexed (`INDEX_AT`).

This module owns that encoding; it must never read raw JSON (see `parsers`, which
refuses the characters the encoding reserves) or be used for another kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping

from sniffer.routing.sources.kubernetes.fields import shared
from sniffer.routing.sources.kubernetes.records import EndpointSliceRec, SliceTarget

INDEX_AT = 128
"""Slices in a namespace past which its text is split by Service, with a name -> Service
dict: below, one `find` over the namespace's text locates a slice; above, every event
would copy a long text, and a list of 10,000 slices in one namespace would be quadratic."""


def _encode(name: str, service: str, rec: EndpointSliceRec) -> str:
    ports = ",".join(f"{p}:{n}" for p, n in rec.target.ports)
    return f"\n{name}\t{service}\t{ports}\t{rec.addresses}"


def _decode(line: str) -> tuple[str, str, EndpointSliceRec]:
    """(name, service, record) of one line (without its leading newline)."""
    name, service, ports, addresses = line.split("\t")
    pairs = []
    if ports:
        for p in ports.split(","):
            pname, _, number = p.rpartition(":")
            pairs.append((pname, int(number)))
    target = shared(SliceTarget(service or None, tuple(pairs)))
    return name, service, EndpointSliceRec(target, addresses)


def _span(text: str, name: str) -> tuple[int, int]:
    """Start (its newline) and end of `name`'s line in `text`, or (-1, -1)."""
    at = text.find("\n" + name + "\t")
    if at == -1:
        return -1, -1
    end = text.find("\n", at + 1)
    return at, len(text) if end == -1 else end


def _lines(text: str) -> list[str]:
    return text[1:].split("\n") if text else []


class SliceBucket(MutableMapping[str, EndpointSliceRec]):
    """name -> `EndpointSliceRec` of one namespace, stored as text."""

    __slots__ = ("_len", "_text", "_where")

    def __init__(self) -> None:
        self._text: dict[str, str] = {}
        """Lines `\nname<TAB>service<TAB>ports<TAB>addresses`: all under "" while the
        namespace is small, then one text per Service ("" for unlabelled slices)."""
        self._where: dict[str, str] | None = None
        """name -> Service (the key of its text), once past `INDEX_AT` slices."""
        self._len = 0

    def _shard(self, name: str) -> tuple[str, int, int] | None:
        """(text key, start, end) of `name`'s line, or None."""
        if self._where is None:
            key = ""
        else:
            found = self._where.get(name)
            if found is None:
                return None
            key = found
        at, end = _span(self._text.get(key, ""), name)
        return None if at == -1 else (key, at, end)

    def __getitem__(self, name: str) -> EndpointSliceRec:
        found = self._shard(name)
        if found is None:
            raise KeyError(name)
        key, at, end = found
        return _decode(self._text[key][at + 1 : end])[2]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._shard(name) is not None

    def __setitem__(self, name: str, rec: EndpointSliceRec) -> None:
        found = self._shard(name)
        if found is not None:
            self._drop(*found)
            if self._where is not None:
                del self._where[name]
        service = rec.target.service or ""
        line = _encode(name, service, rec)
        self._len += 1
        if self._where is None and self._len > INDEX_AT:
            # Past the size one text serves well: split it by Service, indexed by name.
            lines = _lines(self._text.pop("", ""))
            self._where = {}
            for old in lines:
                old_name, old_service, _ = _decode(old)
                self._add(old_service, old_name, "\n" + old)
        if self._where is None:
            self._text[""] = self._text.get("", "") + line
        else:
            self._add(service, name, line)

    def update(  # type: ignore[override]
        self, pairs: Mapping[str, EndpointSliceRec] | Iterable[tuple[str, EndpointSliceRec]] = ()
    ) -> None:
        """Set every (name, record) of `pairs` in turn (the last of a name wins), at once:
        a list page's run of one namespace into an empty bucket becomes its text in one
        join instead of a search and a copy of the growing text per slice."""
        if isinstance(pairs, Mapping):
            pairs = pairs.items()
        if self._len or self._text:
            for name, rec in pairs:
                self[name] = rec
            return
        latest = dict(pairs)
        if len(latest) > INDEX_AT:
            for name, rec in latest.items():
                self[name] = rec
            return
        if latest:
            self._text[""] = "".join(
                _encode(name, rec.target.service or "", rec) for name, rec in latest.items()
            )
            self._len = len(latest)

    def _add(self, service: str, name: str, line: str) -> None:
        assert self._where is not None
        self._text[service] = self._text.get(service, "") + line
        self._where[name] = service

    def __delitem__(self, name: str) -> None:
        found = self._shard(name)
        if found is None:
            raise KeyError(name)
        self._drop(*found)
        if self._where is not None:
            del self._where[name]

    def _drop(self, key: str, at: int, end: int) -> None:
        text = self._text[key]
        rest = text[:at] + text[end:]
        if rest:
            self._text[key] = rest
        else:
            del self._text[key]
        self._len -= 1

    def records(self) -> Iterator[tuple[str, EndpointSliceRec]]:
        """(name, record) of every slice: one pass over the text."""
        for text in self._text.values():
            for line in _lines(text):
                name, _, rec = _decode(line)
                yield name, rec

    def __iter__(self) -> Iterator[str]:
        for text in self._text.values():
            for line in _lines(text):
                yield line.partition("\t")[0]

    def __len__(self) -> int:
        return self._len

    def of_service(self, service: str) -> list[EndpointSliceRec]:
        """The slices labelled for `service` (what a route's backend reads)."""
        if not service:
            return []
        if self._where is not None:
            return [_decode(line)[2] for line in _lines(self._text.get(service, ""))]
        tag = "\t" + service + "\t"
        return [
            rec
            for line in _lines(self._text.get("", ""))
            if tag in line
            for _, svc, rec in (_decode(line),)
            if svc == service
        ]

    def values(self) -> list[EndpointSliceRec]:  # type: ignore[override]
        return [rec for _, rec in self.records()]

    def items(self) -> list[tuple[str, EndpointSliceRec]]:  # type: ignore[override]
        return list(self.records())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SliceBucket):
            return dict(self.records()) == dict(other.records())
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]
