"""PROXY protocol v1 and v2 (HAProxy's proxy-protocol.txt): encode for backends, read from
load balancers.

This module owns both header formats: building the header sniffer sends before relaying
(so the tenant's router sees the real client address) and reading the header a cloud load
balancer puts in front of inbound connections. It must never do I/O or read past the
header: ``ProxyHeader.length`` tells the caller where the client's own bytes begin.

Reading accepts TCP over IPv4/IPv6, UNKNOWN (v1), LOCAL and UNSPEC (v2, address-less:
health checks and proxies that do not know); it refuses UDP and UNIX families, because
sniffer only ever sits behind TCP.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from sniffer.wire.errors import BadProxyHeader
from sniffer.wire.reader import StickyReader
from sniffer.wire.sentinels import NEED_DATA, NeedData

__all__ = [
    "NEED_DATA",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_UNIQUE_ID",
    "V2_SIGNATURE",
    "NeedData",
    "ProxyHeader",
    "ProxyHeaderReader",
    "encode_v1",
    "encode_v1_unknown",
    "encode_v2",
    "encode_v2_local",
]

Address = tuple[str, int]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
# proxy-protocol.txt §2.1: the longest v1 line ("PROXY TCP6" with two full IPv6
# addresses and ports) is 107 bytes with its CRLF; waiting longer only helps a slowloris.
_V1_MAX = 107
# v2 headers are 16 bytes plus addresses and TLVs. Load balancers add a few hundred bytes
# of TLVs at most (AWS VPC endpoint id, Azure link id, SSL info); 4 KiB bounds what a
# client can make us buffer while still allowing every real one.
DEFAULT_MAX_V2_BYTES = 4096

_CMD_LOCAL = 0x20
_CMD_PROXY = 0x21
_FAM_UNSPEC = 0x00
_FAM_TCP4 = 0x11
_FAM_TCP6 = 0x21
# proxy-protocol.txt §2.2.1-2.2.7: TLV types sniffer sends to backends.
PP2_TYPE_AUTHORITY = 0x02
"""The host name the client asked for (sniffer: the name it routed on)."""
PP2_TYPE_UNIQUE_ID = 0x05
"""An opaque per-connection id, at most 128 bytes (HAProxy's `fc_pp_unique_id`)."""
_MAX_UNIQUE_ID = 128
_v2_tcp4 = struct.Struct(">4s4sHH")
_v2_tcp6 = struct.Struct(">16s16sHH")


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A PROXY header read off the front of a connection."""

    source: Address | None
    """Original client (address, port); None for LOCAL, UNKNOWN or UNSPEC."""
    destination: Address | None
    """Address the client connected to; None when source is None."""
    length: int
    """Bytes the header occupies from the start of the stream; the rest is the client's."""
    version: int = 1


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(address.packed)  # zone ids mean nothing remotely
    return address


def _pair(
    src: Address, dst: Address
) -> tuple[
    ipaddress.IPv4Address | ipaddress.IPv6Address, ipaddress.IPv4Address | ipaddress.IPv6Address
]:
    """Both addresses in one family: IPv4 when both are IPv4 (or IPv4-mapped IPv6, as on a
    dual-stack socket), otherwise IPv6 with any IPv4 address mapped (::ffff:a.b.c.d)."""
    for _, port in (src, dst):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
    a, b = _ip(src[0]), _ip(dst[0])
    a4, b4 = _as_v4(a), _as_v4(b)
    if a4 is not None and b4 is not None:
        return a4, b4
    return _as_v6(a), _as_v6(b)


def _as_v4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return address
    return address.ipv4_mapped


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)


def encode_v1(src: Address, dst: Address) -> bytes:
    """``PROXY TCP4|TCP6 src dst sport dport\\r\\n`` for a connection from src to dst."""
    a, b = _pair(src, dst)
    family = "TCP4" if a.version == 4 else "TCP6"
    return f"PROXY {family} {a} {b} {src[1]} {dst[1]}\r\n".encode("ascii")


def encode_v1_unknown() -> bytes:
    """The v1 header for a connection whose addresses are not known."""
    return b"PROXY UNKNOWN\r\n"


def encode_v2(
    src: Address, dst: Address, authority: str | None = None, unique_id: str | None = None
) -> bytes:
    """Binary v2 header, command PROXY, family TCP over IPv4 or IPv6.

    `authority` (PP2_TYPE_AUTHORITY) and `unique_id` (PP2_TYPE_UNIQUE_ID, ASCII, at most
    128 bytes) are added as TLVs when given; a name over the TLV's 65535 bytes cannot
    come from a hostname and raises ValueError like a bad address does.
    """
    a, b = _pair(src, dst)
    if a.version == 4:
        block = _v2_tcp4.pack(a.packed, b.packed, src[1], dst[1])
        family = _FAM_TCP4
    else:
        block = _v2_tcp6.pack(a.packed, b.packed, src[1], dst[1])
        family = _FAM_TCP6
    if authority:
        block += _tlv(PP2_TYPE_AUTHORITY, authority.encode("ascii"))
    if unique_id:
        value = unique_id.encode("ascii")
        if len(value) > _MAX_UNIQUE_ID:
            raise ValueError(f"unique id of {len(value)} bytes exceeds {_MAX_UNIQUE_ID}")
        block += _tlv(PP2_TYPE_UNIQUE_ID, value)
    return V2_SIGNATURE + bytes((_CMD_PROXY, family)) + len(block).to_bytes(2, "big") + block


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV 0x{kind:02x} of {len(value)} bytes exceeds 65535")
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value


def encode_v2_local() -> bytes:
    """Binary v2 header, command LOCAL (e.g. a health check): the receiver uses the real
    connection addresses."""
    return V2_SIGNATURE + bytes((_CMD_LOCAL, _FAM_UNSPEC)) + b"\x00\x00"


def _bad(message: str) -> BadProxyHeader:
    return BadProxyHeader(f"PROXY header refused: {message}")


def _v1_port(raw: bytes) -> int:
    # Decimal, 0..65535, no sign, no leading zero (HAProxy's own parser refuses those).
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[0] == 0x30):
        raise _bad(f"bad port {raw!r}")
    port = int(raw)
    if port > 65535:
        raise _bad(f"port {port} out of range")
    return port


def _parse_v1(line: bytes) -> ProxyHeader:
    """``line`` is the whole header, CRLF included."""
    parts = line[6:-2].split(b" ")
    if parts[0] == b"UNKNOWN":
        # The rest of the line, if any, is to be ignored (proxy-protocol.txt §2.1).
        return ProxyHeader(source=None, destination=None, length=len(line), version=1)
    if len(parts) != 5 or parts[0] not in (b"TCP4", b"TCP6"):
        raise _bad(f"v1 line {line!r} is not 'PROXY TCP4|TCP6 src dst sport dport'")
    family, src, dst, sport, dport = parts
    kind = ipaddress.IPv4Address if family == b"TCP4" else ipaddress.IPv6Address
    try:
        src_ip = kind(src.decode("ascii"))
        dst_ip = kind(dst.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise _bad(f"v1 addresses {src!r} {dst!r} are not {family.decode()}") from None
    return ProxyHeader(
        source=(str(src_ip), _v1_port(sport)),
        destination=(str(dst_ip), _v1_port(dport)),
        length=len(line),
        version=1,
    )


def _parse_v2(buf: bytes | bytearray, total: int) -> ProxyHeader:
    command, family = buf[12], buf[13]
    if command >> 4 != 2:
        raise _bad(f"v2 version {command >> 4} is not 2")
    if command == _CMD_LOCAL:
        # LOCAL: the connection was made by the proxy itself; addresses (if any) and
        # TLVs are ignored by definition.
        return ProxyHeader(source=None, destination=None, length=total, version=2)
    if command != _CMD_PROXY:
        raise _bad(f"v2 command {command & 0x0F} is neither LOCAL nor PROXY")
    if family == _FAM_UNSPEC:
        return ProxyHeader(source=None, destination=None, length=total, version=2)
    if family == _FAM_TCP4:
        layout = _v2_tcp4
        make: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = ipaddress.IPv4Address
    elif family == _FAM_TCP6:
        layout = _v2_tcp6
        make = ipaddress.IPv6Address
    else:
        raise _bad(f"v2 family/protocol 0x{family:02x} is not TCP over IPv4/IPv6")
    if total - 16 < layout.size:
        raise _bad(f"v2 address block of {total - 16} bytes is too short")
    src, dst, sport, dport = layout.unpack_from(buf, 16)
    # TLVs follow the address block; none changes routing, but their framing must be
    # sound, or the length we report could be a lie the backend reads differently.
    pos = 16 + layout.size
    while pos < total:
        if total - pos < 3:
            raise _bad("v2 TLV header truncated")
        pos += 3 + (buf[pos + 1] << 8 | buf[pos + 2])
        if pos > total:
            raise _bad("v2 TLV overruns the header")
    return ProxyHeader(
        source=(str(make(src)), sport),
        destination=(str(make(dst)), dport),
        length=total,
        version=2,
    )


class ProxyHeaderReader(StickyReader[ProxyHeader]):
    """Incremental, sans-I/O reader of the PROXY header (v1 or v2) at a stream's start.

    ``feed`` each chunk read; it returns ``NEED_DATA`` until the header is complete, then
    the ``ProxyHeader`` whose ``length`` counts from the first byte ever fed; raises
    ``BadProxyHeader`` as soon as the bytes cannot be a valid header. Once an outcome is
    reached it is returned (or raised) again on every later ``feed``.
    """

    __slots__ = ("_buf", "max_v2_bytes")

    def __init__(self, max_v2_bytes: int = DEFAULT_MAX_V2_BYTES) -> None:
        if not 16 <= max_v2_bytes <= 16 + 65535:
            raise ValueError(f"max_v2_bytes must be in [16, 65551], got {max_v2_bytes}")
        super().__init__()
        self.max_v2_bytes = max_v2_bytes
        self._buf = bytearray()

    def _step(self, data: bytes | bytearray | memoryview) -> ProxyHeader | NeedData:
        self._buf += data
        return self._parse(self._buf)

    def _release(self) -> None:
        self._buf = bytearray()

    def _parse(self, buf: bytearray) -> ProxyHeader | NeedData:
        if buf[0] == 0x50:  # "P"
            if buf[:6] != _V1_PREFIX[: len(buf)]:
                raise _bad(f"starts with {bytes(buf[:6])!r}, not 'PROXY '")
            end = buf.find(b"\r\n", 0, _V1_MAX)
            if end < 0:
                if len(buf) >= _V1_MAX or b"\n" in buf or b"\r" in buf[:-1]:
                    raise _bad(f"v1 line is not CRLF-terminated within {_V1_MAX} bytes")
                return NEED_DATA
            if b"\r" in buf[:end] or b"\n" in buf[:end]:
                # Refused however the line was read: a read ending on the bare CR is.
                raise _bad("v1 line has a bare CR or LF before its CRLF")
            return _parse_v1(bytes(buf[: end + 2]))
        if buf[0] == 0x0D:  # "\r"
            if buf[:12] != V2_SIGNATURE[: len(buf)]:
                raise _bad("v2 signature mismatch")
            if len(buf) < 16:
                return NEED_DATA
            total = 16 + (buf[14] << 8 | buf[15])
            if total > self.max_v2_bytes:
                raise _bad(f"v2 header of {total} bytes exceeds {self.max_v2_bytes}")
            if len(buf) < total:
                return NEED_DATA
            return _parse_v2(buf, total)
        raise _bad(f"first byte 0x{buf[0]:02x} starts neither a v1 nor a v2 header")
