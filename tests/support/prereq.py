"""What a test does when something it needs is not installed.

On a developer's machine it skips, naming the package to install; under CI (CI=true),
where `.ci/run` installs everything, it fails, so a CI machine without it cannot pass
silently.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> None:
    """Skip (developer machine) or fail (CI=true) a test whose prerequisite is absent."""
    if in_ci():
        pytest.fail(f"{what} (required when CI=true)")
    pytest.skip(what)
