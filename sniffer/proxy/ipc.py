"""The protocol between the control process and its data-plane worker processes.

This module owns the messages (one frozen dataclass per kind, as h11's `_events.py`)
and their framing on the socketpair: a 4-byte length prefix and a pickle. Both ends are
halves of one program started together, never a network peer, which is what makes
pickle acceptable here; frames over `MAX_FRAME` are refused outright. It must never
decide what to do with a message (the supervisor and the worker do).

    control -> worker: Configure (first), InstallTable | InstallDelta, Drain
    worker -> control: Stats (every STATS_INTERVAL), Installed, Resync
"""

from __future__ import annotations

import asyncio
import gc
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sniffer.observe.stats import Snapshot
from sniffer.proxy.settings import WorkerSettings
from sniffer.routing.table import RouteTable, TableDelta

__all__ = [
    "MAX_FRAME",
    "STATS_INTERVAL",
    "Configure",
    "Drain",
    "InstallDelta",
    "InstallTable",
    "Installed",
    "Message",
    "Resync",
    "Stats",
    "encode",
    "receive",
    "send",
    "without_gc",
]

_HEADER = struct.Struct("!I")
MAX_FRAME = 512 * 1024 * 1024
"""A table for thousands of tenants pickles to a few MB; refuse absurd frames outright."""
_INLINE_FRAME = 256 * 1024
"""Frames up to this size (a table of a few hundred routes) are decoded inline."""
STATS_INTERVAL = 1.0
"""Seconds between a worker's stats snapshots (the staleness bound of /metrics)."""


# -- control -> worker -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Configure:
    """The worker's settings: always the first message a worker receives."""

    settings: WorkerSettings


@dataclass(frozen=True, slots=True)
class InstallTable:
    """Serve this table (whole): a new worker's first, or after a `Resync`."""

    table: RouteTable


@dataclass(frozen=True, slots=True)
class InstallDelta:
    """Serve the table this delta makes from the one the worker was sent last."""

    delta: TableDelta


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop accepting, let open connections finish for `grace` seconds, then exit."""

    grace: float


# -- worker -> control -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stats:
    """The worker's counters, gauges and histograms now."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class Installed:
    """The worker listens with table `version`; listeners it could not open, by name."""

    version: int
    listen_errors: dict[str, str]


@dataclass(frozen=True, slots=True)
class Resync:
    """The worker could not apply a delta (out of step): send the whole table."""

    reason: str


Message = Configure | InstallTable | InstallDelta | Drain | Stats | Installed | Resync


_T = TypeVar("_T")


def without_gc(fn: Callable[..., _T], *args: Any) -> _T:
    """Run `fn` (building a table: many objects, no garbage cycles) with the cyclic
    collector off, so that no collection walks the half-built table meanwhile; the data
    plane freezes it once installed."""
    was = gc.isenabled()
    gc.disable()
    try:
        return fn(*args)
    finally:
        if was:
            gc.enable()


def encode(message: Message) -> bytes:
    """One frame: a length prefix and the pickle (encode once, send to every worker)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def send(writer: asyncio.StreamWriter, message: Message | bytes) -> None:
    writer.write(message if isinstance(message, bytes) else encode(message))
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Message:
    (n,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    data = await reader.readexactly(n)
    if n > _INLINE_FRAME:
        # A large table takes tens of milliseconds to unpickle and index; in a thread the
        # GIL's switch interval lets the event loop keep relaying meanwhile instead of
        # stalling every connection of this worker for the whole rebuild.
        message: Message = await asyncio.get_running_loop().run_in_executor(
            None, without_gc, pickle.loads, data
        )
    else:
        message = pickle.loads(data)
    return message
