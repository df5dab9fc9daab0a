"""Read the TLS ClientHello inside a QUIC client's Initial packets, and write the refusal.

A QUIC client protects its Initial packets with keys derived from the Destination
Connection ID it chose (RFC 9001 §5.2; QUIC v2, RFC 9369, has its own salt and labels),
so anyone can remove the protection and read the CRYPTO frames that carry the
ClientHello. This module owns that: long-header parsing, initial keys, header protection,
packet-number decoding, AES-128-GCM, CRYPTO reassembly by offset across packets and
datagrams, and the one datagram sniffer ever writes on a QUIC listener: a server Initial
carrying CONNECTION_CLOSE(CRYPTO_ERROR 0x100 + alert).

It must never do I/O or read a clock (time is a parameter), never alter a datagram (the
data plane relays every one unchanged), and never let anything out of ``feed`` but
``NEED_DATA``, a ``QuicHello``, or a raised ``WireError``: ``DatagramDropped`` when the
datagram itself is unusable (drop it and count; the reader's state is unchanged) or
``HelloRejected`` when the hello is bad (refuse the flow).
"""

from __future__ import annotations

import hashlib
import re
import struct
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

from sniffer.wire.errors import ALERT_DECODE_ERROR, HelloRejected, WireError
from sniffer.wire.sentinels import NEED_DATA, NeedData
from sniffer.wire.tls import ClientHello, parse_client_hello_body

__all__ = [
    "MIN_INITIAL_DATAGRAM",
    "VERSION_1",
    "VERSION_2",
    "DatagramDropped",
    "InitialKeys",
    "InitialReader",
    "PacketInfo",
    "QuicHello",
    "initial_keys",
    "is_long_header",
    "load_crypto",
    "long_header_cids",
    "packet_type",
    "protect",
    "refusal_datagram",
    "version_negotiation",
]

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF

# RFC 9001 §5.2 and RFC 9369 §3.3.1: the initial salts; §5.1 / §3.3.2: the labels.
_SALTS = {
    VERSION_1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    VERSION_2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
_LABELS = {
    VERSION_1: (b"quic key", b"quic iv", b"quic hp"),
    VERSION_2: (b"quicv2 key", b"quicv2 iv", b"quicv2 hp"),
}
# Long-header packet types by version: (Initial, 0-RTT, Handshake, Retry) -> 2-bit code.
INITIAL, ZERO_RTT, HANDSHAKE, RETRY = "initial", "0rtt", "handshake", "retry"
_TYPES = {
    VERSION_1: (INITIAL, ZERO_RTT, HANDSHAKE, RETRY),
    VERSION_2: (RETRY, INITIAL, ZERO_RTT, HANDSHAKE),
}
_TYPE_CODE = {v: {name: code for code, name in enumerate(t)} for v, t in _TYPES.items()}

MIN_INITIAL_DATAGRAM = 1200
"""RFC 9000 §14.1: a server MUST discard an Initial in a datagram smaller than this.
It is also what keeps the refusal we answer with far below 3x what the client sent."""
MAX_CID = 20
"""RFC 9000 §17.2: connection IDs of v1 (and v2) are at most 20 bytes."""
MAX_CRYPTO_PIECES = 64
"""Distinct gaps-and-pieces a hello may arrive in. Chrome's chaos protection cuts a hello
into a handful of frames; 64 is far beyond any client and keeps each insertion cheap
(a hostile client sending 1-byte frames with gaps cannot make reassembly quadratic)."""

_FRAME_PADDING = 0x00
_NOT_PADDING = re.compile(b"[^\x00]")
"""Clients pad Initials to 1,200 bytes with PADDING frames (single zero bytes): a run of
them is skipped in one C-level search, not a loop turn per byte (~1,000 per packet)."""
_FRAME_PING = 0x01
_FRAME_ACK = 0x02
_FRAME_ACK_ECN = 0x03
_FRAME_CRYPTO = 0x06
_FRAME_CLOSE = 0x1C
_HANDSHAKE_CLIENT_HELLO = 1
_CRYPTO_ERROR = 0x100


class DatagramDropped(WireError):
    """The datagram cannot be used (not a client Initial we can read, undecryptable,
    truncated): drop it and count ``reason``; a reader's state is unchanged by it."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason=reason)


def _dropped(what: str, reason: str = "bad_packet") -> DatagramDropped:
    return DatagramDropped(f"unusable QUIC datagram: {what}", reason)


def _bad_hello(what: str, reason: str = "bad_hello") -> HelloRejected:
    return HelloRejected(f"malformed QUIC Initial: {what}", reason=reason, alert=ALERT_DECODE_ERROR)


# -- keys ----------------------------------------------------------------------------------


# HMAC-SHA256 (RFC 2104) spelt out over hashlib: every new flow derives its keys, and
# `hmac.digest` costs ~10 us a call here against ~2 us for two sha256 runs. The pads are
# made by bytes.translate (XOR through a table, in C). Keys are at most 64 bytes here.
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_sha256 = hashlib.sha256


def _hmac_sha256(key: bytes, msg: bytes) -> bytes:
    key = key.ljust(64, b"\x00")
    return _sha256(key.translate(_OPAD) + _sha256(key.translate(_IPAD) + msg).digest()).digest()


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return _hmac_sha256(salt, ikm)


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446 §7.1); one block is
    enough for every length QUIC's initial keys need (at most 32 bytes)."""
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + b"\x00"
    return _hmac_sha256(secret, info + b"\x01")[:length]


if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import CipherContext
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_crypto: Any = None


def load_crypto() -> Any:
    """`cryptography`'s AES-GCM, AES-ECB and InvalidTag, imported once, on first need.

    Importing it costs a process ~7 MiB of RSS: a data-plane process that never opens a
    QUIC listener must not pay that (a QUIC listener calls this when it opens, so no
    datagram waits for the import).
    """
    global _crypto
    if _crypto is None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        _crypto = SimpleNamespace(
            AESGCM=AESGCM, Cipher=Cipher, AES=algorithms.AES, ECB=modes.ECB, InvalidTag=InvalidTag
        )
    return _crypto


class InitialKeys:
    """One direction's Initial packet protection: AEAD key, IV and header-protection key."""

    __slots__ = ("_aead", "_hp", "hp", "iv", "key")

    def __init__(self, key: bytes, iv: bytes, hp: bytes) -> None:
        self.key = key
        self.iv = iv
        self.hp = hp
        crypto = _crypto or load_crypto()
        self._aead: AESGCM = crypto.AESGCM(key)
        # ECB over whole blocks keeps no state between calls: one context serves every
        # mask (making one per packet cost more than the AES itself).
        self._hp: CipherContext = crypto.Cipher(crypto.AES(hp), crypto.ECB()).encryptor()

    def mask(self, sample: bytes | bytearray | memoryview) -> bytes:
        if len(sample) != 16:  # a partial block would stay buffered in the context
            raise ValueError("a header-protection sample is 16 bytes")
        return self._hp.update(bytes(sample))

    def nonce(self, pn: int) -> bytes:
        return (int.from_bytes(self.iv, "big") ^ pn).to_bytes(12, "big")

    def open(self, pn: int, header: bytes, payload: bytes) -> bytes:
        return self._aead.decrypt(self.nonce(pn), payload, header)

    def seal(self, pn: int, header: bytes, payload: bytes) -> bytes:
        return self._aead.encrypt(self.nonce(pn), payload, header)


def initial_keys(version: int, dcid: bytes) -> tuple[InitialKeys, InitialKeys]:
    """(client, server) Initial keys for the client's first Destination Connection ID."""
    return side_keys(version, dcid, b"client in"), side_keys(version, dcid, b"server in")


def side_keys(version: int, dcid: bytes, side: bytes) -> InitialKeys:
    """One side's Initial keys (`side`: b"client in" or b"server in"): the reader needs
    only the client's, the refusal only the server's."""
    initial = _hkdf_extract(_SALTS[version], dcid)
    key_label, iv_label, hp_label = _LABELS[version]
    secret = _hkdf_expand_label(initial, side, 32)
    return InitialKeys(
        _hkdf_expand_label(secret, key_label, 16),
        _hkdf_expand_label(secret, iv_label, 12),
        _hkdf_expand_label(secret, hp_label, 16),
    )


# -- headers -------------------------------------------------------------------------------


def _varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """(value, next position) of the RFC 9000 §16 variable-length integer at `pos`;
    raises IndexError when the buffer ends inside it."""
    first = buf[pos]
    n = 1 << (first >> 6)
    if pos + n > len(buf):
        raise IndexError(pos)
    value = first & 0x3F
    for i in range(1, n):
        value = value << 8 | buf[pos + i]
    return value, pos + n


def _encode_varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return struct.pack(">H", value | 0x4000)
    if value < 0x40000000:
        return struct.pack(">I", value | 0x80000000)
    return struct.pack(">Q", value | 0xC000000000000000)


def is_long_header(data: bytes | bytearray | memoryview) -> bool:
    return bool(data) and data[0] & 0x80 != 0


def packet_type(first: int, version: int) -> str | None:
    """The long-header packet type name (`initial`, `0rtt`, `handshake`, `retry`) of a
    known version, None for an unknown one."""
    names = _TYPES.get(version)
    return None if names is None else names[(first >> 4) & 3]


def long_header_cids(data: bytes | bytearray | memoryview) -> tuple[int, bytes, bytes] | None:
    """(version, DCID, SCID) of the long-header packet at the start of `data`, or None
    when it is not one (short header, truncated). The data plane reads the server's
    SCID from its packets this way: they travel in clear."""
    if len(data) < 7 or not data[0] & 0x80:
        return None
    version = int.from_bytes(data[1:5], "big")
    dlen = data[5]
    if dlen > MAX_CID or len(data) < 7 + dlen:
        return None
    slen = data[6 + dlen]
    if slen > MAX_CID or len(data) < 7 + dlen + slen:
        return None
    return version, bytes(data[6 : 6 + dlen]), bytes(data[7 + dlen : 7 + dlen + slen])


class PacketInfo(NamedTuple):
    """What the client's datagram held besides the hello, for the data plane."""

    version: int
    dcid: bytes
    scid: bytes


class QuicHello(NamedTuple):
    """A complete ClientHello read from a client's Initial packets."""

    hello: ClientHello
    version: int
    dcid: bytes
    """The Destination Connection ID of the client's first Initial (the keys' input)."""
    scid: bytes
    """The client's Source Connection ID: the DCID of any packet sent back to it."""


def _decode_pn(truncated: int, nbits: int, expected: int) -> int:
    """RFC 9000 Appendix A.3."""
    win = 1 << nbits
    hwin = win >> 1
    mask = win - 1
    candidate = (expected & ~mask) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


# -- the reader ----------------------------------------------------------------------------


class InitialReader:
    """The client's Initial packets of one flow, datagram by datagram, to its ClientHello.

    ``feed(datagram, now)`` returns ``NEED_DATA`` (keep the datagram and feed the next),
    the ``QuicHello``, or raises ``DatagramDropped`` (this datagram is unusable; state
    unchanged) or ``HelloRejected`` (the hello is bad, too large or too slow: refuse).
    Keys come from the first Initial's DCID and stay: an Initial with another DCID is
    skipped (only a Retry changes the DCID, and a server sends one only after it has the
    whole hello, when this reader's work is done). Bounded: at most ``max_bytes`` of
    CRYPTO data in at most ``MAX_CRYPTO_PIECES`` pieces, until ``deadline``.
    """

    __slots__ = (
        "_buf",
        "_done",
        "_keys",
        "_largest_pn",
        "_pieces",
        "dcid",
        "deadline",
        "max_bytes",
        "scid",
        "version",
    )

    def __init__(self, max_bytes: int, deadline: float) -> None:
        self.max_bytes = max_bytes
        self.deadline = deadline
        """The hello must be complete by this time (the caller's clock)."""
        self.version = 0
        self.dcid = b""
        self.scid = b""
        self._keys: InitialKeys | None = None
        self._largest_pn = -1
        self._buf = bytearray()
        self._pieces: list[list[int]] = []
        """Sorted, disjoint [start, end) ranges of CRYPTO data received."""
        self._done: QuicHello | None = None

    @property
    def started(self) -> bool:
        """Whether an Initial was read: the flow has a DCID and keys."""
        return self._keys is not None

    def feed(self, datagram: bytes | bytearray | memoryview, now: float) -> QuicHello | NeedData:
        if self._done is not None:
            return self._done  # an outcome stays (as every wire reader's)
        if now > self.deadline:
            raise HelloRejected(
                "QUIC hello not complete in time", reason="hello_timeout", alert=None
            )
        pieces = self._packets(datagram)
        if not pieces:
            return NEED_DATA
        for offset, data in pieces:
            self._add(offset, data)
        return self._hello()

    def _packets(self, datagram: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
        """CRYPTO (offset, data) of every readable Initial in the datagram; nothing is
        kept unless the whole datagram is sound."""
        n = len(datagram)
        pos = 0
        crypto: list[tuple[int, bytes]] = []
        initials = 0
        keys = self._keys
        version, dcid, scid, largest = self.version, self.dcid, self.scid, self._largest_pn
        while pos < n:
            first = datagram[pos]
            if not first & 0x80:
                if first == 0 and not bytes(datagram[pos:]).strip(b"\x00"):
                    break  # zero padding after the last coalesced packet
                if pos == 0 and keys is None:
                    raise _dropped("short header packet from an unknown address", "not_initial")
                break  # a short-header packet takes the rest of the datagram
            try:
                pkt_version = int.from_bytes(datagram[pos + 1 : pos + 5], "big")
                if pos + 5 > n:
                    raise IndexError(pos)
                types = _TYPES.get(pkt_version)
                if types is None:
                    raise _dropped(f"version {pkt_version:#x}", "unsupported_version")
                at = pos + 5
                dlen = datagram[at]
                if dlen > MAX_CID:
                    raise _dropped("connection ID longer than 20")
                pkt_dcid = bytes(datagram[at + 1 : at + 1 + dlen])
                at += 1 + dlen
                slen = datagram[at]
                if slen > MAX_CID:
                    raise _dropped("connection ID longer than 20")
                pkt_scid = bytes(datagram[at + 1 : at + 1 + slen])
                at += 1 + slen
                kind = types[(first >> 4) & 3]
                if kind == RETRY:
                    raise _dropped("a Retry packet from a client")
                if kind == INITIAL:
                    token_len, at = _varint(datagram, at)
                    at += token_len
                length, at = _varint(datagram, at)
            except IndexError:
                raise _dropped("truncated long header") from None
            end = at + length
            if end > n:
                raise _dropped("packet length past the datagram")
            if kind != INITIAL:
                pos = end  # 0-RTT/Handshake: relayed as is, nothing to read in them
                continue
            if pos == 0 and n < MIN_INITIAL_DATAGRAM:
                raise _dropped(f"Initial in a {n}-byte datagram", "short_initial")
            if keys is None:
                if version and pkt_version != version:
                    raise _dropped("version changed")
                if dlen < 8:
                    # RFC 9000 §7.2: a client's first DCID is at least 8 bytes.
                    raise _dropped("initial DCID shorter than 8 bytes")
                version, dcid = pkt_version, pkt_dcid
                keys = side_keys(version, dcid, b"client in")
                scid = pkt_scid
            elif pkt_version != version or pkt_dcid != dcid:
                pos = end  # not this connection's first DCID: not readable with our keys
                continue
            pn, payload = self._unprotect(datagram, pos, at, end, keys, largest)
            largest = max(largest, pn)
            initials += 1
            self._frames(payload, crypto)
            pos = end
        if keys is not None and self._keys is None:
            if not initials:
                raise _dropped("no Initial packet", "not_initial")
            self._keys, self.version, self.dcid, self.scid = keys, version, dcid, scid
        if self._keys is None:
            raise _dropped("no Initial packet", "not_initial")
        self._largest_pn = largest
        return crypto

    @staticmethod
    def _unprotect(
        datagram: bytes | bytearray | memoryview,
        start: int,
        pn_at: int,
        end: int,
        keys: InitialKeys,
        largest: int,
    ) -> tuple[int, bytes]:
        if pn_at + 4 + 16 > end:
            raise _dropped("packet too short for a header-protection sample")
        mask = keys.mask(datagram[pn_at + 4 : pn_at + 20])
        first = datagram[start] ^ (mask[0] & 0x0F)
        pn_len = (first & 3) + 1
        header = bytearray(datagram[start : pn_at + pn_len])
        header[0] = first
        truncated = 0
        for i in range(pn_len):
            b = header[pn_at - start + i] ^ mask[1 + i]
            header[pn_at - start + i] = b
            truncated = truncated << 8 | b
        pn = _decode_pn(truncated, pn_len * 8, largest + 1)
        try:
            payload = keys.open(pn, bytes(header), bytes(datagram[pn_at + pn_len : end]))
        except _crypto.InvalidTag:
            raise _dropped("Initial packet fails authentication", "undecryptable") from None
        return pn, payload

    @staticmethod
    def _frames(payload: bytes, crypto: list[tuple[int, bytes]]) -> None:
        """Collect CRYPTO frames; skip PADDING, PING and ACK; anything else an Initial
        may not carry (RFC 9000 §12.4) is a protocol violation."""
        n = len(payload)
        if n == 0:
            raise _bad_hello("Initial packet without frames")
        pos = 0
        try:
            while pos < n:
                ftype = payload[pos]
                if ftype == _FRAME_PADDING:
                    more = _NOT_PADDING.search(payload, pos)
                    pos = more.start() if more is not None else n
                elif ftype == _FRAME_PING:
                    pos += 1
                elif ftype == _FRAME_CRYPTO:
                    offset, pos = _varint(payload, pos + 1)
                    length, pos = _varint(payload, pos)
                    if pos + length > n:
                        raise _bad_hello("CRYPTO frame past the packet")
                    crypto.append((offset, payload[pos : pos + length]))
                    pos += length
                elif ftype in (_FRAME_ACK, _FRAME_ACK_ECN):
                    _, pos = _varint(payload, pos + 1)  # largest acknowledged
                    _, pos = _varint(payload, pos)  # ack delay
                    ranges, pos = _varint(payload, pos)
                    _, pos = _varint(payload, pos)  # first range
                    if ranges > n:
                        raise _bad_hello("ACK range count")
                    for _ in range(ranges * 2):
                        _, pos = _varint(payload, pos)
                    if ftype == _FRAME_ACK_ECN:
                        for _ in range(3):
                            _, pos = _varint(payload, pos)
                elif ftype == _FRAME_CLOSE:
                    raise HelloRejected(  # nothing to answer: it is gone
                        "the client closed the connection", reason="client_closed"
                    )
                else:
                    raise _bad_hello(f"frame type {ftype:#x} in an Initial packet")
        except IndexError:
            raise _bad_hello("frame truncated") from None
        if pos > n:
            raise _bad_hello("frame truncated")

    def _add(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if not data:
            return
        if end > self.max_bytes:
            raise _bad_hello(f"CRYPTO data past {self.max_bytes} bytes", "hello_too_large")
        buf = self._buf
        pieces = self._pieces
        # Bytes sent twice (retransmissions) must be the same bytes: otherwise sniffer
        # and the server could read two different hellos.
        for start, stop in pieces:
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi and buf[lo:hi] != data[lo - offset : hi - offset]:
                raise _bad_hello("CRYPTO data differs where it overlaps")
        if len(buf) < end:
            buf.extend(bytes(end - len(buf)))
        buf[offset:end] = data
        merged: list[list[int]] = []
        placed = False
        for start, stop in pieces:
            if stop < offset:
                merged.append([start, stop])
            elif start > end:
                if not placed:
                    merged.append([offset, end])
                    placed = True
                merged.append([start, stop])
            else:
                offset, end = min(start, offset), max(stop, end)
        if not placed:
            merged.append([offset, end])
        merged.sort()
        if len(merged) > MAX_CRYPTO_PIECES:
            raise _bad_hello("CRYPTO data in too many pieces", "hello_fragmented")
        self._pieces = merged

    def _hello(self) -> QuicHello | NeedData:
        pieces = self._pieces
        if not pieces or pieces[0][0] != 0:
            return NEED_DATA
        have = pieces[0][1]
        buf = self._buf
        if have < 4:
            return NEED_DATA
        if buf[0] != _HANDSHAKE_CLIENT_HELLO:
            raise _bad_hello("first handshake message is not a ClientHello")
        size = 4 + (buf[1] << 16 | buf[2] << 8 | buf[3])
        if size > self.max_bytes:
            raise _bad_hello(f"ClientHello of {size} bytes", "hello_too_large")
        if have < size:
            return NEED_DATA
        hello = parse_client_hello_body(bytes(buf[:size]), 4, size)
        self._buf = bytearray()
        self._pieces = []
        self._done = QuicHello(hello, self.version, self.dcid, self.scid)
        return self._done


# -- the refusal ---------------------------------------------------------------------------


def refusal_datagram(
    version: int, dcid: bytes, scid: bytes, alert: int, server_cid: bytes, reason: str = ""
) -> bytes:
    """A server Initial carrying CONNECTION_CLOSE(CRYPTO_ERROR 0x100 + `alert`), protected
    with the server Initial keys of the client's first `dcid`, sent to the client's `scid`.

    `server_cid` is the Source Connection ID the edge gives itself (the caller picks it;
    nothing here is random). About 60 bytes: far under 3x the client's 1200.
    """
    keys = side_keys(version, dcid, b"server in")
    phrase = reason.encode("ascii", "replace")[:64]
    frame = (
        bytes((_FRAME_CLOSE,))
        + _encode_varint(_CRYPTO_ERROR + alert)
        + _encode_varint(_FRAME_CRYPTO)
        + _encode_varint(len(phrase))
        + phrase
    )
    frame += bytes(max(0, 20 - len(frame)))  # PADDING: room for the header-protection sample
    pn_len = 1
    first = 0xC0 | (_TYPE_CODE[version][INITIAL] << 4) | (pn_len - 1)
    header = (
        bytes((first,))
        + version.to_bytes(4, "big")
        + bytes((len(scid),))
        + scid
        + bytes((len(server_cid),))
        + server_cid
        + b"\x00"  # token length
        + _encode_varint(pn_len + len(frame) + 16)
        + bytes(pn_len)  # packet number 0
    )
    return protect(keys, header, pn_len, 0, frame)


def version_negotiation(datagram: bytes | bytearray | memoryview, unused: int) -> bytes | None:
    """The Version Negotiation packet (RFC 9000 §17.2.1) answering a client datagram whose
    long header has a version this reader cannot read, listing v1 and v2 so that the
    client retries at once with one of them; None when none is due: not a long header,
    version 0 (itself a Version Negotiation: never answered), a known version, or a
    datagram under 1,200 bytes (§6: a server answers only those, which keeps the answer,
    ~60 bytes at most, far below what was sent). `unused`: the first byte's low 7 bits
    (the caller's random choice, as the RFC asks)."""
    if len(datagram) < MIN_INITIAL_DATAGRAM:
        return None
    cids = long_header_cids(datagram)
    if cids is None:
        return None
    version, dcid, scid = cids
    if version == 0 or version in _TYPES:
        return None
    return (
        bytes((0x80 | (unused & 0x7F),))
        + bytes(4)
        + bytes((len(scid),))
        + scid
        + bytes((len(dcid),))
        + dcid
        + VERSION_1.to_bytes(4, "big")
        + VERSION_2.to_bytes(4, "big")
    )


def protect(keys: InitialKeys, header: bytes, pn_len: int, pn: int, payload: bytes) -> bytes:
    """Seal `payload` under `header` (which ends with the `pn_len`-byte packet number
    `pn`), then apply header protection (RFC 9001 §5.3, §5.4)."""
    pn_at = len(header) - pn_len
    packet = bytearray(header + keys.seal(pn, header, payload))
    mask = keys.mask(packet[pn_at + 4 : pn_at + 20])
    packet[0] ^= mask[0] & (0x0F if packet[0] & 0x80 else 0x1F)
    for i in range(pn_len):
        packet[pn_at + i] ^= mask[1 + i]
    return bytes(packet)
