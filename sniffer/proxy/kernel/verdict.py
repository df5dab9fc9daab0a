"""The kernel relay's stream-verdict program: its source, its layout, its bytes.

One `sk_skb` stream-verdict program serves every socket of the relay. For each segment
arriving on a socket it finds that socket's direction record (socket cookie -> slot ->
`STATE[slot]`) and either redirects the segment to the peer's send path or passes it
(`SK_PASS`) to the socket's own receive queue, where user space reads it and where it
stays charged to the socket, so TCP's window closes when nobody reads.

It redirects only while both hold:
  * `passed == moved`: user space has written on everything passed before (else a
    redirected segment would overtake bytes user space still holds: reordering);
  * `redirected + len <= limit`: the budget user space granted (`limit` moves up as
    the destination's peer acknowledges). This is the bound: the kernel applies no
    backpressure to a redirected stream, so without it a stalled receiver lets the
    sender fill kernel memory.

This module owns the program and the record layout shared with user space. It never
loads the program (`sniffer.proxy.kernel.relay` does) and never does I/O; `CODE` is the
checked-in bytecode, and a test asserts that `program()` assembles to it.
"""

from __future__ import annotations

from sniffer.proxy.kernel.asm import Asm

__all__ = [
    "CODE",
    "LIMIT",
    "MAP_SLOTS",
    "MAP_SOCKS",
    "MAP_STATE",
    "MOVED",
    "PASSED",
    "PEER",
    "RECORD",
    "REDIRECTED",
    "program",
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
"""user space: redirect while `redirected` stays at or below this."""
REDIRECTED = 16
"""the program (atomic add): bytes redirected to the peer."""
PASSED = 24
"""the program (atomic add): bytes passed to user space."""
MOVED = 32
"""user space: passed bytes it has read and written into the destination socket."""
RECORD = 64
"""Bytes per record (a cache line; the rest is spare)."""

# helpers and return codes (include/uapi/linux/bpf.h)
_MAP_LOOKUP_ELEM = 1
_GET_SOCKET_COOKIE = 46
_SK_REDIRECT_HASH = 72
_SK_PASS = 1
_SK_DROP = 0
_SKB_LEN = 0  # offsetof(struct __sk_buff, len)
R0, R1, R2, R3, R4, R6, R7, R8, R10 = 0, 1, 2, 3, 4, 6, 7, 8, 10


def program() -> Asm:
    """The verdict, as assembler. Registers: r6 the skb, r7 the record, r8 its length."""
    a = Asm()
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
    # over the budget: pass (the segment stays charged to this socket)
    a.load(R1, R7, REDIRECTED)
    a.add(R1, R8)
    a.load(R2, R7, LIMIT)
    a.jump_if(R1, ">", R2, "pass")
    a.atomic_add(R7, REDIRECTED, R8)
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
    return a


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
