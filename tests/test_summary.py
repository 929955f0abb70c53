"""Summaries of bad and odd input: what cannot be used is left out and named by tag, the
rest of the study still maps, and instance records stay small."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

from tests.samples import (
    aggregate,
    code,
    dataset,
    enriched_ct,
    enriched_mr_knee,
    summary_of,
    summary_of_file,
)
from tests.test_bundle import validate_bundle
from tests.test_mapping import validate
from workers.dicomjson import DicomJson
from workers.mapping import imaging_study, study_bundle
from workers.mapping.options import MappingOptions
from workers.summary import describe_tags, log_warnings, summarize

#: pydicom warns about the bad values these tests give it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def broken_ct() -> Dataset:
    """A real CT given every kind of bad value a modality has been seen to send."""
    ds = enriched_ct()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.StudyDate = "20231340"  # no such date
        ds.add_new(0x00080021, "LO", "yesterday")  # Series Date with the wrong VR
        ds.Modality = ""  # empty Type 1
        ds.StudyDescription = "x" * 1000  # LO holds 64
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.02"  # leading zero: no UID
        ds.SeriesNumber = -5  # FHIR wants unsignedInt
        ds.add_new(0x00200013, "LO", "first")  # Instance Number with the wrong VR
        ds.ProcedureCodeSequence[0].CodeMeaning = ""  # empty Type 1 in an item
        ds.PatientBirthDate = "19701345"
        ds.TimezoneOffsetFromUTC = "+2500"
        ds.Laterality = "RIGHT"
        # Referring Physician's Name with the wrong VR: read as the name it is (and noted)
        ds.add_new(0x00080090, "LO", "Smith^Anna")
    return ds


def test_bad_values_are_left_out_and_named_by_tag() -> None:
    summary = summary_of(broken_ct())
    assert set(summary.warnings) == {
        "00080020",
        "00080021",
        "00080060",
        "00081030",
        "00080016",
        "00200011",
        "00200013",
        "00081032.00080104",
        "00100030",
        "00080201",
        "00200060",
    }
    assert summary.study["referrer"] == {"Alphabetic": "Smith^Anna"}
    assert summary.mismatches == (("00080090", "LO"),)
    for attrs in (summary.study, summary.series, summary.instance):
        assert None not in attrs.values()
    assert "started" not in summary.study and "study_description" not in summary.study
    assert "modality" not in summary.series and "laterality" not in summary.series
    assert "sop_class_uid" not in summary.instance and "instance_number" not in summary.instance


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_the_rest_of_a_bad_study_still_maps_to_a_valid_resource(version: str) -> None:
    study = aggregate(summary_of(broken_ct()), summary_of(enriched_mr_knee()))
    resource = imaging_study(study, version)  # type: ignore[arg-type]
    validate(resource, version)
    series = {s["uid"]: s for s in resource["series"]}
    ct = series["1.2.826.0.1.3680043.8.498.4242.1.1"]
    reason = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
    absent = {"extension": [{"url": reason, "valueCode": "unknown"}]}
    assert ct["instance"][0]["sopClass"] == absent
    assert (ct["modality"] if version == "R4" else ct["modality"]["coding"][0]) == absent
    assert "number" not in ct and "laterality" not in ct
    # Series Date was unusable: the series starts at its acquisition, with no zone: a date.
    assert ct["started"] == "1997-04-30"
    # Study attributes are decided per attribute: the CT's Study Date is unusable, so the
    # study starts when the MR instance (which has a valid one) says.
    assert resource["started"] == "2004-01-19T07:27:30-04:00"
    assert "description" not in resource
    assert "procedureCode" not in resource and "procedure" not in resource
    assert resource["numberOfInstances"] == 2
    bundle = study_bundle(study, version, MappingOptions(bundle=True))  # type: ignore[arg-type]
    validate_bundle(bundle, version)


def test_warnings_are_logged_by_tag_never_with_patient_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    summary = summary_of(broken_ct())
    with caplog.at_level(logging.WARNING):
        log_warnings(summary)
    records = [r for r in caplog.records if r.name == "workers.summary"]
    assert len(records) == 2  # the mismatched VR, the left-out elements
    assert "00080090 ReferringPhysicianName as LO" in records[0].getMessage()
    text = records[1].getMessage()
    assert "00100030 PatientBirthDate" in text and "00081032.00080104" in text
    assert summary.sop_uid in text
    for patient_data in ("19701345", "MRN-0042", "Doe", "John", "Smith"):
        assert all(patient_data not in r.getMessage() for r in records)


def test_describe_tags() -> None:
    assert describe_tags(["00080020", "00081032.00080104"]) == (
        "00080020 StudyDate, 00081032.00080104 ProcedureCodeSequence.CodeMeaning"
    )


def test_absurdly_long_names_and_texts_are_left_out_but_long_ones_kept() -> None:
    ds = enriched_ct()
    ds.PatientName = "Doe^" + "J" * 400
    ds.StationName = "CT-SCANNER-ROOM-12"  # 18 > SH's 16: common, harmless, kept
    summary = summary_of(ds)
    assert "patient_name" not in summary.study and "00100010" in summary.warnings
    assert summary.series["station"] == "CT-SCANNER-ROOM-12"


def test_control_characters_and_padding_are_cleaned() -> None:
    header = {
        "00081030": {"vr": "LO", "Value": ["  Chest\x00 CT\x1b  "]},
        "00324000": {"vr": "LT", "Value": ["line one\r\nline two\x07"]},
    }
    dj = DicomJson(header)
    assert dj.text("StudyDescription") == "Chest CT"
    assert dj.text("StudyComments") == "line one\r\nline two"
    assert dj.warnings == []


def test_code_items_need_value_scheme_and_meaning() -> None:
    ds = enriched_ct()
    ds.ProcedureCodeSequence = [
        code("24627-2", "LN", "CT Chest"),
        code("24627-2", "LN", "CT Chest"),  # repeated: once
        code("X1", "99LOCAL", "Local chest protocol"),
    ]
    del ds.ProcedureCodeSequence[2].CodingSchemeDesignator
    summary = summary_of(ds)
    assert summary.study["procedures"] == [
        {"code": "24627-2", "scheme": "LN", "meaning": "CT Chest"}
    ]
    assert "00081032.00080102" in summary.warnings


def test_local_coding_schemes_get_their_declared_system() -> None:
    ds = enriched_ct()
    ds.ProcedureCodeSequence = [code("CTCH01", "99RIS", "CT chest routine")]
    scheme = Dataset()
    scheme.CodingSchemeDesignator = "99RIS"
    scheme.CodingSchemeUID = "1.2.826.0.1.3680043.8.498.4242.7"
    ds.CodingSchemeIdentificationSequence = [scheme]
    resource = imaging_study(aggregate(summary_of(ds)), "R4")
    assert resource["procedureCode"][0]["coding"][0]["system"] == (
        "urn:oid:1.2.826.0.1.3680043.8.498.4242.7"
    )


def test_instance_records_stay_small() -> None:
    for summary in (summary_of_file("CT_small.dcm"), summary_of(enriched_ct())):
        record = json.dumps(summary.instance, separators=(",", ":"), ensure_ascii=False)
        assert len(record.encode()) < 160, record
    # Only a series without Series Date keeps acquisition times per instance.
    ds = dataset("CT_small.dcm")
    del ds.SeriesDate
    assert "acquired" in summary_of(ds).instance
    assert "acquired" not in summary_of_file("CT_small.dcm").instance


def test_malformed_instance_uids_are_kept_as_keys_but_reported() -> None:
    header = summary_of_file("CT_small.dcm")
    assert header.warnings == ()
    ds = dataset("CT_small.dcm")
    ds.SOPInstanceUID = "1.2.3_4"
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    summary = summary_of(ds)
    assert summary.sop_uid == "1.2.3_4" and "00080018" in summary.warnings
    # FHIR cannot carry it as an id: the instance is left out, still counted.
    resource = imaging_study(aggregate(summary), "R4")
    assert resource["numberOfInstances"] == 1 and "instance" not in resource["series"][0]
    validate(resource, "R4")


def test_summarize_needs_the_three_uids() -> None:
    from workers.summary import NotAnInstance

    with pytest.raises(NotAnInstance):
        summarize({"0020000D": {"vr": "UI", "Value": ["1.2.3"]}})
