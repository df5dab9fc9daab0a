"""The kernel relay's stream-verdict program: its source, its layout, its bytes.

One `sk_skb` stream-verdict program serves every socket of the relay. For each segment
arriving on a socket it finds that socket's direction record (socket cookie -> slot ->
`STATE[slot]`) and either redirects the segment to the peer's send path or passes it
(`SK_PASS`) to the socket's own receive queue, where user space reads it and where it
stays charged to the socket, so TCP's window closes when nobody reads.

It redirects only while both hold:
  * `passed == moved`: user space has written on everything passed before (else a
    redirected segment would overtake bytes user space still holds: reordering);
  * the budget covers the segment. This is the bound: the kernel applies no
    backpressure to a redirected stream, so without it a stalled receiver lets the
    sender fill kernel memory.

The budget comes in two variants, one program each:
  * `refill_program()` (loaded where it can be): the program looks the destination up
    in the SOCKHASH, reads its `tcp_sock.bytes_acked` (offset from the kernel's BTF,
    patched in at load time) and redirects while the destination's unacknowledged
    bytes stay within the budget: `offset + redirected + len <= acked + limit`, where
    `limit` is the budget (0: not granted yet) and `offset` what the destination's
    count held before the kernel redirected anything, plus what user space wrote into
    it since (user space keeps it current). The budget refills itself as the
    destination's peer acknowledges: no wake-up of user space for a bulk stream.
  * `program()` (the fallback, where BTF or `bpf_skc_to_tcp_sock` is unavailable):
    `redirected + len <= limit`, `limit` raised by user space only (each grant after it
    relayed passed bytes), so a fast sender spends it in milliseconds.

This module owns the programs and the record layout shared with user space. It never
loads a program (`sniffer.proxy.kernel.relay` does) and never does I/O; `CODE` and
`REFILL_CODE` are the checked-in bytecode, and a test asserts that the programs
assemble to them.
"""

from __future__ import annotations

import struct

from sniffer.proxy.kernel.asm import Asm

__all__ = [
    "ACKED",
    "CODE",
    "LIMIT",
    "MAP_SLOTS",
    "MAP_SOCKS",
    "MAP_STATE",
    "MOVED",
    "OFFSET",
    "PASSED",
    "PEER",
    "RECORD",
    "REDIRECTED",
    "REFILL_CODE",
    "program",
    "refill_code",
    "refill_program",
]

# The maps, by slot in the program (patched with descriptors at load time).
MAP_SOCKS = 0
"""SOCKHASH: socket cookie (u64) -> socket."""
MAP_SLOTS = 1
"""HASH: socket cookie (u64) -> slot (u32) in MAP_STATE."""
MAP_STATE = 2
"""ARRAY (mmap-able): slot -> one direction's record, the fields below (u64 each)."""

# The record of one direction, keyed by its *receiving* socket. Who writes each field:
PEER = 0
"""user space, once: the destination socket's cookie (its key in MAP_SOCKS)."""
LIMIT = 8
"""user space: redirect while `redirected` stays at or below this (`program`), or the
budget, 0 until the first grant (`refill_program`)."""
REDIRECTED = 16
"""the program (atomic add): bytes redirected to the peer."""
PASSED = 24
"""the program (atomic add): bytes passed to user space."""
MOVED = 32
"""user space: passed bytes it has read and written into the destination socket."""
OFFSET = 40
"""user space (`refill_program`): the destination's written-total base, plus bytes user
space wrote into it; set before `MOVED` is raised."""
ACKED = 48
"""`refill_program`: the destination's `bytes_acked` it last read (for tests and
metrics; user space never decides on it)."""
RECORD = 64
"""Bytes per record (a cache line; the rest is spare)."""

# helpers and return codes (include/uapi/linux/bpf.h)
_MAP_LOOKUP_ELEM = 1
_GET_SOCKET_COOKIE = 46
_SK_REDIRECT_HASH = 72
_SK_RELEASE = 86
_SKC_TO_TCP_SOCK = 137
_SK_PASS = 1
_SK_DROP = 0
_SKB_LEN = 0  # offsetof(struct __sk_buff, len)
R0, R1, R2, R3, R4, R6, R7, R8, R9, R10 = 0, 1, 2, 3, 4, 6, 7, 8, 9, 10


def _record(a: Asm) -> None:
    """The common start: r6 the skb, r8 its length, r7 the receiving socket's record
    (to "untracked" when it has none; an empty segment to "empty")."""
    a.mov(R6, R1)
    a.load(R8, R6, _SKB_LEN, 4)
    # A FIN arrives as a segment without data. TCP has already taken note of it (user
    # space sees EOF); redirected, it would be sent on a socket user space may have shut
    # by then, and the send error stops that socket's whole queue (bytes passed later
    # would be dropped): nothing to carry, so drop it.
    a.jump_if_imm(R8, "==", 0, "empty")
    a.call(_GET_SOCKET_COOKIE)  # r1 is still the skb
    a.store(R10, -8, R0)
    a.load_map(R1, MAP_SLOTS)
    a.mov(R2, R10)
    a.add_imm(R2, -8)
    a.call(_MAP_LOOKUP_ELEM)
    a.jump_if_imm(R0, "==", 0, "untracked")
    a.load(R1, R0, 0, 4)
    a.store(R10, -16, R1, 4)
    a.load_map(R1, MAP_STATE)
    a.mov(R2, R10)
    a.add_imm(R2, -16)
    a.call(_MAP_LOOKUP_ELEM)
    a.jump_if_imm(R0, "==", 0, "untracked")
    a.mov(R7, R0)
    # user space still holds passed bytes: pass this one behind them
    a.load(R1, R7, PASSED)
    a.load(R2, R7, MOVED)
    a.jump_if(R1, "!=", R2, "pass")


def _redirect_and_ends(a: Asm, peer_stored: bool) -> None:
    """Count the segment as redirected and send it to the peer (its cookie at r10-24,
    put there first unless `peer_stored`); then the shared ends: "pass", "untracked",
    "empty"."""
    a.atomic_add(R7, REDIRECTED, R8)
    if not peer_stored:
        a.load(R1, R7, PEER)
        a.store(R10, -24, R1)
    a.mov(R1, R6)
    a.load_map(R2, MAP_SOCKS)
    a.mov(R3, R10)
    a.add_imm(R3, -24)
    a.mov_imm(R4, 0)  # flags 0: to the peer's send path (egress)
    a.call(_SK_REDIRECT_HASH)
    a.exit()
    a.label("pass")
    a.atomic_add(R7, PASSED, R8)
    a.label("untracked")  # a socket the relay does not know (yet): user space reads it
    a.mov_imm(R0, _SK_PASS)
    a.exit()
    a.label("empty")
    a.mov_imm(R0, _SK_DROP)
    a.exit()


def program() -> Asm:
    """The fallback verdict (`limit` from user space), as assembler."""
    a = Asm()
    _record(a)
    # over the budget: pass (the segment stays charged to this socket)
    a.load(R1, R7, REDIRECTED)
    a.add(R1, R8)
    a.load(R2, R7, LIMIT)
    a.jump_if(R1, ">", R2, "pass")
    _redirect_and_ends(a, peer_stored=False)
    return a


_ACKED_LOAD = "acked_load"
"""The label of `refill_program`'s load of `tcp_sock.bytes_acked` (offset patched)."""


def refill_program() -> Asm:
    """The refilling verdict, as assembler (the load of `bytes_acked` has offset 0 here:
    `refill_code` patches the running kernel's). r9 holds the destination socket (a
    reference: released on every path)."""
    a = Asm()
    _record(a)
    a.load(R1, R7, LIMIT)
    a.jump_if_imm(R1, "==", 0, "pass")  # not granted (yet, or ever)
    a.load(R1, R7, PEER)
    a.store(R10, -24, R1)
    a.load_map(R1, MAP_SOCKS)
    a.mov(R2, R10)
    a.add_imm(R2, -24)
    a.call(_MAP_LOOKUP_ELEM)  # a socket reference, or NULL
    a.jump_if_imm(R0, "==", 0, "pass")  # the destination is gone: user space sees why
    a.mov(R9, R0)
    a.mov(R1, R0)
    a.call(_SKC_TO_TCP_SOCK)
    a.jump_if_imm(R0, "==", 0, "release_pass")
    a.label(_ACKED_LOAD)
    a.load(R1, R0, 0)  # tcp_sock.bytes_acked (patched)
    a.store(R10, -32, R1)
    a.store(R7, ACKED, R1)
    a.mov(R1, R9)
    a.call(_SK_RELEASE)
    # over the budget (destination's unacknowledged bytes with this segment): pass
    a.load(R1, R10, -32)
    a.load(R2, R7, LIMIT)
    a.add(R1, R2)
    a.load(R2, R7, REDIRECTED)
    a.add(R2, R8)
    a.load(R3, R7, OFFSET)
    a.add(R2, R3)
    a.jump_if(R2, ">", R1, "pass")
    _redirect_and_ends(a, peer_stored=True)
    a.label("release_pass")
    a.mov(R1, R9)
    a.call(_SK_RELEASE)
    a.jump("pass")
    return a


def refill_code(acked_offset: int) -> bytes:
    """`REFILL_CODE` with the running kernel's `tcp_sock.bytes_acked` offset."""
    if not 0 <= acked_offset < 1 << 15:
        raise ValueError(f"bytes_acked offset {acked_offset} out of range")
    at = refill_program().labels[_ACKED_LOAD] * 8 + 2  # struct bpf_insn.off
    out = bytearray(REFILL_CODE)
    struct.pack_into("<h", out, at, acked_offset)
    return bytes(out)


CODE = bytes.fromhex(
    "bf1600000000000061680000000000001508260000000000850000002e000000"
    "7b0af8ff0000000018110000010000000000000000000000bfa2000000000000"
    "07020000f8ffffff850000000100000015001c00000000006101000000000000"
    "631af0ff0000000018110000020000000000000000000000bfa2000000000000"
    "07020000f0ffffff85000000010000001500140000000000bf07000000000000"
    "797118000000000079722000000000005d210f00000000007971100000000000"
    "0f8100000000000079720800000000002d210b0000000000db87100000000000"
    "79710000000000007b1ae8ff00000000bf610000000000001812000000000000"
    "0000000000000000bfa300000000000007030000e8ffffffb704000000000000"
    "85000000480000009500000000000000db87180000000000b700000001000000"
    "9500000000000000b7000000000000009500000000000000"
)
"""`program().assemble()`, checked in: what is loaded (tests assert they agree)."""
REFILL_CODE = bytes.fromhex(
    "bf16000000000000616800000000000015083b0000000000850000002e000000"
    "7b0af8ff0000000018110000010000000000000000000000bfa2000000000000"
    "07020000f8ffffff850000000100000015003100000000006101000000000000"
    "631af0ff0000000018110000020000000000000000000000bfa2000000000000"
    "07020000f0ffffff85000000010000001500290000000000bf07000000000000"
    "797118000000000079722000000000005d212400000000007971080000000000"
    "150122000000000079710000000000007b1ae8ff000000001811000000000000"
    "0000000000000000bfa200000000000007020000e8ffffff8500000001000000"
    "15001a0000000000bf09000000000000bf010000000000008500000089000000"
    "15001b000000000079010000000000007b1ae0ff000000007b17300000000000"
    "bf91000000000000850000005600000079a1e0ff000000007972080000000000"
    "0f2100000000000079721000000000000f820000000000007973280000000000"
    "0f320000000000002d12090000000000db87100000000000bf61000000000000"
    "18120000000000000000000000000000bfa300000000000007030000e8ffffff"
    "b70400000000000085000000480000009500000000000000db87180000000000"
    "b7000000010000009500000000000000b7000000000000009500000000000000"
    "bf9100000000000085000000560000000500f8ff00000000"
)
"""`refill_program().assemble()`, checked in (its `bytes_acked` load at offset 0)."""
