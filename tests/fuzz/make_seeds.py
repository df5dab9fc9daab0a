"""Write the seed corpora: ``python -m tests.fuzz.make_seeds`` (rewrites `corpus/`).

Seeds are the captured hellos of `tests/wire/fixtures` and hand-made inputs reaching
each parser's branches (split records, PROXY v1/v2 with TLVs, HTTP forms, refusals).
The files are checked in; rerun this only to change them (synthetic hellos carry random
bytes, so every run writes different files).
"""

from __future__ import annotations

import hashlib
import shutil

from sniffer.wire.proxy_protocol import encode_v1, encode_v1_unknown, encode_v2, encode_v2_local
from tests.fuzz.contract import CORPUS
from tests.wire.hellos import (
    alpn_ext,
    client_hello_body,
    handshake,
    load_captures,
    modern_hello,
    records,
    server_name_ext,
)

SRC4, DST4 = ("192.0.2.7", 40000), ("198.51.100.1", 443)
SRC6, DST6 = ("2001:db8::7", 40000), ("2001:db8::1", 443)


def hellos() -> list[bytes]:
    """Streams as clients send them, record layer included."""
    small = modern_hello(sni=b"App.Example.", post_quantum=False)
    out = [c.wire for c in load_captures()]
    out += [
        records(small),
        records(small, sizes=[60, 7, 3000]),
        records(modern_hello(sni=None, alpn=(), grease=False, ech=False, post_quantum=False)),
        records(modern_hello(post_quantum=True)),
        records(handshake(client_hello_body(None))),
        records(handshake(client_hello_body([server_name_ext(b"a.example", b"b.example")]))),
        records(handshake(client_hello_body([server_name_ext(b"10.0.0.1")]))),
        records(handshake(client_hello_body([server_name_ext(b"x.example"), alpn_ext(b"")]))),
        records(small)[:-1],
        b"\x16\x03\x01\x00\x00",
        b"\x17\x03\x03\x00\x05hello",
    ]
    return out


HEADS = [
    b"GET / HTTP/1.1\r\nHost: Web.Example:8080\r\nUser-Agent: t\r\n\r\n",
    b"GET http://abs.example/x?y HTTP/1.1\r\nHost: other.example\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: " + b"y" * 300 + b"\r\nHost: a\r\n\r\n",
    b"\x16\x03\x01",
]

PROXY_HEADERS = [
    encode_v1(SRC4, DST4),
    encode_v1(SRC6, DST6),
    encode_v1_unknown(),
    encode_v2(SRC4, DST4),
    encode_v2(SRC6, DST6, authority="app.example", unique_id="0123456789abcdef-1a"),
    encode_v2_local(),
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    b"PROXY TCP4 1.2.3.4\r\n",
]

# Read sizes after the options byte: whole, byte by byte, odd cuts, one short read.
SIZES = [b"\0\0\0\0", b"\x01\x01\x01\x01", b"\x07\x03\x40\x00", b"\x05\0\0\0"]


def corpora() -> dict[str, list[bytes]]:
    tls = hellos()
    head = tls[0]
    return {
        "tls_hello": tls,
        "tls_reads": [bytes([i % 6]) + SIZES[i % 4] + s for i, s in enumerate(tls)],
        "ja4": [records_body(s) for s in tls[:12]],
        "http_head": [bytes([2]) + SIZES[i % 4] + h for i, h in enumerate(HEADS)],
        "proxy_header": [
            bytes([2]) + SIZES[i % 4] + p + b"\x16" for i, p in enumerate(PROXY_HEADERS)
        ]
        + [b"\x80\0\0\0\0" + bytes(range(40)) + b"app.example", b"\x80\0\0\0\0\x01" + b"\xff" * 60],
        "sniff": [bytes([0b1_0001]) + SIZES[i % 4] + s for i, s in enumerate(tls[:10])]
        + [bytes([0b1_0011]) + SIZES[i % 4] + p + head for i, p in enumerate(PROXY_HEADERS)]
        + [bytes([0b10_0000]) + SIZES[i % 4] + h for i, h in enumerate(HEADS)]
        + [bytes([0b10_0010]) + SIZES[i % 4] + p + HEADS[0] for i, p in enumerate(PROXY_HEADERS)],
    }


def records_body(wire: bytes) -> bytes:
    """The ClientHello body (after the handshake header) of a framed stream."""
    message = bytearray()
    pos = 0
    while pos + 5 <= len(wire):
        length = int.from_bytes(wire[pos + 3 : pos + 5], "big")
        message += wire[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(message[4:])


def main() -> None:
    for name, seeds in corpora().items():
        folder = CORPUS / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for seed in seeds:
            (folder / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)


if __name__ == "__main__":
    main()
