"""Run one fuzz target under atheris: ``python -m tests.fuzz.one NAME [libFuzzer args]``.

`sniffer.wire` is instrumented for coverage before any target imports it; a contract
violation (AssertionError) or any other exception is a crash libFuzzer saves to its
artifact prefix. Use ``python -m tests.fuzz`` rather than this module directly.
"""

from __future__ import annotations

import sys

import atheris


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    with atheris.instrument_imports(include=["sniffer.wire"]):
        import sniffer.wire  # noqa: F401  (every parser, instrumented)
    from tests.fuzz.targets import all_targets

    target = all_targets()[name]
    atheris.Setup([sys.argv[0], *args], target.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
