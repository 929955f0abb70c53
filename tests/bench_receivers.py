"""The receivers the benchmark compares, and the sender (dcmtk ``storescu``).

Each receiver is started on a free loopback port, answers C-ECHO before it is used and
says which processes are its own (``roles``), so that the benchmark can read their CPU
time and peak memory from /proc, and how many instances it holds (``received``), so that
a send that lost instances is an error instead of a fast figure:

* ``Storescp``: dcmtk's storescp writing every file to a folder (``--fork`` for parallel
  associations), the reference;
* ``Orthanc``: Debian's Orthanc with its own SQLite index and file storage;
* ``PynetdicomStorescp``: the storescp application shipped with pynetdicom, run with
  ``--ignore`` (receives every dataset, stores nothing) and its defaults otherwise;
* ``Scp``: ``scp2fhir scp`` alone against a private Redis configured as ``scp2fhir up``'s
  (append-only file, fsync every second); Success is sent after Redis has the header;
* ``System``: the whole of ``scp2fhir up`` (its SCP processes, workers, private Redis).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import httpx
import redis

from scp import keys
from scp.up.embedded_redis import EmbeddedRedis
from tests.bench_procs import cmdline, peak_rss_kib, read_stat
from tests.orthanc import ORTHANC, OrthancProcess
from tests.support import DCMTK_ENV, dcmtk, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
AE_TITLE = "SCP2FHIR"


class SendFailed(RuntimeError):
    pass


def send(port: int, groups: Sequence[Sequence[Path]], ae_title: str = AE_TITLE) -> float:
    """Send each group over its own ``storescu`` association, all at once; returns the
    seconds until the last one ended. A group names files or folders (``+sd +r``: scanned
    recursively). Any error line of a storescu, or a failed exit, raises SendFailed."""
    began = time.perf_counter()
    command = [dcmtk("storescu"), "+sd", "+r", "-aec", ae_title, "127.0.0.1", str(port)]
    procs = [
        subprocess.Popen(
            [*command, *map(str, paths)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for paths in groups
    ]
    errors = []
    for proc in procs:
        _, err = proc.communicate()
        text = err.decode(errors="replace")
        if proc.returncode != 0 or re.search(r"^(E|F):", text, re.MULTILINE):
            errors.append(f"storescu exit {proc.returncode}: {text[-800:]}")
    seconds = time.perf_counter() - began
    if errors:
        raise SendFailed("; ".join(errors))
    return seconds


def echoes(port: int) -> bool:
    result = subprocess.run(
        [dcmtk("echoscu"), "-aec", AE_TITLE, "127.0.0.1", str(port)],
        env=DCMTK_ENV,
        capture_output=True,
    )
    return result.returncode == 0


def _wait_ready(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        return echoes(port)

    wait_for(ready, timeout, what, step=0.2)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _python_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a Python child: no SCP2FHIR_* of the caller; the project (and
    whatever was on PYTHONPATH, e.g. the tests' network guard) importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    env.update(extra)
    return env


def tool_version(command: Sequence[str], pattern: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return "?"
    found = re.search(pattern, out.stdout + out.stderr)
    return found.group(1) if found else "?"


def _scp2fhir(
    verb: str, port: int, cwd: Path, extra_env: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], BinaryIO]:
    """Start ``scp2fhir VERB`` listening on loopback ``port``, logging (warnings and
    worse) to VERB.log in ``cwd``."""
    env = {
        "SCP2FHIR_PORT": str(port),
        "SCP2FHIR_BIND": "127.0.0.1",
        "SCP2FHIR_LOG_LEVEL": "WARNING",
        **extra_env,
    }
    log = (cwd / f"{verb}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scp.cli", verb],
        cwd=cwd,
        env=_python_env(env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, log


class Storescp:
    """dcmtk's storescp writing to a temporary folder: the reference receiver."""

    key = "storescp"

    def __init__(self, fork: bool) -> None:
        self.label = "dcmtk storescp (to disk" + (", --fork)" if fork else ")")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-storescp-"))
        args = [dcmtk("storescp"), "-od", str(self.dir), "-aet", AE_TITLE]
        if fork:
            args.append("--fork")
        self.proc = subprocess.Popen(
            [*args, str(self.port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_ready(self.port, self.proc, "storescp", 10)

    def roles(self) -> dict[str, list[int]]:
        return {"storescp": [self.proc.pid]}

    def received(self) -> int | None:
        return sum(1 for _ in self.dir.iterdir())

    def stop(self) -> None:
        _stop(self.proc, 10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Orthanc:
    """A private Orthanc (tests/orthanc.py: its own storage, TCP_NODELAY=1)."""

    key = "orthanc"

    def __init__(self) -> None:
        version = tool_version([str(ORTHANC), "--version"], r"Orthanc ([\d.]+)")
        self.label = f"Orthanc {version} (SQLite index + files)"
        self.pacs = OrthancProcess().start()
        self.port = self.pacs.dicom_port
        _wait_ready(self.port, self._process(), "Orthanc", 30)

    def _process(self) -> subprocess.Popen[bytes]:
        assert self.pacs.process is not None
        return self.pacs.process

    def roles(self) -> dict[str, list[int]]:
        return {"orthanc": [self._process().pid]}

    def received(self) -> int | None:
        statistics = httpx.get(f"{self.pacs.url}/statistics", timeout=30).json()
        return int(statistics["CountInstances"])

    def stop(self) -> None:
        self.pacs.remove()


class PynetdicomStorescp:
    """``python -m pynetdicom storescp --ignore``: pynetdicom's own app, stock settings
    (its default maximum PDU of 16382 bytes included); it stores nothing."""

    key = "pynetdicom"

    def __init__(self) -> None:
        from importlib.metadata import version

        self.label = f"pynetdicom {version('pynetdicom')} storescp --ignore"
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pynetdicom", "storescp", "--ignore", "-q",
             "-ba", "127.0.0.1", str(self.port)],
            env=_python_env({}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_ready(self.port, self.proc, "pynetdicom storescp", 30)

    def roles(self) -> dict[str, list[int]]:
        return {"pynetdicom": [self.proc.pid]}

    def received(self) -> int | None:
        return None  # it keeps nothing to count; storescu's errors are checked instead

    def stop(self) -> None:
        _stop(self.proc, 10)


class Scp:
    """``scp2fhir scp`` alone (no workers: the inbox only grows) against a private Redis
    with the same durability settings as ``scp2fhir up``'s."""

    key = "scp"

    def __init__(
        self, extra_env: Mapping[str, str] | None = None, key: str = "scp", label: str = ""
    ) -> None:
        self.key = key
        self.label = label or "scp2fhir scp (Success after Redis)"
        self.port = free_port()
        self.cwd = Path(tempfile.mkdtemp(prefix="bench-scp-"))
        self.redis = EmbeddedRedis(self.cwd / "redis")
        self.redis.start()
        self.client = redis.Redis.from_url(self.redis.url)
        env = {"SCP2FHIR_REDIS_URL": self.redis.url, **(extra_env or {})}
        self.proc, self.log = _scp2fhir("scp", self.port, self.cwd, env)
        _wait_ready(self.port, self.proc, "scp2fhir scp", 60)

    def roles(self) -> dict[str, list[int]]:
        assert self.redis.process is not None
        return {"scp": [self.proc.pid], "redis": [self.redis.process.pid]}

    def received(self) -> int | None:
        return int(self.client.xlen(keys.INBOX))

    def redis_bytes(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def peak_rss_kib(self) -> int:
        """The largest of its processes' (the acceptors do the work, scp.prefork)."""
        return max(peak_rss_kib(pid) for pid in [self.proc.pid, *_children(self.proc.pid)])

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()
        self.client.close()
        self.redis.stop()
        shutil.rmtree(self.cwd, ignore_errors=True)


class System:
    """``scp2fhir up`` with a private Redis in a temporary working directory."""

    key = "up"

    def __init__(self, extra_env: Mapping[str, str], quiet_seconds: float = 2.0) -> None:
        self.port = free_port()
        self.quiet_seconds = quiet_seconds
        self.cwd = Path(tempfile.mkdtemp(prefix="bench-scp2fhir-"))
        env = {
            "SCP2FHIR_QUIET_SECONDS": str(quiet_seconds),
            "SCP2FHIR_DASHBOARD_PORT": "0",
            "SCP2FHIR_WEB_PORT": "0",
            **extra_env,
        }
        self.proc, self.log = _scp2fhir("up", self.port, self.cwd, env)
        self._roles: dict[str, list[int]] = {}
        _wait_ready(self.port, self.proc, "scp2fhir up", 60)
        counts = {role: len(pids) for role, pids in self.roles().items()}
        # One scp child forks its acceptors (scp.prefork); they are the SCP processes.
        acceptors = sum(len(_children(pid)) or 1 for pid in self.roles().get("scp", []))
        self.label = f"scp2fhir up ({acceptors} scp, {counts.get('worker', 0)} workers)"

    def output(self, study_uid: str) -> Path:
        return self.cwd / "out" / "ImagingStudy" / f"{study_uid}.json"

    def complete(self, study_uid: str, instances: int) -> bool:
        """Whether the ImagingStudy of ``study_uid`` is written with all ``instances``."""
        try:
            resource = json.loads(self.output(study_uid).read_text())
            return bool(resource["numberOfInstances"] == instances)
        except (OSError, ValueError, KeyError):
            return False

    def roles(self) -> dict[str, list[int]]:
        """The supervisor's children by role (a child's own children count as its role);
        looked up again only when one of them is gone (the supervisor restarted it)."""
        known = [pid for pids in self._roles.values() for pid in pids]
        if not known or not all(Path(f"/proc/{pid}").exists() for pid in known):
            self._roles = {}
            for pid in _children(self.proc.pid):
                self._roles.setdefault(_role(cmdline(pid)), []).append(pid)
        return self._roles

    def redis_url(self) -> str:
        # redis-server rewrites its command line to "redis-server 127.0.0.1:PORT".
        for pid in self.roles().get("redis", []):
            cmd = cmdline(pid)
            if "--port" in cmd:
                return f"redis://127.0.0.1:{cmd[cmd.index('--port') + 1]}/0"
            return f"redis://{cmd[0].split()[-1]}/0"
        raise RuntimeError("private redis-server not found")

    def received(self) -> int | None:
        return None  # the workers drain the inbox; the ImagingStudy is checked instead

    def stop(self) -> None:
        _stop(self.proc, 60)
        self.log.close()
        shutil.rmtree(self.cwd, ignore_errors=True)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and stat.ppid == pid:
                found.append(stat.pid)
    return found


def _role(cmd: list[str]) -> str:
    if cmd and "redis-server" in cmd[0]:
        return "redis"
    if "scp.cli" in cmd:
        for verb in ("scp", "worker", "web"):
            if verb in cmd:
                return verb
    if "rq_dashboard" in cmd:
        return "dashboard"
    return "other"
