"""The routes file source: a file rewritten in place is applied only once it settles."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sniffer.routing.sources import Update
from sniffer.routing.sources.file import FileSource

HEAD = """\
listeners:
  - {name: tls, address: "127.0.0.1:8443", protocol: tls}
backends:
  - {name: a, endpoints: ["127.0.0.1:9443"]}
"""
ROUTES = """\
routes:
  - {host: app.a.example, backend: a}
  - {host: www.a.example, backend: a}
"""


async def _until(predicate: object, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_file_truncated_in_place_is_applied_only_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(HEAD + ROUTES)
    published: list[Update] = []
    source = FileSource(path, poll_interval=0.2)
    task = asyncio.get_running_loop().create_task(source.run(published.append))
    await _until(lambda: published)
    assert len(published[0].spec.routes) == 2

    # An editor rewrites in place: truncate, write the head (which parses on its own:
    # listeners and backends, no routes), ...
    with path.open("r+") as f:
        f.truncate(0)
        f.write(HEAD)
    polls = source.polls
    await _until(lambda: source.polls > polls)  # the source has read the half file
    # ... and the rest before the next poll (no await in between: it cannot poll here).
    with path.open("a") as f:
        f.write(ROUTES.replace("www", "new"))
    await _until(lambda: len(published) == 2)
    hosts = {r.host for r in published[1].spec.routes}
    assert hosts == {"app.a.example", "new.a.example"}  # never the half file
    polls = source.polls
    await _until(lambda: source.polls >= polls + 3)
    assert len(published) == 2  # an unchanged file is not re-applied

    # A file that stays half-written for two polls is what the operator meant.
    path.write_text(HEAD)
    await _until(lambda: len(published) == 3)
    assert published[2].spec.routes == ()
    task.cancel()
