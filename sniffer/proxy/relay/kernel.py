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

if TYPE_CHECKING:
    from sniffer.proxy.kernel.relay import KernelPair, KernelRelay
    from sniffer.proxy.relay import Relay, RelayOwner
    from sniffer.proxy.relay.userspace import Pump

__all__ = ["KernelEngine"]


class _Detached(asyncio.Protocol):
    """The transports' protocol once their sockets are the kernel's: hears nothing."""

    def connection_lost(self, exc: Exception | None) -> None:
        pass


_DETACHED: Final = _Detached()


class KernelEngine:
    """Starts every pair of its process in the kernel where it can."""

    __slots__ = ("loop", "relay")
    name: Final = "kernel"

    def __init__(self, relay: KernelRelay, loop: asyncio.AbstractEventLoop) -> None:
        self.relay = relay
        self.loop = loop

    def start(self, pump: Pump, replayed: int, client_eof: bool) -> Relay:
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
            return pump.start(replayed, client_eof)
        assert ct is not None and bt is not None
        # Our own descriptors of the two sockets: the transports close theirs below.
        try:
            client = socket.socket(fileno=os.dup(ct.get_extra_info("socket").fileno()))
        except OSError:
            relay.fallback("dup")
            return pump.start(replayed, client_eof)
        try:
            backend = socket.socket(fileno=os.dup(bt.get_extra_info("socket").fileno()))
        except OSError:
            client.close()
            relay.fallback("dup")
            return pump.start(replayed, client_eof)
        client.setblocking(False)
        backend.setblocking(False)
        owner = pump.owner
        assert owner is not None
        handed = KernelRelayed(owner, replayed, pump.bytes_down)
        pair = relay.handoff(self.loop, client, backend, b"", handed.done)
        if pair is None:
            client.close()
            backend.close()
            return pump.start(replayed, client_eof)
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
