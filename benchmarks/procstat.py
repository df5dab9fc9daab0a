"""CPU seconds and memory of a process tree, read from /proc (Linux only)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ppids() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        out[int(name)] = int(fields[1])
    return out


def tree(root: int) -> list[int]:
    """root and all its live descendants."""
    ppids = _ppids()
    pids = [root]
    i = 0
    while i < len(pids):
        pids.extend(p for p, pp in ppids.items() if pp == pids[i])
        i += 1
    return [p for p in pids if p in ppids]


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all CPUs, /proc/stat): what a
    proxy costs includes softirq and other processes' system calls, not only its own."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def cpu_seconds(root: int) -> float:
    """utime+stime of every live process of the tree, plus what reaped children used."""
    user, system = cpu_split(root)
    return user + system


def cpu_split(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the tree, reaped children included."""
    user = system = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[11..14] = utime, stime, cutime, cstime (stat fields 14..17)
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


@dataclass
class Memory:
    rss: int  # bytes, summed over the tree
    pss: int  # bytes, summed over the tree (shared pages split between sharers)
    per_process_rss: list[int]
    worker_rss: list[int]
    """RSS of the processes that relay (for sniffer: its `sniffer.proxy.worker`s)."""


def memory(root: int) -> Memory:
    rss = pss = 0
    per: list[int] = []
    workers: list[int] = []
    for pid in tree(root):
        vals = {"Rss:": 0, "Pss:": 0}
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    parts = line.split()
                    if parts and parts[0] in vals:
                        vals[parts[0]] = int(parts[1]) * 1024
        except OSError:
            continue
        rss += vals["Rss:"]
        pss += vals["Pss:"]
        per.append(vals["Rss:"])
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"sniffer.proxy.worker" in f.read():
                    workers.append(vals["Rss:"])
        except OSError:
            pass
    # Rows other than sniffer's do not split control from data plane: all of them count.
    return Memory(rss, pss, per, workers or per)


class PeakSampler:
    """Samples the tree's RSS/PSS in a thread until stopped; keeps the maxima."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        m = memory(self.root)
        self.peak_rss = max(self.peak_rss, m.rss)
        self.peak_pss = max(self.peak_pss, m.pss)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
