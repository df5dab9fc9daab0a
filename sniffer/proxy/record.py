"""What a closed connection tells the access log: its `AccessRecord`, built once.

`record` reads a `ClientConnection` at close into the plain values the access log
formats (`sniffer.observe.accesslog`), with the hello's `alpn`/`ja4`/`ech` members from
a memo per distinct hello (a client sends the same hello but for its name and random
bytes on every connection, so a line costs a dict hit, not a JA4 computation). This
module never writes a line and never keeps a connection.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sniffer.observe.accesslog import AccessRecord
from sniffer.wire.ja4 import ja4

if TYPE_CHECKING:
    from sniffer.proxy.connection import ClientConnection
    from sniffer.wire.tls import ClientHello

__all__ = ["hello_fields", "record"]

_new = tuple.__new__  # builds the record without NamedTuple's Python-level __new__


def record(conn: ClientConnection, now: float) -> AccessRecord:
    hello = conn.hello
    backend = conn.backend
    ep = conn.endpoint
    return _new(
        AccessRecord,
        (
            conn.state_shared.id_prefix,
            conn.serial,
            conn.client_addr,
            conn.listener.name,
            conn.listener.protocol == "tls",
            conn.host,
            conn.route,
            None if backend is None else backend.name,
            None if backend is None else backend.tenant,
            None if ep is None else ep.text,
            conn.bytes_up,
            conn.bytes_down,
            now - conn.started,
            conn.outcome,
            # The memo probe inlined: this runs for every connection.
            _NO_HELLO if hello is None else (_HELLO_JS.get(hello[1:]) or hello_fields(hello)),
        ),
    )


# The offered ALPN list in the log: enough to see what a client wanted, never a
# client-chosen amount of log (a hello may carry hundreds of names of 255 bytes).
_LOG_ALPN_NAMES = 8
_LOG_ALPN_CHARS = 32
_NO_HELLO = ',"alpn":[],"ja4":null,"ech":false'
_HELLO_JS: dict[tuple[object, ...], str] = {}


def hello_fields(hello: ClientHello) -> str:
    """The line's `alpn`, `ja4` and `ech` members, memoised per distinct hello.

    Everything but the name (`hello[1:]`) is the key. The ALPN list is JSON
    (ASCII-escaped) and truncated.
    """
    key = hello[1:]
    out = _HELLO_JS.get(key)
    if out is None:
        alpn = hello.alpn
        names = [name[:_LOG_ALPN_CHARS] for name in alpn[:_LOG_ALPN_NAMES]]
        if len(alpn) > _LOG_ALPN_NAMES:
            names.append(f"...{len(alpn) - _LOG_ALPN_NAMES} more")
        if len(_HELLO_JS) > 1_000:  # hostile hellos must not grow it forever
            _HELLO_JS.clear()
        out = _HELLO_JS[key] = (
            f',"alpn":{json.dumps(names)},"ja4":"{ja4(hello)}",'
            f'"ech":{"true" if hello.has_ech else "false"}'
        )
    return out
