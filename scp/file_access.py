"""Who may read the files scp2fhir writes (``SCP2FHIR_FILE_ACCESS``).

ImagingStudy files and the private Redis's append-only file hold patient data, so by
default only the account scp2fhir runs as may read them:

* ``private`` (default): files 0600, folders 0700;
* ``group``: files 0640, folders 0750 (a reader in the service's group, e.g. an import
  job, may read; nobody may write);
* ``umask``: as the process umask makes them (files 0666, folders 0777, masked).

Only folders scp2fhir creates get the folder mode: an existing folder (an operator's
``out/``) keeps the permissions its owner gave it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

FileAccess = Literal["private", "group", "umask"]
ACCESS_CHOICES: tuple[FileAccess, ...] = ("private", "group", "umask")

_MODES: dict[str, tuple[int, int]] = {"private": (0o600, 0o700), "group": (0o640, 0o750)}


def process_umask() -> int:
    """The umask, read from ``/proc/self/status`` (Linux 4.7+): setting it to read it back
    would leave it 0 for a moment for the whole process, and a file another thread creates
    then would be world-writable. Only without that line, the set-and-restore way."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0)
    os.umask(current)
    return current


def file_mode(access: str) -> int:
    if access in _MODES:
        return _MODES[access][0]
    return 0o666 & ~process_umask()


def dir_mode(access: str) -> int:
    if access in _MODES:
        return _MODES[access][1]
    return 0o777 & ~process_umask()


def umask_for(access: str) -> int | None:
    """The umask a child process (redis-server) runs under, so that what it creates gets
    the access; None: the inherited one."""
    if access in _MODES:
        return 0o777 & ~_MODES[access][1]
    return None


def make_dirs(path: Path, access: str) -> None:
    """``mkdir -p`` where each folder created gets :func:`dir_mode` (not masked by the
    umask); existing ones are left as they are."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    mode = dir_mode(access)
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another process made it first: theirs, same setting
        os.chmod(folder, mode)
