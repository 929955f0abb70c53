"""``<data folder>/up.json``: how the other verbs find a running ``scp2fhir up``.

The private Redis listens on a free port chosen at start, so ``scp2fhir status``, ``web``,
``retry-failed``, ``retract`` and ``forget`` run beside ``up`` without SCP2FHIR_REDIS_URL
read its URL here, with the settings ``up`` runs with (the quiet period) so that what they
report is what ``up`` does. ``up`` writes it once everything runs and removes it when it
stops; mode 0600 (the URL may carry a password).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from scp.processes import running
from scp.up import lock

#: The file's name in the data folder.
NAME = "up.json"


class UpNotRunning(RuntimeError):
    """No ``up`` runs on this data folder (one line, for the operator)."""


@dataclass(frozen=True)
class UpState:
    pid: int
    redis_url: str
    #: The private Redis's pid (None: an external Redis, SCP2FHIR_REDIS_URL).
    redis_pid: int | None
    quiet_seconds: float
    ae_title: str
    port: int
    web_port: int
    dashboard_port: int
    started_at: float


def path(data_dir: Path) -> Path:
    return data_dir / NAME


def write(data_dir: Path, state: UpState) -> Path:
    """Atomically: a reader never sees half a file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = path(data_dir)
    temporary = target.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(state), handle, indent=2)
        handle.write("\n")
    os.replace(temporary, target)
    return target


def remove(data_dir: Path, pid: int) -> None:
    """Only our own file: a second ``up`` refused on this folder must not remove it."""
    try:
        if json.loads(path(data_dir).read_text(encoding="utf-8")).get("pid") == pid:
            path(data_dir).unlink()
    except (OSError, ValueError):
        pass


def read(data_dir: Path) -> UpState:
    """The running ``up``'s state; :class:`UpNotRunning` when there is none or it is stale."""
    where = path(data_dir).resolve()
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
        state = UpState(**data)
    except FileNotFoundError:
        raise UpNotRunning(
            f"SCP2FHIR_REDIS_URL is not set and no scp2fhir up runs on {data_dir.resolve()} "
            f"(no {NAME}; set SCP2FHIR_REDIS_URL or SCP2FHIR_DATA_DIR)"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise UpNotRunning(f"{where} is unreadable ({exc}); is scp2fhir up running?") from None
    if not running(state.pid) or not lock.held(data_dir):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.started_at))
        raise UpNotRunning(
            f"{where} is stale: scp2fhir up pid={state.pid} (started {started}) is not running "
            f"(it holds no lock on {data_dir.resolve() / lock.NAME})"
        )
    return state
