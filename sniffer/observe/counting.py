"""The one way sniffer counts by key into a plain dict.

A plain `dict[K, int]` pickles small, merges by addition and costs one probe per bump,
which is why tallies are not `collections.Counter`s. This module must not import
anything (every layer may use it).
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["count"]

K = TypeVar("K")


def count(tally: dict[K, int], key: K, n: int = 1) -> None:
    """Add `n` to `tally[key]` (0 when absent)."""
    tally[key] = tally.get(key, 0) + n
