"""The DaemonSet's command line is one that `sniffer serve` really accepts and runs.

Each layout's container args are run as they are, with three substitutions that keep the
test on loopback and off the cluster: `--kubernetes` becomes `--routes FILE` (no API
server here), the listen/admin addresses become 127.0.0.1 with free ports, and
`$(SNIFFER_WORKERS)` (the downward API's CPU limit) becomes 1. Every other flag is
passed verbatim, so a renamed or removed flag fails here rather than in a crash-looping
pod. The test then waits for /readyz and for the listeners to accept connections.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import find, find_tool, missing, render
from tests.support.servers import free_port

LAYOUTS = ["base", "overlays/hostnetwork"]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@pytest.mark.parametrize("layout", LAYOUTS)
def test_daemonset_args_run(layout: str, tmp_path: Path) -> None:
    sniffer = find_tool("sniffer")
    if sniffer is None:
        missing("the `sniffer` command is not installed (pip install -e . in the venv)")
    assert sniffer is not None
    ds = find(render(layout), "DaemonSet")
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    args: list[str] = list(container["args"])
    assert args[0] == "serve"

    routes = tmp_path / "routes.yaml"
    routes.write_text(
        yaml.safe_dump(
            {
                "listeners": [],
                "backends": [{"name": "b", "endpoints": ["127.0.0.1:9"]}],
                "routes": [{"host": "a.example.com", "backend": "b"}],
            }
        )
    )
    ports: dict[str, int] = {}
    cmd = [sniffer]
    for arg in args:
        if arg == "--kubernetes":
            cmd += ["--routes", str(routes)]
        elif arg.startswith("--listen="):
            proto = arg.split("=", 1)[1].split(":", 1)[0]
            public = "@" + arg.rsplit("@", 1)[1] if "@" in arg else ""
            ports[proto] = free_port()
            cmd.append(f"--listen={proto}:127.0.0.1:{ports[proto]}{public}")
        elif arg.startswith("--admin="):
            ports["admin"] = free_port()
            cmd.append(f"--admin=127.0.0.1:{ports['admin']}")
        elif arg == "--workers=$(SNIFFER_WORKERS)":
            cmd.append("--workers=1")
        else:
            cmd.append(arg)
    assert {"tls", "http", "admin"} <= ports.keys()

    log = tmp_path / "sniffer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _ready(f"http://127.0.0.1:{ports['admin']}/readyz"):
            if proc.poll() is not None:
                pytest.fail(
                    f"sniffer exited {proc.returncode} with the {layout} args "
                    f"{cmd[1:]}:\n{log.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"sniffer not ready after 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        for proto in ("tls", "http"):
            with socket.create_connection(("127.0.0.1", ports[proto]), timeout=5):
                pass
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)  # --drain-grace=30 is passed verbatim
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
