"""The HTTP/1.x request-head reader, on any read boundaries.

Input: 1 byte choosing the cap, 4 bytes of read sizes, then the stream. Contract: each
feed is NEED_DATA until a head, NOT_HTTP or `BadHttpHead` (a documented reason, status
400, 431 or 505); the outcome stays; the outcome (head, or reason and status) is the
same however the stream was cut; a head is made only of the bytes up to the blank line;
its host is a routable name or None.
"""

from __future__ import annotations

from sniffer.wire.errors import BadHttpHead
from sniffer.wire.hostname import normalize_hostname
from sniffer.wire.http import HttpHeadReader, HttpRequestHead
from sniffer.wire.sentinels import NEED_DATA
from tests.fuzz.contract import HTTP_REASONS, HTTP_STATUSES, Target, chunks, pick, split_plan

CAPS = (64, 256, 8192)


def outcome(reader: HttpHeadReader, reads: list[bytes]) -> object:
    for read in reads:
        try:
            result = reader.feed(read)
        except BadHttpHead as exc:
            assert exc.reason in HTTP_REASONS and exc.http_status in HTTP_STATUSES, exc
            assert exc.alert is None
            try:
                reader.feed(b"GET / HTTP/1.1\r\n\r\n")
            except BadHttpHead as again:
                assert (again.reason, again.http_status) == (exc.reason, exc.http_status)
            else:
                raise AssertionError("a refusal did not stay") from None
            return ("refused", exc.reason, exc.http_status)
        if result is not NEED_DATA:
            assert reader.feed(b"GET / HTTP/1.1\r\n\r\n") is result, "an outcome did not stay"
            return result
    return NEED_DATA


def check(data: bytes) -> None:
    options, sizes, stream = split_plan(data, 5)
    cap = pick(CAPS, options[0])
    split = outcome(HttpHeadReader(cap), list(chunks(stream, sizes)))
    whole = outcome(HttpHeadReader(cap), [stream] if stream else [])
    assert split == whole, (split, whole)
    if type(whole) is HttpRequestHead:
        assert whole.version in ("HTTP/1.0", "HTTP/1.1"), whole
        if whole.host is not None:
            assert normalize_hostname(whole.host) == whole.host, whole
        end = stream.index(b"\r\n\r\n") + 4
        assert outcome(HttpHeadReader(cap), [stream[:end] + b"\n\x00"]) == whole


TARGET = Target("http_head", check, max_len=2048)
