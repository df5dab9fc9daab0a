"""JA4 against the specification's own example, an independent implementation (the PyPI
`ja4plus` package) on real and synthetic hellos, and the spec's ALPN rule where they differ."""

from __future__ import annotations

import random

import pytest
from ja4plus.fingerprinters.ja4 import generate_ja4
from ja4plus.utils.tls_utils import parse_tls_handshake

from sniffer.wire.ja4 import is_ja4, ja4
from sniffer.wire.tls import ClientHello, ClientHelloReader
from tests.wire.hellos import (
    EXT_ALPN,
    EXT_SERVER_NAME,
    EXT_SIGNATURE_ALGORITHMS,
    EXT_SUPPORTED_VERSIONS,
    GREASE,
    alpn_ext,
    client_hello_body,
    ext,
    handshake,
    load_captures,
    modern_hello,
    records,
    server_name_ext,
    supported_versions_ext,
    u16,
)

CAPTURES = load_captures()


def parse(message: bytes) -> ClientHello:
    hello = ClientHelloReader(65536).feed(records(message))
    assert isinstance(hello, ClientHello)
    return hello


def theirs(message: bytes) -> str | None:
    """ja4plus's JA4 of the same handshake message (it wants one record)."""
    return generate_ja4(parse_tls_handshake(records(message, 1 << 16)))


def sig_algs_ext(*schemes: int) -> bytes:
    body = b"".join(u16(s) for s in schemes)
    return ext(EXT_SIGNATURE_ALGORITHMS, u16(len(body)) + body)


def hello_with(
    ext_types: list[int],
    *,
    ciphers: list[int],
    alpn: tuple[bytes, ...] = (b"h2",),
    sigs: tuple[int, ...] = (0x0403, 0x0804),
    versions: tuple[int, ...] = (0x0304, 0x0303),
) -> bytes:
    """A handshake message whose extensions come in `ext_types` order, each well formed."""
    exts = []
    for t in ext_types:
        if t == EXT_SERVER_NAME:
            exts.append(server_name_ext(b"ja4.example.test"))
        elif t == EXT_ALPN:
            exts.append(alpn_ext(*alpn))
        elif t == EXT_SUPPORTED_VERSIONS:
            exts.append(supported_versions_ext(*versions))
        elif t == EXT_SIGNATURE_ALGORITHMS:
            exts.append(sig_algs_ext(*sigs))
        else:
            exts.append(ext(t, b"\x00"))
    return handshake(client_hello_body(exts, cipher_suites=ciphers))


# The worked example of technical_details/JA4.md (FoxIO-LLC/ja4), GREASE sprinkled in.
SPEC_CIPHERS = [
    0x1301,
    0x1302,
    0x1303,
    0xC02B,
    0xC02F,
    0xC02C,
    0xC030,
    0xCCA9,
    0xCCA8,
    0xC013,
    0xC014,
    0x009C,
    0x009D,
    0x002F,
    0x0035,
]
SPEC_EXTS = [
    0x001B,
    0x0000,
    0x0033,
    0x0010,
    0x4469,
    0x0017,
    0x002D,
    0x000D,
    0x0005,
    0x0023,
    0x0012,
    0x002B,
    0xFF01,
    0x000B,
    0x000A,
    0x0015,
]
SPEC_SIGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)


def test_the_specification_example() -> None:
    message = hello_with(
        [GREASE[1], *SPEC_EXTS, GREASE[4]], ciphers=[GREASE[0], *SPEC_CIPHERS], sigs=SPEC_SIGS
    )
    assert ja4(parse(message)) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert theirs(message) == "t13d1516h2_8daaf6152771_e5627efa2ab1"


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
def test_real_hellos_agree_with_ja4plus(capture: object) -> None:
    message = capture.message  # type: ignore[attr-defined]
    mine = ja4(parse(message))
    assert mine == theirs(message)
    assert len(mine) == 36 and mine[0] == "t"


def test_synthetic_hellos_agree_with_ja4plus() -> None:
    rng = random.Random(12)
    pool = [1, 5, 10, 11, 13, 16, 18, 21, 23, 27, 35, 43, 45, 51, 0x4469, 0xFE0D, 0xFF01]
    for _ in range(300):
        types = rng.sample(pool, rng.randint(0, len(pool)))
        if rng.random() < 0.7:
            types.insert(rng.randint(0, len(types)), EXT_SERVER_NAME)
        types += rng.sample(GREASE, rng.randint(0, 2))
        ciphers = rng.sample(range(1, 0x3000), rng.randint(1, 120))
        ciphers += rng.sample(GREASE, rng.randint(0, 2))
        alpn = tuple(
            rng.choice([b"h2", b"http/1.1", b"acme-tls/1", b"x", b"spdy/3"])
            for _ in range(rng.randint(1, 3))
        )
        versions = rng.choice([(0x0304,), (GREASE[3], 0x0304, 0x0303), (0x0303, 0x0302)])
        sigs = tuple(rng.sample([0x0403, 0x0804, 0x0401, 0x0503, 0x0201, GREASE[2]], 3))
        message = hello_with(types, ciphers=ciphers, alpn=alpn, versions=versions, sigs=sigs)
        assert ja4(parse(message)) == theirs(message), (types, alpn, versions)


def test_modern_grease_ech_hello_agrees() -> None:
    message = modern_hello(pad_to=2048)
    assert ja4(parse(message)) == theirs(message)


@pytest.mark.parametrize(
    ("first", "expected"),
    # The specification's own examples of non-alphanumeric ALPN values.
    [
        (b"\xab", "ab"),
        (b"\x20", "20"),
        (b"\xab\xcd", "ad"),
        (b"\x20\x61", "21"),
        (b"\x30\xab", "3b"),
        (b"\x61\x20", "60"),
        (b"\x30\x31\xab\xcd", "3d"),
        (b"\x30\xab\xcd\x31", "01"),
        (b"h", "hh"),
        (b"http/1.1", "h1"),
        (b"acme-tls/1", "a1"),
    ],
)
def test_alpn_characters_follow_the_specification(first: bytes, expected: str) -> None:
    message = hello_with([EXT_SERVER_NAME, EXT_ALPN], ciphers=[0x1301], alpn=(first, b"h2"))
    assert ja4(parse(message))[8:10] == expected


def test_where_ja4plus_differs_the_specification_wins() -> None:
    # ja4plus writes a printable byte as itself and a high byte as "9"; the spec writes hex.
    message = hello_with([EXT_SERVER_NAME, EXT_ALPN], ciphers=[0x1301], alpn=(b"\xab\xcd",))
    assert ja4(parse(message))[8:10] == "ad"
    assert (theirs(message) or "")[8:10] == "99"


def test_no_extensions_no_ciphers_and_caps() -> None:
    # Only GREASE ciphers and no extension block: both hashes are the spec's zero sentinel.
    message = handshake(client_hello_body(None, cipher_suites=[GREASE[0]]))
    assert ja4(parse(message)) == "t12i000000_000000000000_000000000000"
    # SNI and ALPN alone are counted but not hashed: the extension hash is the sentinel.
    only = hello_with([EXT_SERVER_NAME, EXT_ALPN], ciphers=[0x1301])
    assert ja4(parse(only)).endswith("_000000000000")
    assert ja4(parse(only))[:10] == "t12d0102h2"  # no supported_versions: legacy 1.2
    # More than 99 ciphers or extensions count as 99.
    many = hello_with(list(range(100, 230)), ciphers=list(range(1, 150)))
    assert ja4(parse(many))[4:8] == "9999"


def test_version_from_supported_versions_else_legacy() -> None:
    tls12 = hello_with([EXT_SERVER_NAME], ciphers=[0x1301])
    assert ja4(parse(tls12))[1:3] == "12"
    greased = hello_with(
        [EXT_SUPPORTED_VERSIONS], ciphers=[0x1301], versions=(GREASE[7], 0x0304, 0x0303)
    )
    assert ja4(parse(greased))[1:4] == "13i"


def test_memo_is_keyed_by_every_input() -> None:
    base = parse(hello_with([EXT_SERVER_NAME, 13, 43], ciphers=[0x1301, 0x1302]))
    first = ja4(base)
    assert ja4(base) == first
    assert ja4(base._replace(cipher_suites=b"\x13\x01")) != first
    assert ja4(base._replace(alpn=("http/1.1",))) != first
    assert ja4(base._replace(extensions=(43, 13, 0))) == first  # sorted: order does not count
    assert ja4(base._replace(signature_algorithms=b"")) != first


def test_an_upper_case_alpn_fingerprint_is_a_ja4_a_deny_list_takes() -> None:
    # Found by the `ja4` fuzz target: the ALPN characters are the value's own ("Http/1.1"
    # -> "H1", as ja4plus writes too), but the deny-list validator took lower case only,
    # so such a client's fingerprint, copied from the access log, was refused as config.
    hello = parse(handshake(client_hello_body([alpn_ext(b"Http/1.1")])))
    fingerprint = ja4(hello)
    assert fingerprint[8:10] == "H1"
    assert is_ja4(fingerprint)
    assert not is_ja4(fingerprint.replace("H1", "H."))
