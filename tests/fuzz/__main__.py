"""``python -m tests.fuzz [TARGET...] [--seconds S | --runs N]``: run the fuzz targets.

Each target runs in its own process (libFuzzer exits the process when done) with the
checked-in seeds of `tests/fuzz/corpus/<target>/` and a working corpus under
``--workdir`` (new inputs go there, never into the seeds). A crash leaves its input in
``<workdir>/<target>/crash-*`` and makes the command exit 1; reproduce it with
``python -m tests.fuzz.one TARGET <workdir>/<target>/crash-...``. The summary line per
target gives executions, libFuzzer's coverage (``cov``: edges, ``ft``: features) and
the corpus size.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.fuzz.targets import all_targets

REPO = Path(__file__).resolve().parents[2]
_STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")
_EXECS = re.compile(r"stat::number_of_executed_units: (\d+)")


def main(argv: list[str] | None = None) -> int:
    targets = all_targets()
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"of {sorted(targets)}")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=int, default=15, help="per target (default 15)")
    budget.add_argument("--runs", type=int, help="executions per target instead of a time")
    parser.add_argument("--workdir", type=Path, default=REPO / ".fuzz")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(sorted(targets)))
        return 0
    unknown = set(args.targets) - set(targets)
    if unknown:
        parser.error(f"unknown target(s) {sorted(unknown)}; known: {sorted(targets)}")
    failed = []
    for name in args.targets or sorted(targets):
        target = targets[name]
        work = args.workdir / name
        work.mkdir(parents=True, exist_ok=True)
        limit = f"-runs={args.runs}" if args.runs else f"-max_total_time={args.seconds}"
        command = [
            sys.executable,
            "-m",
            "tests.fuzz.one",
            name,
            str(work),
            str(target.seeds),
            limit,
            f"-max_len={target.max_len}",
            f"-artifact_prefix={work}/",
            "-print_final_stats=1",
            "-timeout=10",
            "-rss_limit_mb=1024",
        ]
        started = time.monotonic()
        log_path = args.workdir / f"{name}.log"
        with log_path.open("w") as out:  # streamed: `tail -f` shows a long run's progress
            done = subprocess.run(command, cwd=REPO, stdout=out, stderr=out, check=False)
        log = log_path.read_text()
        status = _STATUS.findall(log)
        execs = _EXECS.findall(log)
        cov, ft, corp = status[-1][1:] if status else ("?", "?", "?")
        print(
            f"{name}: {'ok' if done.returncode == 0 else 'FAILED'} "
            f"execs={execs[-1] if execs else '?'} cov={cov} ft={ft} corpus={corp} "
            f"in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        if done.returncode != 0:
            failed.append(name)
            print(log[-3000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
