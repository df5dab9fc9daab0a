"""The relay: what moves a routed pair's bytes once sniffing, routing and dialing are done.

`ClientConnection` dials the backend with a `Pump` as the backend socket's protocol,
writes our PROXY header and the replay, then hands the pair to the plane's
`RelayEngine` and from then on holds only the `Relay` it got back: the byte counts (read
by the stats, the idle sweep and the access log), `close()` and `abort()`. The engine
closes both sides itself when the pair ends, then reports it once, through
`RelayOwner.relay_closed(outcome)`.

Two engines implement this one interface (as HAProxy's `mux`/`xprt` split, see STYLE.md
"One interface, two engines"): `sniffer.proxy.relay.userspace` (one loop wake-up per
chunk each way) and a kernel engine (BPF sockmap) that takes a pump over, at once or
once the pair has lived a while, and falls back to it. The choice is made once per
process. This package never routes, dials, counts per tenant or writes a log line; it
knows its owner only through `RelayOwner`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from sniffer.proxy.relay.userspace import Pump

__all__ = [
    "BACKEND_RESET",
    "CLIENT_RESET",
    "CLOSED",
    "Relay",
    "RelayEngine",
    "RelayOwner",
]

# The outcomes an engine reports (the access log's `outcome`).
CLOSED: Final = "closed"
"""Both sides finished (FIN each way, or one side closed while the other had ended)."""
CLIENT_RESET: Final = "client_reset"
"""The client's socket failed (RST): passed on to the backend as an RST."""
BACKEND_RESET: Final = "backend_reset"
"""The backend's socket failed (RST): passed on to the client as an RST."""


class RelayOwner(Protocol):
    """What an engine may call on (and read of) the connection that handed it a pair."""

    relay: Relay | None
    """The pair's relay, as `RelayEngine.start` returned it; an engine that moves a pair
    to another relay (user space -> kernel) puts the new one here."""
    routed_at: float
    """When the pair was dialled (`time.monotonic()`): its age, for a move."""

    def relay_closed(self, outcome: str) -> None:
        """The pair has ended (`CLOSED`, `CLIENT_RESET`, `BACKEND_RESET`) and the engine
        has closed (or reset) both sides: called once, never after `Relay.abort()`."""


class Relay(Protocol):
    """One pair being relayed, whatever engine moves its bytes."""

    @property
    def engine(self) -> str:
        """The engine's name (`userspace`, `kernel`): for the metric and the log."""

    @property
    def bytes_up(self) -> int:
        """Bytes delivered client -> backend so far, the replay included."""

    @property
    def bytes_down(self) -> int:
        """Bytes delivered backend -> client so far."""

    def close(self) -> None:
        """Close both sides, letting written bytes go out (idempotent)."""

    def abort(self) -> None:
        """Drop both sides now (idle timeout, drain): no `relay_closed` follows."""


class RelayEngine(Protocol):
    """Picked once per process; starts every pair of that process."""

    @property
    def name(self) -> str: ...

    def start(self, pump: Pump, replayed: int, client_eof: bool) -> Relay:
        """Take over a dialled pair whose PROXY header and `replayed` bytes of replay are
        written to the backend. `client_eof`: the client half-closed before this (its FIN
        is to be passed on after the replay). The pump is the backend socket's protocol
        since the dial; an engine that cannot take a pair runs it in the pump."""
