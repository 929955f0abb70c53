"""Radiation dose reports (built with highdicom, tests/dose_reports.py) -> dose
Observations, every number checked against the SR content by an independent walk of
the report with pydicom."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from scp.header import extract_header, read_dataset, read_header
from tests.conftest import Pipeline
from tests.dose_reports import ct_dose_report, ct_events, xray_dose_report
from tests.fhirserver.harness import FhirServer
from tests.samples import aggregate, enriched_ct, summary_of
from tests.support import read_json, storescu, wait_for
from tests.test_bundle import OPTIONS, by_type, validate_bundle
from tests.test_pipeline import EMIT_TIMEOUT
from workers.dose import MAX_DOSE_EVENTS
from workers.mapping import FhirVersion, MappingOptions, standalone_resources, study_bundle
from workers.summary import InstanceSummary, summarize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ACCUMULATED = {"113811", "113702"}
EVENTS = {"113819", "113706"}
#: Numbers in the reports that are acquisition parameters, not doses.
NOT_DOSE = {"113824", "113733"}  # Exposure Time, KVP


def numbers_in(item: Dataset) -> set[tuple[str, float, str]]:
    """(concept code, value, UCUM unit) of every NUM item below ``item``, read with
    pydicom from the report itself."""
    found: set[tuple[str, float, str]] = set()
    for child in item.get("ContentSequence", []):
        if child.ValueType == "NUM":
            measured = child.MeasuredValueSequence[0]
            unit = measured.MeasurementUnitsCodeSequence[0].CodeValue
            found.add(
                (child.ConceptNameCodeSequence[0].CodeValue, float(measured.NumericValue), unit)
            )
        elif child.ValueType == "CONTAINER":
            found |= numbers_in(child)
    return {n for n in found if n[0] not in NOT_DOSE}


def containers_of(report: Dataset) -> dict[str, set[tuple[str, float, str]]]:
    """'accumulated' or the Irradiation Event UID -> the dose numbers the report holds."""
    out = {}
    for item in report.ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue
        if code in ACCUMULATED:
            out["accumulated"] = numbers_in(item)
        elif code in EVENTS:
            (uid,) = [c.UID for c in item.ContentSequence if c.ValueType == "UIDREF"]
            out[uid] = numbers_in(item)
    return out


def observed(observations: list[dict[str, Any]]) -> dict[str, set[tuple[str, float, str]]]:
    out = {}
    for observation in observations:
        key = (
            observation["identifier"][0]["value"].removeprefix("urn:oid:")
            if "identifier" in observation
            else "accumulated"
        )
        out[key] = {
            (
                c["code"]["coding"][0]["code"],
                float(c["valueQuantity"]["value"]),
                c["valueQuantity"]["code"],
            )
            for c in observation["component"]
        }
    return out


def dose_bundle(
    report: Dataset, version: FhirVersion, images: Dataset | None = None
) -> dict[str, Any]:
    images = images or enriched_ct()
    bundle = study_bundle(aggregate(summary_of(images), summary_of(report)), version, OPTIONS)
    validate_bundle(bundle, version)
    return bundle


def dose_entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in by_type(bundle).get("Observation", [])
        if e["resource"]["category"][0]["coding"][0]["code"] == "imaging"
    ]


@pytest.mark.parametrize("version", ["R4", "R5"])
@pytest.mark.parametrize("build", [ct_dose_report, xray_dose_report])
def test_every_dose_number_of_the_report_is_an_observation_component(
    version: FhirVersion, build: Any
) -> None:
    images = enriched_ct()
    report = build(images)
    bundle = dose_bundle(report, version, images)
    entries = dose_entries(bundle)
    expected = containers_of(report)
    assert len(expected) >= 2 and all(expected.values())
    assert observed([e["resource"] for e in entries]) == expected
    study_url = by_type(bundle)["ImagingStudy"][0]["fullUrl"]
    patient_url = by_type(bundle)["Patient"][0]["fullUrl"]
    for entry in entries:
        observation = entry["resource"]
        assert observation["partOf"] == [{"reference": study_url, "type": "ImagingStudy"}]
        assert observation["subject"] == {"reference": patient_url, "type": "Patient"}
        assert observation["status"] == "final"
        assert observation["code"]["coding"][0]["system"] == (
            "http://dicom.nema.org/resources/ontology/DCM"
        )
        for component in observation["component"]:
            assert component["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert entry["request"] == {"method": "PUT", "url": f"Observation/{observation['id']}"}


def test_ct_event_details() -> None:
    images = enriched_ct()
    events = ct_events(2)
    report = ct_dose_report(images, events)
    bundle = dose_bundle(report, "R4", images)
    observations = {
        o["resource"]["code"]["coding"][0]["code"]: o["resource"] for o in dose_entries(bundle)
    }
    accumulated = observations["113811"]
    assert accumulated["code"]["coding"][0]["display"] == "CT Accumulated Dose Data"
    started = by_type(bundle)["ImagingStudy"][0]["resource"]["started"]
    assert accumulated["effectiveDateTime"] == started  # the study's
    totals = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in accumulated["component"]}
    assert totals["113813"] == {
        "value": events[0][2] + events[1][2],
        "unit": "mGy.cm",
        "system": "http://unitsofmeasure.org",
        "code": "mGy.cm",
    }
    assert totals["113812"]["value"] == 2 and totals["113812"]["code"] == "{events}"
    event = observations["113819"]  # (the last of the two)
    # Target Region T-D3000 (SNOMED-RT) is Chest in SNOMED CT; protocol as method.
    assert event["bodySite"] == {
        "coding": [{"system": "http://snomed.info/sct", "code": "51185008", "display": "Chest"}]
    }
    assert event["method"] == {"text": "Chest"}
    assert event["effectiveDateTime"].startswith("2024-05-06")


def test_the_content_tree_survives_both_header_encoders_and_stays_bounded(
    tmp_path: Path,
) -> None:
    images = enriched_ct()
    report = ct_dose_report(images, ct_events(3))
    path = tmp_path / "dose.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.save_as(path, enforce_file_format=True)
    fast = summarize(read_header(path).json)
    slow = summarize(extract_header(read_dataset(path)).json)
    assert fast.instance["dose"] == slow.instance["dose"]
    assert len(fast.instance["dose"]["events"]) == 3
    # An event's record holds a few numbers and names: small per event, capped in count.
    assert len(json.dumps(fast.instance)) < 4000
    crowded = summary_of(ct_dose_report(images, ct_events(MAX_DOSE_EVENTS + 1)))
    dose = crowded.instance["dose"]
    assert "events" not in dose and dose["events_left_out"] == MAX_DOSE_EVENTS + 1
    assert "accumulated" in dose and "0040A730" in crowded.warnings
    assert len(json.dumps(crowded.instance)) < 4000


def test_dose_observations_as_files_beside_a_standalone_study() -> None:
    images = enriched_ct()
    study = aggregate(summary_of(images), summary_of(xray_dose_report(images)))
    made = standalone_resources(study, "R4")
    assert [r["resourceType"] for r in made] == ["Observation", "Observation"]
    for observation in made:
        assert observation["partOf"] == [
            {"reference": f"ImagingStudy/{study.study_uid}", "type": "ImagingStudy"}
        ]
        assert observation["subject"]["identifier"]["value"] == "MRN-0042"


def test_no_dose_observations_for_other_instances() -> None:
    images = enriched_ct()
    summary: InstanceSummary = summary_of(images)
    assert "dose" not in summary.instance
    assert dose_entries(study_bundle(aggregate(summary), "R4", OPTIONS)) == []


def test_a_dose_report_sent_to_the_scp_becomes_observation_files(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    images = enriched_ct()
    report = xray_dose_report(images)
    files = []
    for name, ds in (("ct.dcm", images), ("dose.dcm", report)):
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(buffer, enforce_file_format=True)
        (tmp_path / name).write_bytes(buffer.getvalue())
        files.append(tmp_path / name)
    storescu(pipeline.port, files)
    study_file = pipeline.study_file(images.StudyInstanceUID)
    wait_for(lambda: study_file.exists(), EMIT_TIMEOUT, "the study's ImagingStudy")
    assert read_json(study_file)["numberOfInstances"] == 2
    expected = containers_of(report)
    written = [
        read_json(p)
        for p in sorted((pipeline.output_dir / "Observation").glob("*.json"))
        if read_json(p).get("partOf")
    ]
    assert observed(written) == expected


def test_a_fhir_server_takes_the_bundle_with_dose_and_vital_signs() -> None:
    # The real test server (tests/fhirserver, Medplum's router) runs the transaction: every
    # entry is written and the Observations' references resolve to the ImagingStudy.
    # (Medplum takes at most 8 entries in a transaction with conditional operations: this
    # one has 8.)
    images = enriched_ct()
    images.PatientWeight = 72.5
    images.PatientSize = 1.81
    options = MappingOptions(patient_id_system="urn:oid:1.2.3.4", bundle=True)
    study = aggregate(summary_of(images), summary_of(xray_dose_report(images)))
    bundle = study_bundle(study, "R4", options)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds.count("Observation") == 4 and len(kinds) == 8  # weight, height, 2 doses
    with FhirServer() as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        response = client.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
        assert response.status_code == 200, response.text[:500]
        statuses = [e["response"]["status"] for e in response.json()["entry"]]
        assert all(s.startswith(("200", "201")) for s in statuses), statuses
        study_id = client.get("ImagingStudy").json()["entry"][0]["resource"]["id"]
        observations = [e["resource"] for e in client.get("Observation").json()["entry"]]
        assert len(observations) == 4
        for observation in observations:
            linked = observation.get("partOf") or observation.get("derivedFrom")
            assert linked[0]["reference"] == f"ImagingStudy/{study_id}"
