"""One ``scp2fhir up`` per data folder: ``<data folder>/up.lock``, held with ``flock``.

A second ``up`` on the same folder would start a second Redis on the same append-only
file. The kernel releases the lock when the holder dies, kill -9 included, so a stale
file never blocks a restart. The holder's pid is written into the file to name it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from scp.file_access import make_dirs

NAME = "up.lock"
#: How long :func:`acquire` retries a lock that is taken: :func:`held` takes it shared for
#: an instant, and an ``up`` starting in that instant must not be refused.
RETRY_SECONDS = 1.0


class FolderInUse(RuntimeError):
    """Another ``up`` holds the folder (one line, for the operator)."""


def acquire(data_dir: Path, access: str = "private") -> int:
    """The locked file's descriptor (keep it open while running; children do not inherit
    it: ``subprocess`` closes descriptors). A data folder it creates gets the mode of
    ``access`` (``SCP2FHIR_FILE_ACCESS``): the private Redis keeps patient data there."""
    make_dirs(data_dir, access)
    where = data_dir / NAME
    fd = os.open(where, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderInUse(
            f"{data_dir.resolve()} is in use by scp2fhir up pid={holder} "
            f"(one up per data folder; stop it or set SCP2FHIR_DATA_DIR)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def held(data_dir: Path) -> bool:
    """Whether an ``up`` holds ``data_dir``'s lock now. Not the pid in ``up.json``: after a
    reboot that pid may belong to another process. A shared lock taken (and released at
    once) means nobody holds the exclusive one."""
    try:
        fd = os.open(data_dir / NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the shared lock, if taken
    return False
