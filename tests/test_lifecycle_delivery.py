"""The FHIR side follows the PACS, end to end: dcmtk storescu -> SCP -> Redis -> worker ->
the real FHIR test server. Rejection notes are KOS documents written by highdicom."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import redis

from scp import keys
from tests import conftest_delivery
from tests.conftest import ROOT, TEST_QUIET_SECONDS, ScpThread, pipeline_env, start_worker
from tests.conftest import stop_process as stop
from tests.conftest_delivery import studies_by_identifier, wait_delivered
from tests.fhirserver.harness import FhirServer
from tests.lifecycle_support import rejection_note
from tests.support import free_port, make_study, read_json, storescu, wait_for
from workers.lifecycle.origin import ORIGIN_TAG

fhir_server = conftest_delivery.fhir_server
fhir = conftest_delivery.fhir

TIMEOUT = TEST_QUIET_SECONDS + 30


@dataclass
class Bridge:
    port: int
    env: dict[str, str]
    out: Path
    worker_log: Path

    def file(self, study_uid: str) -> dict[str, Any]:
        return read_json(self.out / "ImagingStudy" / f"{study_uid}.json")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scp.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def bridge(fhir: FhirServer, redis_url: str, tmp_path: Path) -> Iterator[Bridge]:
    yield from _bridge(fhir, redis_url, tmp_path)


@pytest.fixture
def bundle_bridge(fhir: FhirServer, redis_url: str, tmp_path: Path) -> Iterator[Bridge]:
    yield from _bridge(
        fhir,
        redis_url,
        tmp_path,
        SCP2FHIR_FHIR_BUNDLE="1",
        SCP2FHIR_PATIENT_ID_SYSTEM="urn:oid:1.2.3.4.5",
    )


def _bridge(fhir: FhirServer, redis_url: str, tmp_path: Path, **extra: str) -> Iterator[Bridge]:
    port = free_port()
    env = pipeline_env(
        redis_url, tmp_path / "out", port, SCP2FHIR_FHIR_BASE_URL=fhir.base_url, **extra
    )
    scp = ScpThread(env).start(port)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        yield Bridge(port, env, tmp_path / "out", log)
    finally:
        scp.stop()
        stop(worker)


def versions(base_url: str, resource_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base_url}/ImagingStudy/{resource_id}/_history", timeout=10)
    response.raise_for_status()
    return [entry["resource"] for entry in response.json()["entry"]]


def wait_version(base_url: str, study_uid: str, version: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        found = studies_by_identifier(base_url, study_uid)
        assert len(found) <= 1, "a second ImagingStudy for one study"
        return found[0] if found and found[0]["meta"]["versionId"] == version else None

    result: dict[str, Any] = wait_for(ready, TIMEOUT, f"version {version}")
    return result


def test_rejecting_a_series_removes_it_in_a_new_version(
    bridge: Bridge, fhir: FhirServer, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "s", [("CT", 4), ("MR", 3)])
    storescu(bridge.port, study.files)
    first = wait_delivered(fhir.base_url, study.study_uid, 7, timeout=TIMEOUT)
    assert ORIGIN_TAG in first["meta"]["tag"]
    note = rejection_note(tmp_path / "note", study.files[4:], "113001")
    storescu(bridge.port, [note])
    second = wait_version(fhir.base_url, study.study_uid, "2")
    assert second["id"] == first["id"]
    assert second["numberOfSeries"] == 1 and second["numberOfInstances"] == 4
    assert [m["code"] for m in second["modality"]] == ["CT"]
    assert second["status"] == "available"
    note_uid = str(pydicom.dcmread(note).SOPInstanceUID)
    listed = {i["uid"] for s in second["series"] for i in s["instance"]}
    assert note_uid not in listed, "the rejection note is not an instance"
    assert bridge.file(study.study_uid)["numberOfInstances"] == 4
    # The rejected instances sent again stay rejected: nothing changes.
    storescu(bridge.port, study.files[4:])
    wait_for(
        lambda: bridge.worker_log.read_text().count(f"study={study.study_uid} emitted") >= 3,
        TIMEOUT,
        "the third emission",
    )
    assert studies_by_identifier(fhir.base_url, study.study_uid)[0]["numberOfInstances"] == 4


def test_rejecting_everything_makes_it_entered_in_error(
    bridge: Bridge, fhir: FhirServer, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "s", [("CT", 3), ("MR", 2)])
    storescu(bridge.port, study.files)
    first = wait_delivered(fhir.base_url, study.study_uid, 5, timeout=TIMEOUT)
    storescu(bridge.port, [rejection_note(tmp_path / "n", study.files, "113037")])
    second = wait_version(fhir.base_url, study.study_uid, "2")
    assert second["id"] == first["id"]
    assert second["status"] == "entered-in-error"
    assert second["numberOfInstances"] == 0
    assert bridge.file(study.study_uid)["status"] == "entered-in-error"


def test_a_wrong_patient_correction_resent_updates_the_same_resource(
    bundle_bridge: Bridge, fhir: FhirServer, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "s", [("CT", 4)], patient_id="WRONG-PATIENT")
    storescu(bundle_bridge.port, study.files)
    first = wait_delivered(fhir.base_url, study.study_uid, 4, timeout=TIMEOUT)
    old_patient = first["subject"]["reference"]
    # The PACS reconciles the patient and re-sends only half of the study first.
    for path in study.files:
        ds = pydicom.dcmread(path)
        ds.PatientID = "RIGHT-PATIENT"
        ds.PatientName = "Right^Patient"
        ds.save_as(path, enforce_file_format=True)
    storescu(bundle_bridge.port, study.files[:2])
    second = wait_version(fhir.base_url, study.study_uid, "2")
    assert second["id"] == first["id"]
    new_patient = second["subject"]["reference"]
    assert new_patient != old_patient
    patient = httpx.get(f"{fhir.base_url}/{new_patient}", timeout=10).json()
    assert patient["identifier"][0]["value"] == "RIGHT-PATIENT"
    assert ORIGIN_TAG in patient["meta"]["tag"]
    # The old Patient is never deleted.
    assert httpx.get(f"{fhir.base_url}/{old_patient}", timeout=10).status_code == 200
    # The rest re-sent: the same subject, no second Patient.
    storescu(bundle_bridge.port, study.files[2:])
    wait_for(
        lambda: bundle_bridge.worker_log.read_text().count(f"study={study.study_uid} emitted") >= 3,
        TIMEOUT,
        "the third emission",
    )
    patients = httpx.get(f"{fhir.base_url}/Patient", timeout=10).json().get("entry", [])
    assert len(patients) == 2
    assert len(studies_by_identifier(fhir.base_url, study.study_uid)) == 1


def test_retract_then_forget(
    bridge: Bridge, fhir: FhirServer, redis_url: str, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "s", [("MR", 3)])
    storescu(bridge.port, study.files)
    first = wait_delivered(fhir.base_url, study.study_uid, 3, timeout=TIMEOUT)
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    # forget before retract is refused
    refused = bridge.cli("forget", "--study", study.study_uid)
    assert refused.returncode == 1 and "not retracted" in refused.stderr

    result = bridge.cli("retract", "--study", study.study_uid, "--reason", "wrong order\nx")
    assert result.returncode == 0, result.stderr
    assert "retraction recorded" in result.stdout
    assert "audit: retract study=" in result.stderr and '"wrong order x"' in result.stderr
    assert "TEST-PID-1" not in result.stderr + result.stdout
    second = wait_version(fhir.base_url, study.study_uid, "2")
    assert second["id"] == first["id"] and second["status"] == "entered-in-error"
    assert bridge.file(study.study_uid)["status"] == "entered-in-error"
    # Idempotent: again, no new version.
    again = bridge.cli("retract", "--study", study.study_uid)
    assert again.returncode == 0 and "already retracted" in again.stdout
    wait_for(lambda: data.zscore(keys.DELIVER_PENDING, study.study_uid) is None, 20, "delivery")
    assert studies_by_identifier(fhir.base_url, study.study_uid)[0]["meta"]["versionId"] == "2"

    # A later C-STORE of the study: it stays retracted (SCP2FHIR_RETRACTED_ON_STORE=stay).
    late = make_study(tmp_path / "late", [("CT", 1)], study_uid=study.study_uid)
    storescu(bridge.port, late.files)
    third = wait_delivered(fhir.base_url, study.study_uid, 4, timeout=TIMEOUT)
    assert third["status"] == "entered-in-error"
    wait_for(lambda: data.zscore(keys.DELIVER_PENDING, study.study_uid) is None, 20, "delivery")

    gone = bridge.cli("forget", "--study", study.study_uid)
    assert gone.returncode == 0, gone.stderr
    assert "audit: forget study=" in gone.stderr
    assert data.keys(f"scp2fhir:study:{study.study_uid}*") == []
    assert data.zscore(keys.EMITTED, study.study_uid) is None
    data.close()


def test_a_resource_scp2fhir_did_not_write_is_never_overwritten(
    bridge: Bridge, fhir: FhirServer, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "s", [("CT", 2)])
    foreign = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_uid}"}],
        "subject": {"display": "someone else's export"},
    }
    created = httpx.post(
        f"{fhir.base_url}/ImagingStudy",
        json=foreign,
        headers={"Content-Type": "application/fhir+json"},
        timeout=10,
    )
    assert created.status_code == 201
    storescu(bridge.port, study.files)
    wait_for(lambda: "ForeignResource" in bridge.worker_log.read_text(), TIMEOUT, "refusal")
    (kept,) = studies_by_identifier(fhir.base_url, study.study_uid)
    assert kept["meta"]["versionId"] == "1" and "numberOfInstances" not in kept
    # Nor is it retracted.
    bridge.cli("retract", "--study", study.study_uid)
    wait_for(
        lambda: bridge.worker_log.read_text().count("ForeignResource") >= 2, TIMEOUT, "refusal"
    )
    (kept,) = studies_by_identifier(fhir.base_url, study.study_uid)
    assert kept["meta"]["versionId"] == "1" and kept["status"] == "available"
