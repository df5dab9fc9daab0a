"""Properties of ClientHelloReader: exactly four outcomes whatever the bytes or the reads,
and never a hello before its last byte."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sniffer.wire.errors import HelloRejected
from sniffer.wire.sentinels import NEED_DATA, NOT_TLS
from sniffer.wire.tls import ClientHello, ClientHelloReader
from tests.wire.hellos import (
    GREASE,
    alpn_ext,
    client_hello_body,
    ext,
    handshake,
    load_captures,
    modern_extensions,
    records,
    server_name_ext,
)

CAPTURES = load_captures()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def outcome(data: bytes, cuts: list[int], max_bytes: int = 16384) -> object:
    """Feed ``data`` split at ``cuts``; return the first non-NEED_DATA outcome."""
    reader = ClientHelloReader(max_bytes)
    for piece in split(data, cuts):
        try:
            result = reader.feed(piece)
        except HelloRejected as exc:
            assert exc.reason and isinstance(exc.reason, str)
            assert exc.alert is None or 0 <= exc.alert <= 255
            return exc
        assert result is NEED_DATA or result is NOT_TLS or isinstance(result, ClientHello)
        if result is not NEED_DATA:
            assert reader.consumed <= len(data)
            return result
    return NEED_DATA


cut_lists = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=40)


@SETTINGS
@given(data=st.binary(max_size=3000), cuts=cut_lists)
def test_arbitrary_bytes_four_outcomes(data: bytes, cuts: list[int]) -> None:
    outcome(data, cuts)


@SETTINGS
@given(
    body=st.binary(max_size=600),
    msg_type=st.sampled_from([1, 1, 1, 2]),
    record_size=st.integers(1, 700),
    cuts=cut_lists,
)
def test_arbitrary_hello_bodies_in_valid_records(
    body: bytes, msg_type: int, record_size: int, cuts: list[int]
) -> None:
    # Random bytes rarely get past the record layer; frame them properly so the
    # ClientHello decoder itself is what gets fuzzed.
    wire = records(handshake(body, msg_type), record_size)
    whole = outcome(wire, [])
    chunked = outcome(wire, cuts, max_bytes=65536)
    if isinstance(whole, ClientHello):
        assert chunked == whole


@st.composite
def mutated_capture(draw: st.DrawFn) -> bytes:
    capture = draw(st.sampled_from(CAPTURES))
    data = bytearray(capture.wire)
    kind = draw(st.sampled_from(["flip", "truncate", "length", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "length":
        # Overwrite a 1-3 byte window with a length-like value: small, zero, or huge.
        pos = draw(st.integers(0, len(data) - 3))
        width = draw(st.integers(1, 3))
        value = draw(st.sampled_from([0, 1, 2, 0xFF, 0xFFFF, 0xFFFFFF]) | st.integers(0, 4096))
        data[pos : pos + width] = (value % (1 << (8 * width))).to_bytes(width, "big")
    else:
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(0, len(data)))
        data[a:a] = capture.wire[min(a, b) : max(a, b)]
    return bytes(data)


@SETTINGS
@given(data=mutated_capture(), cuts=cut_lists)
def test_mutated_real_hellos_four_outcomes(data: bytes, cuts: list[int]) -> None:
    whole = outcome(data, [])
    chunked = outcome(data, cuts)
    # Reads never change the verdict on a hello (errors may differ in which is hit first).
    if isinstance(whole, ClientHello) or isinstance(chunked, ClientHello):
        assert whole == chunked


@SETTINGS
@given(capture=st.sampled_from(CAPTURES), cut=st.integers(0, 1 << 16), cuts=cut_lists)
def test_never_a_hello_before_its_last_byte(capture: object, cut: int, cuts: list[int]) -> None:
    wire = capture.wire  # type: ignore[attr-defined]
    prefix = wire[: cut % len(wire)]
    assert outcome(prefix, cuts) is NEED_DATA


label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
hostnames = (
    st.lists(label, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda n: not n.split(".")[-1].isdigit())
)
protocols = st.lists(st.binary(min_size=1, max_size=20), max_size=5)


@SETTINGS
@given(
    sni=st.none() | hostnames,
    alpn=protocols,
    grease=st.booleans(),
    pq=st.booleans(),
    ech=st.booleans(),
    pad_to=st.none() | st.integers(512, 3000),
    record_sizes=st.lists(st.integers(1, 2000), min_size=1, max_size=8),
    cuts=cut_lists,
)
def test_synthetic_hellos_any_framing(
    sni: str | None,
    alpn: list[bytes],
    grease: bool,
    pq: bool,
    ech: bool,
    pad_to: int | None,
    record_sizes: list[int],
    cuts: list[int],
) -> None:
    exts = modern_extensions(
        sni.encode() if sni is not None else None,
        alpn,
        grease=grease,
        post_quantum=pq,
        ech=ech,
        pad_to=pad_to,
    )
    message = handshake(client_hello_body(exts))
    wire = records(message, record_sizes)
    assume(len(wire) <= 65536)
    hello = outcome(wire + b"\x17\x03\x03\x00\x05extra", cuts, max_bytes=65536)
    assert isinstance(hello, ClientHello), hello
    assert hello.sni == (sni.lower() if sni else None)
    assert hello.alpn == tuple(p.decode("latin-1") for p in alpn)
    assert hello.has_ech == ech


@SETTINGS
@given(
    exts=st.lists(
        st.sampled_from(
            [
                server_name_ext(b"a.example"),
                alpn_ext(b"h2"),
                ext(GREASE[0], b""),
                ext(21, b"\x00" * 8),
                ext(0xFE0D, b"\x00"),
                ext(43, b"\x02\x03\x04"),
            ]
        ),
        max_size=8,
    )
)
def test_duplicates_always_rejected(exts: list[bytes]) -> None:
    result = outcome(records(handshake(client_hello_body(exts))), [])
    types = [e[:2] for e in exts]
    if len(set(types)) != len(types):
        assert isinstance(result, HelloRejected) and result.alert == 50
    else:
        assert isinstance(result, ClientHello)
