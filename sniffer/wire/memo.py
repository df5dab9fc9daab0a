"""Bounded memos of parse results keyed by the bytes a client sent.

The same few names and lists arrive on nearly every connection, so the parsers keep
what they decoded by its exact encoding and a repeat costs one dict hit. A client
chooses those bytes, though: a stream of made-up names (a scanner, or the unknown
names every edge sees) must not fill the memos with entries nobody asks for again.
A key is therefore admitted on its second sighting within the last `SIGHTED_MAX`
first sightings (the "doorkeeper" of TinyLFU): names seen once only pass through a
small set that is cleared when full, and a memo holds only what repeats. Every memo
is also bounded in entries (cleared when full) and in key size. This module only
keeps values; it must never decide what they are.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["SIGHTED_MAX", "remember"]

_T = TypeVar("_T")

SIGHTED_MAX = 1024
"""First sightings remembered (keys of every memo together): a repeat must come
within this many distinct misses to be memoised."""
_sighted: set[bytes] = set()


def remember(memo: dict[bytes, _T], key: bytes, value: _T, max_entries: int, max_key: int) -> _T:
    """Memoise `value` under `key` if `key` was seen before; return `value` either way."""
    if len(key) <= max_key:
        if key in _sighted:
            _sighted.discard(key)
            if len(memo) >= max_entries:
                memo.clear()
            memo[key] = value
        else:
            if len(_sighted) >= SIGHTED_MAX:
                _sighted.clear()
            _sighted.add(key)
    return value
