"""What an operator sees in a browser, rendered by headless Chromium with screenshots kept
in ``test-artifacts/``: the RQ dashboard while the system holds one open study and one
failed delivery, and scp2fhir's own status page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from rq import Queue
from rq.registry import FailedJobRegistry

from scp import keys
from scp.connections import connect
from scp.web import make_server
from tests.conftest import ROOT, ScpThread, pipeline_env, start_worker, stop_process
from tests.fhirserver.harness import FhirServer
from tests.support import free_port, make_study, parse_configuration, storescu, wait_for

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


def screenshot(tmp_path: Path, url: str, name: str, size: str) -> Path:
    """The page as Chromium draws it, kept in test-artifacts/ (look at it)."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    chromium(tmp_path, f"--window-size={size}", f"--screenshot={shot}", url)
    assert shot.stat().st_size > 10_000
    return shot


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
    scp = ScpThread(env).start(port)
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
        screenshot(tmp_path, url, "rq-dashboard.png", "1400,1000")
    finally:
        clients.close()
        dashboard.terminate()
        dashboard.wait(10)
        stop_process(worker)
        scp.stop()


# --- scp2fhir's own status page -----------------------------------------------------------


def history_of(web_url: str) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = httpx.get(f"{web_url}/status.json").json()["history"]
    return history


def test_status_page_shows_studies_outcomes_and_charts(redis_url: str, tmp_path: Path) -> None:
    """The page at / of `scp2fhir web`, rendered by Chromium: one study delivered to a real
    FHIR server, one whose delivery waits for a retry (the server went away), one open;
    the charts of the last hour drawn by the server. The screenshot is kept."""
    fhir = FhirServer().start()
    port = free_port()
    env = pipeline_env(
        redis_url,
        tmp_path / "out",
        port,
        SCP2FHIR_FHIR_BASE_URL=fhir.base_url,
        SCP2FHIR_FHIR_TIMEOUT_SECONDS="2",
        SCP2FHIR_FHIR_RETRY_BASE_SECONDS="600",  # the retry stays pending for the test
        SCP2FHIR_FHIR_RETRY_MAX_SECONDS="600",
    )
    parsed = parse_configuration(env)
    scp = ScpThread(env).start(port)
    worker = start_worker(env, tmp_path / "worker.log")
    web = make_server(
        parsed.up,
        parsed.worker.quiet_seconds,
        connect(redis_url),
        free_port(),
        parsed.delivery.names,
    )
    threading.Thread(target=web.serve_forever, daemon=True).start()
    web_url = f"http://127.0.0.1:{web.server_address[1]}"
    url = f"{web_url}/?refresh=0"
    clients = connect(redis_url)
    try:
        delivered = make_study(tmp_path / "a", [("CT", 4), ("MR", 2)])
        storescu(port, delivered.files)
        wait_for(
            lambda: clients.data.hget(keys.study_delivery(delivered.study_uid), "version"),
            60,
            "the first study to be delivered",
            step=0.3,
        )
        fhir.stop()
        waiting = make_study(tmp_path / "b", [("CT", 3)])
        storescu(port, waiting.files)
        wait_for(
            lambda: "attempt 1/" in (tmp_path / "worker.log").read_text(errors="replace"),
            60,
            "the second study's delivery to fail once",
            step=0.3,
        )
        stop_process(worker)  # the next study stays open: received, not folded
        open_study = make_study(tmp_path / "c", [("MR", 2)])
        storescu(port, open_study.files)

        # The SCP counts per minute in its metrics flush, a moment after answering.
        wait_for(
            lambda: sum(m["received"] for m in history_of(web_url)) == 11,
            30,
            "the SCP's counts of all 11 instances",
            step=0.3,
        )
        dom = chromium(tmp_path, "--dump-dom", url)
        rows = {
            uid: re.search(rf"<tr><td>{re.escape(uid)}</td>(.*?)</tr>", dom, re.S)
            for uid in (delivered.study_uid, waiting.study_uid, open_study.study_uid)
        }
        first, second, third = (rows[u] for u in rows)
        assert first and second and third, dom[:3000]
        # Emitted studies: series, instances, when, delay after quiet, both destinations.
        assert re.match(r"<td>2</td><td>6</td><td>\d+s ago</td><td>[\d.]+s</td>", first.group(1))
        assert "written" in first.group(1) and "delivered v1" in first.group(1)
        assert re.match(r"<td>1</td><td>3</td>", second.group(1)) and "pending" in second.group(1)
        # The open study: nothing folded yet, two instances waiting.
        assert re.match(r"<td>0</td><td>0</td><td>2</td>", third.group(1)), third.group(1)
        # Four charts, drawn here: this minute's 11 instances and 2 emissions among them.
        assert dom.count("<svg") == 4
        assert "Instances received per minute (11 in the last hour, 0 refused)" in dom
        assert "Studies emitted per minute (2 in the last hour, 1 delivered to FHIR)" in dom
        assert dom.count("<rect") >= 2 and dom.count("<circle") >= 2
        screenshot(tmp_path, url, "status-page.png", "1200,1100")
    finally:
        clients.close()
        web.shutdown()
        web.server_close()
        stop_process(worker)
        scp.stop()
        fhir.stop()
