"""The RQ dashboard as ``scp2fhir up`` starts it: where it listens and who may look.

``up`` (the supervisor, its private Redis and its children) runs as a user runs it; a
headless Chromium opens the dashboard as an operator would. Chromium is installed by
``tests/run.sh``: without it this test fails, it never skips.

Bind addresses stay on loopback: 127.0.0.1 and 127.0.0.2 are two addresses of this
machine, and a socket bound to one does not answer on the other, so "listens only on the
configured address" is checked without any traffic leaving the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.support import free_port, wait_for
from tests.test_dashboard import CHROMIUM
from tests.test_dashboard import chromium as browse

ARTIFACTS = ROOT / "test-artifacts"


def chromium(tmp_path: Path, *args: str) -> str:
    """Headless Chromium, as the dashboard test runs it; missing, it is a failure."""
    assert Path(CHROMIUM).exists(), "chromium is missing: tests/run.sh installs it"
    return browse(tmp_path, *args)


def up_env(dashboard_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")}
    env.update(
        {
            "SCP2FHIR_PORT": str(free_port()),
            "SCP2FHIR_SCP_PROCESSES": "1",
            "SCP2FHIR_WORKERS": "1",
            "SCP2FHIR_WEB_PORT": "0",
            "SCP2FHIR_DASHBOARD_PORT": str(dashboard_port),
            "PYTHONPATH": str(ROOT),
            **extra,
        }
    )
    return env


@contextmanager
def running_up(tmp_path: Path, env: dict[str, str]) -> Iterator[Path]:
    log_path = tmp_path / "up.log"
    log = log_path.open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "scp.cli", "up"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: b"ready:" in log_path.read_bytes(), 60, "up to be ready")
        yield log_path
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        log.close()


def status(url: str, auth: tuple[str, str] | None = None) -> int | str:
    """The HTTP status of ``url``, or "refused" when nothing listens there."""
    try:
        return httpx.get(url, auth=auth, timeout=5).status_code
    except httpx.ConnectError:
        return "refused"


def test_up_starts_the_dashboard_on_loopback_without_login(tmp_path: Path) -> None:
    port = free_port()
    with running_up(tmp_path, up_env(port)):
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: status(url) == 200, 60, "the dashboard")
        assert status(f"http://127.0.0.2:{port}/") == "refused", "bound to 127.0.0.1 only"
        dom = chromium(tmp_path, "--dump-dom", url)
        assert "scp2fhir-emit" in dom, "the dashboard shows scp2fhir's queues"


def test_up_starts_the_dashboard_on_the_configured_address_behind_a_login(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = up_env(
        port,
        SCP2FHIR_DASHBOARD_BIND="127.0.0.2",
        SCP2FHIR_DASHBOARD_USERNAME="ops",
        SCP2FHIR_DASHBOARD_PASSWORD="s3cret-pw",
    )
    with running_up(tmp_path, env) as log:
        url = f"http://127.0.0.2:{port}/"
        wait_for(lambda: status(url) != "refused", 60, "the dashboard")
        assert status(f"http://127.0.0.1:{port}/") == "refused", "bound to 127.0.0.2 only"
        assert status(url) == 401, "no page without the login"
        assert status(url, auth=("ops", "wrong")) == 401
        assert status(url, auth=("ops", "s3cret-pw")) == 200
        # In a browser: the login prompt's answer, as an operator types it.
        dom = chromium(tmp_path, "--dump-dom", f"http://ops:s3cret-pw@127.0.0.2:{port}/")
        assert "scp2fhir-emit" in dom
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "rq-dashboard-up.png"
        chromium(
            tmp_path,
            "--window-size=1400,1000",
            f"--screenshot={shot}",
            f"http://ops:s3cret-pw@127.0.0.2:{port}/",
        )
        assert shot.stat().st_size > 10_000
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "s3cret-pw" not in ps, "the password is in no command line"
        assert "s3cret-pw" not in log.read_text(errors="replace"), "the password is never logged"


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.0.2.10"])
def test_up_refuses_an_exposed_dashboard_without_a_login(tmp_path: Path, bind: str) -> None:
    env = up_env(free_port(), SCP2FHIR_DASHBOARD_BIND=bind)
    result = subprocess.run(
        [sys.executable, "-m", "scp.cli", "up"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "SCP2FHIR_DASHBOARD_USERNAME" in result.stderr
    assert not (tmp_path / "scp2fhir-data").exists(), "nothing was started"
