"""The kernel engine: a routed pair's sockets go to the BPF sockmap relay.

`KernelEngine.start` takes a dialled pair (PROXY header and replay already written by
the backend's transport) away from its two asyncio transports and gives the sockets to
`sniffer.proxy.kernel.relay.KernelRelay`, which moves the bytes in the kernel and calls
back once when the pair has ended. Where it cannot (no free record, bytes still
buffered in a transport, a side already half-closed or gone), the pump relays the pair
in user space, counted in `fallbacks` by reason. It never routes, dials or counts per
tenant, and knows its owner only as a `RelayOwner`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Final

from sniffer.proxy.kernel.relay import unread
from sniffer.proxy.relay.userspace import Pump

if TYPE_CHECKING:
    from sniffer.proxy.kernel.relay import KernelPair, KernelRelay
    from sniffer.proxy.relay import Relay, RelayOwner

__all__ = ["KernelEngine", "KernelRelayed"]

_socket, _dup = socket.socket, os.dup
_INET, _STREAM = socket.AF_INET, socket.SOCK_STREAM


RETRY_EVERY: Final = 0.02
"""Seconds between tries to move a pair that started in user space at `after` 0."""
RETRY_TRIES: Final = 50
"""Tries before such a pair stays in user space (about a second of a never-empty queue)."""


class _Detached(asyncio.Protocol):
    """The transports' protocol once their sockets are the kernel's: hears nothing."""

    def connection_lost(self, exc: Exception | None) -> None:
        pass


_DETACHED: Final = _Detached()


class KernelEngine:
    """Starts every pair of its process in the kernel where it can.

    With `after` > 0 a pair starts in user space (`start` is `Pump.start` itself: not one
    instruction more than the user-space engine) and moves to the kernel once it has
    lived that long: a short connection never pays for the hand-off (two sockets into
    the maps, their descriptors taken over), a long one relays in the kernel. One timer
    sweeps the plane's open connections every `after` seconds and moves those routed at
    least `after` ago, so a pair moves between `after` and twice that.
    """

    __slots__ = ("after", "loop", "owners", "relay", "retry", "retry_timer", "start", "timer")
    name: Final = "kernel"

    def __init__(
        self,
        relay: KernelRelay,
        loop: asyncio.AbstractEventLoop,
        after: float = 0.0,
        owners: Collection[RelayOwner] = (),
    ) -> None:
        """`owners`: the plane's open connections (swept when `after` > 0)."""
        self.relay = relay
        self.loop = loop
        self.after = after
        self.owners = owners
        self.start: Callable[[Pump, int, bool], Relay] = self._start_now
        """Start a pair: at once in the kernel, or (`after` > 0) in user space."""
        self.timer: asyncio.TimerHandle | None = None
        self.retry: dict[RelayOwner, int] = {}
        """Pairs started in user space because a socket held queued bytes at the start
        (`after` 0), and how many sweeps have found it so since."""
        self.retry_timer: asyncio.TimerHandle | None = None
        if after > 0:
            self.start = Pump.start
            self.timer = loop.call_later(after, self._sweep)

    def close(self) -> None:
        """Stop moving pairs (the plane is shutting down)."""
        for timer in (self.timer, self.retry_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.retry_timer = None
        self.retry.clear()

    def _start_now(self, pump: Pump, replayed: int, client_eof: bool) -> Relay:
        """`after` 0: the pair to the kernel now, unless a socket already holds queued
        bytes (a backend that answered the replay already): such a direction would stay
        in user space for good (see `sniffer.proxy.kernel.relay`), so the pair starts
        there and moves at a retry sweep, once nothing is queued."""
        ct, bt = pump.client, pump.backend
        if (
            client_eof
            or ct is None
            or bt is None
            or pump.early_end is not None
            or not (unread(ct.get_extra_info("socket")) or unread(bt.get_extra_info("socket")))
        ):
            return self.take(pump, replayed, client_eof)
        owner = pump.owner
        started = pump.start(replayed, client_eof)
        if owner is not None and pump.owner is owner:  # (it may end inside start)
            self.retry[owner] = 0
            if self.retry_timer is None:
                self.retry_timer = self.loop.call_later(RETRY_EVERY, self._retry)
        return started

    def _retry(self) -> None:
        self.retry_timer = None
        for owner, tries in list(self.retry.items()):
            outcome = self.move(owner)
            if outcome != "later":
                del self.retry[owner]
            elif tries + 1 >= RETRY_TRIES:  # never a quiet moment: it stays, counted
                del self.retry[owner]
                self.relay.fallback("busy")
            else:
                self.retry[owner] = tries + 1
        if self.retry:
            self.retry_timer = self.loop.call_later(RETRY_EVERY, self._retry)

    def _sweep(self) -> None:
        """Move the pairs that have lived long enough (one timer for all)."""
        self.timer = self.loop.call_later(self.after, self._sweep)
        oldest = time.monotonic() - self.after
        for owner in list(self.owners):
            if owner.relay is not None and owner.routed_at <= oldest:
                self.move(owner)

    def move(self, owner: RelayOwner) -> str:
        """Move `owner`'s pair, relaying in user space, to the kernel now if it can go:
        `moved` (or fell back, counted: it stays in user space for good), `later` (bytes
        wait in a transport's write buffer, or in a socket), `no` (not a pump relaying:
        in the kernel already, ended, or half-closed, which finishes where it is).
        Called by the sweep (and tests); on a move, `owner.relay` is the new relay."""
        pump = owner.relay
        if (
            type(pump) is not Pump
            or pump.owner is not owner
            or pump.client is None
            or pump.backend is None
            or pump.client_eof
            or pump.backend_eof
            or not pump.started
        ):
            return "no"
        # Bytes queued in a socket would keep that way in user space for good (see
        # `sniffer.proxy.kernel.relay`): wait for a moment without them.
        if (
            pump.client.get_write_buffer_size()
            or pump.backend.get_write_buffer_size()
            or unread(pump.client.get_extra_info("socket"))
            or unread(pump.backend.get_extra_info("socket"))
        ):
            return "later"
        side = pump.side
        moved = self.take(pump, side.bytes_up if side is not None else 0, False, moving=True)
        if moved is not pump:
            owner.relay = moved
        return "moved"

    def take(self, pump: Pump, replayed: int, client_eof: bool, moving: bool = False) -> Relay:
        """The pair to the kernel now, or (when it cannot) `pump` relaying it.

        `replayed`: bytes the client side has delivered so far; `moving`: the pump is
        already relaying (its counts are the new relay's base).
        """
        relay = self.relay
        ct, bt = pump.client, pump.backend
        reason = None
        if client_eof or pump.early_end is not None or ct is None or bt is None:
            reason = "half_closed"
        elif ct.get_write_buffer_size() or bt.get_write_buffer_size():
            reason = "buffered"  # the replay is not all in the socket yet
        elif not relay.free:
            reason = "map_full"
        if reason is not None:
            relay.fallback(reason)
            return pump if moving else pump.start(replayed, client_eof)
        assert ct is not None and bt is not None
        # Our own descriptors of the two sockets: the transports close theirs below.
        # The objects only read, write, shut down and ask for options, none of which
        # depends on the address family, so none is asked for: AF_INET stands for both
        # (uvloop's `family` costs ~4.5k instructions, probing it three syscalls). The
        # descriptions are already non-blocking (the transports made them so).
        try:
            client = _socket(_INET, _STREAM, 0, _dup(ct.get_extra_info("socket").fileno()))
        except OSError:
            relay.fallback("dup")
            return pump if moving else pump.start(replayed, client_eof)
        try:
            backend = _socket(_INET, _STREAM, 0, _dup(bt.get_extra_info("socket").fileno()))
        except OSError:
            client.close()
            relay.fallback("dup")
            return pump if moving else pump.start(replayed, client_eof)
        owner = pump.owner
        assert owner is not None
        handed = KernelRelayed(owner, replayed, pump.bytes_down)
        pair = relay.handoff(self.loop, client, backend, b"", handed.done)
        if pair is None:
            client.close()
            backend.close()
            return pump if moving else pump.start(replayed, client_eof)
        handed.pair = pair
        pump.owner = None  # the pump is finished with: it must report nothing
        for t in (ct, bt):
            t.set_protocol(_DETACHED)
            t.abort()  # closes the transport's descriptor only: the socket is ours now
        pump.client = pump.backend = None
        return handed


class KernelRelayed:
    """A pair in the kernel's hands, as a `Relay`: its counts are the kernel's."""

    __slots__ = ("base_down", "owner", "pair", "replayed")
    engine: Final = "kernel"

    def __init__(self, owner: RelayOwner, replayed: int, base_down: int) -> None:
        self.owner: RelayOwner | None = owner
        self.replayed = replayed
        self.base_down = base_down
        """Bytes the backend sent before the hand-off (relayed by the pump)."""
        self.pair: KernelPair | None = None

    @property
    def bytes_up(self) -> int:
        pair = self.pair
        if pair is None:
            return self.replayed
        return self.replayed + (pair.final_up if pair.closed else pair.bytes_up)

    @property
    def bytes_down(self) -> int:
        pair = self.pair
        if pair is None:
            return self.base_down
        return self.base_down + (pair.final_down if pair.closed else pair.bytes_down)

    def done(self, pair: KernelPair, outcome: str) -> None:
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.relay_closed(outcome)

    def close(self) -> None:
        if self.pair is not None:
            self.pair.abort("closed")

    def abort(self) -> None:
        self.owner = None
        if self.pair is not None:
            self.pair.abort("aborted")
