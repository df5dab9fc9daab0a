"""The folders are the architecture: a test fails when a module imports across a line.

Read from the source (every `import`, at any depth, including those under
`TYPE_CHECKING` and inside functions), so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sniffer

PACKAGE = Path(sniffer.__file__).parent
IO_MODULES = {"asyncio", "socket", "ssl", "selectors", "uvloop", "subprocess"}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules("wire"), ids=lambda p: p.name)
def test_wire_is_pure(path: Path) -> None:
    """wire/ imports no I/O module and nothing of sniffer outside wire/."""
    names = imported(path)
    assert not {n.split(".")[0] for n in names} & IO_MODULES, names
    others = {n for n in names if n.split(".")[0] == "sniffer" and not n.startswith("sniffer.wire")}
    assert not others


@pytest.mark.parametrize("path", modules("observe"), ids=lambda p: p.name)
def test_observe_is_a_leaf(path: Path) -> None:
    names = imported(path)
    assert not {
        n for n in names if n.startswith("sniffer.") and not n.startswith("sniffer.observe")
    }


@pytest.mark.parametrize("path", modules("routing"), ids=lambda p: p.name)
def test_routing_never_imports_the_data_plane(path: Path) -> None:
    names = imported(path)
    assert not {n for n in names if n.startswith(("sniffer.proxy", "sniffer.app", "sniffer.cli"))}


def test_the_settings_machinery_is_neutral() -> None:
    """sniffer/settings.py serves the data plane and the route sources alike: it imports
    nothing of sniffer (so neither layer reaches the other through it)."""
    names = imported(PACKAGE / "settings.py")
    assert not {n for n in names if n.split(".")[0] == "sniffer"}, names


def test_the_checks_see_imports() -> None:
    """The walker finds a lazy import inside a function (the test can fail)."""
    names = imported(PACKAGE / "proxy" / "worker.py")
    assert "asyncio" in names and "sniffer.observe.accesslog" in names  # the latter in main


def test_a_worker_without_quic_never_loads_cryptography() -> None:
    """`cryptography` (AES for QUIC Initials) costs a process ~7 MiB: a data-plane worker
    loads it only when it opens a QUIC listener (workers with TLS and HTTP only, and
    workers 1..N-1 which never bind QUIC, stay without it)."""
    probe = (
        "import sys, sniffer.proxy.worker, sniffer.proxy.server;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('cryptography', 'prometheus_client', 'typer', 'kubernetes_asyncio')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
