"""Observability: metrics, logs and the admin HTTP endpoint.

A leaf layer: it imports nothing else from sniffer, so every other layer may use it.
"""
