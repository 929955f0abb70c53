"""``scp2fhir up`` as an operator runs it, for the supervisor's tests: a real process in
a process group of its own (so a signal to the group is a Ctrl-C in its terminal), its
output in a file, its working directory holding ``./scp2fhir-data`` and ``./out``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE, StoragePresentationContexts

from tests.conftest import CHILD_PYTHONPATH
from tests.faults import children_of
from tests.support import free_port, wait_for

#: Acceptor processes of up's SCP in these tests (SCP2FHIR_SCP_PROCESSES).
SCP_PROCESSES = 2


def up_env(**extra: str) -> dict[str, str]:
    """Production settings on free loopback ports, a private Redis, a short quiet period."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")}
    env.update(
        {
            "SCP2FHIR_PORT": str(free_port()),
            "SCP2FHIR_WEB_PORT": str(free_port()),
            "SCP2FHIR_DASHBOARD_PORT": str(free_port()),
            "SCP2FHIR_QUIET_SECONDS": "3",
            # Not the default (usable cores): the same acceptors on any machine.
            "SCP2FHIR_SCP_PROCESSES": str(SCP_PROCESSES),
            "PYTHONPATH": CHILD_PYTHONPATH,
            **extra,
        }
    )
    return env


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    log: Path
    env: Mapping[str, str]

    @property
    def port(self) -> int:
        return int(self.env["SCP2FHIR_PORT"])

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"up exited {self.process.returncode}: {self.output()}")
            return "ready:" in self.output()

        wait_for(ready, timeout, "up to be ready", step=0.2)

    def signal_group(self, signum: int) -> None:
        """As the terminal does on Ctrl-C: the signal to every process of up's group."""
        os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """Everything up started, whatever state it is in (test cleanup): its children
        run in process groups of their own, and without the fix under test they may
        outlive it, so each one found under it (or started in its folder) goes too."""
        family = children_of(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        for pid in family + started_in(self.log.parent):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def started_in(folder: Path) -> list[int]:
    """Processes whose working directory is ``folder`` or below (an orphaned child of an
    up the test started there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            found.append(int(entry.name))
    return found


def start_up(cwd: Path, env: Mapping[str, str], log_name: str = "up.log") -> Up:
    log = cwd / log_name
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "scp.cli", "up"],
            cwd=cwd,
            env=dict(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Up(process, log, env)


@dataclass
class Sender:
    """One association sending ``files`` in turn until :meth:`finish` (or the files run
    out), then releasing it; a thread, so the test can signal ``up`` meanwhile."""

    port: int
    files: list[Path]
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Seconds between instances: a modality that is still sending when up is stopped.
    pause: float = 0.1
    released: bool = False
    aborted: bool = False
    sent: threading.Event = field(default_factory=threading.Event)
    _finish_after: int | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Sender:
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self._thread.start()
        return self

    def finish_after(self, more: int) -> None:
        """Send ``more`` instances after those already answered, then release."""
        self._finish_after = len(self.statuses) + more

    def join(self, timeout: float = 120) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the association did not end"

    def _run(self) -> None:
        ae = AE(ae_title="TESTSCU")
        ae.requested_contexts = StoragePresentationContexts[:127]
        assoc = ae.associate("127.0.0.1", self.port, ae_title="SCP2FHIR")
        if not assoc.is_established:
            self.errors.append("not established")
            return
        for path in self.files:
            if self._finish_after is not None and len(self.statuses) >= self._finish_after:
                break
            if not assoc.is_established:
                self.errors.append(f"association gone after {len(self.statuses)} instances")
                break
            status = assoc.send_c_store(pydicom.dcmread(path))
            if "Status" not in status:
                self.errors.append(f"no response after {len(self.statuses)} instances")
                break
            self.statuses.append(int(status.Status))
            if len(self.statuses) >= 5:
                self.sent.set()
            time.sleep(self.pause)
        if assoc.is_established:
            assoc.release()
        self.released = assoc.is_released
        self.aborted = assoc.is_aborted
        self.sent.set()


def store(port: int, files: list[Path]) -> list[int]:
    """Send ``files`` over one association; their C-STORE statuses (empty: no association)."""
    ae = AE(ae_title="TESTSCU")
    ae.requested_contexts = StoragePresentationContexts[:127]
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")
    if not assoc.is_established:
        return []
    statuses = []
    for path in files:
        status = assoc.send_c_store(pydicom.dcmread(path))
        statuses.append(int(status.Status) if "Status" in status else -1)
    assoc.release()
    return statuses


def state(cwd: Path) -> dict[str, Any]:
    """The running up's ``up.json``."""
    return dict(json.loads((cwd / "scp2fhir-data" / "up.json").read_text()))


def verb(
    cwd: Path, env: Mapping[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``scp2fhir <args>`` run from ``cwd`` (where ``up`` runs), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "scp.cli", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
