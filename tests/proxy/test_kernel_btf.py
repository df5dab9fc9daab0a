"""The BTF reader behind the refilling verdict: struct member offsets, no toolchain."""

from __future__ import annotations

import gc
import os
import struct

import pytest

from sniffer.proxy.kernel.btf import VMLINUX, BtfError, member_offset, vmlinux_member_offset


class Blob:
    """A minimal BTF image: types appended one by one, names interned."""

    def __init__(self) -> None:
        self.types = b""
        self.strings = b"\0"
        self.count = 0

    def name(self, s: str) -> int:
        off = len(self.strings)
        self.strings += s.encode() + b"\0"
        return off

    def add(
        self, kind: int, name: str, vlen: int, size: int, extra: bytes = b"", kflag: int = 0
    ) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.name(name) if name else 0, info, size) + extra
        self.count += 1
        return self.count

    def members(self, *ms: tuple[str, int, int]) -> bytes:
        return b"".join(struct.pack("<III", self.name(n) if n else 0, t, off) for n, t, off in ms)

    def image(self) -> bytes:
        hdr = struct.pack(
            "<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings)
        )
        return hdr + self.types + self.strings


def blob() -> bytes:
    b = Blob()
    u64 = b.add(1, "u64", 0, 8, struct.pack("<I", 64))  # INT, 64 bits
    # an ENUM (8 bytes per value) between them: the walk must step over it
    values = struct.pack("<Ii", b.name("red"), 0) + struct.pack("<Ii", b.name("blue"), 1)
    b.add(6, "colour", 2, 4, values)
    inner = b.add(4, "", 1, 8, b.members(("deep", u64, 0)))  # an anonymous struct
    union = b.add(5, "", 2, 8, b.members(("", inner, 0), ("alias", u64, 0)))  # anonymous union
    typedef = b.add(8, "inner_t", 0, union)
    b.add(
        4,
        "tcp_sock",
        4,
        40,
        b.members(
            ("a", u64, 0),
            ("", typedef, 64),
            ("bits", u64, (3 << 24) | 128),
            ("bytes_acked", u64, 192),
        ),
        kflag=1,
    )
    return b.image()


def test_member_offsets_direct_nested_and_refusals() -> None:
    data = blob()
    assert member_offset(data, "tcp_sock", "bytes_acked") == 24
    assert member_offset(data, "tcp_sock", "a") == 0
    assert member_offset(data, "tcp_sock", "deep") == 8  # through a typedef'd anonymous union
    assert member_offset(data, "tcp_sock", "alias") == 8
    with pytest.raises(BtfError, match="bitfield"):
        member_offset(data, "tcp_sock", "bits")
    with pytest.raises(BtfError, match="no member"):
        member_offset(data, "tcp_sock", "nope")
    with pytest.raises(BtfError, match="no struct"):
        member_offset(data, "sock", "bytes_acked")
    with pytest.raises(BtfError, match="not BTF"):
        member_offset(b"\0" * 64, "tcp_sock", "bytes_acked")


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF here")
def test_the_running_kernels_tcp_sock() -> None:
    acked = vmlinux_member_offset("tcp_sock", "bytes_acked")
    received = vmlinux_member_offset("tcp_sock", "bytes_received")
    # both u64 counters inside struct tcp_sock, past its embedded inet_connection_sock
    assert 1000 < acked < 8192 and 1000 < received < 8192 and acked != received
    assert acked % 8 == 0


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="the kernel exports no BTF")
def test_reading_the_kernels_btf_leaves_nothing_for_the_collector() -> None:
    """Every worker reads the 5 MiB image once: it must all go by reference counting,
    not wait in a cycle for a full collection (it held ~10 MiB per process that way)."""
    with open(VMLINUX, "rb") as f:
        data = f.read()
    gc.collect()
    gc.disable()
    try:
        member_offset(data, "tcp_sock", "bytes_acked")
        assert gc.collect() == 0
    finally:
        gc.enable()
