"""The RQ dashboard, as an operator sees it in a browser: headless Chromium renders it while
the system holds one open study and one failed delivery; a screenshot is kept as an artifact.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from rq import Queue
from rq.registry import FailedJobRegistry

from scp import keys
from scp.connections import connect
from scp.settings import Settings
from tests.conftest import ROOT, ScpThread, pipeline_env, start_worker, stop_process
from tests.support import free_port, make_study, storescu, wait_for

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=8000",
]


def chromium(tmp_path: Path, *args: str) -> str:
    result = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chr'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def count(dom: str, queue: str, state: str) -> int:
    match = re.search(rf'/view/jobs/{re.escape(queue)}/{state}/[^"]*">\s*(\d+)\s*<', dom)
    assert match, f"no {state} count for {queue} on the page"
    return int(match.group(1))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is installed by tests/run.sh")
def test_dashboard_shows_an_open_study_and_a_failed_delivery(
    redis_url: str, tmp_path: Path
) -> None:
    port, closed_port = free_port(), free_port()  # nothing listens on closed_port
    env = pipeline_env(
        redis_url,
        tmp_path / "out",
        port,
        SCP2FHIR_FHIR_BASE_URL=f"http://127.0.0.1:{closed_port}/fhir",
        SCP2FHIR_FHIR_MAX_ATTEMPTS="1",
    )
    scp = ScpThread(Settings.from_env(env)).start(port)
    worker = start_worker(env, tmp_path / "worker.log")
    dashboard_port = free_port()
    dashboard = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rq_dashboard",
            "--bind",
            "127.0.0.1",
            "--port",
            str(dashboard_port),
            "--redis-url",
            redis_url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    clients = connect(redis_url)
    try:
        # A study is emitted and its delivery fails: the FHIR server is unreachable.
        delivered = make_study(tmp_path / "a", [("CT", 3)])
        storescu(port, delivered.files)
        failed = FailedJobRegistry(queue=Queue(keys.DELIVER_QUEUE, connection=clients.rq))
        wait_for(lambda: failed.count == 1, 60, "the delivery to fail", step=0.5)
        # Without a worker, the next study stays open: received, not yet folded or quiet.
        stop_process(worker)
        open_study = make_study(tmp_path / "b", [("MR", 2)])
        storescu(port, open_study.files)
        assert clients.data.zscore(keys.OPEN_STUDIES, open_study.study_uid) is not None

        url = f"http://127.0.0.1:{dashboard_port}/"
        wait_for(lambda: _answers(url), 30, "the dashboard")
        dom = chromium(tmp_path, "--dump-dom", url)
        assert count(dom, keys.DELIVER_QUEUE, "failed") == 1
        assert count(dom, keys.FOLD_QUEUE, "queued") >= 1, "the open study's fold is queued"
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "rq-dashboard.png"
        chromium(tmp_path, "--window-size=1400,1000", f"--screenshot={shot}", url)
        assert shot.stat().st_size > 10_000
    finally:
        clients.close()
        dashboard.terminate()
        dashboard.wait(10)
        stop_process(worker)
        scp.stop()
