"""Operations: `scp2fhir status`, the web endpoint (metrics, health, status page), logs,
progress display. Real SCP, real worker, real Redis."""

from __future__ import annotations

import json
import logging
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scp import logs
from scp.connections import connect
from scp.settings import Settings
from scp.web import make_server
from tests.conftest import ROOT, Pipeline, pipeline_env
from tests.support import RedisProcess, free_port, make_study, read_json, storescu, wait_for

PATIENT_ID = "OPS-PATIENT-4711"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scp.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def web(redis_url: str) -> Iterator[str]:
    settings = Settings.from_env({"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_QUIET_SECONDS": "1.5"})
    server = make_server(settings, connect(redis_url), free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_status_metrics_and_page_follow_a_study(
    pipeline: Pipeline, web: str, redis_url: str, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "study", [("CT", 5), ("MR", 3)], patient_id=PATIENT_ID)
    storescu(pipeline.port, study.files)
    env = pipeline_env(redis_url, pipeline.output_dir, pipeline.port)

    # While the study is open, status names it with its counts (once folded).
    def listed() -> dict[str, object] | None:
        snap = json.loads(cli("status", "--json", env=env).stdout)
        for entry in snap["open_studies"]:
            if entry["study_uid"] == study.study_uid and entry["instances"] == 8:
                return dict(entry)
        return None

    entry = wait_for(listed, 10, "the open study in `scp2fhir status`", step=0.2)
    assert entry["series"] == 2
    text = cli("status", env=env).stdout
    assert study.study_uid in text and PATIENT_ID not in text

    page = httpx.get(f"{web}/", timeout=10).text
    assert PATIENT_ID not in page

    # After the quiet period it moves to "last emitted", and the metrics count it.
    wait_for(lambda: pipeline.study_file(study.study_uid).exists(), 30, "emission")
    assert read_json(pipeline.study_file(study.study_uid))["numberOfInstances"] == 8
    snap = json.loads(cli("status", "--json", env=env).stdout)
    assert study.study_uid in [e["study_uid"] for e in snap["emitted"]]

    def scraped() -> str | None:
        body = httpx.get(f"{web}/metrics", timeout=10).text
        return (
            body
            if 'scp2fhir_instances_received_total{status="0x0000"} 8.0' in body
            and "scp2fhir_emissions_total 1.0" in body
            else None
        )

    body = wait_for(scraped, 15, "the metrics to show the study", step=0.3)
    assert 'scp2fhir_associations_total{calling_ae="TESTSCU"}' in body
    assert "scp2fhir_receive_to_redis_seconds_count 8.0" in body
    assert "scp2fhir_last_instance_to_emitted_seconds_count 1.0" in body
    assert "scp2fhir_instances_folded_total 8.0" in body
    assert "scp2fhir_open_studies 0.0" in body
    assert httpx.get(f"{web}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{web}/readyz", timeout=5).status_code == 200


def test_readiness_follows_redis(tmp_path: Path) -> None:
    own = RedisProcess().start()
    settings = Settings.from_env({"SCP2FHIR_REDIS_URL": own.url})
    server = make_server(settings, connect(own.url), free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        own.stop()
        assert httpx.get(f"{base}/readyz", timeout=15).status_code == 503
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
        own.stop()


def test_web_requires_credentials_when_configured(redis_url: str) -> None:
    settings = Settings.from_env(
        {
            "SCP2FHIR_REDIS_URL": redis_url,
            "SCP2FHIR_DASHBOARD_USERNAME": "ops",
            "SCP2FHIR_DASHBOARD_PASSWORD": "s3cret",
        }
    )
    server = make_server(settings, connect(redis_url), free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 401
        assert httpx.get(f"{base}/metrics", auth=("ops", "wrong"), timeout=5).status_code == 401
        assert httpx.get(f"{base}/metrics", auth=("ops", "s3cret"), timeout=5).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_json_logs_and_hashed_uids(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "test", "json", hash_uids=True)
    try:
        logging.getLogger("scp.test").info("study=%s emitted", "1.2.840.113619.2.55.3.1")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        entry = json.loads(line)
        assert entry["process"] == "test" and entry["level"] == "INFO"
        assert "1.2.840.113619" not in entry["message"]
        # The first 12 hex digits of sha256(b"1.2.840.113619.2.55.3.1"), worked out outside
        # the code under test (hashlib at a Python prompt), so a changed hash shows here.
        assert entry["message"] == "study=uid:87358e643103 emitted"
    finally:
        logging.getLogger().handlers.clear()


def test_convert_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", [("CT", 3)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    piped = cli("convert", str(tmp_path / "study"), env=env)
    assert piped.returncode == 0 and "\r" not in piped.stderr
    # On a terminal (a pty for stderr) the count is shown.
    leader, follower = pty.openpty()
    result = subprocess.run(
        [sys.executable, "-m", "scp.cli", "convert", str(study.files[0].parent)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=follower,
        timeout=60,
    )
    os.close(follower)
    shown = b""
    try:
        while chunk := os.read(leader, 4096):
            shown += chunk
    except OSError:
        pass  # the pty is drained once the child has gone
    os.close(leader)
    assert result.returncode == 0
    assert b"read 3 instances, 0 unreadable files" in shown
    assert len(result.stdout.splitlines()) == 1


def test_docker_files_are_valid() -> None:
    command = ["docker-compose", "-f", str(ROOT / "docker/compose.yaml"), "config", "-q"]
    unset = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_DASHBOARD")},
    )
    assert unset.returncode != 0, "the dashboard must not start without credentials"
    assert "set SCP2FHIR_DASHBOARD_" in unset.stderr + unset.stdout
    compose = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "SCP2FHIR_DASHBOARD_USERNAME": "ops",
            "SCP2FHIR_DASHBOARD_PASSWORD": "secret",
        },
    )
    assert compose.returncode == 0, compose.stderr
    lint = subprocess.run(
        ["hadolint", str(ROOT / "docker/Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout
