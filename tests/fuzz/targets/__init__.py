"""The fuzz targets: every module here defines ``TARGET`` (a `tests.fuzz.contract.Target`).

Adding a parser's target is one module in this folder and a seed folder
`tests/fuzz/corpus/<name>/`: `all_targets` finds it, the runner and the seed replay test
pick it up with no other change.
"""

from __future__ import annotations

import importlib
import pkgutil

from tests.fuzz.contract import Target


def all_targets() -> dict[str, Target]:
    found: dict[str, Target] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        target: Target = module.TARGET
        found[target.name] = target
    return found
