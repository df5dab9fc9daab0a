"""Client Initial packets for the tests, built with aioquic's packet protection.

The packets are protected by aioquic (an implementation independent of
`sniffer.wire.quic`), so a reader test checks sniffer against another implementation,
not against itself. `aioquic_hello` takes the ClientHello a real aioquic client sends.
"""

from __future__ import annotations

import os
import struct

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import pull_quic_header

V1 = 0x00000001
V2 = 0x6B3343CF
_INITIAL_CODE = {V1: 0, V2: 1}
_ZERO_RTT_CODE = {V1: 1, V2: 2}


def varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return struct.pack(">H", value | 0x4000)
    return struct.pack(">I", value | 0x80000000)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def client_initial(
    payload: bytes,
    *,
    version: int = V1,
    dcid: bytes = bytes.fromhex("8394c8f03e515708"),
    scid: bytes = b"\x11" * 8,
    pn: int = 0,
    pn_len: int = 2,
    token: bytes = b"",
    pad_to: int = 0,
) -> bytes:
    """One protected client Initial carrying `payload` (frames), PADDING-extended so
    that the packet is at least `pad_to` bytes (and always long enough to sample)."""
    pair = CryptoPair()
    pair.setup_initial(dcid, is_client=True, version=version)

    def header(length: int) -> bytes:
        first = 0xC0 | _INITIAL_CODE[version] << 4 | (pn_len - 1)
        return (
            bytes((first,))
            + version.to_bytes(4, "big")
            + bytes((len(dcid),))
            + dcid
            + bytes((len(scid),))
            + scid
            + varint(len(token))
            + token
            + struct.pack(">H", length | 0x4000)
            + pn.to_bytes(pn_len, "big")
        )

    base = len(header(0))
    payload += bytes(max(0, 4 - pn_len - len(payload)))  # room for the 16-byte sample
    if base + len(payload) + 16 < pad_to:
        payload += bytes(pad_to - base - len(payload) - 16)
    return pair.encrypt_packet(header(pn_len + len(payload) + 16), payload, pn)


def zero_rtt(version: int = V1, dcid: bytes = b"\x22" * 8, size: int = 100) -> bytes:
    """A long-header 0-RTT packet (its payload random: sniffer never reads it)."""
    first = 0xC0 | _ZERO_RTT_CODE[version] << 4 | 1
    body = os.urandom(size)
    return (
        bytes((first,))
        + version.to_bytes(4, "big")
        + bytes((len(dcid),))
        + dcid
        + b"\x08"
        + b"\x11" * 8
        + struct.pack(">H", len(body) | 0x4000)
        + body
    )


def aioquic_datagrams(
    server_name: str = "app.example", *, quantum: bool = False, version: int = V1
) -> list[bytes]:
    """The first flight of a real aioquic client."""
    config = QuicConfiguration(
        is_client=True,
        server_name=server_name,
        alpn_protocols=["h3"],
        quantum_readiness_test=quantum,
        supported_versions=[version],
    )
    conn = QuicConnection(configuration=config)
    conn.connect(("127.0.0.1", 4433), now=0.0)
    return [data for data, _ in conn.datagrams_to_send(now=0.0)]


def aioquic_hello(server_name: str = "app.example", *, quantum: bool = False) -> bytes:
    """The ClientHello handshake message (type, length, body) of a real aioquic client,
    read back out of its Initial packets with aioquic's own packet protection."""
    crypto: dict[int, bytes] = {}
    for datagram in aioquic_datagrams(server_name, quantum=quantum):
        buf = Buffer(data=datagram)
        while not buf.eof() and datagram[buf.tell()] != 0:  # zero padding ends it
            start = buf.tell()
            hdr = pull_quic_header(buf, host_cid_length=8)
            end = start + hdr.packet_length
            pair = CryptoPair()
            pair.setup_initial(hdr.destination_cid, is_client=False, version=hdr.version)
            _, payload, _ = pair.decrypt_packet(datagram[start:end], buf.tell() - start, 0)
            frames = Buffer(data=payload)
            while not frames.eof():
                kind = frames.pull_uint_var()
                if kind == 0x06:
                    offset = frames.pull_uint_var()
                    crypto[offset] = frames.pull_bytes(frames.pull_uint_var())
                elif kind not in (0x00, 0x01):
                    raise AssertionError(f"unexpected frame {kind:#x}")
            buf.seek(end)
    out = b""
    for offset in sorted(crypto):
        assert offset == len(out)
        out += crypto[offset]
    return out
