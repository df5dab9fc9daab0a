"""Bytes to facts: the sans-I/O readers that sniff a connection's first bytes.

Everything here is pure: bytes in, a result, ``NEED_DATA``, "not this protocol" or a
``WireError`` out; ``Sniffer`` (``sniff.py``) turns a connection's first bytes into one
event, and ``answers.py`` writes the refusals; ``quic.py`` reads the hello inside a QUIC
client's Initial packets and writes the QUIC refusal. Nothing in this package may import
asyncio, socket or ssl, or any other sniffer package (``tests/test_layers.py``); the
data plane (``sniffer.proxy``) and the route table (``sniffer.routing``) build on it,
never the other way round.
"""

from sniffer.wire.answers import http_error, tls_alert
from sniffer.wire.errors import (
    BadHttpHead,
    BadProxyHeader,
    HelloRejected,
    InvalidHostname,
    WireError,
)
from sniffer.wire.hostname import is_ip_literal, normalize_hostname, normalize_route_host
from sniffer.wire.http import HttpHeadReader, HttpRequestHead
from sniffer.wire.proxy_protocol import (
    ProxyHeader,
    ProxyHeaderReader,
    encode_v1,
    encode_v1_unknown,
    encode_v2,
    encode_v2_local,
)
from sniffer.wire.quic import DatagramDropped, InitialReader, QuicHello, refusal_datagram
from sniffer.wire.sentinels import NEED_DATA, NOT_HTTP, NOT_TLS, NeedData, NotHTTP, NotTLS
from sniffer.wire.sniff import Refused, Sniffed, Sniffer, SniffLimits
from sniffer.wire.tls import ClientHello, ClientHelloReader

__all__ = [
    "NEED_DATA",
    "NOT_HTTP",
    "NOT_TLS",
    "BadHttpHead",
    "BadProxyHeader",
    "ClientHello",
    "ClientHelloReader",
    "DatagramDropped",
    "HelloRejected",
    "HttpHeadReader",
    "HttpRequestHead",
    "InitialReader",
    "InvalidHostname",
    "NeedData",
    "NotHTTP",
    "NotTLS",
    "ProxyHeader",
    "ProxyHeaderReader",
    "QuicHello",
    "Refused",
    "SniffLimits",
    "Sniffed",
    "Sniffer",
    "WireError",
    "encode_v1",
    "encode_v1_unknown",
    "encode_v2",
    "encode_v2_local",
    "http_error",
    "is_ip_literal",
    "normalize_hostname",
    "normalize_route_host",
    "refusal_datagram",
    "tls_alert",
]
