"""The API client's own HTTP/1.1 transport: keep-alive, and `proxy-url` by CONNECT."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import yaml

from sniffer.routing.sources.kubernetes.api import KubeApi
from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
from tests.kubeapi.server import KubeApiServer


class ConnectProxy:
    """A CONNECT-only HTTP proxy on loopback that records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        self.requests.append(head.split("\r\n", 1)[0])
        host, port = head.split()[1].rsplit(":", 1)
        up_r, up_w = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_calls_reach_the_server_through_a_connect_proxy(
    api_server: KubeApiServer, tmp_path: Path
) -> None:
    path = api_server.write_kubeconfig(tmp_path / "kubeconfig")
    proxy = ConnectProxy()
    port = await proxy.start()
    cfg = yaml.safe_load(path.read_text())
    cfg["clusters"][0]["cluster"]["proxy-url"] = f"http://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(cfg))
    api = await KubeApi.connect(KubernetesSettings(kubeconfig=str(path)))
    try:
        for _ in range(3):
            page = await api.list_page("/api/v1/namespaces", 10, None)
            assert page["kind"] == "NamespaceList"
    finally:
        await api.close()
        await proxy.stop()
    authority = api_server.url.removeprefix("https://")
    # Three calls, one tunnel: the connection was kept alive between them.
    assert proxy.requests == [f"CONNECT {authority} HTTP/1.1"]
