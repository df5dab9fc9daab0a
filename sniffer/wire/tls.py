"""Read the TLS ClientHello at the start of a connection: SNI, ALPN and a few log facts.

This module owns the TLS record layer and ClientHello decoding up to the end of the
ClientHello handshake message, and nothing past it. It must never do I/O (no asyncio,
socket or ssl), never alter or consume bytes on the caller's behalf (the caller keeps
every byte it fed and replays them to the backend), and never let anything but its four
outcomes out of ``feed``: a ``ClientHello``, ``NEED_DATA``, ``NOT_TLS`` or a raised
``HelloRejected``.

Every structural defect (record layer, lengths, message type, duplicated extensions, two
host_names) is answered with decode_error (50): one documented alert for "malformed",
whatever RFC nuance might also allow. A well-formed hello whose name is unusable (an IP
literal, NUL, non-ASCII...) gets unrecognized_name (112), like an unknown name.
"""

from __future__ import annotations

import struct
from itertools import filterfalse
from typing import NamedTuple

from sniffer.wire.errors import (
    ALERT_DECODE_ERROR,
    ALERT_UNRECOGNIZED_NAME,
    HelloRejected,
    InvalidHostname,
)
from sniffer.wire.hostname import normalize_hostname_bytes
from sniffer.wire.memo import remember
from sniffer.wire.reader import StickyReader
from sniffer.wire.sentinels import NEED_DATA, NOT_TLS, NeedData, NotTLS

__all__ = [
    "DEFAULT_MAX_HELLO_BYTES",
    "MAX_HELLO_BYTES_LIMIT",
    "MIN_HELLO_BYTES_LIMIT",
    "NEED_DATA",
    "NOT_TLS",
    "ClientHello",
    "ClientHelloReader",
    "NeedData",
    "NotTLS",
    "parse_client_hello_body",
    "parse_whole_hello",
]

# 16 KiB, as Envoy's tls_inspector: a post-quantum hello is 1.2-2 KB, padded ones a
# little more. The cap bounds what one connection can make the proxy buffer before it
# has even picked a backend, which is what an attacker would aim at.
DEFAULT_MAX_HELLO_BYTES = 16384
# A handshake message over 64 KiB is not a ClientHello any client sends.
MAX_HELLO_BYTES_LIMIT = 65536
MIN_HELLO_BYTES_LIMIT = 64
"""The smallest cap a reader takes: a record header and a handshake header fit in it."""

_CONTENT_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_MAX_PLAINTEXT = 1 << 14  # RFC 8446 §5.1: TLSPlaintext.length MUST NOT exceed 2^14

_EXT_SERVER_NAME = 0
_EXT_SIGNATURE_ALGORITHMS = 13
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_EXT_ECH = 0xFE0D  # draft-ietf-tls-esni; real or GREASE ECH look the same on the wire
_NAME_TYPE_HOST_NAME = 0


class ClientHello(NamedTuple):
    """What sniffer learns from a ClientHello. Names follow RFC 8446 / RFC 6066.

    A named tuple rather than a dataclass: one is made per connection, and a tuple is
    made in a third of the time of a frozen dataclass.
    """

    sni: str | None
    """server_name host_name, normalised (lower case, no trailing dot); None if absent."""
    alpn: tuple[str, ...] = ()
    """application_layer_protocol_negotiation protocol names, in client order (latin-1)."""
    legacy_version: int = 0x0303
    """ClientHello.legacy_version (0x0303 for TLS 1.2 and 1.3 clients)."""
    supported_versions: tuple[int, ...] = ()
    """supported_versions extension without GREASE values; empty if absent (TLS <= 1.2)."""
    has_ech: bool = False
    """An encrypted_client_hello extension is present (real or GREASE; SNI is the outer)."""
    cipher_suites: bytes = b""
    """The cipher_suites list as sent (2 bytes each, GREASE included): JA4's input."""
    extensions: tuple[int, ...] = ()
    """Extension types in the order sent (GREASE included): JA4's input."""
    signature_algorithms: bytes = b""
    """The signature_algorithms extension body as sent, undecoded: JA4's input."""

    @property
    def offers_tls13(self) -> bool:
        return 0x0304 in self.supported_versions


_new_tuple = tuple.__new__


def _decode_error(what: str) -> HelloRejected:
    return HelloRejected(
        f"malformed ClientHello: {what}", reason="bad_hello", alert=ALERT_DECODE_ERROR
    )


# RFC 8701 GREASE values, 0x0A0A, 0x1A1A, ..., 0xFAFA: clients sprinkle them in every
# list precisely so that parsers like this one learn to ignore them.
_GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))

_unpack_u16_pair = struct.Struct(">HH").unpack_from


# Decoded ALPN and supported_versions lists by their exact encoding: real clients send
# a handful of distinct ones, so nearly every connection costs one dict hit instead of a
# parse. Bounded in entries and key size, and a key is kept only once it repeats
# (`sniffer.wire.memo`), so hostile hellos cannot grow it.
_MEMO_MAX_ENTRIES = 512
_MEMO_MAX_KEY = 64
_alpn_memo: dict[bytes, tuple[str, ...]] = {}
# Server names by their server_name extension body: a name repeats on every connection
# to it. More entries than the others (an edge serves thousands of names), and keys up to
# the longest name, but still a bound; a flood of made-up names (each sent once) never
# enters it.
_SNI_MEMO_MAX_ENTRIES = 8192
_SNI_MEMO_MAX_KEY = 5 + 253
_sni_memo: dict[bytes, str] = {}
_versions_memo: dict[bytes, tuple[int, ...]] = {}


def _parse_server_name(buf: bytes | bytearray, pos: int, end: int) -> str | None:
    # RFC 6066 §3: ServerNameList server_name_list<1..2^16-1>, each entry a NameType byte
    # then (for host_name) HostName<1..2^16-1>. Unknown name types are skipped as Go's
    # crypto/tls does; none has ever been defined, so no client sends them.
    size = end - pos
    if (
        size > 5
        and buf[pos + 2] == _NAME_TYPE_HOST_NAME
        and (buf[pos] << 8 | buf[pos + 1]) == size - 2
        and (buf[pos + 3] << 8 | buf[pos + 4]) == size - 5
    ):
        # What every client sends: a list of exactly one non-empty host_name.
        part = buf[pos + 5 : end]
        host: bytes | None = part if type(part) is bytes else bytes(part)
    else:
        host = _parse_server_name_list(buf, pos, end)
    if host is None:
        return None
    try:
        name = normalize_hostname_bytes(host)
    except InvalidHostname as exc:
        raise HelloRejected(
            f"ClientHello SNI refused: {exc.message}",
            reason=f"sni_{exc.problem}",
            alert=ALERT_UNRECOGNIZED_NAME,
        ) from None
    return remember(_sni_memo, bytes(buf[pos:end]), name, _SNI_MEMO_MAX_ENTRIES, _SNI_MEMO_MAX_KEY)


def _parse_server_name_list(buf: bytes | bytearray, pos: int, end: int) -> bytes | None:
    if end - pos < 3 or (buf[pos] << 8 | buf[pos + 1]) != end - pos - 2:
        raise _decode_error("server_name list length")
    pos += 2
    host: bytes | None = None
    while pos < end:
        if end - pos < 3:
            raise _decode_error("server_name entry truncated")
        name_type = buf[pos]
        name_end = pos + 3 + (buf[pos + 1] << 8 | buf[pos + 2])
        if name_end > end:
            raise _decode_error("server_name entry length")
        if name_type == _NAME_TYPE_HOST_NAME:
            if host is not None:
                # RFC 6066 §3: MUST NOT contain more than one name of the same name_type.
                # Two names could mean one thing to sniffer and another to the backend.
                raise HelloRejected(
                    "ClientHello server_name has more than one host_name",
                    reason="sni_multiple",
                    alert=ALERT_DECODE_ERROR,
                )
            if name_end == pos + 3:
                raise HelloRejected(
                    "ClientHello server_name host_name is empty",
                    reason="sni_empty",
                    alert=ALERT_DECODE_ERROR,
                )
            host = bytes(buf[pos + 3 : name_end])
        pos = name_end
    return host


def _parse_alpn(buf: bytes | bytearray, pos: int, end: int) -> tuple[str, ...]:
    # RFC 7301 §3.1: ProtocolName protocol_name_list<2..2^16-1>, names <1..2^8-1>.
    raw = bytes(buf[pos:end])
    known = _alpn_memo.get(raw)
    if known is not None:
        return known
    if end - pos < 4 or (buf[pos] << 8 | buf[pos + 1]) != end - pos - 2:
        raise _decode_error("ALPN list length")
    pos += 2
    names: list[str] = []
    while pos < end:
        name_end = pos + 1 + buf[pos]
        if name_end == pos + 1 or name_end > end:
            raise _decode_error("ALPN protocol name length")
        names.append(str(buf[pos + 1 : name_end], "latin-1"))
        pos = name_end
    return remember(_alpn_memo, raw, tuple(names), _MEMO_MAX_ENTRIES, _MEMO_MAX_KEY)


def _parse_supported_versions(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, ...]:
    # RFC 8446 §4.2.1: ProtocolVersion versions<2..254> in a ClientHello.
    raw = bytes(buf[pos:end])
    known = _versions_memo.get(raw)
    if known is not None:
        return known
    length = end - pos - 1
    if length < 2 or length & 1 or buf[pos] != length:
        raise _decode_error("supported_versions length")
    versions = struct.unpack_from(f">{length >> 1}H", buf, pos + 1)
    return remember(
        _versions_memo,
        raw,
        tuple(filterfalse(_GREASE.__contains__, versions)),
        _MEMO_MAX_ENTRIES,
        _MEMO_MAX_KEY,
    )


def parse_client_hello_body(buf: bytes | bytearray, pos: int, end: int) -> ClientHello:
    """Decode the ClientHello body in ``buf[pos:end]`` (after the 4-byte handshake header).

    Walks the structure by offsets: nothing is copied but the few fields it returns.
    Raises ``HelloRejected`` (alert decode_error unless said otherwise) when malformed.
    """
    # legacy_version(2) random(32) legacy_session_id<0..32>
    if end - pos < 35:
        raise _decode_error("truncated before legacy_session_id")
    legacy_version = buf[pos] << 8 | buf[pos + 1]
    pos += 34
    session_id_len = buf[pos]
    if session_id_len > 32:
        raise _decode_error("legacy_session_id longer than 32")
    pos += 1 + session_id_len
    # cipher_suites<2..2^16-2>
    if end - pos < 2:
        raise _decode_error("truncated before cipher_suites")
    suites_len = buf[pos] << 8 | buf[pos + 1]
    if suites_len < 2 or suites_len & 1:
        raise _decode_error("cipher_suites length")
    # Kept as sent (a slice, no decoding) for the JA4 fingerprint, computed later if at all.
    # A bytes buffer (the common whole-hello read) slices into bytes, hashable memo keys,
    # at no more than the slice's cost; the reassembling reader's bytearray is copied.
    whole = buf if type(buf) is bytes else None
    start = pos + 2
    pos = start + suites_len
    suites = whole[start:pos] if whole is not None else bytes(buf[start:pos])
    # legacy_compression_methods<1..2^8-1>
    if end - pos < 1:
        raise _decode_error("truncated before legacy_compression_methods")
    methods_len = buf[pos]
    if methods_len < 1:
        raise _decode_error("empty legacy_compression_methods")
    pos += 1 + methods_len
    if pos == end:
        # No extensions block at all: a pre-TLS 1.2 style hello, legal, without SNI.
        return ClientHello(None, (), legacy_version, (), False, suites)
    if end - pos < 2 or (buf[pos] << 8 | buf[pos + 1]) != end - pos - 2:
        raise _decode_error("extensions length")
    pos += 2

    # First pass: extension headers only, type -> offset. A key_share with a 1216-byte
    # ML-KEM share, padding and GREASE are skipped by length. Positions only grow, so
    # an extension overrunning the block ends the loop with `pos` past `end`.
    offsets: dict[int, int] = {}
    count = 0
    unpack = _unpack_u16_pair
    try:
        while pos < end:
            ext_type, ext_len = unpack(buf, pos)
            offsets[ext_type] = pos
            pos += 4 + ext_len
            count += 1
    except struct.error:  # a header cut off by the end of the buffer
        raise _decode_error("extension header truncated") from None
    if pos != end:
        raise _decode_error("an extension overruns the extensions block")
    if len(offsets) != count:
        # RFC 8446 §4.2: there MUST NOT be more than one extension of the same type.
        # Refusing closes the door on "first SNI for sniffer, second for the backend".
        raise _decode_error("an extension type appears more than once")

    # Second pass: the bodies of the types sniffer reports, the structure now sound.
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    at = offsets.get(_EXT_SERVER_NAME)
    if at is not None:
        stop = at + 4 + (buf[at + 2] << 8 | buf[at + 3])
        sni = (whole and _sni_memo.get(whole[at + 4 : stop])) or _parse_server_name(
            buf, at + 4, stop
        )
    # With a bytes buffer the memos are probed here; their parsers run only on a miss.
    at = offsets.get(_EXT_ALPN)
    if at is not None:
        stop = at + 4 + (buf[at + 2] << 8 | buf[at + 3])
        alpn = (whole and _alpn_memo.get(whole[at + 4 : stop])) or _parse_alpn(buf, at + 4, stop)
    at = offsets.get(_EXT_SUPPORTED_VERSIONS)
    if at is not None:
        stop = at + 4 + (buf[at + 2] << 8 | buf[at + 3])
        versions = (whole and _versions_memo.get(whole[at + 4 : stop])) or (
            _parse_supported_versions(buf, at + 4, stop)
        )
    at = offsets.get(_EXT_SIGNATURE_ALGORITHMS)
    sigs = b""
    if at is not None:
        stop = at + 4 + (buf[at + 2] << 8 | buf[at + 3])
        sigs = whole[at + 4 : stop] if whole is not None else bytes(buf[at + 4 : stop])
    # tuple.__new__ straight: the named tuple's own __new__ is a Python function, and
    # this line runs once per connection with every field given.
    return _new_tuple(
        ClientHello,
        (sni, alpn, legacy_version, versions, _EXT_ECH in offsets, suites, tuple(offsets), sigs),
    )


def parse_whole_hello(data: bytes | bytearray | memoryview, max_bytes: int) -> ClientHello | None:
    """The common case without a reader: one read holding one record holding the hello.

    Returns the hello, or None when `data` is anything else (not TLS, split, several
    records, over `max_bytes`): feed it to a `ClientHelloReader` then, which also gives
    the precise rejection. Raises `HelloRejected` when the hello itself is malformed.
    """
    if len(data) < 9 or data[0] != _CONTENT_HANDSHAKE or data[1] != 3 or data[2] > 4:
        return None
    record_len = data[3] << 8 | data[4]
    if record_len > _MAX_PLAINTEXT or data[5] != _HANDSHAKE_CLIENT_HELLO:
        return None
    end = 9 + (data[6] << 16 | data[7] << 8 | data[8])
    if end - 5 > record_len or end > len(data) or end > max_bytes:
        return None
    buf = data if type(data) is bytes or isinstance(data, bytearray) else bytes(data[:end])
    return parse_client_hello_body(buf, 9, end)


class ClientHelloReader(StickyReader[ClientHello | NotTLS]):
    """Incremental, sans-I/O reader of the first ClientHello on a connection.

    ``feed`` each chunk read from the socket; it returns ``NEED_DATA`` until the
    ClientHello handshake message is complete, then the ``ClientHello``. Records are
    reassembled across any number of reads and TLS records (RFC 8446 §5.1), each byte is
    looked at once (1-byte reads stay linear), and bytes after the end of the handshake
    message are never looked at. Once an outcome is reached it is returned (or raised)
    again on every later ``feed``.
    """

    __slots__ = ("_header", "_hs", "_hs_total", "_record_left", "_wire", "max_bytes")

    def __init__(self, max_bytes: int = DEFAULT_MAX_HELLO_BYTES) -> None:
        if not MIN_HELLO_BYTES_LIMIT <= max_bytes <= MAX_HELLO_BYTES_LIMIT:
            raise ValueError(
                f"max_bytes must be in [{MIN_HELLO_BYTES_LIMIT}, {MAX_HELLO_BYTES_LIMIT}],"
                f" got {max_bytes}"
            )
        super().__init__()
        self.max_bytes = max_bytes
        self._header = bytearray()  # a record header split across reads (< 5 bytes)
        self._record_left = 0  # payload bytes of the current record not yet taken
        self._hs = bytearray()  # handshake bytes reassembled from record payloads
        self._hs_total = -1  # 4 + handshake body length, once the header is in
        self._wire = 0  # bytes consumed from the stream: what the caller holds for us

    @property
    def consumed(self) -> int:
        """Stream bytes looked at so far: the whole hello on the wire once it is returned."""
        return self._wire

    def _step(self, data: bytes | bytearray | memoryview) -> ClientHello | NeedData | NotTLS:
        result: ClientHello | NeedData | NotTLS | None = None
        if self._wire == 0 and not self._header:
            # The first byte decides: anything but a handshake record is not TLS.
            result = NOT_TLS if data[0] != _CONTENT_HANDSHAKE else self._feed_whole(data)
        if result is None:
            result = self._feed_incremental(data)
        return result

    def _release(self) -> None:
        self._hs = bytearray()

    def _feed_whole(self, data: bytes | bytearray | memoryview) -> ClientHello | None:
        """The common case: one read holding one record holding the whole hello.

        Parses in place with no copy. Returns None to hand anything else (a split,
        a multi-record hello or an error to report) to the incremental path.
        """
        hello = parse_whole_hello(data, self.max_bytes)
        if hello is not None:
            self._wire = 9 + (data[6] << 16 | data[7] << 8 | data[8])
        return hello

    def _feed_incremental(self, data: bytes | bytearray | memoryview) -> ClientHello | NeedData:
        view = memoryview(data)
        size = len(view)
        i = 0
        while i < size:
            if self._record_left == 0:
                header = self._header
                take = min(5 - len(header), size - i)
                header += view[i : i + take]
                i += take
                self._wire += take
                if len(header) < 5:
                    break
                self._start_record(header)
                header.clear()
                continue
            hs = self._hs
            missing = (4 if self._hs_total < 0 else self._hs_total) - len(hs)
            take = min(self._record_left, size - i, missing)
            hs += view[i : i + take]
            i += take
            self._wire += take
            self._record_left -= take
            if self._hs_total < 0:
                if hs[0] != _HANDSHAKE_CLIENT_HELLO:
                    raise HelloRejected(
                        f"first handshake message is type {hs[0]}, not client_hello",
                        reason="bad_hello",
                        alert=ALERT_DECODE_ERROR,
                    )
                if len(hs) < 4:
                    continue
                self._hs_total = 4 + (hs[1] << 16 | hs[2] << 8 | hs[3])
                self._check_cap()
            if len(hs) == self._hs_total:
                return parse_client_hello_body(hs, 4, self._hs_total)
        return NEED_DATA

    def _start_record(self, header: bytearray) -> None:
        if header[0] != _CONTENT_HANDSHAKE:
            # RFC 8446 §5.1: handshake messages MUST NOT be interleaved with other
            # record types; nothing but handshake may precede the ClientHello's end.
            raise HelloRejected(
                f"record of content type {header[0]} inside the ClientHello",
                reason="bad_record",
                alert=ALERT_DECODE_ERROR,
            )
        if header[1] != 3 or header[2] > 4:
            raise HelloRejected(
                f"record version {header[1]}.{header[2]} is not TLS",
                reason="bad_record",
                alert=ALERT_DECODE_ERROR,
            )
        length = header[3] << 8 | header[4]
        if length == 0:
            # RFC 8446 §5.1: zero-length handshake fragments MUST NOT be sent; allowing
            # them would let a client hold a connection with an endless trickle of headers.
            raise HelloRejected(
                "zero-length handshake record", reason="bad_record", alert=ALERT_DECODE_ERROR
            )
        if length > _MAX_PLAINTEXT:
            raise HelloRejected(
                f"record of {length} bytes exceeds 2^14",
                reason="bad_record",
                alert=ALERT_DECODE_ERROR,
            )
        self._record_left = length
        self._check_cap()

    def _check_cap(self) -> None:
        # Count what the stream must still deliver at the least, so an announced
        # oversize hello is refused at its header instead of after buffering 16 KiB.
        missing = (4 if self._hs_total < 0 else self._hs_total) - len(self._hs)
        if self._wire + missing > self.max_bytes:
            total = self._hs_total if self._hs_total >= 0 else len(self._hs)
            raise HelloRejected(
                f"ClientHello ({total} byte handshake message, {self._wire} bytes read)"
                f" exceeds the {self.max_bytes} byte limit",
                reason="hello_too_large",
                alert=ALERT_DECODE_ERROR,
            )
