"""The PROXY v1/v2 header reader (TLVs included), and the encoders read back.

Input: 1 byte of options, 4 bytes of read sizes, then the stream. Contract: each feed is
NEED_DATA until a `ProxyHeader` or `BadProxyHeader` (reason ``bad_proxy_header``); the
outcome stays and does not depend on the cuts; `length` lies within the bytes fed and the
header is whole in them (v1 ends with CRLF, v2 starts with its signature). With the
option's top bit, the stream's bytes become addresses, an authority and an id instead,
and what `encode_v1`/`encode_v2` make must read back to the same addresses.
"""

from __future__ import annotations

import ipaddress

from sniffer.wire.errors import BadProxyHeader
from sniffer.wire.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderReader,
    encode_v1,
    encode_v2,
)
from sniffer.wire.sentinels import NEED_DATA
from tests.fuzz.contract import Target, chunks, pick, split_plan

MAX_V2 = (16, 64, 4096, 16 + 65535)


def outcome(reader: ProxyHeaderReader, reads: list[bytes]) -> object:
    for read in reads:
        try:
            result = reader.feed(read)
        except BadProxyHeader as exc:
            assert exc.reason == "bad_proxy_header" and exc.alert is None, exc
            try:
                reader.feed(b"PROXY UNKNOWN\r\n")
            except BadProxyHeader:
                pass
            else:
                raise AssertionError("a refusal did not stay") from None
            return "refused"
        if result is not NEED_DATA:
            assert reader.feed(b"PROXY UNKNOWN\r\n") is result, "an outcome did not stay"
            return result
    return NEED_DATA


def check_header(header: ProxyHeader, stream: bytes) -> None:
    assert 0 < header.length <= len(stream)
    if header.version == 1:
        assert stream.startswith(b"PROXY ") and stream[header.length - 2 : header.length] == (
            b"\r\n"
        )
    else:
        assert header.version == 2 and stream.startswith(V2_SIGNATURE)
    assert (header.source is None) == (header.destination is None)
    for address in (header.source, header.destination):
        if address is not None:
            ipaddress.ip_address(address[0])
            assert 0 <= address[1] <= 65535


def check_encoders(stream: bytes) -> None:
    raw = stream.ljust(40, b"\0")
    v6 = raw[0] & 1
    size = 16 if v6 else 4
    src = (str(ipaddress.ip_address(raw[1 : 1 + size])), raw[33] << 8 | raw[34])
    dst = (str(ipaddress.ip_address(raw[17 : 17 + size])), raw[35] << 8 | raw[36])
    authority = raw[37:].decode("ascii", "replace").encode("ascii", "replace").decode()
    unique_id = raw[40:168].decode("ascii", "replace").encode("ascii", "replace").decode()
    for encoded in (
        encode_v1(src, dst),
        encode_v2(src, dst, authority=authority, unique_id=unique_id),
    ):
        header = ProxyHeaderReader(16 + 65535).feed(encoded + b"\x16\x03")
        assert isinstance(header, ProxyHeader) and header.length == len(encoded), encoded
        # A v4-mapped v6 pair is sent as v4 (one family on the wire), else as given.
        assert header.source is not None and header.destination is not None
        assert ipaddress.ip_address(header.source[0]) in _forms(src[0]), (src, header)
        assert ipaddress.ip_address(header.destination[0]) in _forms(dst[0]), (dst, header)
        assert (header.source[1], header.destination[1]) == (src[1], dst[1])


def _forms(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    ip = ipaddress.ip_address(host)
    forms: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = {ip}
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        forms.add(ip.ipv4_mapped)
    if isinstance(ip, ipaddress.IPv4Address):
        forms.add(ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed))
    return forms


def check(data: bytes) -> None:
    options, sizes, stream = split_plan(data, 5)
    if options[0] & 0x80:
        check_encoders(stream)
        return
    cap = pick(MAX_V2, options[0])
    split = outcome(ProxyHeaderReader(cap), list(chunks(stream, sizes)))
    whole = outcome(ProxyHeaderReader(cap), [stream] if stream else [])
    assert split == whole, (split, whole)
    if isinstance(whole, ProxyHeader):
        check_header(whole, stream)
        assert outcome(ProxyHeaderReader(cap), [stream[: whole.length]]) == whole


TARGET = Target("proxy_header", check, max_len=1024)
