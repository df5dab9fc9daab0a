"""HttpHeadReader: Host extraction, the 400/431/505 rules, NOT_HTTP, any read pattern."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniffer.wire.errors import BadHttpHead
from sniffer.wire.http import HttpHeadReader, HttpRequestHead
from sniffer.wire.sentinels import NEED_DATA, NOT_HTTP
from tests.wire.hellos import chunks, load_captures


def read(data: bytes, size: int | None = None, max_bytes: int = 8192) -> object:
    reader = HttpHeadReader(max_bytes)
    result: object = NEED_DATA
    for piece in [data] if size is None else chunks(data, size):
        result = reader.feed(piece)
        if result is not NEED_DATA:
            break
    return result


def host_of(head: bytes) -> str | None:
    result = read(head)
    assert isinstance(result, HttpRequestHead), result
    return result.host


def bad(data: bytes, size: int | None = None, max_bytes: int = 8192) -> BadHttpHead:
    with pytest.raises(BadHttpHead) as info:
        read(data, size, max_bytes)
    return info.value


GET = b"GET /path?q=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nUser-Agent: t\r\n\r\n"


@pytest.mark.parametrize("size", [None, 1, 2, 3, 7, 1448])
def test_simple_get_any_reads(size: int | None) -> None:
    assert read(GET + b"body bytes\r\n\r\nmore", size) == HttpRequestHead(
        method="GET", target="/path?q=1", version="HTTP/1.1", host="example.com"
    )


def test_every_split_point() -> None:
    expected = read(GET)
    for cut in range(1, len(GET)):
        reader = HttpHeadReader()
        assert reader.feed(GET[:cut]) is NEED_DATA
        assert reader.feed(GET[cut:]) == expected


@pytest.mark.parametrize(
    ("host_line", "expected"),
    [
        (b"Host: a.example", "a.example"),
        (b"host:a.example.", "a.example"),
        (b"HOST: \t A.Example:443 \t", "a.example"),
        (b"Host: a.example:", "a.example"),
        (b"Host: 10.0.0.1", None),
        (b"Host: 10.0.0.1:8080", None),
        (b"Host: [::1]:8080", None),
        (b"Host: [2001:db8::1]", None),
        (b"Host:", None),
        (b"Host: _svc.example", "_svc.example"),
    ],
)
def test_host_header(host_line: bytes, expected: str | None) -> None:
    assert host_of(b"GET / HTTP/1.1\r\n" + host_line + b"\r\n\r\n") == expected


def test_absolute_form_wins_over_host() -> None:
    head = b"GET http://Target.example:81/x HTTP/1.1\r\nHost: other.example\r\n\r\n"
    assert host_of(head) == "target.example"
    head = b"GET https://t.example?x HTTP/1.1\r\nHost: other.example\r\n\r\n"
    assert host_of(head) == "t.example"
    head = b"GET http://[::1]/ HTTP/1.1\r\nHost: other.example\r\n\r\n"
    assert host_of(head) is None


def test_http10_without_host() -> None:
    result = read(b"GET / HTTP/1.0\r\n\r\n")
    assert result == HttpRequestHead("GET", "/", "HTTP/1.0", None)
    assert host_of(b"GET http://a.example/ HTTP/1.0\r\n\r\n") == "a.example"


def test_connect_uses_host() -> None:
    head = b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"
    assert host_of(head) == "a.example"


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="1.1-without-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", id="two-hosts-case"),
        pytest.param(b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", id="userinfo"),
        pytest.param(b"GET http:/// HTTP/1.1\r\nHost: a\r\n\r\n", id="empty-authority"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", id="space-in-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", id="slash-in-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", id="port-range"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", id="port-alpha"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", id="open-bracket"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: [zz]\r\n\r\n", id="bracket-junk"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", id="bracket-trailer"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: \xc3\xa9.com\r\n\r\n", id="non-ascii-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nno colon\r\nHost: a\r\n\r\n", id="no-colon"),
        pytest.param(b"GET / HTTP/1.1\r\n: v\r\nHost: a\r\n\r\n", id="empty-name"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", id="nul"),
        pytest.param(b"GET / HTTP/1.1\nHost: a\r\n\r\n", id="bare-lf"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", id="bare-cr"),
        pytest.param(b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", id="double-space"),
        pytest.param(b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", id="four-parts"),
        pytest.param(b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", id="ctl-in-target"),
        pytest.param(b"GET / HTTP/1.x\r\nHost: a\r\n\r\n", id="bad-version"),
        pytest.param(b"GET / http/1.1\r\nHost: a\r\n\r\n", id="lowercase-version"),
    ],
)
def test_bad_request_400(head: bytes) -> None:
    for size in (None, 1):
        err = bad(head, size)
        assert (err.reason, err.http_status) == ("bad_http", 400), err


def test_ip_ish_host_is_ip_literal_not_error() -> None:
    # A numeric last label is an IP literal to browsers; routed as "no name".
    assert host_of(b"GET / HTTP/1.1\r\nHost: 1.2.3.4.5.6\r\n\r\n") is None


@pytest.mark.parametrize(
    "head", [b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]
)
def test_version_not_supported(head: bytes) -> None:
    err = bad(head)
    assert (err.reason, err.http_status) == ("bad_http", 505)


def test_bare_lf_head_fails_fast() -> None:
    err = bad(b"GET / HTTP/1.1\nHost: a\n\n", 1)
    assert err.http_status == 400


def test_too_large() -> None:
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 9000
    for size in (None, 1, 1448):
        err = bad(big, size)
        assert (err.reason, err.http_status) == ("http_head_too_large", 431)
    # A complete head just over the cap is refused too; one at the cap is fine.
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 200 + b"\r\n\r\n"
    assert isinstance(read(head, max_bytes=len(head)), HttpRequestHead)
    assert bad(head, max_bytes=len(head) - 1).http_status == 431


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00",
        b" GET / HTTP/1.1\r\n",
        b"\r\nGET / HTTP/1.1\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"G(T / HTTP/1.1",
        b"A" * 21,
        b"\x00",
        b"GET\r\nHost: a\r\n\r\n",
    ],
)
def test_not_http(data: bytes) -> None:
    assert read(data) is NOT_HTTP
    assert read(data, 1) is NOT_HTTP


def test_not_http_on_first_byte_of_tls() -> None:
    for capture in load_captures():
        assert HttpHeadReader().feed(capture.wire[:1]) is NOT_HTTP


def test_long_method_still_http_until_proven_otherwise() -> None:
    reader = HttpHeadReader()
    assert reader.feed(b"UPDATEREDIRECTREF") is NEED_DATA
    result = reader.feed(b" / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(result, HttpRequestHead) and result.method == "UPDATEREDIRECTREF"


def test_sticky_outcomes_and_inputs() -> None:
    reader = HttpHeadReader()
    assert reader.feed(b"") is NEED_DATA
    head = reader.feed(memoryview(GET))
    assert reader.feed(b"x") is head
    reader = HttpHeadReader()
    with pytest.raises(BadHttpHead):
        reader.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(BadHttpHead):
        reader.feed(b"x")
    with pytest.raises(ValueError):
        HttpHeadReader(10)


def test_dribble_is_linear() -> None:
    # 8 KiB one byte at a time: the end-of-head search resumes, it does not restart.
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 8000 + b"\r\n\r\n"
    assert isinstance(read(head, 1, max_bytes=16384), HttpRequestHead)


OUTCOMES = (HttpRequestHead,)


def check_outcome(data: bytes, cuts: list[int]) -> object:
    reader = HttpHeadReader()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        try:
            result = reader.feed(data[a:b])
        except BadHttpHead as exc:
            assert exc.http_status in (400, 431, 505)
            return exc
        assert result is NEED_DATA or result is NOT_HTTP or isinstance(result, OUTCOMES)
        if result is not NEED_DATA:
            return result
    return NEED_DATA


cut_lists = st.lists(st.integers(0, 10000), max_size=30)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), cuts=cut_lists)
def test_arbitrary_bytes_four_outcomes(data: bytes, cuts: list[int]) -> None:
    check_outcome(data, cuts)


header_text = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=30).map(
    lambda s: s.encode("latin-1")
)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST", b"OPTIONS", b"g\xe9t"]),
    target=st.sampled_from([b"/", b"*", b"http://a.example/", b"/x y"]),
    lines=st.lists(st.tuples(header_text, header_text), max_size=6),
    cuts=cut_lists,
)
def test_structured_heads_four_outcomes_and_read_independent(
    method: bytes, target: bytes, lines: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    head = method + b" " + target + b" HTTP/1.1\r\n"
    head += b"".join(k + b":" + v + b"\r\n" for k, v in lines) + b"\r\n"
    whole = check_outcome(head, [])
    chunked = check_outcome(head, cuts)
    if isinstance(whole, HttpRequestHead):
        assert whole == chunked
    else:
        assert type(whole) is type(chunked)


@pytest.mark.parametrize("cut", [None, 30, 80, 100])
def test_a_head_over_the_cap_is_431_however_it_was_read(cut: int | None) -> None:
    # Found by the `sniff` fuzz target: a bare LF past the cap made the whole head a 400
    # while the same bytes in two reads were a 431. Only the first max_bytes count.
    data = b"GET / HTTP/1.1\r\nX: " + b"a" * 100 + b"\n\n"
    reader = HttpHeadReader(64)
    reads = [data] if cut is None else [data[:cut], data[cut:]]
    with pytest.raises(BadHttpHead) as caught:
        for read in reads:
            reader.feed(read)
    assert (caught.value.reason, caught.value.http_status) == ("http_head_too_large", 431)
