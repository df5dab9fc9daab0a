"""sniffer: route TCP connections by TLS SNI or HTTP Host, bytes untouched."""

__version__ = "0.1.0"
