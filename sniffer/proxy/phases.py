"""The phases of a client connection and the moves between them, in one place.

This module owns the `Phase` enum and `TRANSITIONS`, the only moves a `ClientConnection`
makes (as h11's `_state.py` keeps its transition tables apart from the code that drives
them). It must never hold per-connection state or do I/O.

    SNIFFING --(name routed, limits admit)--> DIALING --(a backend answers)--> RELAYING
        |                                        |                                |
        +--(refused: answer, linger)--> CLOSING <-+ (every endpoint failed)       |
        |                                 |                                       |
        +---------------------------------+---(closed, reset, aborted)--> CLOSED <+

A connection refused at accept (`overloaded`) goes straight from SNIFFING to CLOSED.
The phases are ordered: `phase >= CLOSING` means "no longer serving".
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["CLOSED", "CLOSING", "DIALING", "RELAYING", "SNIFFING", "TRANSITIONS", "Phase"]


class Phase(enum.IntEnum):
    SNIFFING = 0
    """Reading the client's first bytes (PROXY header, ClientHello or request head)."""
    DIALING = 1
    """Routed and admitted; connecting to the backend's endpoints in turn."""
    RELAYING = 2
    """Copying bytes both ways until either side closes."""
    CLOSING = 3
    """Refused: the answer is written and the client gets a moment to read it."""
    CLOSED = 4
    """Done: counted, logged, every resource released."""


# Module-level names: a global load per test on the hot path, not an attribute lookup.
SNIFFING: Final = Phase.SNIFFING
DIALING: Final = Phase.DIALING
RELAYING: Final = Phase.RELAYING
CLOSING: Final = Phase.CLOSING
CLOSED: Final = Phase.CLOSED

TRANSITIONS: Final[dict[Phase, frozenset[Phase]]] = {
    SNIFFING: frozenset({DIALING, CLOSING, CLOSED}),
    DIALING: frozenset({RELAYING, CLOSING, CLOSED}),
    RELAYING: frozenset({CLOSED}),
    CLOSING: frozenset({CLOSED}),
    CLOSED: frozenset(),
}
"""Phase -> the phases a connection may move to from it."""
