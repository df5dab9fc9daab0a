"""Hostname validation and normalisation shared by SNI, the Host header and route hosts.

This module owns the single definition of "a name sniffer can route": ASCII letters,
digits, ``-`` and ``_`` in dot-separated labels, compared lower-case with one trailing dot
dropped. Using one function everywhere is what makes a route written ``Foo.Example.com.``
match an SNI of ``foo.example.com``. It must never do DNS, IDNA conversion (clients send
A-labels, ``xn--...``) or any I/O.
"""

from __future__ import annotations

import ipaddress

from sniffer.wire.errors import InvalidHostname
from sniffer.wire.memo import remember

__all__ = [
    "MAX_LABEL_LENGTH",
    "MAX_NAME_LENGTH",
    "is_ip_literal",
    "normalize_hostname",
    "normalize_hostname_bytes",
    "normalize_route_host",
]

MAX_NAME_LENGTH = 253  # RFC 1035 §2.3.4, textual form without the trailing dot
MAX_LABEL_LENGTH = 63  # RFC 1035 §2.3.4

# Bytes allowed in a name, the dot included. "_" is not a hostname character (RFC 952)
# but real clients send it in SNI (service names such as _acme.example.com).
_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
_DIGITS = b"0123456789"
_HEX_DIGITS = b"0123456789abcdef"


def _classify_bad_bytes(raw: bytes) -> InvalidHostname:
    """Explain why ``raw`` has a byte outside ``_NAME_BYTES`` (slow path, errors only)."""
    if is_ip_literal(raw):
        return InvalidHostname(f"IP literal {raw!r} is not a hostname", problem="ip_literal")
    bad = raw.translate(None, _NAME_BYTES)
    if any(b >= 0x80 for b in bad):
        return InvalidHostname(
            f"hostname {raw!r} has non-ASCII bytes (send the xn-- A-label form)",
            problem="non_ascii",
        )
    if any(b <= 0x20 or b == 0x7F for b in bad):
        return InvalidHostname(
            f"hostname {raw!r} has a NUL, control or space byte", problem="control_char"
        )
    return InvalidHostname(
        f"hostname {raw!r} has a character outside letters, digits, '-', '_'",
        problem="bad_char",
    )


def _last_label_is_numeric(name: bytes) -> bool:
    # WHATWG URL rule: a host whose last label is a number (decimal or 0x-hex) is parsed
    # as IPv4 by browsers and inet_aton ("10.1", "0x7f.1", "2130706433"). No TLD is
    # numeric, so treating these as IP literals refuses nothing legitimate.
    last = name[name.rfind(b".") + 1 :]
    if not last.translate(None, _DIGITS):
        return True
    return len(last) > 2 and last[:2] == b"0x" and not last[2:].translate(None, _HEX_DIGITS)


def is_ip_literal(name: str | bytes) -> bool:
    """True if ``name`` is an IPv4 (any inet_aton form) or IPv6 literal (``[]`` allowed)."""
    if isinstance(name, str):
        try:
            raw = name.encode("ascii")
        except UnicodeEncodeError:
            return False
    else:
        raw = bytes(name)
    raw = raw.lower()
    if raw.endswith(b"."):
        raw = raw[:-1]
    if not raw:
        return False
    if b":" in raw:
        if raw.startswith(b"[") and raw.endswith(b"]"):
            raw = raw[1:-1]
        try:
            ipaddress.IPv6Address(raw.decode("ascii"))
        except ValueError:
            return False
        return True
    if raw.translate(None, _NAME_BYTES):
        return False
    return _last_label_is_numeric(raw)


# Names already accepted, by their raw bytes: the same few SNIs arrive on most
# connections, and a dict hit is several times cheaper than the checks. Bounded in
# entries (cleared when full), and a name is kept only once it repeats
# (`sniffer.wire.memo`), so a stream of distinct names cannot grow it.
_ACCEPTED_MAX = 4096
_ACCEPTED_MAX_KEY = MAX_NAME_LENGTH + 1  # a valid name, with its trailing dot
_accepted: dict[bytes, str] = {}


def normalize_hostname_bytes(raw: bytes) -> str:
    """`normalize_hostname` for a name already in `bytes` (as read off the wire)."""
    known = _accepted.get(raw)
    if known is not None:
        return known
    return remember(_accepted, raw, _check(raw), _ACCEPTED_MAX, _ACCEPTED_MAX_KEY)


def _check(raw: bytes) -> str:
    name = raw.lower()  # bytes.lower() only touches A-Z: no locale, no Unicode folding
    if name.endswith(b"."):
        name = name[:-1]
    if not name:
        raise InvalidHostname("empty hostname", problem="empty")
    if name.translate(None, _NAME_BYTES):
        raise _classify_bad_bytes(raw)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidHostname(
            f"hostname of {len(name)} bytes is longer than {MAX_NAME_LENGTH}",
            problem="name_too_long",
        )
    if name[0] == 0x2E or name[-1] == 0x2E or b".." in name:
        raise InvalidHostname(f"hostname {raw!r} has an empty label", problem="empty_label")
    if len(name) > MAX_LABEL_LENGTH and any(
        len(label) > MAX_LABEL_LENGTH for label in name.split(b".")
    ):
        raise InvalidHostname(
            f"hostname {raw!r} has a label longer than {MAX_LABEL_LENGTH}",
            problem="label_too_long",
        )
    if _last_label_is_numeric(name):
        raise InvalidHostname(f"IP literal {raw!r} is not a hostname", problem="ip_literal")
    return name.decode("ascii")


def normalize_hostname(name: str | bytes) -> str:
    """Return ``name`` lower-cased without one trailing dot, or raise ``InvalidHostname``.

    IP literals are refused: SNI must not carry them (RFC 6066 §3) and routes are by name.
    """
    if isinstance(name, str):
        try:
            raw = name.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidHostname(
                f"hostname {name!r} is not ASCII (use the xn-- A-label form)",
                problem="non_ascii",
            ) from None
    else:
        raw = bytes(name)
    return normalize_hostname_bytes(raw)


def normalize_route_host(name: str) -> str:
    """Normalise a route's host, which may start with exactly one ``*`` label (``*.a.com``).

    The wildcard must be a whole label and the leftmost one; ``*`` alone, ``a.*.com`` and
    ``*a.com`` are refused. How many labels a wildcard matches is the routing table's
    business, not this module's.
    """
    if name.startswith("*."):
        if "*" in name[2:]:
            raise InvalidHostname(
                f"route host {name!r}: only the leftmost label may be '*'",
                problem="bad_wildcard",
            )
        return "*." + normalize_hostname(name[2:])
    if "*" in name:
        raise InvalidHostname(
            f"route host {name!r}: a wildcard must be a whole leftmost label, as in '*.a.com'",
            problem="bad_wildcard",
        )
    return normalize_hostname(name)
