"""The QUIC Initial reader, datagram by datagram: raw datagrams and sealed Initials.

Random bytes almost never pass AEAD, so most inputs are sealed here (with the client
Initial keys of a fixed DCID, computed once) and the fuzzer steers what is inside.
Input: 1 byte of options, 4 bytes of sizes, then the stream. Options, low 2 bits:
- 0 raw: the stream cut into datagrams by the sizes, fed as they are;
- 1 frames: the stream cut into packet payloads (frames, as the fuzzer writes them),
  each sealed as an Initial; bit 2 coalesces two packets per datagram;
- 2, 3 crypto: the stream is the CRYPTO data (a hello, or not), sent whole (one frame,
  one packet, one datagram) and split (one frame per piece, PING/PADDING between, bit 2:
  the pieces in reverse order, bit 3: two frames per packet, bit 4: every piece sent
  twice, bit 5: a corrupted copy of each datagram before it).
Contract: every feed is NEED_DATA, a `QuicHello`, `DatagramDropped` or `HelloRejected`
with a documented reason; a dropped datagram leaves the reader exactly as it was; an
outcome stays; and the split hello reads as the whole one (the same hello or the same
refusal; only "too many pieces" may stop a split one early).

Seeds (`corpus/quic_initial/`, written once, not by make_seeds.py): real aioquic first
datagrams and hellos (post-quantum over two datagrams included) in each mode, and the
regression input of the one finding (a dropped first datagram left its SCID behind).
"""

from __future__ import annotations

from sniffer.wire.errors import HelloRejected
from sniffer.wire.quic import (
    MAX_CRYPTO_PIECES,
    DatagramDropped,
    InitialReader,
    QuicHello,
    protect,
    side_keys,
)
from sniffer.wire.sentinels import NEED_DATA
from tests.fuzz.contract import TLS_REASONS, Target, chunks, split_plan
from tests.fuzz.targets.tls_hello import check_hello

DROP_REASONS = frozenset(
    {"bad_packet", "not_initial", "unsupported_version", "short_initial", "undecryptable"}
)
REJECT_REASONS = TLS_REASONS | {"hello_fragmented", "client_closed"}
MAX_BYTES = 16384
"""Above any input (max_len): `hello_too_large` then depends on the hello alone, not on
how much of the stream a split reader had seen when it stopped."""

V1 = 0x00000001
DCID = bytes.fromhex("8394c8f03e515708")
SCID = b"\x11" * 8
KEYS = side_keys(V1, DCID, b"client in")
HEADER = bytes((0xC1,)) + V1.to_bytes(4, "big") + bytes((8,)) + DCID + bytes((8,)) + SCID + b"\0"


def varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    return (value | 0x80000000).to_bytes(4, "big")


def crypto(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def sealed(payload: bytes, pn: int, pad_to: int = 0) -> bytes:
    """One client Initial (2-byte packet number) carrying `payload`, PADDING to `pad_to`."""
    base = len(HEADER) + 2 + 2 + 16
    payload += bytes(max(2, pad_to - base - len(payload)))  # >= 2: room for the sample
    header = HEADER + (2 + len(payload) + 16 | 0x4000).to_bytes(2, "big") + pn.to_bytes(2, "big")
    return protect(KEYS, header, 2, pn, payload)


def state(reader: InitialReader) -> tuple[object, ...]:
    return (
        reader.version,
        reader.dcid,
        reader.scid,
        reader._keys,
        reader._largest_pn,
        bytes(reader._buf),
        [list(p) for p in reader._pieces],
        reader._done,
    )


def feed(reader: InitialReader, datagram: bytes) -> object:
    """One datagram's outcome: NEED_DATA, a hello, ("dropped", reason) or ("refused",
    reason, alert), each checked against the contract."""
    before = state(reader)
    try:
        result = reader.feed(datagram, 0.0)
    except DatagramDropped as exc:
        assert exc.reason in DROP_REASONS, exc.reason
        assert state(reader) == before, "a dropped datagram changed the reader"
        return ("dropped", exc.reason)
    except HelloRejected as exc:
        assert exc.reason in REJECT_REASONS, exc.reason
        return ("refused", exc.reason, exc.alert)
    if result is not NEED_DATA:
        assert type(result) is QuicHello
        check_hello(result.hello)
        assert (result.version, result.dcid) == (reader.version, reader.dcid)
        assert reader.feed(datagram, 0.0) is result, "an outcome did not stay"
    return result


def run(datagrams: list[bytes], garbage: bool = False) -> object:
    """The reader's outcome over `datagrams` (drops skipped), a refusal ending it."""
    reader = InitialReader(MAX_BYTES, 1.0)
    outcome: object = NEED_DATA
    for datagram in datagrams:
        if garbage and reader.started:
            bad = bytearray(datagram)
            bad[len(datagram.rstrip(b"\0")) - 1] ^= 0x55  # in the last packet: all must go
            assert feed(reader, bytes(bad)) == ("dropped", "undecryptable")
        got = feed(reader, datagram)
        if isinstance(got, tuple) and got[0] == "dropped":
            continue
        outcome = got
        if outcome is not NEED_DATA:
            return outcome
    return outcome


def check(data: bytes) -> None:
    options, sizes, stream = split_plan(data, 5)
    mode = options[0] & 3
    if mode == 0:
        run(list(chunks(stream, sizes)))
        return
    if mode == 1:
        packets = [sealed(p, pn) for pn, p in enumerate(chunks(stream, sizes))]
        if options[0] & 4:
            packets = [b"".join(packets[i : i + 2]) for i in range(0, len(packets), 2)]
        run([p + bytes(max(0, 1200 - len(p))) for p in packets])
        return
    whole = run([sealed(crypto(0, stream), 0, 1200)]) if stream else NEED_DATA
    pieces: list[tuple[int, bytes]] = []
    offset = 0
    for piece in chunks(stream, sizes):
        pieces.append((offset, piece))
        offset += len(piece)
    if options[0] & 4:
        pieces.reverse()
    if options[0] & 16:
        pieces = [p for p in pieces for _ in (0, 1)]
    frames = [b"\x01" + crypto(o, p) + b"\x00" for o, p in pieces]
    per = 2 if options[0] & 8 else 1
    payloads = [b"".join(frames[i : i + per]) for i in range(0, len(frames), per)]
    # Zero bytes after the packet make the datagram 1,200 (cheaper than sealing them).
    datagrams = [sealed(p, pn).ljust(1200, b"\0") for pn, p in enumerate(payloads)]
    split = run(datagrams, bool(options[0] & 32))
    if split != whole:
        fragmented = ("refused", "hello_fragmented", split[2] if isinstance(split, tuple) else 0)
        assert split == fragmented and len(pieces) > MAX_CRYPTO_PIECES // 2, (split, whole)


TARGET = Target("quic_initial", check, max_len=4096)
