"""The process `sniffer serve` runs in: what the command decided, run in a fresh interpreter.

`sniffer serve` parses and checks its flags with typer, which builds a pydantic adapter
per flag: with typer, click and rich that is ~10 MiB the control process would carry for
its whole life (a sixth of its budget at 2,000 tenants). So the command hands what it
decided (a `ServePlan`, pickled on a pipe) to a fresh interpreter that replaces it
(`exec`: same pid, signals, stdio and environment) and imports only what serving needs:
`python -m sniffer.launch --plan-fd N`.

This module owns the plan, its hand-over and running it. It must never parse flags,
import typer, or decide anything the command did not (a bad flag is refused before the
exec, with the command's exit code and message).
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from sniffer.app import ServeOptions
    from sniffer.routing.sources.kubernetes.settings import KubernetesSettings
    from sniffer.routing.table import Listener

_PIPE_BUF = 65536
"""A plan is written whole before the exec, so it must fit the pipe's buffer (Linux's
default); a few KB in practice. A bigger one runs in this process instead."""


@dataclass(frozen=True)
class ServePlan:
    """Everything `sniffer serve` decided: the sources to build and the serve options."""

    opts: ServeOptions
    listeners: tuple[Listener, ...]
    kubernetes: KubernetesSettings | None = None
    routes_file: Path | None = None
    """The routes file source (read and checked by the command already), if any."""


def sources(plan: ServePlan) -> list[Any]:
    out: list[Any] = []
    if plan.kubernetes is not None:
        from sniffer.routing.sources.kubernetes import KubernetesSource

        out.append(KubernetesSource(plan.kubernetes, plan.listeners))
    if plan.routes_file is not None:
        from sniffer.routing.sources.file import FileSource

        out.append(FileSource(plan.routes_file, plan.listeners or None))
    return out


def run(plan: ServePlan) -> int:
    """Serve until SIGTERM/SIGINT; the exit code."""
    import uvloop

    from sniffer.app import serve

    logging.basicConfig(
        level=plan.opts.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(uvloop.run(serve(sources(plan), plan.opts)))


def exec_plan(plan: ServePlan) -> int:
    """Replace this process by `python -m sniffer.launch` running `plan`; never returns
    unless the hand-over is impossible here, then runs the plan in this process."""
    data = pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)
    if not sys.executable or len(data) >= _PIPE_BUF:
        return run(plan)
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    os.set_inheritable(r, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "sniffer.launch", "--plan-fd", str(r)])


def main(argv: list[str]) -> NoReturn:
    if len(argv) != 2 or argv[0] != "--plan-fd":
        sys.exit("usage: python -m sniffer.launch --plan-fd N (started by `sniffer serve`)")
    with os.fdopen(int(argv[1]), "rb") as f:
        # The pipe was written by `sniffer serve` in this very process before its exec.
        plan = pickle.load(f)
    if not isinstance(plan, ServePlan):
        sys.exit("sniffer.launch: not a serve plan")
    sys.exit(run(plan))


if __name__ == "__main__":
    # Through the module's import name, so that the pickled plan's class is this one.
    from sniffer.launch import main as _main

    _main(sys.argv[1:])
