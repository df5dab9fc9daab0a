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
from typing import TYPE_CHECKING, Final

from sniffer.proxy.kernel.relay import unread

if TYPE_CHECKING:
    from sniffer.proxy.kernel.relay import KernelPair, KernelRelay
    from sniffer.proxy.relay import Relay, RelayOwner
    from sniffer.proxy.relay.userspace import Pump

__all__ = ["Deferred", "KernelEngine", "KernelRelayed"]

_new = object.__new__
_socket, _dup = socket.socket, os.dup
_INET, _STREAM = socket.AF_INET, socket.SOCK_STREAM


class _Detached(asyncio.Protocol):
    """The transports' protocol once their sockets are the kernel's: hears nothing."""

    def connection_lost(self, exc: Exception | None) -> None:
        pass


_DETACHED: Final = _Detached()


class KernelEngine:
    """Starts every pair of its process in the kernel where it can.

    With `after` > 0 a pair starts in user space and moves to the kernel once it has
    lived that long: a short connection never pays for the hand-off (two sockets into
    the maps, their descriptors taken over), a long one relays in the kernel.
    """

    __slots__ = ("after", "loop", "old", "relay", "timer", "young")
    name: Final = "kernel"

    def __init__(
        self, relay: KernelRelay, loop: asyncio.AbstractEventLoop, after: float = 0.0
    ) -> None:
        self.relay = relay
        self.loop = loop
        self.after = after
        # Two generations and one timer, so that starting a pair costs an append: a pair
        # started since the last sweep is young; at a sweep the old ones move (they have
        # lived `after` at least, at most twice that) and the young become old. A pair
        # that ended stays listed until its sweep, holding nothing but its counts.
        self.young: list[Deferred] = []
        self.old: list[Deferred] = []
        self.timer: asyncio.TimerHandle | None = None

    def start(self, pump: Pump, replayed: int, client_eof: bool) -> Relay:
        if self.after <= 0:
            return self.take(pump, replayed, client_eof)
        # A Deferred built without an __init__ frame: this runs for every pair.
        deferred = _new(Deferred)
        deferred.engine_ = self
        deferred.owner = pump.owner
        deferred.pump = pump
        pump.owner = deferred
        deferred.inner = pump.start(replayed, client_eof)
        self.young.append(deferred)
        if self.timer is None:
            self.timer = self.loop.call_later(self.after, self._move)
        return deferred

    def close(self) -> None:
        """Stop moving pairs (the plane is shutting down)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.young.clear()
        self.old.clear()

    def _move(self) -> None:
        """Hand over the pairs that have lived long enough (one timer for all)."""
        self.timer = None
        due, self.old, self.young = self.old, self.young, []
        for deferred in due:
            if deferred.pump is not None and self.move(deferred) == "later":
                self.old.append(deferred)  # bytes in flight: at the next sweep
        if self.old:
            self.timer = self.loop.call_later(self.after, self._move)

    def move(self, deferred: Deferred) -> str:
        """Move a pair relaying in user space to the kernel now, if it can go:
        `moved` (or fell back, counted: it stays in user space for good), `later` (bytes
        wait in a transport's write buffer, or in a socket), `never` (ended, or
        half-closed: it finishes where it is). Called by the sweep (and tests)."""
        pump = deferred.pump
        if pump is None or pump.owner is None or pump.client is None or pump.backend is None:
            deferred.pump = None
            return "never"
        if pump.client_eof or pump.backend_eof:
            deferred.pump = None
            return "never"
        # Bytes queued in a socket would keep that way in user space for good (see
        # `sniffer.proxy.kernel.relay`): wait for a moment without them.
        if (
            pump.client.get_write_buffer_size()
            or pump.backend.get_write_buffer_size()
            or unread(pump.client.get_extra_info("socket"))
            or unread(pump.backend.get_extra_info("socket"))
        ):
            return "later"
        deferred.pump = None
        side = pump.side
        moved = self.take(pump, side.bytes_up if side is not None else 0, False, deferred)
        if moved is not pump:
            deferred.inner = moved
        return "moved"

    def take(
        self, pump: Pump, replayed: int, client_eof: bool, deferred: Deferred | None = None
    ) -> Relay:
        """The pair to the kernel now, or (when it cannot) `pump` relaying it.

        `replayed`: bytes the client side has delivered so far; with `deferred` the pump
        is already relaying (its counts are the new relay's base).
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
            return pump if deferred is not None else pump.start(replayed, client_eof)
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
            return pump if deferred is not None else pump.start(replayed, client_eof)
        try:
            backend = _socket(_INET, _STREAM, 0, _dup(bt.get_extra_info("socket").fileno()))
        except OSError:
            client.close()
            relay.fallback("dup")
            return pump if deferred is not None else pump.start(replayed, client_eof)
        owner = pump.owner if deferred is None else deferred.owner
        assert owner is not None
        handed = KernelRelayed(owner, replayed, pump.bytes_down)
        pair = relay.handoff(self.loop, client, backend, b"", handed.done)
        if pair is None:
            client.close()
            backend.close()
            return pump if deferred is not None else pump.start(replayed, client_eof)
        handed.pair = pair
        pump.owner = None  # the pump is finished with: it must report nothing
        for t in (ct, bt):
            t.set_protocol(_DETACHED)
            t.abort()  # closes the transport's descriptor only: the socket is ours now
        pump.client = pump.backend = None
        return handed


class Deferred:
    """A pair that starts in user space and may move to the kernel (`KernelEngine`).

    It stands between the pump and the connection as the pump's owner, so that a pair
    ending in user space leaves the engine's list at once (nothing holds it after).
    """

    __slots__ = ("engine_", "inner", "owner", "pump")
    engine: Final = "kernel"
    engine_: KernelEngine
    owner: RelayOwner | None
    """The connection."""
    pump: Pump | None
    """The pump while it may still move; None once moved, ended, or never to move."""
    inner: Relay
    """The pump while in user space, then the kernel's relay."""

    # (Made by `KernelEngine.start` only, without an __init__: it runs for every pair.)

    def relay_closed(self, outcome: str) -> None:
        """The pump's report (in user space): passed on, once. The engine's list holds
        this until its sweep, so it keeps the counts and lets the pump go now."""
        self.pump = None
        inner = self.inner
        ended = _new(_Ended)
        ended.bytes_up = inner.bytes_up
        ended.bytes_down = inner.bytes_down
        self.inner = ended
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.relay_closed(outcome)

    @property
    def bytes_up(self) -> int:
        return self.inner.bytes_up

    @property
    def bytes_down(self) -> int:
        return self.inner.bytes_down

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.owner = None
        self.pump = None
        self.inner.abort()


class _Ended:
    """What a `Deferred` keeps of a pump that ended in user space: its counts."""

    __slots__ = ("bytes_down", "bytes_up")
    engine: Final = "userspace"
    bytes_up: int
    bytes_down: int

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


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
