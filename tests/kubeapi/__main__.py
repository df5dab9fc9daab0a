"""Run the API test server as its own process: `python -m tests.kubeapi --kubeconfig PATH`.

Prints `READY <port>` once listening (after loading `--tenants N` synthetic tenants), then
serves until stdin closes or it is killed. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path

from tests.kubeapi.objects import synthetic_cluster
from tests.kubeapi.server import KubeApiServer


async def _main(args: argparse.Namespace) -> None:
    server = KubeApiServer(history=args.history, validate=not args.no_validate)
    cluster = synthetic_cluster(args.tenants, gateway_port=args.gateway_port)
    n = server.load_bulk(cluster) if args.tenants else 0
    del cluster
    # The loaded objects (millions of dicts at 2,000 tenants) leave the collector's
    # reach: a full collection walking them paused this server for a long time, and a
    # benchmark measured that pause as the router's update lag. Nothing here is freed
    # by the collector that reference counting would not free.
    gc.collect()
    gc.freeze()
    await server.start(args.port)
    server.write_kubeconfig(Path(args.kubeconfig))
    print(f"READY {server.port} {n}", flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: done.set() if not sys.stdin.readline() else None)
    await done.wait()
    await server.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.kubeapi")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tenants", type=int, default=0)
    p.add_argument("--history", type=int, default=20000)
    p.add_argument("--no-validate", action="store_true")
    p.add_argument(
        "--gateway-port", type=int, default=443, help="port of the synthetic Gateway's listener"
    )
    asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()
