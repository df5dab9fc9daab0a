"""What every fuzz target shares: the documented outcomes and the read-boundary plan.

A target's input is ``control + stream``: the first bytes choose the listener's options
and the read sizes, so the fuzzer steers the boundaries as well as the bytes. This module
must never import atheris: the seed replay in the default test run uses it without.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).with_name("corpus")

# Every `reason` a wire refusal may carry (README "What happens to bad input").
_NAME_PROBLEMS = (
    "empty",
    "empty_label",
    "label_too_long",
    "name_too_long",
    "control_char",
    "non_ascii",
    "bad_char",
    "ip_literal",
    "bad_wildcard",
)
TLS_REASONS = frozenset(
    {"bad_record", "bad_hello", "hello_too_large", "sni_multiple", "sni_empty"}
    | {f"sni_{p}" for p in _NAME_PROBLEMS}
)
HTTP_REASONS = frozenset({"bad_http", "http_head_too_large"})
SNIFF_REASONS = TLS_REASONS | HTTP_REASONS | {"not_tls", "not_http", "bad_proxy_header"}
TLS_ALERTS = frozenset({50, 112})  # decode_error, unrecognized_name
HTTP_STATUSES = frozenset({400, 431, 505})


@dataclass(frozen=True)
class Target:
    """One fuzz target: `check(data)` returns, or raises AssertionError on a broken contract.

    `max_len` bounds the inputs libFuzzer makes (larger costs speed, not coverage).
    """

    name: str
    check: Callable[[bytes], None]
    max_len: int = 4096

    @property
    def seeds(self) -> Path:
        return CORPUS / self.name


MAX_READS = 64
"""Reads after which the rest comes in one: bounds the cost of 1-byte reads of a long
input, while every header (record, handshake, PROXY) is still cut at every byte."""


def chunks(stream: bytes, sizes: bytes) -> Iterator[bytes]:
    """`stream` cut into reads whose sizes cycle through `sizes` (0: all the rest)."""
    pos = 0
    i = 0
    while pos < len(stream):
        size = sizes[i % len(sizes)] if sizes and i < MAX_READS else 0
        i += 1
        end = len(stream) if size == 0 else pos + size
        yield stream[pos:end]
        pos = end


def split_plan(data: bytes, control: int) -> tuple[bytes, bytes, bytes]:
    """(options, read sizes, stream): the first byte, the next `control - 1`, the rest."""
    head = data[:control].ljust(control, b"\0")
    return head[:1], head[1:], data[control:]


def pick(options: tuple[int, ...], byte: int) -> int:
    return options[byte % len(options)]
