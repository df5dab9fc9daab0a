"""The one hostname rule shared by SNI, Host and route hosts."""

from __future__ import annotations

import pytest

from sniffer.wire.errors import InvalidHostname, WireError
from sniffer.wire.hostname import is_ip_literal, normalize_hostname, normalize_route_host


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("a", "a"),
        ("_srv.example.com", "_srv.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("1password.com", "1password.com"),
        ("123.example.com", "123.example.com"),
        ("a-b.c-d", "a-b.c-d"),
        ("x" * 63 + ".com", "x" * 63 + ".com"),
        (".".join(["a" * 63] * 3) + "." + "b" * 61, ".".join(["a" * 63] * 3) + "." + "b" * 61),
        (b"BYTES.example", "bytes.example"),
    ],
)
def test_accepted(name: str | bytes, expected: str) -> None:
    assert normalize_hostname(name) == expected
    assert normalize_hostname(name) == expected  # second sighting: memoised
    assert normalize_hostname(name) == expected  # from the memo


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        (".", "empty"),
        ("example.com..", "empty_label"),
        (".example.com", "empty_label"),
        ("a..b", "empty_label"),
        ("x" * 64 + ".com", "label_too_long"),
        (".".join(["a" * 63] * 4), "name_too_long"),
        ("a\x00b.com", "control_char"),
        ("a b.com", "control_char"),
        ("a\x7fb.com", "control_char"),
        ("a\r\nb.com", "control_char"),
        ("bücher.example", "non_ascii"),
        (b"b\xc3\xbccher.example", "non_ascii"),
        ("a/b", "bad_char"),
        ("a:b", "bad_char"),
        ("*.example.com", "bad_char"),
        ("1.2.3.4", "ip_literal"),
        ("1.2.3.4.", "ip_literal"),
        ("10.1", "ip_literal"),
        ("2130706433", "ip_literal"),
        ("0x7f.1", "ip_literal"),
        ("example.0x1f", "ip_literal"),
        ("::1", "ip_literal"),
        ("[::1]", "ip_literal"),
        ("2001:DB8::1", "ip_literal"),
        ("::ffff:1.2.3.4", "ip_literal"),
    ],
)
def test_refused(name: str | bytes, problem: str) -> None:
    with pytest.raises(InvalidHostname) as info:
        normalize_hostname(name)
    assert info.value.problem == problem
    assert info.value.reason == f"hostname_{problem}"
    assert isinstance(info.value, WireError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1.2.3.4", True),
        ("::1", True),
        ("[fe80::1]", True),
        ("10.1", True),
        ("example.com", False),
        ("1.2.3.com", False),
        ("", False),
        ("a:b", False),
        ("bücher", False),
        (b"127.0.0.1", True),
    ],
)
def test_is_ip_literal(name: str | bytes, expected: bool) -> None:
    assert is_ip_literal(name) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("*.Example.com", "*.example.com"), ("*.a.com.", "*.a.com"), ("a.com", "a.com")],
)
def test_route_host(name: str, expected: str) -> None:
    assert normalize_route_host(name) == expected


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("*", "bad_wildcard"),
        ("*.*.a.com", "bad_wildcard"),
        ("a.*.com", "bad_wildcard"),
        ("*a.com", "bad_wildcard"),
        ("*.", "empty"),
        ("*.1.2.3.4", "ip_literal"),
        ("*.a..com", "empty_label"),
    ],
)
def test_route_host_refused(name: str, problem: str) -> None:
    with pytest.raises(InvalidHostname) as info:
        normalize_route_host(name)
    assert info.value.problem == problem
