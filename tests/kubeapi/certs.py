"""Throwaway PKI for the API test server: a CA and a loopback server certificate.

Built on the tests' shared PKI (`tests.support.pki`); must never touch anything but the
directory it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.pki import PKI


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    cert_file: Path
    key_file: Path


def make_pki(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Pki:
    pki = PKI(directory)
    leaf = pki.issue(*hosts)
    return Pki(pki.ca_path.read_bytes(), leaf.cert, leaf.key)
