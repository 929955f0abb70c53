"""What the benchmark reads about its receivers from /proc: process trees, CPU seconds
and peak resident memory. No psutil: Linux's /proc files say it all.

CPU of a tree is counted so that it survives processes ending between two readings:
each live process contributes its own user+system time plus the time of the children it
has already reaped (``cutime``/``cstime``), so a forked association handler (dcmtk
``storescp --fork``) or an RQ work horse is counted while it runs and, after it ends,
in its parent's reaped time. The difference of two readings is what the tree spent.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    #: user + system seconds of the process itself
    own: float
    #: user + system seconds of the children it has waited for
    reaped: float


def read_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    ticks = TICKS_PER_SECOND
    return ProcStat(pid, int(fields[1]), (utime + stime) / ticks, (cutime + cstime) / ticks)


def all_stats() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def tree(root: int, stats: Mapping[int, ProcStat]) -> list[int]:
    """``root`` and its live descendants (those in ``stats``)."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found


def tree_cpu(roots: Iterable[int], stats: Mapping[int, ProcStat] | None = None) -> float:
    """CPU seconds spent so far by the trees under ``roots`` (see the module docstring)."""
    stats = all_stats() if stats is None else stats
    return sum(stats[pid].own + stats[pid].reaped for root in roots for pid in tree(root, stats))


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def peak_rss_kib(pid: int) -> int:
    """The process's resident-set high-water mark (VmHWM) so far; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


#: role -> root processes of that role, as a receiver reports them
Roles = Callable[[], Mapping[str, list[int]]]


class PeakSampler:
    """Largest VmHWM per receiver and role over every process of each role's trees,
    polled in a thread so that short-lived processes (forked association handlers, work
    horses) are seen. One thread and one pass over /proc per poll for all receivers: the
    sampler is itself a load on the machine it measures."""

    def __init__(self, interval: float = 0.5) -> None:
        self._interval = interval
        self._receivers: dict[str, Roles] = {}
        #: receiver -> role -> KiB
        self.peaks: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def add(self, receiver: str, roles: Roles) -> None:
        with self._lock:
            self._receivers[receiver] = roles
            self.peaks[receiver] = {}
        if not self._thread.is_alive():
            self._thread.start()

    def sample(self) -> None:
        stats = all_stats()
        with self._lock:
            for receiver, roles in self._receivers.items():
                peaks = self.peaks[receiver]
                for role, roots in roles().items():
                    for root in roots:
                        for pid in tree(root, stats):
                            peaks[role] = max(peaks.get(role, 0), peak_rss_kib(pid))

    def stop(self) -> dict[str, dict[str, int]]:
        """Take a last sample (the receivers must still run) and stop; returns the peaks."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()
        return self.peaks

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()
