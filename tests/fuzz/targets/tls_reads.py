"""The ClientHello reader across reads: any split of the stream, the same outcome.

Input: 1 byte choosing the cap, 4 bytes of read sizes, then the stream. Contract: every
feed is NEED_DATA until one outcome (a hello, NOT_TLS, or `HelloRejected` with a
documented reason); the outcome is the one the whole stream gets in one read; it stays
(returned or raised again); the bytes looked at (`consumed`) are the hello on the wire.
"""

from __future__ import annotations

from sniffer.wire.errors import HelloRejected
from sniffer.wire.sentinels import NEED_DATA
from sniffer.wire.tls import ClientHello, ClientHelloReader
from tests.fuzz.contract import Target, chunks, pick, split_plan
from tests.fuzz.targets.tls_hello import check_hello, check_refusal

CAPS = (64, 100, 517, 4096, 16384, 65536)


def outcome(reader: ClientHelloReader, reads: list[bytes]) -> tuple[object, int]:
    """(the outcome, the number of reads it took), checking stickiness on the way."""
    result: object = NEED_DATA
    for n, read in enumerate(reads, 1):
        try:
            result = reader.feed(read)
        except HelloRejected as exc:
            check_refusal(exc)
            try:
                reader.feed(b"\x16")
            except HelloRejected as again:
                assert again.reason == exc.reason
            else:
                raise AssertionError("a refusal did not stay") from None
            return ("refused", exc.reason, exc.alert), n
        if result is not NEED_DATA:
            assert reader.feed(b"\x16\x03\x01") is result, "an outcome did not stay"
            return result, n
    return result, len(reads)


def check(data: bytes) -> None:
    options, sizes, stream = split_plan(data, 5)
    cap = pick(CAPS, options[0])
    reads = list(chunks(stream, sizes))
    split = ClientHelloReader(cap)
    got, used = outcome(split, reads)
    whole = ClientHelloReader(cap)
    expected, _ = outcome(whole, [stream] if stream else [])
    assert got == expected, (got, expected)
    if type(got) is ClientHello:
        check_hello(got)
        assert split.consumed == whole.consumed <= len(stream)
        # The hello ended inside the last read it took, not in an earlier one.
        assert split.consumed > sum(map(len, reads[: used - 1]))


TARGET = Target("tls_reads", check, max_len=4096)
