"""`sniffer.proxy.dial`'s pure parts: the PROXY header a backend gets, the error classes.

The dial's walk over endpoints runs with real sockets in test_relay.py (dead endpoints,
timeouts, round-robin) and with a fake loop in test_phases.py.
"""

from __future__ import annotations

import errno
import ipaddress

import pytest

from sniffer.proxy.dial import error_class, proxy_header
from sniffer.wire.proxy_protocol import ProxyHeader, ProxyHeaderReader, encode_v2_local


def _read(header: bytes) -> ProxyHeader:
    out = ProxyHeaderReader().feed(header + b"rest")
    assert isinstance(out, ProxyHeader) and out.length == len(header)
    return out


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_known_addresses_travel_in_the_header(version: str) -> None:
    src, dst = ("192.0.2.1", 40000), ("198.51.100.7", 443)
    got = _read(proxy_header(version, src, dst, "app.example", "abc-1"))
    assert (got.source, got.destination) == (src, dst)


@pytest.mark.parametrize(
    ("src", "dst"), [(None, ("198.51.100.7", 443)), (("192.0.2.1", 1), None), (None, None)]
)
def test_an_unknown_address_makes_unknown_or_local_never_nothing(
    src: tuple[str, int] | None, dst: tuple[str, int] | None
) -> None:
    assert proxy_header("v1", src, dst, None, "id") == b"PROXY UNKNOWN\r\n"
    assert proxy_header("v2", src, dst, "app.example", "id") == encode_v2_local()
    for version in ("v1", "v2"):
        got = _read(proxy_header(version, src, dst, None, "id"))
        assert got.source is None  # the receiver uses the connection's own addresses


def test_mixed_families_go_as_ipv6() -> None:
    got = _read(proxy_header("v1", ("192.0.2.1", 1), ("2001:db8::1", 443), None, "id"))
    assert got.source is not None and got.source[1] == 1
    assert ipaddress.IPv6Address(got.source[0]).ipv4_mapped == ipaddress.IPv4Address("192.0.2.1")


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "refused"),
        (OSError(errno.ENETUNREACH, "no route"), "unreachable"),
        (OSError(errno.EHOSTUNREACH, "no host"), "unreachable"),
        (OSError(errno.ETIMEDOUT, "kernel timeout"), "unreachable"),
        (OSError(errno.EADDRNOTAVAIL, "no port left"), "error"),
    ],
)
def test_error_classes(exc: OSError, reason: str) -> None:
    assert error_class(exc) == reason
