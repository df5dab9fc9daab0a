"""The kernel relay engine: hand a routed pair of sockets to the kernel, watch the end.

`KernelRelay` (one per process) owns the maps, the loaded verdict program
(`sniffer.proxy.kernel.verdict`) and the slots of its state array; `KernelPair` owns
one handed-over pair of sockets. After the hand-off the kernel moves every segment
itself while the budget lasts; user space wakes only for what the verdict passes (a
spent budget, or bytes behind ones it still holds), for EOF, resets and errors, and
relays those bytes itself with the ordering rules below. It never parses bytes, never
routes, and never holds more than one chunk per direction (or, catching up with a
refilling verdict, what src had queued, at most `PEEK_MAX`).

Ordering, per direction (source socket -> destination socket):
  * bytes user space read from the source are written only once the destination's
    written total (`tcpi_bytes_acked` + `SIOCOUTQ`) covers every byte written to it
    before plus every byte the kernel redirected (re-read before each write);
  * `MOVED` is raised only once those bytes are in the destination socket, so the
    verdict keeps passing (never redirecting past them) until then;
  * the FIN is passed on (`shutdown(SHUT_WR)`) under the same rule, once every passed
    byte is read;
  * bytes caught up with by peeking (`PEEK_MAX`) are consumed from src only after
    `MOVED` covers them, so what arrives behind them may be redirected at once.
The bound: the verdict redirects only while the destination holds at most the budget
unacknowledged. Where the kernel allows it (its BTF, `bpf_skc_to_tcp_sock` in `sk_skb`),
the loaded verdict reads the destination's acknowledged total itself and the budget
refills in the kernel (`refill`); user space then only keeps `OFFSET` current (before
raising `MOVED`) and sets `LIMIT` to the budget at the first grant. Elsewhere the
fallback verdict redirects only within `LIMIT`, which user space sets at each grant to
what is redirected plus the budget less what the destination still holds unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import socket
import struct
import termios
from collections.abc import Callable
from typing import Final

from sniffer.proxy.kernel import bpf, btf
from sniffer.proxy.kernel.asm import Asm
from sniffer.proxy.kernel.verdict import (
    CODE,
    LIMIT,
    MOVED,
    OFFSET,
    PASSED,
    PEER,
    RECORD,
    REDIRECTED,
    refill_code,
)

__all__ = ["DEFAULT_BUDGET", "KernelPair", "KernelRelay", "Unavailable"]

log = logging.getLogger("sniffer.proxy")

DEFAULT_BUDGET: Final = 4 * 1024 * 1024
"""Bytes the kernel may hold for one direction (redirected, not yet acknowledged by the
receiver) before segments stay with their sender. The bytes it counts sit in the
destination's send buffer or queue for it, where the user-space relay would hold its
write buffer and the same send buffer: kept at the largest send buffer (4 MiB by
default), a stalled receiver costs no more than with the user-space relay (measured: a
never-reading peer holds its sender at ~8.5 MiB with 2 MiB or 4 MiB alike). With the
refilling verdict, 4 MiB rather than 2 let the kernel carry most of a 1 GiB stream whose
receiver is a little slower than its sender (benchmarks.run large-stream: 0.50 against
0.60 s of proxy CPU per GiB)."""
CHUNK: Final = 256 * 1024
"""Bytes user space reads at once from a source (the user-space relay's write buffer)."""
_SO_COOKIE: Final = 57
_ACKED_AT: Final = 120
_BYTES_ACKED: Final = struct.Struct("=Q")  # tcp_info.tcpi_bytes_acked at offset 120
_RECEIVED_AT: Final = 128  # tcp_info.tcpi_bytes_received
_TCP_INFO_LEN: Final = _RECEIVED_AT + 8  # (the kernel copies no more than asked for)
_INT: Final = struct.Struct("i")
_IOCTL_OUT: Final = bytearray(4)
"""Where ioctl(2) writes its int (a writable buffer: given bytes, `fcntl.ioctl` first
fails to parse them as one, formatting an error message per call, then copies them).
One per process: the loop thread is its only user."""
_LINGER_ZERO: Final = struct.pack("ii", 1, 0)
_Q: Final = 8  # bytes per record field
_U64: Final = struct.Struct("Q")
_SLOTS: Final = struct.Struct("II")
_RETRY_FIRST: Final = 0.0005
_RETRY_MAX: Final = 0.02
PEEK_MAX: Final = 4 * 1024 * 1024
"""Most passed bytes user space catches up with at once, in a pair whose verdict
refills its budget. Every segment that arrives while user space holds passed bytes
must be passed too (ordering), so with a sender faster than one read-and-write per
chunk the pair would stay in user space for good. Instead user space copies all that
is queued (MSG_PEEK: the bytes stay queued and charged to src, so its window does not
grow meanwhile), writes it into dst, raises `MOVED` over it and only then consumes
it: whatever arrived after it goes by the kernel again."""
_COUNT_TRIES: Final = 8
"""Reads of (acknowledged, queued) before `tcp_counts` gives up for now."""
_EOF_WAIT_MAX: Final = 5.0
"""Seconds an EOF may wait for passed bytes still on their way to the queue."""


class Unavailable(Exception):
    """The kernel relay cannot run here; `reason` is the metric label, str() the why."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


def cookie_of(sock: socket.socket) -> int:
    value: int = struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, _SO_COOKIE, 8))[0]
    return value


def _acked(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    value: int = _BYTES_ACKED.unpack_from(info, _ACKED_AT)[0]
    return value


def tcp_counts(sock: socket.socket) -> tuple[int, int]:
    """(bytes of `sock` its peer acknowledged, bytes still queued in it, sent or not),
    both at one instant; raises `BlockingIOError` when acknowledgements kept arriving
    between the two reads (`_COUNT_TRIES` times).

    Two syscalls read them (`TCP_INFO`, then `SIOCOUTQ`): an ACK processed between them
    moves bytes from the queue to the acknowledged total after the first read, so their
    sum would come out short by what it acknowledged (on loopback, typically two full
    segments: 130966 bytes). A base measured short lets user space write passed bytes
    while the kernel still holds that many redirected ones: a corrupt stream (seen in
    pairs moved to the kernel in the middle of a download, ACKs flowing). So the
    acknowledged total is read again after the queue, and the pair of reads is kept
    only when it did not move (it never goes back)."""
    fd = sock.fileno()
    for _ in range(_COUNT_TRIES):
        acked = _acked(sock)
        fcntl.ioctl(fd, termios.TIOCOUTQ, _IOCTL_OUT)
        outq: int = _INT.unpack_from(_IOCTL_OUT)[0]
        if _acked(sock) == acked:
            return acked, outq
    raise BlockingIOError(errno.EAGAIN, "acknowledgements kept arriving")


def received_total(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    value: int = _BYTES_ACKED.unpack_from(info, _RECEIVED_AT)[0]
    return value


def written_total(sock: socket.socket) -> int:
    """Bytes ever written into `sock` that the kernel holds or delivered: acknowledged
    plus still queued (sent or not), at one instant (`tcp_counts`; may raise
    `BlockingIOError`)."""
    acked, outq = tcp_counts(sock)
    return acked + outq


def unread(sock: socket.socket) -> int:
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, _IOCTL_OUT)
    value: int = _INT.unpack_from(_IOCTL_OUT)[0]
    return value


class KernelRelay:
    """The process's maps and program; `handoff` gives a pair to the kernel."""

    def __init__(
        self, capacity: int = 16384, budget: int = DEFAULT_BUDGET, refill: bool = True
    ) -> None:
        """`capacity`: pairs at once (two records each); more fall back to user space.
        `refill`: try the verdict that refills the budget in the kernel first (False:
        the fallback verdict only; `refill_unavailable` says why when it was not loaded).

        Raises `Unavailable` (with the verifier's log when it refused the program).
        """
        self.budget = budget
        self.capacity = capacity
        fds: list[int] = []
        self.refill_unavailable = "not asked for" if not refill else ""
        """Why the fallback verdict was loaded ("" when the refilling one was)."""
        self.prog = -1
        try:
            for args in (
                (bpf.SOCKHASH, 8, 8, 2 * capacity, 0, "sniffer_socks"),
                # An LRU map, never deleted from: a pair's entries go stale when its
                # sockets close (cookies are never reused) and are evicted, oldest
                # first, to make room; that saves a syscall per socket at every close.
                (bpf.LRU_HASH, 8, 4, 4 * capacity, 0, "sniffer_slots"),
                (bpf.ARRAY, 4, RECORD, 2 * capacity, bpf.F_MMAPABLE, "sniffer_state"),
            ):
                fds.append(bpf.map_create(*args))
            if refill:
                self.prog = self._load_refill(fds)
            if self.prog < 0:
                self.prog = bpf.prog_load(bpf.SK_SKB, Asm.relocate(CODE, fds), "sniffer_verdict")
            bpf.prog_attach(self.prog, fds[0], bpf.SK_SKB_STREAM_VERDICT)
        except bpf.ProgramRefused as exc:
            for fd in fds:
                os.close(fd)
            why = f"the verifier refused the program: {exc}"
            # (only the fallback verdict's refusal gets here: no program was loaded)
            raise Unavailable("program_refused", why) from exc
        except bpf.BpfError as exc:
            for fd in fds + ([self.prog] if self.prog >= 0 else []):
                os.close(fd)
            why = f"bpf(2) failed: {exc.strerror} (errno {exc.errno})"
            reason = "bpf_error"
            if exc.errno in (errno.EPERM, errno.EACCES):
                reason = "no_privilege"
                why += "; it needs root, or CAP_BPF and CAP_NET_ADMIN"
            raise Unavailable(reason, why) from exc
        self.refill = not self.refill_unavailable
        """The verdict refills the budget itself (reads the destination's acked total)."""
        self.socks, self.slots, self.state = fds
        self.insert = bpf.PairInsert(self.socks, self.slots)
        """The per-pair map updates, their argument memory made once."""
        self._mm = mmap.mmap(self.state, 2 * capacity * RECORD)
        self.q = memoryview(self._mm).cast("Q")
        """The records, as u64 words: record `slot`'s field F is q[slot * 8 + F // 8]."""
        self.free = list(range(2 * capacity - 2, -1, -2))
        """Free record pairs (a pair's two records are slot and slot + 1)."""
        self.pairs: set[KernelPair] = set()
        self.handed = 0
        """Pairs handed over since start (sniffer_kernel_relay_connections_total)."""
        self.fallbacks: dict[str, int] = {}
        """reason -> pairs never handed over or moved back to user space."""
        self.carried_closed = 0
        """Bytes the kernel carried for pairs now closed (both ways)."""
        self.scratch = bytearray(CHUNK)
        """Where peeked bytes are consumed into (their copy went out already)."""

    def _load_refill(self, fds: list[int]) -> int:
        """The refilling verdict's descriptor, or -1 (`refill_unavailable` says why)."""
        try:
            acked_at = btf.vmlinux_member_offset("tcp_sock", "bytes_acked")
        except (OSError, ValueError) as exc:  # (btf.BtfError is a ValueError)
            self.refill_unavailable = f"no offset of tcp_sock.bytes_acked from BTF: {exc}"
            return -1
        try:
            code = Asm.relocate(refill_code(acked_at), fds)
            return bpf.prog_load(bpf.SK_SKB, code, "sniffer_refill")
        except bpf.ProgramRefused as exc:
            self.refill_unavailable = f"the verifier refused the refilling verdict: {exc}"
        except bpf.BpfError as exc:
            self.refill_unavailable = f"bpf(2) refused the refilling verdict: {exc}"
        return -1

    @property
    def verdict(self) -> str:
        """Which verdict is loaded, for a log line: what refills the budget."""
        if self.refill:
            return "the budget refills in the kernel (the verdict reads tcp_sock.bytes_acked)"
        return f"the budget refills from user space ({self.refill_unavailable})"

    def fallback(self, reason: str) -> None:
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    def handoff(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        backend: socket.socket,
        first: bytes,
        done: Callable[[KernelPair, str], None],
    ) -> KernelPair | None:
        """Give `client` <-> `backend` (non-blocking, owned from now on) to the kernel
        after writing `first` (PROXY header and replay) to the backend.

        Returns None (counted fallback, sockets untouched) when no record is free.
        `done(pair, outcome)` is called once, when both sockets are closed.
        """
        if not self.free:
            self.fallback("map_full")
            return None
        slot = self.free.pop()
        try:
            pair = KernelPair(self, loop, slot, client, backend, first, done)
        except OSError as exc:
            self.free.append(slot)
            if exc.errno == errno.EOPNOTSUPP:
                # The client's socket is no longer ESTABLISHED (its FIN came as we moved):
                # a race a pair may lose, not an error; it goes on in user space.
                self.fallback("half_closed")
                return None
            reason = (
                "map_full"
                if exc.errno in (errno.E2BIG, errno.ENOMEM, errno.ENOSPC)
                else ("map_error")
            )
            self.fallback(reason)
            log.warning("kernel relay: hand-off refused (%s): %s", reason, exc)
            return None
        self.handed += 1
        self.pairs.add(pair)
        return pair

    @property
    def carried(self) -> int:
        """Bytes the kernel carried, both ways, for every pair handed over so far."""
        return self.carried_closed + sum(p.kernel_bytes() for p in self.pairs)

    def release(self, pair: KernelPair) -> None:
        self.pairs.discard(pair)
        q = self.q
        for s in (pair.slot, pair.slot + 1):
            q[s * 8 : s * 8 + 8] = _ZERO_RECORD
        self.free.append(pair.slot)

    def close(self) -> None:
        for pair in list(self.pairs):
            pair.abort("aborted")
        self.q.release()
        self._mm.close()
        for fd in (self.prog, self.socks, self.slots, self.state):
            os.close(fd)


def _nothing(pair: KernelPair, outcome: str) -> None:
    pass


_ZERO_RECORD = memoryview(bytes(RECORD)).cast("Q")


class _Direction:
    """One way of a pair: bytes arriving on `src` go out on `dst`; record `slot`."""

    __slots__ = (
        "base",
        "clean",
        "confirmed",
        "dst",
        "eof",
        "eof_waited",
        "out",
        "peeked",
        "read",
        "received0",
        "shut",
        "slot",
        "src",
        "user",
        "wait",
    )

    def __init__(self, src: socket.socket, dst: socket.socket, slot: int) -> None:
        self.src = src
        self.dst = dst
        self.slot = slot
        self.read = 0
        """Bytes user space read from src (every one of them passed by the verdict)."""
        self.user = 0
        """Bytes user space wrote into dst since the hand-off (a replay given to it too)."""
        self.received0 = received_total(src)
        """Bytes src had received just before it entered the SOCKHASH."""
        self.clean = unread(src) == 0
        """No byte of src's stream was queued in it when it entered the SOCKHASH (none
        then, and every byte received since met the verdict: `KernelPair` checks).
        Only a clean direction is ever granted a budget: with bytes queued at the
        insert, redirecting later segments was seen to duplicate data (kernel 6.18,
        tests/proxy/relay/test_kernel_move.py), however user space read them."""
        self.base = -1
        """dst's written total before the kernel redirected anything into it, less what
        user space wrote: measured at the first grant (nothing is redirected before it),
        -1 until then. (A socket's count starts at 1: its SYN.)"""
        self.confirmed = 0
        """The redirected total dst was last seen to hold."""
        self.out = b""
        """Read from src, not yet written into dst."""
        self.eof = False
        self.eof_waited = 0.0
        self.shut = False
        self.wait = 0.0
        """Current poll delay while dst does not yet hold what was redirected."""
        self.peeked = 0
        """Bytes of `out` peeked from src, not yet consumed (still queued in it)."""


class KernelPair:
    """One client <-> backend pair in the kernel's hands (see the module docstring)."""

    def __init__(
        self,
        relay: KernelRelay,
        loop: asyncio.AbstractEventLoop,
        slot: int,
        client: socket.socket,
        backend: socket.socket,
        first: bytes,
        done: Callable[[KernelPair, str], None],
    ) -> None:
        self.relay = relay
        self.loop = loop
        self.slot = slot
        self.client = client
        self.backend = backend
        self.done = done
        self.closed = False
        self.outcome = ""
        self.pass_only = False
        """A socket of the pair is not in the SOCKHASH: never grant a budget."""
        self.up = _Direction(client, backend, slot)
        self.down = _Direction(backend, client, slot + 1)
        q = relay.q
        cc, bc = cookie_of(client), cookie_of(backend)
        base_up, base_down = slot * 8, (slot + 1) * 8
        q[base_up + PEER // _Q] = bc
        q[base_down + PEER // _Q] = cc
        # Both ways enter the maps passing everything (LIMIT 0, as `release` left it):
        # whatever is queued in either socket, or arrives before the grant, reaches user
        # space in order; the kernel redirects only once `_grant` opens the budget.
        inserted = relay.insert.insert(cc, bc, slot, client.fileno(), backend.fileno())
        for d in (self.up, self.down):
            if d.clean:  # bytes that came between the check and the insert: unclean
                passed = int(q[d.slot * 8 + PASSED // _Q])  # (first: a byte passed
                # after it makes the totals differ, which only costs this pair the kernel)
                if received_total(d.src) - d.received0 != passed:
                    d.clean = False
            if not d.clean:
                relay.fallback("queued")
        if inserted < 2:
            # The client's socket is in, the backend's was refused: the pair stays with
            # user space for good (never granted), the verdict passing the client's bytes.
            self.pass_only = True
            relay.fallback("pass_only")
        loop.add_reader(client.fileno(), self._readable, self.up)
        loop.add_reader(backend.fileno(), self._readable, self.down)
        if first:
            self.up.out = first
            self._flush(self.up, replay=True)
        else:
            self._settle(self.up)
        self._settle(self.down)

    # -- the two directions --------------------------------------------------------------

    @property
    def bytes_up(self) -> int:
        """Client bytes relayed so far (redirected by the kernel or read by user space)."""
        return int(self.relay.q[self.slot * 8 + REDIRECTED // _Q]) + self.up.read

    @property
    def bytes_down(self) -> int:
        return int(self.relay.q[(self.slot + 1) * 8 + REDIRECTED // _Q]) + self.down.read

    def kernel_bytes(self) -> int:
        """Bytes the kernel carried, both ways."""
        q, s = self.relay.q, self.slot * 8
        return int(q[s + REDIRECTED // _Q]) + int(q[s + 8 + REDIRECTED // _Q])

    def _readable(self, d: _Direction) -> None:
        if self.closed or d.out:
            return
        if (
            d.base >= 0
            and self.relay.refill
            and self.relay.q[d.slot * 8 + PASSED // _Q] > d.read  # (not at a bare EOF)
            and self._peek(d)
        ):
            return
        try:
            data = d.src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("kernel relay: recv: %r", exc)
            self._reset(d, exc)
            return
        if not data:
            # Passed bytes may still be on their way into the queue (the verdict counts
            # them first): EOF counts only once every passed byte has been read.
            if self.relay.q[d.slot * 8 + PASSED // _Q] > d.read:
                # Bounded: bytes the kernel counted as passed and never queued (it
                # drops them when a socket's queue has failed) must not keep us polling.
                d.wait = min(_RETRY_MAX, d.wait * 2) if d.wait else _RETRY_FIRST
                d.eof_waited += d.wait
                if d.eof_waited > _EOF_WAIT_MAX:
                    self.relay.fallback("lost")
                    log.error("kernel relay: passed bytes never arrived; resetting the pair")
                    self._abort_reset()
                    return
                self.loop.call_later(d.wait, self._readable, d)
                return
            d.wait = 0.0
            d.eof = True
            self.loop.remove_reader(d.src.fileno())
            self._flush(d)
            return
        d.read += len(data)
        d.out = data
        self.loop.remove_reader(d.src.fileno())  # one chunk held at most
        self._flush(d)

    def _peek(self, d: _Direction) -> bool:
        """Catch up with passed bytes, leaving them queued (so src's window does not
        grow meanwhile): copy what is queued (at most `PEEK_MAX`) and flush it; it is
        consumed once `MOVED` covers it.
        False when there is nothing to peek (EOF, or more queued: read as usual)."""
        src = d.src
        try:
            n = unread(src)
            if not 0 < n <= PEEK_MAX:
                return False  # (more: read a chunk as usual, and peek once it is less)
            data = src.recv(n, socket.MSG_PEEK)
        except OSError:
            return False  # (the usual read hears why)
        if not data:
            return False
        d.peeked = len(data)
        d.out = data
        self.loop.remove_reader(src.fileno())
        self._flush(d)
        return True

    def _consume(self, d: _Direction) -> bool:
        """Take the peeked bytes (written into dst already) off src's queue."""
        left, scratch, src = d.peeked, self.relay.scratch, d.src
        try:
            while left:
                k = src.recv_into(scratch, min(left, len(scratch)))
                if not k:
                    break
                left -= k
        except OSError as exc:  # (a reset: the peeked bytes went with the queue)
            log.debug("kernel relay: consume: %r", exc)
            self._reset(d, exc)
            return False
        d.read += d.peeked - left
        d.peeked = 0
        if left:  # cannot happen: nothing else reads src
            self.relay.fallback("lost")
            log.error("kernel relay: peeked bytes not queued; resetting the pair")
            self._abort_reset()
            return False
        return True

    def _flush(self, d: _Direction, replay: bool = False) -> None:
        """Write what d holds (or its FIN) once dst holds every redirected byte."""
        if self.closed:
            return
        q = self.relay.q
        base = d.slot * 8
        redirected = int(q[base + REDIRECTED // _Q])  # re-read before every write
        if redirected > d.confirmed:  # (only ever after a grant: `base` is known)
            try:
                held = written_total(d.dst)
            except BlockingIOError:
                held = -1  # (no stable reading now: look again shortly)
            except OSError as exc:
                self._reset(d, exc)
                return
            if held < d.base + d.user + redirected:
                d.wait = min(_RETRY_MAX, d.wait * 2) if d.wait else _RETRY_FIRST
                self.loop.call_later(d.wait, self._flush, d)
                return
            d.confirmed = redirected
        d.wait = 0.0
        out = d.out
        if out:
            try:
                n = d.dst.send(out)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._reset(d, exc, dst_failed=True)
                return
            d.user += n
            if n < len(out):
                d.out = out[n:]
                self.loop.add_writer(d.dst.fileno(), self._writable, d)
                return
            d.out = b""
        if replay:
            # The replay is in: the client's bytes may go by the kernel now.
            self._settle(d)
            return
        if d.eof:
            if not d.shut:
                d.shut = True
                with contextlib.suppress(OSError):
                    d.dst.shutdown(socket.SHUT_WR)
                other = self.down if d is self.up else self.up
                if other.shut:
                    self._close("closed")
            return
        if self.relay.refill and d.base >= 0:  # before MOVED: the verdict may redirect then
            q[base + OFFSET // _Q] = d.base + d.user
        if d.peeked:
            # Written into dst: covered by MOVED before they leave src's queue, so the
            # verdict may redirect what arrives after them from now on.
            q[base + MOVED // _Q] = d.read + d.peeked
            caught_up = q[base + PASSED // _Q] == d.read + d.peeked
            if not self._consume(d):
                return
        else:
            q[base + MOVED // _Q] = d.read
            caught_up = q[base + PASSED // _Q] == d.read
        if caught_up:
            self._grant(d)
        self.loop.add_reader(d.src.fileno(), self._readable, d)

    def _writable(self, d: _Direction) -> None:
        self.loop.remove_writer(d.dst.fileno())
        self._flush(d)

    def _settle(self, d: _Direction) -> None:
        """After the hand-off (and its replay): grant at once unless the verdict has passed
        bytes already, which user space relays first (its reader is on)."""
        if self.relay.q[d.slot * 8 + PASSED // _Q] == d.read:
            self._grant(d)

    def _grant(self, d: _Direction) -> None:
        """Let the kernel redirect again, up to the budget less what dst still holds.

        Called only with every passed byte read and written into dst (`MOVED` set): a
        segment the verdict passes meanwhile raises `PASSED` past `MOVED`, which keeps
        it passing whatever the limit, until user space has relayed that one too.
        """
        if self.pass_only:
            return
        q = self.relay.q
        base = d.slot * 8
        if not d.clean:
            return
        if self.relay.refill:
            if d.base >= 0:
                return  # granted for good: the verdict refills the budget itself
            try:
                acked, outq = tcp_counts(d.dst)
            except OSError:
                return
            d.base = acked + outq - d.user  # the first grant: nothing redirected yet
            q[base + OFFSET // _Q] = d.base + d.user
            q[base + LIMIT // _Q] = self.relay.budget  # last: this opens the budget
            return
        redirected = int(q[base + REDIRECTED // _Q])
        try:
            acked, outq = tcp_counts(d.dst)
        except OSError:
            return
        if d.base < 0:  # the first grant: nothing redirected yet
            d.base = acked + outq - d.user
        unacked = d.base + d.user + redirected - acked
        room = self.relay.budget - unacked
        q[base + LIMIT // _Q] = redirected + room if room > 0 else 0

    # -- the end -------------------------------------------------------------------------

    def _reset(self, d: _Direction, exc: OSError, dst_failed: bool = False) -> None:
        """A reset (or error) on one socket is passed on as a reset on the other."""
        failed_client = (d.dst if dst_failed else d.src) is self.client
        other = self.backend if failed_client else self.client
        with contextlib.suppress(OSError):
            other.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self._close("client_reset" if failed_client else "backend_reset")

    def _abort_reset(self) -> None:
        """Bytes went missing: reset both sides rather than deliver a wrong stream."""
        for sock in (self.client, self.backend):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self._close("kernel_lost")

    def abort(self, outcome: str) -> None:
        """Close both sockets now (idle timeout, drain): a FIN each, queued bytes sent."""
        self._close(outcome)

    def _close(self, outcome: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.outcome = outcome
        loop, relay = self.loop, self.relay
        for sock in (self.client, self.backend):
            fd = sock.fileno()
            if fd >= 0:
                loop.remove_reader(fd)
                loop.remove_writer(fd)
        self.final_up, self.final_down = self.bytes_up, self.bytes_down
        self.final_kernel = self.kernel_bytes()
        relay.carried_closed += self.final_kernel
        self.client.close()  # closing a socket also takes it out of the SOCKHASH
        self.backend.close()
        relay.release(self)
        done, self.done = self.done, _nothing  # the owner holds us: break the cycle
        done(self, outcome)
