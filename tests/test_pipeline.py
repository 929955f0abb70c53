"""End to end: dcmtk storescu -> SCP -> Redis -> RQ worker -> ImagingStudy JSON."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from fhir.resources.R4B.imagingstudy import ImagingStudy as ImagingStudyR4B

from tests.conftest import TEST_QUIET_SECONDS, Pipeline
from tests.support import GeneratedStudy, make_study, read_json, storescu, wait_for

EMIT_TIMEOUT = TEST_QUIET_SECONDS + 30


def wait_for_study(pipeline: Pipeline, study: GeneratedStudy, instances: int) -> dict[str, Any]:
    path = pipeline.study_file(study.study_uid)

    def complete() -> dict[str, Any] | None:
        if not path.exists():
            return None
        resource = read_json(path)
        return resource if resource["numberOfInstances"] == instances else None

    result: dict[str, Any] = wait_for(complete, EMIT_TIMEOUT, f"{instances} instances in {path}")
    return result


def sop_uids(resource: dict[str, Any]) -> list[str]:
    return [i["uid"] for s in resource["series"] for i in s["instance"]]


def assert_matches(resource: dict[str, Any], study: GeneratedStudy) -> None:
    assert resource["identifier"][0] == {
        "use": "official",
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{study.study_uid}",
    }
    assert resource["numberOfSeries"] == len(study.series)
    assert resource["numberOfInstances"] == len(study.sop_uids)
    uids = sop_uids(resource)
    assert len(uids) == len(set(uids)), "an instance appears twice"
    assert set(uids) == study.sop_uids
    for series in resource["series"]:
        assert series["numberOfInstances"] == len(series["instance"])
        assert [i["uid"] for i in series["instance"]] and set(
            i["uid"] for i in series["instance"]
        ) == set(study.series[series["uid"]])
    ImagingStudyR4B.model_validate(resource)


def test_multi_series_study_becomes_one_imaging_study(pipeline: Pipeline, tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", [("CT", 12), ("MR", 7), ("CT", 3)])
    storescu(pipeline.port, study.files)
    resource = wait_for_study(pipeline, study, 22)
    assert_matches(resource, study)
    assert [s["number"] for s in resource["series"]] == [1, 2, 3]
    assert [s["modality"]["code"] for s in resource["series"]] == ["CT", "MR", "CT"]
    assert [m["code"] for m in resource["modality"]] == ["CT", "MR"]
    assert [i["number"] for i in resource["series"][0]["instance"]] == list(range(1, 13))
    # Exactly one resource: the study's id is derived from its UID.
    assert list((pipeline.output_dir / "ImagingStudy").glob("*.json")) == [
        pipeline.study_file(study.study_uid)
    ]


def test_interleaved_studies_on_parallel_associations(pipeline: Pipeline, tmp_path: Path) -> None:
    first = make_study(tmp_path / "a", [("CT", 15), ("MR", 5)])
    second = make_study(tmp_path / "b", [("MR", 10), ("CT", 10)], patient_id="TEST-PID-2")
    # Four associations at once, each carrying part of both studies.
    parts: list[list[Path]] = [[], [], [], []]
    for index, path in enumerate(first.files + second.files):
        parts[index % 4].append(path)
    errors: list[BaseException] = []

    def send(files: list[Path]) -> None:
        try:
            storescu(pipeline.port, files)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert_matches(wait_for_study(pipeline, first, 20), first)
    assert_matches(wait_for_study(pipeline, second, 20), second)


def test_duplicate_resend_counts_once(pipeline: Pipeline, tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", [("CT", 5), ("MR", 4)])
    storescu(pipeline.port, study.files)
    storescu(pipeline.port, study.files[:6])  # the same instances again, in the same period
    resource = wait_for_study(pipeline, study, 9)
    assert_matches(resource, study)


def test_late_instance_reopens_and_rewrites(pipeline: Pipeline, tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", [("CT", 4), ("MR", 3)])
    late = study.files.pop()  # an MR instance that arrives after the study was emitted
    storescu(pipeline.port, study.files)
    first = wait_for_study(pipeline, study, 6)
    assert first["numberOfInstances"] == 6
    emitted_at = pipeline.study_file(study.study_uid).stat().st_mtime_ns

    storescu(pipeline.port, [late])
    study.files.append(late)
    second = wait_for_study(pipeline, study, 7)
    assert_matches(second, study)
    assert pipeline.study_file(study.study_uid).stat().st_mtime_ns > emitted_at


def test_echo(pipeline: Pipeline) -> None:
    result = subprocess.run(
        ["/usr/bin/echoscu", "-aec", "SCP2FHIR", "127.0.0.1", str(pipeline.port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_nothing_is_emitted_before_the_quiet_period(pipeline: Pipeline, tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", [("CT", 2)])
    storescu(pipeline.port, study.files)
    sent = time.monotonic()
    resource = wait_for_study(pipeline, study, 2)
    assert time.monotonic() - sent >= TEST_QUIET_SECONDS * 0.9
    assert_matches(resource, study)
