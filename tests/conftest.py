"""Shared fixtures: a test PKI, real backends, and an in-process sniffer data plane."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sniffer.observe.accesslog import AccessRecord, format_line
from sniffer.observe.stats import DataPlaneStats
from sniffer.proxy.server import DataPlane, ProxySettings
from sniffer.routing.table import RouteTable, TableSpec
from tests.support.pki import PKI

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


class RecordedLog:
    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def __call__(self, record: AccessRecord) -> None:
        self.records.append(json.loads(format_line(record)))


PlaneFactory = Callable[..., Awaitable[DataPlane]]


@pytest.fixture
async def data_plane() -> AsyncIterator[PlaneFactory]:
    """Start an in-process data plane on a TableSpec; listeners may use port 0."""
    planes: list[DataPlane] = []

    async def make(spec: TableSpec, **settings: object) -> DataPlane:
        log = RecordedLog()
        plane = DataPlane(ProxySettings(**settings), access_log=log, stats=DataPlaneStats())  # type: ignore[arg-type]
        plane.recorded = log  # type: ignore[attr-defined]
        await plane.install(RouteTable.build(spec))
        assert not plane.listen_errors, plane.listen_errors
        planes.append(plane)
        return plane

    yield make
    for plane in planes:
        await plane.drain(0)
