"""Reconcile and backfill against a PACS that fails: down, refusing, sending garbage,
endless answers, failure statuses, C-MOVEs failing part-way, answers that never come.
Each fault gives one clear line and a non-zero exit within its timeout; nothing already
received is touched, and a rerun picks up where it stopped.

The faulty PACS is tests/hostile_pacs.py, a pynetdicom Q/R SCP, because Orthanc cannot
be made to produce these on demand (those it can are in test_reconcile.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scp import keys
from tests.conftest import ROOT, Pipeline, pipeline_env
from tests.hostile_pacs import HostilePacs
from tests.orthanc import dated_study
from tests.support import free_port, wait_for
from tests.test_pipeline import assert_matches, wait_for_study

DAY = "2021-04-01"
#: The hostile PACS sends invalid values through pydicom, which warns as it writes them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


@pytest.fixture
def hostile(pipeline: Pipeline, tmp_path: Path) -> Iterator[HostilePacs]:
    study = dated_study(tmp_path / "s", [("CT", 4), ("MR", 4)], "20210401")
    pacs = HostilePacs([study], pipeline.port).start()
    yield pacs
    pacs.stop()


def reconcile(
    pipeline: Pipeline, address: str, *flags: str, **extra: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    assert pipeline.redis_url
    env = pipeline_env(pipeline.redis_url, pipeline.output_dir, pipeline.port, **extra)
    began = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scp.cli",
            "reconcile",
            "--pacs",
            address,
            "--since",
            DAY,
            "--until",
            DAY,
            *flags,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, time.monotonic() - began


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("scp2fhir:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_pacs_down(pipeline: Pipeline) -> None:
    result, took = reconcile(pipeline, f"PACS@127.0.0.1:{free_port()}", SCP2FHIR_PACS_TIMEOUT="3")
    assert result.returncode == 3 and result.stdout == ""
    assert "cannot connect to 127.0.0.1:" in one_line(result)
    assert took < 30


def test_association_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    pacs = HostilePacs([], pipeline.port, calling_aets=["SOMEONE"]).start()
    try:
        result, _ = reconcile(pipeline, pacs.address)
    finally:
        pacs.stop()
    assert result.returncode == 3
    line = one_line(result)
    assert "association refused" in line and "calling AE" in line and "SCP2FHIR" in line


@pytest.mark.parametrize(
    ("behaviour", "says"),
    [
        ("garbage-uid", "has no valid StudyInstanceUID (the PACS sent garbage)"),
        ("garbage-count", "not a count (the PACS sent garbage)"),
        ("error", "C-FIND failed with status 0xC001 (database offline)"),
    ],
)
def test_bad_find_answers(
    pipeline: Pipeline, hostile: HostilePacs, behaviour: str, says: str
) -> None:
    hostile.find = behaviour
    result, _ = reconcile(pipeline, hostile.address, "--json")
    assert result.returncode == 3 and result.stdout == ""
    assert says in one_line(result)


def test_thousands_of_results_are_split_then_refused(
    pipeline: Pipeline, hostile: HostilePacs
) -> None:
    hostile.find = "endless"  # 5000 records, whatever the window
    result, took = reconcile(pipeline, hostile.address, SCP2FHIR_PACS_MAX_RESULTS="20")
    assert result.returncode == 3
    assert "more than 20 studies (or more than the PACS sends) on 2021-04-01 between" in one_line(
        result
    )
    # Halving a day down to a minute, depth first: a bounded number of queries.
    assert hostile.finds <= 12
    assert took < 60


def test_find_that_never_answers_times_out(pipeline: Pipeline, hostile: HostilePacs) -> None:
    hostile.find = "slow"
    result, took = reconcile(pipeline, hostile.address, SCP2FHIR_PACS_TIMEOUT="1")
    assert result.returncode == 3
    assert "no C-FIND response within 1 s" in one_line(result)
    assert took < 9  # the PACS would have answered after 10 s


def test_move_that_never_answers_times_out(pipeline: Pipeline, hostile: HostilePacs) -> None:
    hostile.move = "slow"
    result, took = reconcile(pipeline, hostile.address, "--fetch", SCP2FHIR_PACS_MOVE_TIMEOUT="1")
    assert result.returncode == 3
    assert "no C-MOVE response within 1 s" in one_line(result)
    assert took < 9


def _held(data: Any, study_uid: str) -> int:
    return int(data.hlen(keys.study_instances(study_uid)))


@pytest.mark.parametrize(
    ("behaviour", "status", "arrived"),
    [
        ("a702-midway", "0xA702 out of resources, unable to perform sub-operations", 4),
        ("b000", "0xB000 sub-operations complete, one or more failures", 4),
    ],
)
def test_move_failing_part_way_keeps_what_came_and_a_rerun_completes(
    pipeline: Pipeline, hostile: HostilePacs, data: Any, behaviour: str, status: str, arrived: int
) -> None:
    (study,) = hostile.studies
    hostile.move = behaviour
    result, _ = reconcile(pipeline, hostile.address, "--fetch", "--json")
    assert result.returncode == 1, result.stderr
    (entry,) = json.loads(result.stdout)["studies"]
    assert entry["state"] == "missing"
    error = entry["fetch"]["error"]
    assert status in error and f"{arrived} completed, 4 failed" in error
    assert f"fetch study {study.study_uid}: failed: " in result.stderr
    wait_for(lambda: _held(data, study.study_uid) == arrived, 30, "the instances that came")

    hostile.move = "ok"
    result, _ = reconcile(pipeline, hostile.address, "--fetch", "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["studies"]
    assert entry["state"] == "incomplete" and entry["held"] == arrived
    assert_matches(wait_for_study(pipeline, study, 8), study)
