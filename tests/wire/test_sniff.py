"""The sniff phase without sockets: bytes in, NEED_DATA / Sniffed / Refused out."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sniffer.proxy.settings import ProxySettings
from sniffer.wire.errors import ALERT_DECODE_ERROR, ALERT_UNRECOGNIZED_NAME
from sniffer.wire.proxy_protocol import encode_v1, encode_v2
from sniffer.wire.sniff import NEED_DATA, Refused, Sniffed, Sniffer, SniffLimits, sniff_whole
from tests.wire.hellos import handshake, modern_hello, records

HELLO = records(modern_hello(sni=b"App.Example.", alpn=(b"h2", b"acme-tls/1")))
HEAD = b"GET / HTTP/1.1\r\nHost: Web.Example:8080\r\nUser-Agent: t\r\n\r\n"
SRC, DST = ("192.0.2.7", 40000), ("198.51.100.1", 443)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sniffer(tls: bool = True, proxy_in: bool = False, **settings: int) -> Sniffer:
    s = ProxySettings(**settings)  # type: ignore[arg-type]
    return Sniffer(SniffLimits(tls, proxy_in, s.max_hello_bytes, s.max_http_head_bytes))


def feed_all(sn: Sniffer, chunks: list[bytes]) -> list[object]:
    return [sn.feed(c) for c in chunks]


def test_whole_hello_in_one_read() -> None:
    event = sniffer().feed(HELLO)
    assert type(event) is Sniffed
    assert event.host == "app.example"
    assert event.alpn == ("h2", "acme-tls/1")
    assert event.hello is not None and event.hello.has_ech
    assert event.proxy_header is None
    assert bytes(event.replay) == HELLO


def test_hello_one_byte_at_a_time_replays_every_byte_and_stays_decided() -> None:
    sn = sniffer()
    events = feed_all(sn, [HELLO[i : i + 1] for i in range(len(HELLO))])
    assert events[:-1] == [NEED_DATA] * (len(HELLO) - 1)
    assert len(sn.pending) == 0
    last = events[-1]
    assert type(last) is Sniffed and last.host == "app.example"
    assert bytes(last.replay) == HELLO
    assert sn.feed(b"more") is last  # an outcome stays


def test_hello_split_over_records_and_reads() -> None:
    wire = records(modern_hello(sni=b"split.example"), sizes=[100, 7, 3000])
    sn = sniffer()
    events = feed_all(sn, [wire[:50], wire[50:130], wire[130:]])
    assert events[:2] == [NEED_DATA, NEED_DATA]
    last = events[2]
    assert type(last) is Sniffed and last.host == "split.example"
    assert bytes(last.replay) == wire


def test_smallest_accepted_hello_cap_refuses_a_split_hello_instead_of_raising() -> None:
    """Issue 11's bug: a cap ProxySettings accepts never makes the data path raise; a
    hello over it is refused with decode_error, counted as hello_too_large."""
    sn = sniffer(max_hello_bytes=64)
    assert sn.feed(HELLO[:3]) is NEED_DATA
    assert sn.feed(HELLO[3:]) == Refused("hello_too_large", ALERT_DECODE_ERROR, None)


def test_not_tls_and_malformed_hello() -> None:
    assert sniffer().feed(b"GET / HTTP/1.1\r\n") == Refused("not_tls", None, None)
    bad = records(handshake(b"\x03\x03" + b"\x00" * 10))
    event = sniffer().feed(bad)
    assert type(event) is Refused and event.alert == ALERT_DECODE_ERROR
    assert event.reason == "bad_hello"


def test_unusable_name_gets_unrecognized_name() -> None:
    event = sniffer().feed(records(modern_hello(sni=b"10.0.0.1")))
    assert event == Refused("sni_ip_literal", ALERT_UNRECOGNIZED_NAME, None)


def test_http_head_in_pieces() -> None:
    sn = sniffer(tls=False)
    assert sn.feed(HEAD[:10]) is NEED_DATA
    event = sn.feed(HEAD[10:])
    assert type(event) is Sniffed
    assert (event.host, event.hello, event.alpn) == ("web.example", None, ())
    assert bytes(event.replay) == HEAD


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x16\x03\x01\x00\x05hello", Refused("not_http", None, None)),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", Refused("bad_http", None, 400)),
    ],
)
def test_http_refusals(data: bytes, expected: Refused) -> None:
    assert sniffer(tls=False).feed(data) == expected


def test_http_head_over_cap_is_431() -> None:
    event = sniffer(tls=False, max_http_head_bytes=64).feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 100)
    assert type(event) is Refused and event.http_status == 431


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
def test_proxy_header_is_consumed_and_not_replayed(encode: object) -> None:
    header = encode(SRC, DST)  # type: ignore[operator]
    sn = sniffer(proxy_in=True)
    events = feed_all(sn, [header[:5], header[5:] + HELLO[:20], HELLO[20:]])
    assert events[:2] == [NEED_DATA, NEED_DATA]
    last = events[2]
    assert type(last) is Sniffed and last.host == "app.example"
    assert last.proxy_header is not None
    assert (last.proxy_header.source, last.proxy_header.destination) == (SRC, DST)
    assert bytes(last.replay) == HELLO


def test_proxy_header_and_whole_hello_in_one_read() -> None:
    event = sniffer(proxy_in=True).feed(encode_v2(SRC, DST) + HELLO)
    assert type(event) is Sniffed and bytes(event.replay) == HELLO
    assert event.proxy_header is not None and event.proxy_header.version == 2


def test_bad_proxy_header_closes_tls_and_answers_400_on_http() -> None:
    assert sniffer(proxy_in=True).feed(b"PROXY NONSENSE\r\n" + HELLO) == Refused(
        "bad_proxy_header", None, None
    )
    assert sniffer(tls=False, proxy_in=True).feed(b"PROXY NONSENSE\r\n" + HEAD) == Refused(
        "bad_proxy_header", None, 400
    )


def test_empty_feed_needs_data() -> None:
    assert sniffer().feed(b"") is NEED_DATA
    assert sniffer(tls=False).feed(b"") is NEED_DATA


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@SETTINGS
@given(
    prefix=st.sampled_from([b"", encode_v1(SRC, DST), encode_v2(SRC, DST), b"PROXY "]),
    body=st.one_of(st.binary(max_size=300), st.sampled_from([HELLO, HEAD, HELLO[:-1]])),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
    tls=st.booleans(),
    proxy_in=st.booleans(),
    cap=st.sampled_from([64, 100, 16384]),
)
def test_three_outcomes_whatever_the_bytes_or_reads(
    prefix: bytes, body: bytes, cuts: list[int], tls: bool, proxy_in: bool, cap: int
) -> None:
    """Nothing but NEED_DATA, Sniffed or Refused comes out, nothing raises, an outcome
    stays, and a Sniffed replays exactly the bytes after the PROXY header."""
    data = prefix + body
    sn = sniffer(tls=tls, proxy_in=proxy_in, max_hello_bytes=cap, max_http_head_bytes=cap)
    event: object = NEED_DATA
    for piece in _split(data, cuts):
        event = sn.feed(piece)
        assert event is NEED_DATA or type(event) in (Sniffed, Refused)
        if event is not NEED_DATA:
            break
    if type(event) is Sniffed:
        header = event.proxy_header
        start = 0 if header is None else header.length
        assert proxy_in == (header is not None)
        assert data[start:].startswith(bytes(event.replay))
        assert len(event.replay) > 0
    if event is not NEED_DATA:
        assert sn.feed(b"x") is event


def _limits(tls: bool = True, proxy_in: bool = False) -> SniffLimits:
    s = ProxySettings()
    return SniffLimits(tls, proxy_in, s.max_hello_bytes, s.max_http_head_bytes)


def test_sniff_whole_decides_a_whole_hello_as_a_sniffer_would() -> None:
    # What a connection does with its first read: no Sniffer when the hello is whole.
    event = sniff_whole(HELLO, _limits())
    assert event == sniffer().feed(HELLO)
    assert type(event) is Sniffed and event.host == "app.example" and event.replay is HELLO
    bad = records(modern_hello(sni=b"two..dots.example"))
    assert sniff_whole(bad, _limits()) == sniffer().feed(bad)
    assert type(sniffer().feed(bad)) is Refused


@pytest.mark.parametrize(
    ("first", "limits"),
    [
        (HELLO[:100], _limits()),  # a split hello
        (b"\x15\x03\x03\x00\x02\x02\x28", _limits()),  # not a handshake record
        (HEAD, _limits(tls=False)),  # an HTTP listener
        (encode_v1(SRC, DST) + HELLO, _limits(proxy_in=True)),  # a PROXY header first
    ],
)
def test_sniff_whole_leaves_anything_else_to_a_sniffer(first: bytes, limits: SniffLimits) -> None:
    assert sniff_whole(first, limits) is None
    # ...which, told the whole-hello path was tried, gives what a fresh one gives.
    assert Sniffer(limits, whole_tried=True).feed(first) == Sniffer(limits).feed(first)
