"""The JA4 TLS client fingerprint (FoxIO's JA4 specification, TLS over TCP) of a ClientHello.

This module owns turning the facts `sniffer.wire.tls` kept from a ClientHello into the
36-character JA4 string, e.g. ``t13d1516h2_8daaf6152771_e5627efa2ab1``. It must never do
I/O or parse TLS records itself: the hello was parsed (strictly) by `tls.py`, which keeps
the raw cipher list, the extension types in order and the signature_algorithms body
without decoding them, so the accept path pays only for three slices.

The specification (github.com/FoxIO-LLC/ja4, technical_details/JA4.md) is followed to the
letter where implementations differ: an ALPN value whose first or last byte is not an
ASCII letter or digit is written as the first and last characters of its hex form.

Real clients send a handful of distinct hellos, so fingerprints are memoised by their
inputs: a connection costs a tuple hash and a dict hit, not two SHA-256 runs.
"""

from __future__ import annotations

import hashlib
import re
import struct
from itertools import filterfalse

from sniffer.wire.tls import ClientHello

__all__ = ["is_ja4", "ja4", "ja4_quic"]

# RFC 8701 GREASE: 0x0A0A, 0x1A1A, ... 0xFAFA. The spec: ignore them anywhere.
_GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))
_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
_EXT_SERVER_NAME = 0x0000
_EXT_ALPN = 0x0010
_IN_PART_A = frozenset((_EXT_SERVER_NAME, _EXT_ALPN))
"""Extensions part a already tells (SNI, ALPN): left out of the extension hash."""
_EMPTY_HASH = "000000000000"
_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

# Bounded like the parser's memos: entries are ~0.3 KB, a hostile client mints a new key
# per connection, and clearing costs only recomputation.
_MEMO_MAX_ENTRIES = 1024
_memo: dict[tuple[object, ...], str] = {}
"""Keyed by the hello less its name: one per client build, not per connection."""


def ja4(hello: ClientHello) -> str:
    """The JA4 fingerprint of `hello` (a ClientHello received over TCP)."""
    key = hello[1:]  # all but the name, whose presence the extension types tell
    known = _memo.get(key)
    if known is None:
        if len(_memo) >= _MEMO_MAX_ENTRIES:
            _memo.clear()
        known = _memo[key] = _compute(hello)
    return known


# The ALPN characters are the value's own when alphanumeric, so upper case too ("H2").
_SHAPE = re.compile(r"[tqd][0-9a-z]{2}[di][0-9]{4}[0-9A-Za-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}")


def is_ja4(text: str) -> bool:
    """Whether `text` has the shape of a JA4 fingerprint (for validating deny lists)."""
    return _SHAPE.fullmatch(text) is not None


def _compute(hello: ClientHello) -> str:
    # supported_versions (GREASE already dropped by the parser) wins over legacy_version;
    # the record layer's version is ignored, as the spec says.
    # Lists are filtered, sorted and written out by C code (filterfalse, sorted, and
    # bytes.hex's separator), not per item in Python: a hostile 16 KiB hello of 8,000
    # cipher suites then costs about a millisecond once, not several per connection.
    versions = hello.supported_versions
    version = _VERSIONS.get(max(versions) if versions else hello.legacy_version, "00")
    exts = list(filterfalse(_GREASE.__contains__, hello.extensions))
    sni = "d" if _EXT_SERVER_NAME in exts else "i"
    raw = hello.cipher_suites
    ciphers = sorted(filterfalse(_GREASE.__contains__, struct.unpack(f">{len(raw) >> 1}H", raw)))
    part_a = (
        f"t{version}{sni}{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}"
        f"{_alpn_chars(hello.alpn[0] if hello.alpn else '')}"
    )
    cipher_hash = _hash(_hex_list(ciphers)) if ciphers else _EMPTY_HASH
    hashed = sorted(filterfalse(_IN_PART_A.__contains__, exts))
    if hashed:
        text = _hex_list(hashed)
        sigs = _signature_algorithms(hello.signature_algorithms)
        if sigs:
            text += "_" + _hex_list(sigs)
        ext_hash = _hash(text)
    else:
        ext_hash = _EMPTY_HASH
    return f"{part_a}_{cipher_hash}_{ext_hash}"


def _hex_list(values: list[int]) -> str:
    """`[0x1301, 0xc02b]` -> "1301,c02b": 4 lower-case hex digits each, comma-separated."""
    return struct.pack(f">{len(values)}H", *values).hex(",", 2)


def _alpn_chars(first: str) -> str:
    """First and last character of the first ALPN value ("00" when there is none).

    `tls.py` decodes protocol names as latin-1, so each character is one wire byte.
    A non-alphanumeric byte at either end switches to the value's hex form (the spec's
    examples: 0xAB -> "ab", 0x30 0xAB -> "3b", 0x61 0x20 -> "60").
    """
    if not first:
        return "00"
    head, tail = ord(first[0]), ord(first[-1])
    if head in _ALNUM and tail in _ALNUM:
        return first[0] + first[-1]
    return f"{head:02x}"[0] + f"{tail:02x}"[1]


def _signature_algorithms(body: bytes) -> list[int]:
    """The SignatureScheme list in the order sent, GREASE dropped.

    RFC 8446 §4.2.3: supported_signature_algorithms<2..2^16-2>. The parser did not need
    it to route, so a malformed body is read here as no list rather than refused.
    """
    if len(body) < 4 or (body[0] << 8 | body[1]) != len(body) - 2 or len(body) & 1:
        return []
    return list(
        filterfalse(_GREASE.__contains__, struct.unpack(f">{(len(body) - 2) >> 1}H", body[2:]))
    )


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def ja4_quic(hello: ClientHello) -> str:
    """The JA4 of a ClientHello carried in QUIC Initial packets: the spec's `q` prefix
    where TLS over TCP has `t`; everything else is computed the same way."""
    return "q" + ja4(hello)[1:]
