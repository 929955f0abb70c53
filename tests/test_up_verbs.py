"""``scp2fhir status`` and the other Redis-using verbs beside a running ``scp2fhir up``:
without SCP2FHIR_REDIS_URL they find up's private Redis in ``<data folder>/up.json``."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import make_study, storescu, wait_for
from tests.up_support import start_up, up_env, verb


def test_status_and_retry_failed_find_the_running_up(tmp_path: Path) -> None:
    env = up_env(SCP2FHIR_QUIET_SECONDS="30")
    up = start_up(tmp_path, env)
    # The operator's shell: no Redis URL, another quiet period than up's.
    shell = {k: v for k, v in env.items() if k != "SCP2FHIR_QUIET_SECONDS"}
    try:
        up.wait_ready()
        state_file = tmp_path / "scp2fhir-data" / "up.json"
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        assert json.loads(state_file.read_text())["pid"] == up.process.pid
        study = make_study(tmp_path / "study", [("CT", 3)])
        wait_for(
            lambda: storescu(up.port, study.files, check=False).returncode == 0,
            60,
            "the SCP to take the study",
            step=0.5,
        )

        def shows_the_study() -> bool:
            result = verb(tmp_path, shell, "status")
            assert result.returncode == 0, result.stderr
            return study.study_uid in result.stdout

        wait_for(shows_the_study, 30, "status to show the open study", step=0.5)
        text = verb(tmp_path, shell, "status").stdout
        assert f"quiet period: 30 s (scp2fhir up pid={up.process.pid})" in text
        found = json.loads(verb(tmp_path, shell, "status", "--json").stdout)
        assert found["quiet_seconds"] == 30 and found["up_pid"] == up.process.pid
        retried = verb(tmp_path, shell, "retry-failed")
        assert retried.returncode == 0 and "re-queued 0" in retried.stderr, retried.stderr
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(120) == 0
    finally:
        up.kill()
    assert not state_file.exists(), "up removes its state when it stops"
    gone = verb(tmp_path, shell, "status")
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.count("\n") == 1 and "no scp2fhir up runs on" in gone.stderr, gone.stderr


@pytest.mark.parametrize("pid", ["dead", "reused"])
def test_a_stale_state_file_is_one_line(tmp_path: Path, pid: str) -> None:
    """The up that wrote up.json is gone; "reused": after a reboot its pid belongs to
    another live process (here a sleep), and up.lock, which no up holds, tells."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    other = subprocess.Popen(["sleep", "120"])
    data = tmp_path / "scp2fhir-data"
    data.mkdir()
    (data / "up.lock").write_text(f"{other.pid}\n")
    state = {
        "pid": other.pid if pid == "reused" else int(dead.stdout),
        "redis_url": "redis://127.0.0.1:1/0",
        "redis_pid": None,
        "quiet_seconds": 60,
        "ae_title": "SCP2FHIR",
        "port": 11112,
        "web_port": 9464,
        "dashboard_port": 9181,
        "started_at": 0,
    }
    (data / "up.json").write_text(json.dumps(state))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")}
    for args in (["status"], ["retry-failed"], ["forget", "--study", "1.2.3"]):
        result = verb(tmp_path, env, *args)
        assert result.returncode == 1, result
        assert result.stderr.count("\n") == 1 and "is stale" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    other.kill()
    other.wait()
