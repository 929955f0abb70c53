"""The command line: configuration errors, `convert`, and `up` as a whole system."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fhir.resources.imagingstudy import ImagingStudy as ImagingStudyR5

from scp.typed_settings import ConfigError
from tests.conftest import CHILD_PYTHONPATH, ROOT, TEST_QUIET_SECONDS
from tests.support import (
    free_port,
    make_study,
    parse_configuration,
    read_json,
    sample_file,
    storescu,
    wait_for,
)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scp.cli", *args],
        cwd=ROOT,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SCP2FHIR_PORT", "99999", "SCP2FHIR_PORT=99999 is out of range 1..65535"),
        ("SCP2FHIR_PORT", "abc", "SCP2FHIR_PORT='abc' is not a whole number"),
        ("SCP2FHIR_AE_TITLE", "A" * 17, "is not a DICOM AE title"),
        ("SCP2FHIR_QUIET_SECONDS", "-1", "must be above 0"),
        ("SCP2FHIR_FHIR_VERSION", "R3", "must be R4 or R5"),
        ("SCP2FHIR_FHIR_BASE_URL", "ftp://x", "is not an http(s) URL"),
        ("SCP2FHIR_REDIS_URL", "http://localhost", "must start with redis://"),
    ],
)
def test_invalid_configuration_fails_with_one_line(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_configuration({variable: value})
    result = cli("up", env={**os.environ, variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_scp_needs_a_redis_url() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SCP2FHIR_REDIS_URL"}
    result = cli("scp", env=env)
    assert result.returncode == 2
    assert "SCP2FHIR_REDIS_URL is not set" in result.stderr


def test_defaults() -> None:
    parsed = parse_configuration({})
    assert (parsed.scp.ae_title, parsed.scp.port) == ("SCP2FHIR", 11112)
    assert parsed.worker.quiet_seconds == 60
    assert parsed.worker.output_dir == Path("out") and parsed.worker.fhir_version == "R4"
    assert parsed.shared.redis_url is None


def test_convert_writes_one_ndjson_line_per_study(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", [("CT", 3), ("MR", 2)])
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    ct = sample_file("CT_small.dcm")
    assert ct
    result = cli("convert", "--fhir-version", "R5", str(tmp_path / "study"), ct)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    resources = {r["identifier"][0]["value"]: r for r in map(json.loads, lines)}
    ours = resources[f"urn:oid:{study.study_uid}"]
    assert ours["numberOfInstances"] == 5 and ours["numberOfSeries"] == 2
    for resource in resources.values():
        ImagingStudyR5.model_validate(resource)
    assert "file=" in result.stderr and "notes.txt" in result.stderr  # the skip is reported


def test_up_runs_the_whole_system_on_a_private_redis(tmp_path: Path) -> None:
    port, web_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")}
    env.update(
        {
            "SCP2FHIR_PORT": str(port),
            "SCP2FHIR_QUIET_SECONDS": str(TEST_QUIET_SECONDS),
            "SCP2FHIR_DASHBOARD_PORT": str(free_port()),
            "SCP2FHIR_WEB_PORT": str(web_port),
            "SCP2FHIR_WORKERS": "1",
            "PYTHONPATH": CHILD_PYTHONPATH,
        }
    )
    log = (tmp_path / "up.log").open("wb")
    # The working directory holds ./out and ./scp2fhir-data, as for a user.
    up = subprocess.Popen(
        [sys.executable, "-m", "scp.cli", "up"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: b"ready:" in (tmp_path / "up.log").read_bytes(), 60, "up to be ready")
        study = make_study(tmp_path / "study", [("CT", 4), ("MR", 2)])
        wait_for(
            lambda: storescu(port, study.files, check=False).returncode == 0,
            60,
            "the SCP to accept the study",
            step=0.5,
        )
        path = tmp_path / "out" / "ImagingStudy" / f"{study.study_uid}.json"
        wait_for(path.exists, 60, "the ImagingStudy file")
        resource = read_json(path)
        assert resource["numberOfInstances"] == 6
        assert (tmp_path / "scp2fhir-data" / "redis").is_dir(), "private Redis data folder"
        ready = wait_for(lambda: _get(f"http://127.0.0.1:{web_port}/readyz"), 30, "/readyz")
        assert ready == 200
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
        log.close()
    output = (tmp_path / "up.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "all processes stopped" in output
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "scp2fhir-data")], capture_output=True, text=True
    )
    assert leftovers.stdout == "", "the private redis-server outlived up"


def _get(url: str) -> int | None:
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return None


def test_readme_documents_every_variable() -> None:
    from scp.variables import VARIABLES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in VARIABLES:
        assert f"`{name}`" in readme, name
