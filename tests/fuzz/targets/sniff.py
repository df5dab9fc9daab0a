"""The `Sniffer` state machine: listener options and read boundaries from the input.

Input: 1 byte of options (TLS or HTTP listener, PROXY header expected, caps), 4 bytes of
read sizes, then the stream. Contract: each feed gives NEED_DATA, `Sniffed` or `Refused`;
a refusal's reason is documented and answered the listener's way (a TLS alert or
nothing on TLS listeners, an HTTP status or nothing on HTTP ones); a `Sniffed` replays
exactly the bytes fed after the PROXY header; the event stays; and the stream read in one
piece reaches the same decision (same name, hello, header or reason).
"""

from __future__ import annotations

from sniffer.wire.sentinels import NEED_DATA
from sniffer.wire.sniff import Refused, Sniffed, Sniffer, SniffLimits
from sniffer.wire.tls import ClientHello
from tests.fuzz.contract import (
    HTTP_STATUSES,
    SNIFF_REASONS,
    TLS_ALERTS,
    Target,
    chunks,
    pick,
    split_plan,
)
from tests.fuzz.targets.tls_hello import check_hello

HELLO_CAPS = (64, 517, 16384)
HEAD_CAPS = (64, 256, 8192)


def limits_of(options: int) -> SniffLimits:
    return SniffLimits(
        tls=bool(options & 1),
        proxy_protocol_in=bool(options & 2),
        max_hello_bytes=pick(HELLO_CAPS, options >> 2),
        max_http_head_bytes=pick(HEAD_CAPS, options >> 4),
    )


def run(limits: SniffLimits, reads: list[bytes]) -> Sniffed | Refused | None:
    sniffer = Sniffer(limits)
    fed = bytearray()
    for read in reads:
        fed += read
        event = sniffer.feed(read)
        if event is NEED_DATA:
            continue
        if type(event) is Refused:
            assert event.reason in SNIFF_REASONS, event
            if limits.tls:
                assert event.http_status is None and event.alert in TLS_ALERTS | {None}, event
            else:
                assert event.alert is None and event.http_status in HTTP_STATUSES | {None}, event
        else:
            assert type(event) is Sniffed, event
            header = event.proxy_header
            assert (header is not None) == limits.proxy_protocol_in, event
            skip = 0 if header is None else header.length
            assert bytes(event.replay) == bytes(fed[skip:]), "replay is not the input"
            if limits.tls:
                assert type(event.hello) is ClientHello and event.host == event.hello.sni
                check_hello(event.hello)
                assert len(event.hello.cipher_suites) + 40 <= len(event.replay)
            else:
                assert event.hello is None
            assert len(sniffer.pending) == 0
        assert sniffer.feed(b"\x16\x03\x01GET ") is event, "the event did not stay"
        return event
    return None


def decision(event: Sniffed | Refused | None) -> object:
    if type(event) is Sniffed:
        return ("sniffed", event.host, event.hello, event.proxy_header)
    return event


def check(data: bytes) -> None:
    options, sizes, stream = split_plan(data, 5)
    limits = limits_of(options[0])
    split = run(limits, list(chunks(stream, sizes)))
    whole = run(limits, [stream] if stream else [])
    assert decision(split) == decision(whole), (split, whole)


TARGET = Target("sniff", check, max_len=4096)
