"""Whether a process of this host still runs: how a worker tells a crashed peer (a
scheduler holding RQ's lock, a work horse holding inbox entries) from a live one, and the
verbs beside ``up`` a stale ``up.json`` from a running ``up``."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def describe(returncode: int | None) -> str:
    """How a child ended, for a log line: ``signal SIGKILL`` or ``exit status 1``
    (``returncode`` as :mod:`subprocess` gives it: negative for a signal)."""
    if returncode is not None and returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process of this host (a zombie is not: a process that
    died stays one until its parent notices)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust the signal
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]
