"""A route source that never runs, for tests that publish into a `RouteController` by hand."""

from __future__ import annotations


class IdleSource:
    """Satisfies the controller's source interface; the test publishes updates itself."""

    name = "file"
    synced = True

    def health(self) -> dict[str, object]:
        return {}

    async def run(self, publish: object) -> None:
        raise NotImplementedError
