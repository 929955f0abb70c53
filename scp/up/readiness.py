"""When ``scp2fhir up`` may say ``ready:``: every SCP process has its listening socket on
the DICOM port and every worker process is registered in RQ. Read from /proc (the socket
inodes a process holds against the kernel's LISTEN table), so checking costs the SCPs no
connection, association or log line."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import redis
from rq import Worker

_LISTEN = "0A"


def listening_inodes(port: int) -> set[str]:
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                found.add(inode)
    return found


def socket_inodes(pid: int) -> set[str]:
    found: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return found
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def listening(pid: int, port: int) -> bool:
    return bool(socket_inodes(pid) & listening_inodes(port))


def threads(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/task").iterdir()))
    except OSError:
        return 0


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def serving(pid: int, port: int) -> bool:
    """``pid`` listens on ``port`` and an SCP behind it got through its start: the socket
    is bound before any SCP code runs (by ``scp2fhir scp`` itself, and inherited by its
    forked acceptors, :mod:`scp.prefork`), so listening alone also holds for acceptors
    that are failing at start. A serving SCP runs threads (its metrics flush, its accept
    loop); a prefork parent and an acceptor that has not got that far run one."""
    if not listening(pid, port):
        return False
    acceptors = child_pids(pid)
    if not acceptors:  # SCP2FHIR_SCP_PROCESSES=1: it serves itself
        return threads(pid) > 1
    return all(threads(acceptor) > 1 for acceptor in acceptors)


def registered_workers(client: redis.Redis) -> set[int]:
    """The pids of the RQ workers registered on this host (any host: pids are checked
    against our own children only)."""
    try:
        return {w.pid for w in Worker.all(connection=client) if w.pid}
    except redis.RedisError:
        return set()


def missing(
    scps: Iterable[tuple[str, int]],
    workers: Iterable[tuple[str, int]],
    port: int,
    client: redis.Redis,
) -> list[str]:
    """What is not ready yet, by child name (empty: ready)."""
    waiting = [f"{name} (listening on {port})" for name, pid in scps if not serving(pid, port)]
    workers = list(workers)
    if workers:
        registered = registered_workers(client)
        waiting += [f"{name} (registered in RQ)" for name, pid in workers if pid not in registered]
    return waiting
