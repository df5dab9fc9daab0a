"""JA4 of any ClientHello the parser accepts: the input is a ClientHello body.

Contract: a hello the parser accepts always has a fingerprint of JA4's shape; it is
the specification's function of the hello (memoised or not, the same string), blind to
the order of ciphers and extensions and to GREASE values, and part a counts what the
hello carries.
"""

from __future__ import annotations

from sniffer.wire import ja4 as ja4_module
from sniffer.wire.errors import HelloRejected
from sniffer.wire.ja4 import is_ja4, ja4
from sniffer.wire.tls import parse_client_hello_body
from tests.fuzz.contract import Target

GREASE = (0x0A0A, 0xFAFA)


def check(data: bytes) -> None:
    try:
        hello = parse_client_hello_body(data, 0, len(data))
    except HelloRejected:
        return
    fingerprint = ja4(hello)
    assert is_ja4(fingerprint), fingerprint
    assert ja4_module._compute(hello) == fingerprint
    assert fingerprint[3] == ("d" if 0 in hello.extensions else "i")
    suites = [hello.cipher_suites[i : i + 2] for i in range(0, len(hello.cipher_suites), 2)]
    shuffled = hello._replace(
        cipher_suites=b"".join(reversed(suites)) + GREASE[0].to_bytes(2, "big"),
        extensions=(GREASE[1], *reversed(hello.extensions)),
    )
    assert ja4_module._compute(shuffled) == fingerprint, (hello, shuffled)


TARGET = Target("ja4", check, max_len=2048)
