"""The relay's tests run on both event loops sniffer runs on: uvloop in production,
asyncio's own where uvloop is missing (their transports differ in the details a relay
touches: `set_protocol`, write-buffer callbacks, half-close)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
