"""A tiny eBPF assembler: the kernel relay's verdict program is written with it.

This module owns the instruction encoding (`struct bpf_insn`) for the handful of
instructions the verdict uses, so the program's source of truth reads like assembler
in Python (`sniffer.proxy.kernel.verdict`) and its bytes are made without a compiler.
Jumps name labels; map references name map slots, patched with real descriptors at
load time. It never loads anything and never does I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Asm", "Insn"]

# instruction classes, sizes, sources, operations (include/uapi/linux/bpf.h)
_LD, _LDX, _ST, _STX, _ALU, _JMP, _ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07
_W, _DW = 0x00, 0x18
_MEM, _IMM, _ATOMIC = 0x60, 0x00, 0xC0
_K, _X = 0x00, 0x08
_ADD, _MOV = 0x00, 0xB0
_JEQ, _JGT, _JNE, _CALL, _EXIT, _JA = 0x10, 0x20, 0x50, 0x80, 0x90, 0x00
_SIZES = {4: _W, 8: _DW}
_PSEUDO_MAP_FD = 1
_JUMPS = {"==": _JEQ, "!=": _JNE, ">": _JGT}


@dataclass(frozen=True, slots=True)
class Insn:
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    label: str | None = None
    """A jump's target, resolved to `off` by `Asm.assemble`."""
    map_slot: int | None = None
    """For a map load: which of the program's maps (patched with its descriptor)."""

    def encode(self, off: int | None = None, imm: int | None = None) -> bytes:
        return struct.pack(
            "<BBhi",
            self.code,
            (self.src << 4) | self.dst,
            self.off if off is None else off,
            self.imm if imm is None else imm,
        )


class Asm:
    """Build a program instruction by instruction; `assemble` gives its bytes."""

    def __init__(self) -> None:
        self.insns: list[Insn] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.insns)

    def mov(self, dst: int, src: int) -> None:
        """dst = src (registers)."""
        self.insns.append(Insn(_ALU64 | _MOV | _X, dst, src))

    def mov_imm(self, dst: int, imm: int) -> None:
        self.insns.append(Insn(_ALU64 | _MOV | _K, dst, 0, 0, imm))

    def add(self, dst: int, src: int) -> None:
        self.insns.append(Insn(_ALU64 | _ADD | _X, dst, src))

    def add_imm(self, dst: int, imm: int) -> None:
        self.insns.append(Insn(_ALU64 | _ADD | _K, dst, 0, 0, imm))

    def load(self, dst: int, src: int, off: int, size: int = 8) -> None:
        """dst = *(size *)(src + off)."""
        self.insns.append(Insn(_LDX | _MEM | _SIZES[size], dst, src, off))

    def store(self, dst: int, off: int, src: int, size: int = 8) -> None:
        """*(size *)(dst + off) = src."""
        self.insns.append(Insn(_STX | _MEM | _SIZES[size], dst, src, off))

    def atomic_add(self, dst: int, off: int, src: int) -> None:
        """lock *(u64 *)(dst + off) += src."""
        self.insns.append(Insn(_STX | _ATOMIC | _DW, dst, src, off, _ADD))

    def load_map(self, dst: int, slot: int) -> None:
        """dst = the map in `slot` (a two-instruction 64-bit load of its descriptor)."""
        self.insns.append(Insn(_LD | _IMM | _DW, dst, _PSEUDO_MAP_FD, 0, slot, map_slot=slot))
        self.insns.append(Insn(0))

    def jump_if(self, dst: int, op: str, src: int, label: str) -> None:
        """if dst <op> src goto label (unsigned compare, registers)."""
        self.insns.append(Insn(_JMP | _JUMPS[op] | _X, dst, src, label=label))

    def jump_if_imm(self, dst: int, op: str, imm: int, label: str) -> None:
        self.insns.append(Insn(_JMP | _JUMPS[op] | _K, dst, 0, 0, imm, label=label))

    def jump(self, label: str) -> None:
        """goto label."""
        self.insns.append(Insn(_JMP | _JA, label=label))

    def call(self, helper: int) -> None:
        self.insns.append(Insn(_JMP | _CALL, imm=helper))

    def exit(self) -> None:
        self.insns.append(Insn(_JMP | _EXIT))

    def assemble(self, maps: list[int] | None = None) -> bytes:
        """The program's bytes; with `maps`, map slots become those descriptors
        (without, the slot numbers stay: the form checked into the repository)."""
        out = bytearray()
        for i, insn in enumerate(self.insns):
            off = None if insn.label is None else self.labels[insn.label] - i - 1
            imm = None
            if insn.map_slot is not None and maps is not None:
                imm = maps[insn.map_slot]
            out += insn.encode(off, imm)
        return bytes(out)

    @staticmethod
    def relocate(code: bytes, maps: list[int]) -> bytes:
        """Patch the map descriptors into checked-in bytes (slot numbers -> fds)."""
        out = bytearray(code)
        for i in range(0, len(out), 8):
            if out[i] == (_LD | _IMM | _DW) and (out[i + 1] >> 4) == _PSEUDO_MAP_FD:
                slot = struct.unpack_from("<i", out, i + 4)[0]
                struct.pack_into("<i", out, i + 4, maps[slot])
        return bytes(out)
