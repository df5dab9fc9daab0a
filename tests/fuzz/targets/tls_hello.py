"""The ClientHello parser on whole input: the fast path and the reader agree, strictly.

Contract: `parse_whole_hello` returns a hello, None (not its case) or raises
`HelloRejected` with a documented reason and alert; `ClientHelloReader` fed the same
bytes at once reaches the same hello or the same refusal; a hello's facts are normalised
(the SNI is a routable name, ALPN names non-empty) and bytes after it change nothing.
"""

from __future__ import annotations

from sniffer.wire.errors import HelloRejected
from sniffer.wire.hostname import normalize_hostname
from sniffer.wire.sentinels import NEED_DATA, NOT_TLS
from sniffer.wire.tls import (
    DEFAULT_MAX_HELLO_BYTES,
    ClientHello,
    ClientHelloReader,
    parse_whole_hello,
)
from tests.fuzz.contract import TLS_ALERTS, TLS_REASONS, Target


def check_refusal(exc: HelloRejected) -> None:
    assert exc.reason in TLS_REASONS, exc
    assert exc.alert in TLS_ALERTS and exc.http_status is None, exc


def check_hello(hello: ClientHello) -> None:
    assert type(hello) is ClientHello
    if hello.sni is not None:
        assert normalize_hostname(hello.sni) == hello.sni, hello.sni
    assert all(hello.alpn), hello.alpn
    assert len(hello.cipher_suites) >= 2 and len(hello.cipher_suites) % 2 == 0
    assert len(set(hello.extensions)) == len(hello.extensions)
    assert hello.has_ech == (0xFE0D in hello.extensions)


def check(data: bytes) -> None:
    cap = DEFAULT_MAX_HELLO_BYTES
    try:
        whole: ClientHello | HelloRejected | None = parse_whole_hello(data, cap)
    except HelloRejected as exc:
        check_refusal(exc)
        whole = exc
    reader = ClientHelloReader(cap)
    try:
        result = reader.feed(data)
    except HelloRejected as exc:
        check_refusal(exc)
        assert isinstance(whole, HelloRejected | None), (whole, exc)
        if whole is not None:
            assert exc.reason == whole.reason, (whole, exc)
        return
    assert not isinstance(whole, HelloRejected), (whole, result)
    if result is NEED_DATA or result is NOT_TLS:
        assert whole is None, whole
        assert result is NEED_DATA or data[0] != 22
        return
    assert type(result) is ClientHello, result
    check_hello(result)
    if whole is not None:
        assert whole == result, (whole, result)
    end = reader.consumed
    assert 0 < end <= len(data)
    # Nothing after the hello is looked at: the same bytes, cut there, say the same.
    assert ClientHelloReader(cap).feed(data[:end]) == result
    assert ClientHelloReader(cap).feed(data[:end] + b"\xff" * 7) == result


TARGET = Target("tls_hello", check, max_len=4096)
