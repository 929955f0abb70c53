"""The pure mapping: aggregates from real files -> ImagingStudy R4 and R5, golden and valid."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.imagingstudy import ImagingStudy as ImagingStudyR5
from fhir.resources.R4B.imagingstudy import ImagingStudy as ImagingStudyR4B

from scp.header import extract_header, read_dataset
from tests.golden import assert_golden
from tests.support import sample_file
from workers.dicomtime import fhir_date, fhir_datetime
from workers.fold import StudyAggregate, fold
from workers.mapping import fhir_id, imaging_study
from workers.summary import summarize


def aggregate_of(*names: str) -> StudyAggregate:
    summaries = [summarize(extract_header(read_dataset(sample_file(n))).json) for n in names]
    return fold(StudyAggregate(summaries[0].study_uid), summaries)


def validate(resource: dict[str, Any], version: str) -> None:
    model = ImagingStudyR4B if version == "R4" else ImagingStudyR5
    model.model_validate(resource)


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_ct_golden_and_valid(version: str) -> None:
    resource = imaging_study(aggregate_of("CT_small.dcm"), version)  # type: ignore[arg-type]
    validate(resource, version)
    assert_golden(f"ImagingStudy_CT_small_{version}.json", resource)


@pytest.mark.parametrize("version", ["R4", "R5"])
@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",
        "JPEG2000.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "waveform_ecg.dcm",
        "rtplan.dcm",
        "image_dfl.dcm",
        "US1_J2KR.dcm",
        "emri_small.dcm",
    ],
)
def test_real_files_map_to_valid_resources(name: str, version: str) -> None:
    resource = imaging_study(aggregate_of(name), version)  # type: ignore[arg-type]
    validate(resource, version)
    assert resource["numberOfInstances"] == 1
    assert resource["series"][0]["instance"][0]["sopClass"]["system"] == "urn:ietf:rfc:3986"


def test_r4_and_r5_shapes_differ_where_the_versions_do() -> None:
    aggregate = aggregate_of("CT_small.dcm")
    r4, r5 = imaging_study(aggregate, "R4"), imaging_study(aggregate, "R5")
    assert r4["modality"] == [
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
    ]
    assert r5["modality"] == [{"coding": r4["modality"]}]
    assert r5["series"][0]["modality"] == {"coding": [r4["series"][0]["modality"]]}


def test_missing_patient_id_is_marked_absent_not_invented() -> None:
    aggregate = aggregate_of("CT_small.dcm")
    assert aggregate.study is not None
    study_attrs = dict(aggregate.study.attrs)
    study_attrs.pop("patient_id")
    from dataclasses import replace

    from workers.fold import Sourced

    resource = imaging_study(
        replace(aggregate, study=Sourced(aggregate.study.source, study_attrs)), "R4"
    )
    assert resource["subject"] == {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }
    validate(resource, "R4")


def test_fhir_id_is_stable_and_valid() -> None:
    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    assert fhir_id(uid) == uid == fhir_id(uid)
    odd = fhir_id("1.2.3_not_a_uid" * 5)
    assert odd.startswith("h") and len(odd) == 64 and odd == fhir_id("1.2.3_not_a_uid" * 5)


@pytest.mark.parametrize(
    ("da", "tm", "tz", "expected"),
    [
        ("20240131", "101530", "+0100", "2024-01-31T10:15:30+01:00"),
        ("20240131", "101530.123", "-0500", "2024-01-31T10:15:30.123-05:00"),
        ("20240131", "1015", "+0000", "2024-01-31T10:15:00+00:00"),
        ("20240131", "101530", None, "2024-01-31"),  # no zone: keep the date only
        ("20231340", "101530", "+0100", None),  # not a date
        ("20240131", "256000", "+0100", "2024-01-31"),  # bad time: the date survives
        ("20240131", "101530", "+9900", "2024-01-31"),  # bad zone
        (None, "101530", "+0100", None),
    ],
)
def test_dicom_date_time(
    da: str | None, tm: str | None, tz: str | None, expected: str | None
) -> None:
    assert fhir_datetime(da, tm, tz) == expected


def test_fhir_date() -> None:
    assert fhir_date("20240229") == "2024-02-29"
    assert fhir_date("20230229") is None
    assert fhir_date("2024-01-01") is None
