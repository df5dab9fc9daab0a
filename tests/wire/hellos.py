"""Build and load ClientHellos for tests: real captures and RFC 8446-shaped synthetic ones.

The synthetic builder follows the ClientHello layout of RFC 8446 §4.1.2 field by field, so
tests can make post-quantum-sized, GREASEd, padded or deliberately broken hellos without
depending only on what the installed clients happen to send.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).with_name("fixtures")

GREASE = [0x0A0A + 0x1010 * i for i in range(16)]
X25519 = 0x001D
X25519MLKEM768 = 0x11EC
EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_PADDING = 21
EXT_SUPPORTED_VERSIONS = 43
EXT_PSK_MODES = 45
EXT_KEY_SHARE = 51
EXT_ECH = 0xFE0D


def u8(n: int) -> bytes:
    return n.to_bytes(1, "big")


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


def ext(ext_type: int, body: bytes) -> bytes:
    return u16(ext_type) + u16(len(body)) + body


def server_name_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(u8(name_type) + u16(len(n)) + n for n in names)
    return ext(EXT_SERVER_NAME, u16(len(entries)) + entries)


def alpn_ext(*protocols: bytes) -> bytes:
    names = b"".join(u8(len(p)) + p for p in protocols)
    return ext(EXT_ALPN, u16(len(names)) + names)


def supported_versions_ext(*versions: int) -> bytes:
    body = b"".join(u16(v) for v in versions)
    return ext(EXT_SUPPORTED_VERSIONS, u8(len(body)) + body)


def supported_groups_ext(*groups: int) -> bytes:
    body = b"".join(u16(g) for g in groups)
    return ext(EXT_SUPPORTED_GROUPS, u16(len(body)) + body)


def key_share_ext(*shares: tuple[int, int]) -> bytes:
    """KeyShareClientHello with (group, key length) entries and random keys."""
    body = b"".join(u16(group) + u16(size) + os.urandom(size) for group, size in shares)
    return ext(EXT_KEY_SHARE, u16(len(body)) + body)


def grease_ech_ext(payload: int = 144) -> bytes:
    """An outer ECH extension as Chrome sends for GREASE ECH (draft-ietf-tls-esni §6.2)."""
    body = (
        u8(0)  # ECHClientHelloType outer
        + u16(0x0001)
        + u16(0x0001)  # HpkeSymmetricCipherSuite
        + u8(0x2A)  # config_id
        + u16(32)
        + os.urandom(32)  # enc
        + u16(payload)
        + os.urandom(payload)
    )
    return ext(EXT_ECH, body)


def client_hello_body(
    extensions: Sequence[bytes] | None,
    *,
    legacy_version: int = 0x0303,
    session_id: bytes = b"\x11" * 32,
    cipher_suites: Sequence[int] = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F),
    compression_methods: bytes = b"\x00",
) -> bytes:
    """RFC 8446 §4.1.2 ClientHello body; ``extensions=None`` omits the block entirely."""
    suites = b"".join(u16(s) for s in cipher_suites)
    body = (
        u16(legacy_version)
        + os.urandom(32)
        + u8(len(session_id))
        + session_id
        + u16(len(suites))
        + suites
        + u8(len(compression_methods))
        + compression_methods
    )
    if extensions is not None:
        block = b"".join(extensions)
        body += u16(len(block)) + block
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return u8(msg_type) + u24(len(body)) + body


def records(
    message: bytes, sizes: int | Iterable[int] = 1 << 14, *, version: int = 0x0301
) -> bytes:
    """Frame handshake bytes into TLS records whose payload sizes cycle through ``sizes``."""
    cycle = [sizes] if isinstance(sizes, int) else list(sizes)
    out = bytearray()
    pos = 0
    i = 0
    while pos < len(message):
        size = cycle[i % len(cycle)]
        i += 1
        chunk = message[pos : pos + size]
        pos += size
        out += u8(22) + u16(version) + u16(len(chunk)) + chunk
    return bytes(out)


def modern_extensions(
    sni: bytes | None = b"pq.example.test",
    alpn: Sequence[bytes] = (b"h2", b"http/1.1"),
    *,
    grease: bool = True,
    post_quantum: bool = True,
    ech: bool = True,
    pad_to: int | None = None,
) -> list[bytes]:
    """Extensions shaped like a current Chromium hello (GREASE first and last, PQ share)."""
    g = GREASE[3] if grease else None
    exts: list[bytes] = []
    if g is not None:
        exts.append(ext(g, b""))
    if sni is not None:
        exts.append(server_name_ext(sni))
    groups = ([g] if g else []) + ([X25519MLKEM768] if post_quantum else []) + [X25519, 0x17]
    exts.append(supported_groups_ext(*groups))
    exts.append(ext(EXT_SIGNATURE_ALGORITHMS, u16(6) + b"\x04\x03\x08\x04\x04\x01"))
    if alpn:
        exts.append(alpn_ext(*alpn))
    versions = ([GREASE[7]] if grease else []) + [0x0304, 0x0303]
    exts.append(supported_versions_ext(*versions))
    exts.append(ext(EXT_PSK_MODES, b"\x01\x01"))
    shares = ([(g, 1)] if g else []) + ([(X25519MLKEM768, 1216)] if post_quantum else [])
    exts.append(key_share_ext(*shares, (X25519, 32)))
    if ech:
        exts.append(grease_ech_ext())
    if grease:
        exts.append(ext(GREASE[12], b"\x00"))
    if pad_to is not None:
        # RFC 7685 padding, sized so the whole handshake message is pad_to bytes.
        current = len(handshake(client_hello_body(exts)))
        exts.append(ext(EXT_PADDING, b"\x00" * max(0, pad_to - current - 4)))
    return exts


def modern_hello(**kwargs: object) -> bytes:
    """A whole synthetic hello as one handshake message (not yet framed into records)."""
    return handshake(client_hello_body(modern_extensions(**kwargs)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Capture:
    name: str
    wire: bytes
    """The bytes as the client sent them, record headers included."""
    sni: str | None
    alpn: tuple[str, ...]
    meta: dict[str, str]

    @property
    def message(self) -> bytes:
        """The ClientHello handshake message, record layer removed."""
        return unframe(self.wire)


def unframe(wire: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(wire):
        length = int.from_bytes(wire[pos + 3 : pos + 5], "big")
        out += wire[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out)


def load_captures() -> list[Capture]:
    captures = []
    for path in sorted(FIXTURES.glob("*.hex")):
        meta: dict[str, str] = {}
        hex_lines = []
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                key, _, value = line[1:].partition(":")
                meta[key.strip()] = value.strip()
            else:
                hex_lines.append(line.strip())
        captures.append(
            Capture(
                name=path.stem,
                wire=bytes.fromhex("".join(hex_lines)),
                sni=meta["sni"] or None,
                alpn=tuple(a for a in meta["alpn"].split(",") if a),
                meta=meta,
            )
        )
    return captures


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
