"""ClientHelloReader on real captured hellos, synthetic post-quantum ones, and every
rejection it promises."""

from __future__ import annotations

import random

import pytest

from sniffer.wire.errors import HelloRejected
from sniffer.wire.sentinels import NEED_DATA, NOT_TLS
from sniffer.wire.tls import ClientHello, ClientHelloReader
from tests.wire.hellos import (
    EXT_ECH,
    EXT_PADDING,
    GREASE,
    X25519MLKEM768,
    Capture,
    alpn_ext,
    chunks,
    client_hello_body,
    ext,
    handshake,
    load_captures,
    modern_extensions,
    modern_hello,
    records,
    server_name_ext,
    supported_versions_ext,
    u16,
)

CAPTURES = load_captures()
TRAILER = b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x10" + b"E" * 16  # CCS + early data


def feed_all(reader: ClientHelloReader, pieces: list[bytes]) -> object:
    """Feed pieces until an outcome other than NEED_DATA; fail if one comes too early."""
    total = sum(len(p) for p in pieces)
    fed = 0
    for piece in pieces:
        fed += len(piece)
        result = reader.feed(piece)
        if result is not NEED_DATA:
            return result
    assert fed == total
    return NEED_DATA


def read(data: bytes, size: int | None = None, max_bytes: int = 16384) -> object:
    pieces = [data] if size is None else list(chunks(data, size))
    return feed_all(ClientHelloReader(max_bytes), pieces)


def facts(hello: object) -> ClientHello:
    """The routing facts of a hello, without the raw fields kept for JA4."""
    assert isinstance(hello, ClientHello)
    return ClientHello(*hello[:5])


def reject(data: bytes, size: int | None = None, max_bytes: int = 16384) -> HelloRejected:
    with pytest.raises(HelloRejected) as info:
        read(data, size, max_bytes)
    return info.value


# --- real captures ----------------------------------------------------------------------


def test_fixture_set_is_complete() -> None:
    names = {c.name for c in CAPTURES}
    assert {"python_tls13", "python_tls12", "openssl_s_client", "curl", "node"} <= names
    assert "chromium" in names, "run tests/wire/capture_hellos.py with chromium installed"


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
@pytest.mark.parametrize(
    "delivery", ["whole", "whole+trailer", "1-byte reads", "1448-byte reads", "7-byte reads"]
)
def test_capture_any_read_pattern(capture: Capture, delivery: str) -> None:
    data = capture.wire
    if delivery == "whole":
        pieces = [data]
    elif delivery == "whole+trailer":
        pieces = [data + TRAILER]
    else:
        pieces = list(chunks(data + TRAILER, int(delivery.split("-")[0])))
    reader = ClientHelloReader()
    hello = feed_all(reader, pieces)
    assert isinstance(hello, ClientHello)
    assert hello.sni == capture.sni
    assert hello.alpn == capture.alpn
    # The reader stops exactly at the end of the hello: nothing after it is its business.
    assert reader.consumed == len(data)


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
@pytest.mark.parametrize("record_size", [1, 2, 5, 100, 1000])
def test_capture_reframed_into_many_records(capture: Capture, record_size: int) -> None:
    wire = records(capture.message, record_size, version=0x0303)
    hello = read(wire + TRAILER, max_bytes=65536)
    assert isinstance(hello, ClientHello)
    assert (hello.sni, hello.alpn) == (capture.sni, capture.alpn)
    # ... and delivered 1 byte at a time on top of that.
    hello2 = read(wire, 1, max_bytes=65536)
    assert hello2 == hello


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
def test_capture_irregular_records_and_reads(capture: Capture) -> None:
    rng = random.Random(capture.name)
    for _ in range(20):
        sizes = [rng.choice([1, 2, 3, 50, 333, 16384]) for _ in range(10)]
        wire = records(capture.message, sizes)
        pieces = []
        pos = 0
        while pos < len(wire):
            n = rng.choice([1, 4, 5, 6, 64, 1448, 4096])
            pieces.append(wire[pos : pos + n])
            pos += n
        hello = feed_all(ClientHelloReader(65536), pieces)
        assert isinstance(hello, ClientHello)
        assert (hello.sni, hello.alpn) == (capture.sni, capture.alpn)


def test_chromium_is_post_quantum_with_grease_ech() -> None:
    (chromium,) = [c for c in CAPTURES if c.name == "chromium"]
    assert len(chromium.wire) >= 1500
    assert u16(X25519MLKEM768) + u16(1216) in chromium.wire  # the ML-KEM key share
    hello = read(chromium.wire)
    assert isinstance(hello, ClientHello)
    assert hello.has_ech
    assert hello.offers_tls13
    assert hello.supported_versions == (0x0304, 0x0303)  # GREASE filtered


def test_tls12_only_client() -> None:
    (py12,) = [c for c in CAPTURES if c.name == "python_tls12"]
    hello = read(py12.wire)
    assert isinstance(hello, ClientHello)
    assert not hello.offers_tls13


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
def test_no_hello_before_the_last_byte(capture: Capture) -> None:
    reader = ClientHelloReader()
    for piece in chunks(capture.wire[:-1], 1):
        assert reader.feed(piece) is NEED_DATA
    assert isinstance(reader.feed(capture.wire[-1:]), ClientHello)


# --- synthetic post-quantum hellos --------------------------------------------------------


@pytest.mark.parametrize("pad_to", [None, 1500, 2048, 4000])
@pytest.mark.parametrize("record_size", [16384, 1448, 512, 1])
def test_synthetic_pq_hello(pad_to: int | None, record_size: int) -> None:
    message = modern_hello(pad_to=pad_to)
    assert len(message) >= (pad_to or 1500)
    wire = records(message, record_size)
    hello = read(wire, max_bytes=65536)
    assert isinstance(hello, ClientHello)
    assert facts(hello) == ClientHello(
        sni="pq.example.test",
        alpn=("h2", "http/1.1"),
        supported_versions=(0x0304, 0x0303),
        has_ech=True,
    )
    assert read(wire, 1448, max_bytes=65536) == hello


def test_grease_everywhere() -> None:
    exts = [ext(g, b"") for g in GREASE[:4]] + [
        server_name_ext(b"grease.example.test"),
        alpn_ext(b"h2"),
        supported_versions_ext(GREASE[5], 0x0304, GREASE[9]),
    ]
    body = client_hello_body(exts, cipher_suites=[GREASE[2], 0x1301, GREASE[11]])
    hello = read(records(handshake(body)))
    assert isinstance(hello, ClientHello)
    assert hello.sni == "grease.example.test"
    assert hello.supported_versions == (0x0304,)


def test_grease_ech_uses_outer_sni() -> None:
    hello = read(records(modern_hello(sni=b"outer.example.test", ech=True)))
    assert isinstance(hello, ClientHello)
    assert hello.has_ech and hello.sni == "outer.example.test"


def test_no_sni_and_no_extensions() -> None:
    assert facts(read(records(modern_hello(sni=None)))) == ClientHello(
        sni=None, alpn=("h2", "http/1.1"), supported_versions=(0x0304, 0x0303), has_ech=True
    )
    hello = read(records(handshake(client_hello_body(None))))
    assert facts(hello) == ClientHello(sni=None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Example.COM", "example.com"),
        (b"example.com.", "example.com"),
        (b"_acme-challenge.example.com", "_acme-challenge.example.com"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"a" * 63 + b".com", "a" * 63 + ".com"),
    ],
)
def test_sni_normalised(raw: bytes, expected: str) -> None:
    hello = read(records(modern_hello(sni=raw)))
    assert isinstance(hello, ClientHello)
    assert hello.sni == expected


def test_unknown_name_type_is_skipped() -> None:
    entries = b"\x07" + u16(3) + b"abc" + b"\x00" + u16(5) + b"a.com"
    exts = [ext(0, u16(len(entries)) + entries)]
    hello = read(records(handshake(client_hello_body(exts))))
    assert isinstance(hello, ClientHello) and hello.sni == "a.com"
    only_unknown = b"\x07" + u16(3) + b"abc"
    exts = [ext(0, u16(len(only_unknown)) + only_unknown)]
    assert facts(read(records(handshake(client_hello_body(exts))))) == ClientHello(sni=None)


# --- outcomes other than a hello ------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.1\r\n", b"\x80\x2e\x01\x03\x01", b"SSH-2.0-OpenSSH", b"\x00"]
)
def test_not_tls(data: bytes) -> None:
    assert ClientHelloReader().feed(data) is NOT_TLS
    assert ClientHelloReader().feed(data[:1]) is NOT_TLS


def test_empty_feed_and_sticky_outcomes() -> None:
    reader = ClientHelloReader()
    assert reader.feed(b"") is NEED_DATA
    hello = reader.feed(CAPTURES[0].wire)
    assert isinstance(hello, ClientHello)
    assert reader.feed(b"more") is hello
    bad = ClientHelloReader()
    with pytest.raises(HelloRejected):
        bad.feed(b"\x16\x03\x01\x00\x00")
    with pytest.raises(HelloRejected):
        bad.feed(b"anything")
    not_tls = ClientHelloReader()
    assert not_tls.feed(b"G") is NOT_TLS
    assert not_tls.feed(b"\x16") is NOT_TLS


@pytest.mark.parametrize("max_bytes", [0, 63, 65537])
def test_max_bytes_bounds(max_bytes: int) -> None:
    with pytest.raises(ValueError):
        ClientHelloReader(max_bytes)


def test_memoryview_and_bytearray_input() -> None:
    wire = CAPTURES[0].wire
    assert read(wire) == ClientHelloReader().feed(memoryview(wire))
    assert read(wire) == ClientHelloReader().feed(bytearray(wire))
    reader = ClientHelloReader()
    for piece in chunks(wire, 100):
        result = reader.feed(memoryview(bytearray(piece)))
    assert result == read(wire)


# --- rejections: record layer ----------------------------------------------------------------

HELLO = modern_hello(sni=b"ok.example.test")


def test_zero_length_record() -> None:
    err = reject(b"\x16\x03\x01\x00\x00" + records(HELLO))
    assert (err.reason, err.alert) == ("bad_record", 50)
    err = reject(records(HELLO[:10]) + b"\x16\x03\x03\x00\x00", 1)
    assert (err.reason, err.alert) == ("bad_record", 50)


@pytest.mark.parametrize("content_type", [20, 21, 23, 24, 0x80])
def test_non_handshake_record_inside_hello(content_type: int) -> None:
    wire = records(HELLO[:100]) + bytes([content_type]) + b"\x03\x03\x00\x05hello"
    err = reject(wire)
    assert (err.reason, err.alert) == ("bad_record", 50)


def test_record_over_2_14() -> None:
    err = reject(b"\x16\x03\x01\x40\x01" + HELLO)
    assert (err.reason, err.alert) == ("bad_record", 50)


@pytest.mark.parametrize("version", [b"\x02\x00", b"\x03\x05", b"\xfe\xfd", b"\x00\x00"])
def test_bad_record_version(version: bytes) -> None:
    err = reject(b"\x16" + version + u16(len(HELLO)) + HELLO)
    assert (err.reason, err.alert) == ("bad_record", 50)
    err = reject(records(HELLO[:50]) + b"\x16" + version + b"\x00\x01\x00")
    assert (err.reason, err.alert) == ("bad_record", 50)


def test_not_a_client_hello() -> None:
    server_hello = handshake(client_hello_body([]), msg_type=2)
    err = reject(records(server_hello))
    assert (err.reason, err.alert) == ("bad_hello", 50)
    err = reject(records(server_hello, 1), 1)
    assert (err.reason, err.alert) == ("bad_hello", 50)


def test_too_large_announced() -> None:
    # Refused at the handshake header, before any of the 20000 bytes are buffered.
    err = reject(b"\x16\x03\x01\x40\x00\x01" + (20000).to_bytes(3, "big"))
    assert (err.reason, err.alert) == ("hello_too_large", 50)
    big = modern_hello(pad_to=20000)
    err = reject(records(big), 1448)
    assert err.reason == "hello_too_large"


def test_too_large_configured_cap() -> None:
    (chromium,) = [c for c in CAPTURES if c.name == "chromium"]
    assert reject(chromium.wire, max_bytes=1024).reason == "hello_too_large"
    assert isinstance(read(chromium.wire, max_bytes=len(chromium.wire)), ClientHello)
    assert reject(chromium.wire, max_bytes=len(chromium.wire) - 1).reason == "hello_too_large"


def test_too_large_counts_record_overhead() -> None:
    # 3000 one-byte records cost 18000 bytes of buffer on the caller's side.
    message = modern_hello(pad_to=3000)
    assert isinstance(read(records(message, 1), 4096, max_bytes=65536), ClientHello)
    assert reject(records(message, 1), 4096).reason == "hello_too_large"


# --- rejections: ClientHello body ---------------------------------------------------------


def body_with(exts: list[bytes]) -> bytes:
    return records(handshake(client_hello_body(exts)))


@pytest.mark.parametrize(
    ("name", "reason", "alert"),
    [
        (b"127.0.0.1", "sni_ip_literal", 112),
        (b"10.1", "sni_ip_literal", 112),
        (b"::1", "sni_ip_literal", 112),
        (b"2001:db8::1", "sni_ip_literal", 112),
        (b"[2001:db8::1]", "sni_ip_literal", 112),
        (b"evil\x00.example.com", "sni_control_char", 112),
        (b"a b.com", "sni_control_char", 112),
        (b"a\tb.com", "sni_control_char", 112),
        ("bücher.example".encode(), "sni_non_ascii", 112),
        (b"a" * 64 + b".com", "sni_label_too_long", 112),
        ((b"a" * 60 + b".") * 5, "sni_name_too_long", 112),
        (b"a..b", "sni_empty_label", 112),
        (b".", "sni_empty", 112),
        (b"a/b.com", "sni_bad_char", 112),
        (b"", "sni_empty", 50),
    ],
)
def test_bad_sni(name: bytes, reason: str, alert: int) -> None:
    err = reject(body_with([server_name_ext(name)]))
    assert (err.reason, err.alert) == (reason, alert)
    assert reason.removeprefix("sni_") in str(err) or "SNI" in str(err)


def test_two_host_names() -> None:
    err = reject(body_with([server_name_ext(b"a.example", b"b.example")]))
    assert (err.reason, err.alert) == ("sni_multiple", 50)


@pytest.mark.parametrize("dup", [0, 16, 43, 10, 0xFE0D, GREASE[1]])
def test_duplicate_extension(dup: int) -> None:
    first = {0: server_name_ext(b"a.example"), 16: alpn_ext(b"h2")}.get(dup, ext(dup, b"\x00"))
    second = {0: server_name_ext(b"b.example"), 16: alpn_ext(b"h2")}.get(dup, ext(dup, b"\x00"))
    if dup == 43:
        first = second = supported_versions_ext(0x0304)
    err = reject(body_with([first, alpn_ext(b"x") if dup != 16 else b"", second]))
    assert (err.reason, err.alert) == ("bad_hello", 50)


def _corrupt(body: bytes, offset: int, value: bytes) -> bytes:
    return body[:offset] + value + body[offset + len(value) :]


BASE_BODY = client_hello_body([server_name_ext(b"ok.example")], session_id=b"\x22" * 32)
SUITES_AT = 2 + 32 + 1 + 32


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(BASE_BODY[:20], id="truncated-random"),
        pytest.param(_corrupt(BASE_BODY, 34, b"\x21"), id="session-id-over-32"),
        pytest.param(_corrupt(BASE_BODY, SUITES_AT, b"\x00\x03"), id="odd-cipher-suites"),
        pytest.param(_corrupt(BASE_BODY, SUITES_AT, b"\x00\x00"), id="no-cipher-suites"),
        pytest.param(_corrupt(BASE_BODY, SUITES_AT, b"\xff\xfe"), id="suites-overrun"),
        pytest.param(client_hello_body([], compression_methods=b""), id="no-compression-methods"),
        pytest.param(BASE_BODY + b"\x00", id="trailing-byte"),
        pytest.param(BASE_BODY[:-1], id="extension-truncated"),
        pytest.param(client_hello_body(None) + b"\x00", id="half-extensions-length"),
        pytest.param(client_hello_body([b"\x00\x10\x00"]), id="extension-header-truncated"),
        pytest.param(client_hello_body([ext(0, b"")]), id="empty-server-name"),
        pytest.param(client_hello_body([ext(0, b"\x00\x05\x00\x00\x01a")]), id="sni-list-len"),
        pytest.param(client_hello_body([ext(0, b"\x00\x02\x00\x00")]), id="sni-entry-cut"),
        pytest.param(client_hello_body([ext(0, b"\x00\x04\x00\x00\x05a")]), id="sni-name-overrun"),
        pytest.param(client_hello_body([ext(16, b"")]), id="empty-alpn"),
        pytest.param(client_hello_body([ext(16, b"\x00\x00")]), id="empty-alpn-list"),
        pytest.param(client_hello_body([ext(16, b"\x00\x01\x00")]), id="empty-alpn-name"),
        pytest.param(client_hello_body([ext(16, b"\x00\x03\x05h2")]), id="alpn-name-overrun"),
        pytest.param(client_hello_body([ext(16, b"\x00\x09\x02h2")]), id="alpn-list-len"),
        pytest.param(client_hello_body([ext(43, b"\x03\x03\x04\x03")]), id="versions-odd"),
        pytest.param(client_hello_body([ext(43, b"\x00")]), id="versions-empty"),
        pytest.param(client_hello_body([ext(43, b"\x04\x03\x04")]), id="versions-len"),
    ],
)
def test_malformed_lengths_are_decode_errors(body: bytes) -> None:
    for size in (None, 1):
        err = reject(records(handshake(body)), size)
        assert err.alert == 50, err
        assert err.reason in {"bad_hello", "sni_empty"}
        assert "ClientHello" in str(err)


def test_extension_overrunning_message() -> None:
    body = client_hello_body([ext(EXT_PADDING, b"\x00" * 10)])
    body = body[:-12] + u16(EXT_PADDING) + u16(200) + b"\x00" * 10
    err = reject(records(handshake(body)))
    assert (err.reason, err.alert) == ("bad_hello", 50)


def test_ech_extension_alone_is_fine() -> None:
    hello = read(body_with([ext(EXT_ECH, b"\x01"), server_name_ext(b"public.example")]))
    assert isinstance(hello, ClientHello) and hello.has_ech


def test_error_is_a_clear_message() -> None:
    err = reject(body_with([server_name_ext(b"127.0.0.1")]))
    assert "127.0.0.1" in str(err) and "sni_ip_literal" in str(err)
    assert "alert=112" in repr(err)


def test_modern_extension_helper_covers_no_grease() -> None:
    exts = modern_extensions(grease=False, post_quantum=False, ech=False)
    hello = read(records(handshake(client_hello_body(exts))))
    assert isinstance(hello, ClientHello) and not hello.has_ech
