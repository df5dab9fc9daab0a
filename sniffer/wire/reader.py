"""The outcome rule every wire reader shares: once reached, an outcome stays.

A reader is fed the stream's first bytes chunk by chunk. It returns ``NEED_DATA`` until
it reaches an outcome, a result or a raised ``WireError``; from then on every ``feed``
returns that result (or raises that error) again, without looking at its argument, and
the bytes it buffered are let go. Subclasses implement ``_step`` (the next chunk, never
empty, before any outcome) and ``_release`` (drop buffers).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from sniffer.wire.errors import WireError
from sniffer.wire.sentinels import NEED_DATA, NeedData

R = TypeVar("R")


class StickyReader(Generic[R]):
    __slots__ = ("_error", "_result")

    def __init__(self) -> None:
        self._result: R | None = None
        self._error: WireError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> R | NeedData:
        """Take the next bytes of the stream; see the class docstring for the outcomes."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error.with_traceback(None)
        if not data:
            return NEED_DATA
        try:
            result = self._step(data)
        except WireError as exc:
            self._error = exc
            self._release()
            raise
        if result is not NEED_DATA:
            self._result = result
            self._release()
        return result

    def _step(self, data: bytes | bytearray | memoryview) -> R | NeedData:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError
