"""Benchmark suite: sniffer against a bare uvloop relay, HAProxy, nginx, Envoy and sniproxy.

Everything runs on loopback and stops by itself; see benchmarks/README.md.
"""
