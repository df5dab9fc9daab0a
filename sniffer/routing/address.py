"""`host:port` text: parsing and printing listener and endpoint addresses.

This module owns the one spelling of an address sniffer reads and prints (`host:port`,
`[v6]:port`). It must never resolve names or do any other I/O.
"""

from __future__ import annotations

__all__ = ["join_host_port", "parse_port", "split_host_port"]


def join_host_port(host: str, port: int) -> str:
    """`host:port`, or `[v6]:port`: the inverse of `split_host_port`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` to (host, port); raises ValueError."""
    address = address.strip()
    if address.startswith("["):
        end = address.find("]")
        if end == -1 or address[end + 1 : end + 2] != ":":
            raise ValueError(f"bad address {address!r}: expected [IPv6]:port")
        host, port_s = address[1:end], address[end + 2 :]
    else:
        host, sep, port_s = address.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad address {address!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"bad address {address!r}: write IPv6 as [addr]:port")
    return host, parse_port(port_s, f"bad address {address!r}")


def parse_port(text: str, what: str) -> int:
    """A TCP port, 1-65535; raises ValueError naming `what`."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{what}: port must be 1-65535")
    return int(text)
