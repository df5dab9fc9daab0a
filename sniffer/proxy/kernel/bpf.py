"""bpf(2) through ctypes: the few commands the kernel relay needs, nothing else.

This module owns the system call and the layout of `union bpf_attr` for map create,
map element update/delete, program load (with the verifier's log) and program attach.
It never decides what to load or when; `sniffer.proxy.kernel.relay` does. No compiler,
no libbpf: a program is a list of 8-byte instructions (`sniffer.proxy.kernel.asm`).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

__all__ = [
    "ARRAY",
    "F_MMAPABLE",
    "HASH",
    "LRU_HASH",
    "SK_SKB",
    "SK_SKB_STREAM_VERDICT",
    "SOCKHASH",
    "BpfError",
    "PairInsert",
    "ProgramRefused",
    "map_create",
    "map_delete",
    "map_update",
    "map_update_batch",
    "prog_attach",
    "prog_load",
]

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), -1)
# bpf(2) commands
_MAP_CREATE = 0
_MAP_UPDATE_ELEM = 2
_MAP_DELETE_ELEM = 3
_PROG_LOAD = 5
_PROG_ATTACH = 8
_MAP_UPDATE_BATCH = 26
# map types, program type, attach type, flags (include/uapi/linux/bpf.h)
HASH = 1
ARRAY = 2
LRU_HASH = 9
SOCKHASH = 18
SK_SKB = 14
SK_SKB_STREAM_VERDICT = 5
F_MMAPABLE = 1 << 10
_ANY = 0

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]

_ATTR_SIZE = 144  # large enough for every command used here; the kernel checks the rest is 0

# The same call for the per-pair path, with its arguments made once as ctypes objects:
# without `argtypes` nothing is converted per call (the conversion costs more than the
# rest of the call). Every argument a `c_long`, as syscall(2)'s variadic ones are read.
_raw_syscall = _libc["syscall"]  # (a function object of its own: no argtypes)
_raw_syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) call failed; `errno` says why (EPERM: no CAP_BPF, E2BIG: map full...)."""


class ProgramRefused(BpfError):
    """The verifier refused a program; `log` is what it said."""

    def __init__(self, err: int, log: str) -> None:
        super().__init__(err, f"{os.strerror(err)}; verifier log:\n{log}")
        self.log = log


def _bpf(cmd: int, attr: bytes) -> int:
    if _SYS_BPF < 0:
        raise BpfError(38, f"bpf(2) number unknown on {platform.machine()}")
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    ret = _syscall(_SYS_BPF, cmd, ctypes.addressof(buf), _ATTR_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return int(ret)


def map_create(
    map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0, name: str = ""
) -> int:
    """A new map; returns its file descriptor (the caller closes it)."""
    attr = struct.pack(
        "IIIIIII16s", map_type, key_size, value_size, max_entries, flags, 0, 0, name.encode()[:15]
    )
    return _bpf(_MAP_CREATE, attr)


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = _ANY) -> None:
    """Set `key` to `value` (for a SOCKHASH the value is a socket's descriptor)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _bpf(_MAP_UPDATE_ELEM, struct.pack("IIQQQ", map_fd, 0, _addr(k), _addr(v), flags))


def map_update_batch(map_fd: int, keys: bytes, values: bytes, count: int) -> None:
    """Set `count` keys at once (packed back to back in `keys`, values likewise)."""
    k = ctypes.create_string_buffer(keys, len(keys))
    v = ctypes.create_string_buffer(values, len(values))
    attr = struct.pack("QQQQIIQQ", 0, 0, _addr(k), _addr(v), count, map_fd, 0, 0)
    _bpf(_MAP_UPDATE_BATCH, attr)


def map_delete(map_fd: int, key: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    _bpf(_MAP_DELETE_ELEM, struct.pack("IIQ", map_fd, 0, _addr(k)))


def prog_load(prog_type: int, insns: bytes, name: str = "") -> int:
    """Load a program; returns its descriptor, or raises `ProgramRefused` with the log.

    The first try asks for no log (a log too small for a long, successful check fails
    the load); a refusal is loaded again with the log on, to show what the verifier saw.
    """
    for attempt in range(5):
        try:
            return _prog_load(prog_type, insns, name, 0, 0)
        except BpfError as exc:
            # EAGAIN: the verifier was interrupted (a signal); try again, as libbpf does.
            if exc.errno == 11 and attempt < 4:
                continue
            if exc.errno not in (13, 22):  # EACCES / EINVAL: the verifier's refusals
                raise
            break
    for attempt in range(5):
        try:
            return _prog_load(prog_type, insns, name, 1, 1 << 20)
        except ProgramRefused as exc:
            if exc.errno != 11 or attempt == 4:
                raise
    raise AssertionError("unreachable")


def _prog_load(prog_type: int, insns: bytes, name: str, log_level: int, log_size: int) -> int:
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(max(log_size, 1))
    attr = struct.pack(
        "IIQQIIQII16s",
        prog_type,
        len(insns) // 8,
        _addr(code),
        _addr(license_),
        log_level,
        log_size,
        _addr(log),
        0,
        0,
        name.encode()[:15],
    )
    try:
        return _bpf(_PROG_LOAD, attr)
    except BpfError as exc:
        text = log.value.decode(errors="replace")
        if log_level:
            raise ProgramRefused(exc.errno or 0, text) from None
        raise


_PAIR = struct.Struct("=QQIIQQ")
"""A pair's keys and values, laid out once (`PairInsert`): the two socket cookies (the
slot map's batch keys, and each SOCKHASH update's key), the two slots (the batch's
values), the two descriptors (the SOCKHASH values)."""
_AT_KEYS, _AT_SLOTS, _AT_FDS = 0, 16, 24


class PairInsert:
    """The three bpf(2) calls that put one pair into the maps, with their argument memory
    made once: per pair, one `pack_into` and three system calls, no ctypes object (making
    one costs more than the system call). Not thread-safe: one per event loop."""

    __slots__ = ("_batch", "_buf", "_c", "_socks_a", "_socks_b")

    def __init__(self, socks_fd: int, slots_fd: int) -> None:
        self._buf = bytearray(3 * _ATTR_SIZE + _PAIR.size)
        self._c = (ctypes.c_char * len(self._buf)).from_buffer(self._buf)
        base = ctypes.addressof(self._c)
        data = base + 3 * _ATTR_SIZE
        keys, slots, fds = data + _AT_KEYS, data + _AT_SLOTS, data + _AT_FDS
        # The attributes never change, only the data they point at.
        struct.pack_into("QQQQIIQQ", self._buf, 0, 0, 0, keys, slots, 2, slots_fd, 0, 0)
        struct.pack_into("IIQQQ", self._buf, _ATTR_SIZE, socks_fd, 0, keys, fds, _ANY)
        struct.pack_into("IIQQQ", self._buf, 2 * _ATTR_SIZE, socks_fd, 0, keys + 8, fds + 8, _ANY)
        nr, size = ctypes.c_long(_SYS_BPF), ctypes.c_long(_ATTR_SIZE)
        self._batch = (nr, ctypes.c_long(_MAP_UPDATE_BATCH), ctypes.c_void_p(base), size)
        update = ctypes.c_long(_MAP_UPDATE_ELEM)
        self._socks_a = (nr, update, ctypes.c_void_p(base + _ATTR_SIZE), size)
        self._socks_b = (nr, update, ctypes.c_void_p(base + 2 * _ATTR_SIZE), size)

    def insert(self, cookie_a: int, cookie_b: int, slot: int, fd_a: int, fd_b: int) -> int:
        """cookie_a -> slot, cookie_b -> slot + 1 in the slot map; then each socket into the
        SOCKHASH under its cookie. Returns how many sockets went in: 2, or 1 when the
        second was refused (e.g. EOPNOTSUPP: it is no longer ESTABLISHED, its peer's FIN
        came). Raises `BpfError` when the first was refused (nothing changed that
        matters: the slot map is LRU). A socket that went in is left in: taking it out
        would drop what the verdict passed to it meanwhile."""
        _PAIR.pack_into(self._buf, 3 * _ATTR_SIZE, cookie_a, cookie_b, slot, slot + 1, fd_a, fd_b)
        if _raw_syscall(*self._batch) < 0 or _raw_syscall(*self._socks_a) < 0:
            err = ctypes.get_errno()
            raise BpfError(err, os.strerror(err))
        if _raw_syscall(*self._socks_b) < 0:
            return 1
        return 2


def prog_attach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    """Attach a program to a map (for sk_skb: the SOCKHASH it serves)."""
    _bpf(_PROG_ATTACH, struct.pack("IIII", target_fd, prog_fd, attach_type, 0))
