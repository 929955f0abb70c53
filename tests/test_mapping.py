"""The pure mapping: aggregates from real files -> ImagingStudy R4 and R5, golden and valid."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.imagingstudy import ImagingStudy as ImagingStudyR5
from fhir.resources.R4B.imagingstudy import ImagingStudy as ImagingStudyR4B
from pydicom.dataset import Dataset

from tests.golden import assert_golden
from tests.samples import (
    aggregate,
    code,
    dataset,
    enriched_ct,
    enriched_mr_knee,
    header_of,
    summary_of,
    summary_of_file,
)
from tests.support import for_models
from tests.test_bundle import OPTIONS, validate_bundle
from workers.dicomtime import combine, fhir_date, fhir_datetime, fhir_dt, sort_key
from workers.fold import Sourced, StudyAggregate
from workers.mapping import FhirVersion, MappingOptions, fhir_id, imaging_study, study_bundle
from workers.summary import log_warnings, summarize

VERSIONS: list[FhirVersion] = ["R4", "R5"]
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"


def aggregate_of(*names: str) -> StudyAggregate:
    return aggregate(*(summary_of_file(n) for n in names))


def validate(resource: dict[str, Any], version: str) -> None:
    model = ImagingStudyR4B if version == "R4" else ImagingStudyR5
    model.model_validate(for_models(resource))


def enriched() -> StudyAggregate:
    return aggregate(summary_of(enriched_ct()), summary_of(enriched_mr_knee()))


@pytest.mark.parametrize("version", VERSIONS)
def test_ct_golden_and_valid(version: FhirVersion) -> None:
    resource = imaging_study(aggregate_of("CT_small.dcm"), version)
    validate(resource, version)
    assert_golden(f"ImagingStudy_CT_small_{version}.json", resource)


@pytest.mark.parametrize("version", VERSIONS)
def test_enriched_study_golden_and_valid(version: FhirVersion) -> None:
    resource = imaging_study(enriched(), version)
    validate(resource, version)
    assert_golden(f"ImagingStudy_enriched_{version}.json", resource)


@pytest.mark.parametrize(
    ("name", "version"), [("test-SR.dcm", "R4"), ("emri_small.dcm", "R5"), ("liver.dcm", "R4")]
)
def test_more_goldens(name: str, version: FhirVersion) -> None:
    resource = imaging_study(aggregate_of(name), version)
    validate(resource, version)
    assert_golden(f"ImagingStudy_{name.removesuffix('.dcm')}_{version}.json", resource)


def test_r4_and_r5_shapes_differ_where_the_versions_do() -> None:
    study = enriched()
    r4, r5 = imaging_study(study, "R4"), imaging_study(study, "R5")
    ct = {"system": DCM, "code": "CT", "display": "Computed Tomography"}
    assert ct in r4["modality"]
    assert {"coding": [ct]} in r5["modality"]
    assert r5["series"][0]["modality"] == {"coding": [r4["series"][0]["modality"]]}
    assert r5["series"][0]["bodySite"] == {"concept": {"coding": [r4["series"][0]["bodySite"]]}}
    assert r5["series"][1]["laterality"] == {"coding": [r4["series"][1]["laterality"]]}
    assert r5["procedure"] == [{"concept": c} for c in r4["procedureCode"]]
    assert r5["reason"] == [{"concept": c} for c in r4["reasonCode"]]
    assert "interpreter" in r4 and "interpreter" not in r5  # R5 dropped it
    # basedOn is in both (R4's ImagingStudy has it too): the ServiceRequest by accession.
    assert (
        r4["basedOn"]
        == r5["basedOn"]
        == [{"type": "ServiceRequest", "identifier": r4["identifier"][1]}]
    )


def test_every_element_of_the_enriched_study() -> None:
    r5 = imaging_study(enriched(), "R5", options=MappingOptions(patient_id_system="urn:x:y"))
    acsn = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
    accession = {
        "type": {"coding": [acsn]},
        "system": "https://ris.example.org/accession",
        "value": "ACC-2024-0001",
        "assigner": {"display": "RIS"},
    }
    assert r5["identifier"][1] == accession
    assert r5["basedOn"] == [{"type": "ServiceRequest", "identifier": accession}]
    # The issuer's universal id wins over the configured default system.
    assert r5["subject"]["identifier"]["system"] == "urn:oid:1.2.826.0.1.3680043.8.498.4242.100"
    assert r5["subject"]["identifier"]["assigner"] == {"display": "GENERAL HOSPITAL"}
    assert r5["referrer"] == {"type": "Practitioner", "display": "Anna Smith MD"}
    assert r5["procedure"][0]["concept"]["coding"] == [
        {"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}
    ]
    assert r5["reason"][0]["concept"]["coding"][0]["system"] == SCT
    assert r5["reason"][1] == {"concept": {"text": "Fever and cough for 10 days"}}
    assert r5["location"] == {"display": "Radiology, JFK IMAGING CENTER"}
    assert r5["note"] == [{"text": "Patient could not hold breath for the whole scan."}]
    ct, mr = r5["series"]
    assert (ct["number"], mr["number"]) == (1, 2)
    assert ct["bodySite"]["concept"]["coding"] == [
        {"system": SCT, "code": "816094009", "display": "Chest"}
    ]
    assert mr["bodySite"]["concept"]["coding"][0]["code"] == "72696002"  # KNEE
    assert mr["laterality"] == {"coding": [{"system": SCT, "code": "7771000", "display": "Left"}]}
    functions = [p["function"]["coding"][0]["code"] for p in ct["performer"]]
    assert functions == ["PRF", "SPRF", "DEV"]
    assert [p["actor"]["display"] for p in ct["performer"]] == [
        "Rita Rad",
        "Terry Tech",
        "GE MEDICAL SYSTEMS RHAPSODE (CT01_OC0), serial number SN-12345",
    ]
    assert r5["numberOfSeries"] == 2 and r5["numberOfInstances"] == 2


def test_modalities_come_from_the_series_not_modalities_in_study() -> None:
    ds = enriched_ct()
    ds.ModalitiesInStudy = ["CT", "MR", "PT"]
    resource = imaging_study(aggregate(summary_of(ds)), "R4")
    assert [c["code"] for c in resource["modality"]] == ["CT"]


def test_image_laterality_is_reduced_over_the_series() -> None:
    def image(number: int, side: str) -> Dataset:
        ds = dataset("MR_small.dcm")
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{number}"
        ds.InstanceNumber = number
        del ds.Laterality
        ds.ImageLaterality = side
        return ds

    left = [summary_of(image(1, "L")), summary_of(image(2, "L"))]
    lateralities = [
        imaging_study(aggregate(*group), "R4")["series"][0].get("laterality", {}).get("code")
        for group in (left, [*left, summary_of(image(3, "R"))], [summary_of(image(4, "U"))])
    ]
    assert lateralities == ["7771000", "51440002", None]  # L; L+R = both; unpaired: none


def test_series_started_falls_back_to_the_earliest_acquisition() -> None:
    def image(number: int, time: str) -> Dataset:
        ds = dataset("CT_small.dcm")
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{number}"
        del ds.SeriesDate, ds.SeriesTime
        ds.AcquisitionTime = time
        return ds

    resource = imaging_study(
        aggregate(summary_of(image(1, "120000")), summary_of(image(2, "101500.5"))), "R4"
    )
    assert resource["series"][0]["started"] == "1997-04-30T10:15:00.5-05:00"


def test_sorting_is_by_number_then_uid() -> None:
    def image(series: str, number: int | None, uid: str) -> Dataset:
        ds = dataset("CT_small.dcm")
        ds.SeriesInstanceUID = f"1.2.3.{series}"
        ds.SeriesNumber = {"1": 10, "2": 2, "3": None}[series]
        ds.SOPInstanceUID = uid
        if number is None:
            del ds.InstanceNumber
        else:
            ds.InstanceNumber = number
        return ds

    resource = imaging_study(
        aggregate(
            summary_of(image("1", 2, "1.2.3.1.9")),
            summary_of(image("1", 1, "1.2.3.1.8")),
            summary_of(image("1", None, "1.2.3.1.1")),
            summary_of(image("1", 1, "1.2.3.1.7")),
            summary_of(image("2", 1, "1.2.3.2.1")),
            summary_of(image("3", 1, "1.2.3.3.1")),
        ),
        "R4",
    )
    assert [s["uid"] for s in resource["series"]] == ["1.2.3.2", "1.2.3.1", "1.2.3.3"]
    assert [i["uid"] for i in resource["series"][1]["instance"]] == [
        "1.2.3.1.7",
        "1.2.3.1.8",
        "1.2.3.1.9",
        "1.2.3.1.1",
    ]


def test_key_object_title_falls_back_to_the_series_description() -> None:
    ds = dataset("test-SR.dcm")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.59"
    ds.Modality = "KO"
    ds.SeriesDescription = "Key images for report"
    del ds.ConceptNameCodeSequence
    titled = dataset("test-SR.dcm")
    titled.SOPClassUID = ds.SOPClassUID
    titled.SOPInstanceUID = f"{ds.SOPInstanceUID}.2"
    titled.ConceptNameCodeSequence = [code("113000", "DCM", "Of Interest")]
    resource = imaging_study(aggregate(summary_of(ds), summary_of(titled)), "R5")
    instances = resource["series"][0]["instance"]
    assert {i["title"] for i in instances} == {"Key images for report", "Of Interest"}
    assert instances[0]["sopClass"]["display"] == "Key Object Selection Document Storage"


def test_missing_patient_id_is_marked_absent_not_invented() -> None:
    aggregate = aggregate_of("CT_small.dcm")
    assert aggregate.study is not None
    study_attrs = dict(aggregate.study.attrs)
    study_attrs.pop("patient_id")
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


def test_no_timezone_keeps_only_the_date() -> None:
    ds = dataset("CT_small.dcm")
    del ds.TimezoneOffsetFromUTC
    resource = imaging_study(aggregate(summary_of(ds)), "R4")
    assert resource["started"] == "2004-01-19"
    assert resource["series"][0]["started"] == "1997-04-30"


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
        ("20240131", "10:15:30", "+0000", "2024-01-31T10:15:30+00:00"),  # ACR-NEMA time
        ("2024.01.31", None, None, "2024-01-31"),  # ACR-NEMA date
        ("20240131", "101530", None, "2024-01-31"),  # no zone: keep the date only
        ("20231340", "101530", "+0100", None),  # not a date
        ("20240131", "256000", "+0100", "2024-01-31"),  # bad time: the date survives
        ("20240131", "235960", "+0100", "2024-01-31"),  # leap second: FHIR has none
        ("20240131", "101530", "+9900", "2024-01-31"),  # bad zone
        (None, "101530", "+0100", None),
    ],
)
def test_dicom_date_time(
    da: str | None, tm: str | None, tz: str | None, expected: str | None
) -> None:
    assert fhir_datetime(da, tm, tz) == expected


@pytest.mark.parametrize(
    ("dt", "zone", "expected"),
    [
        ("20240131101530.25+0100", None, "2024-01-31T10:15:30.25+01:00"),
        ("20240131101530", "-05:00", "2024-01-31T10:15:30-05:00"),
        ("20240131101530+0200", "-05:00", "2024-01-31T10:15:30+02:00"),  # its own zone wins
        ("20240131101530", None, "2024-01-31"),
        ("202401", None, "2024-01"),
        ("2024", "+01:00", "2024"),
        ("20241301", None, None),
        ("2024013110", "+01:00", "2024-01-31T10:00:00+01:00"),
        ("20240131101530+1900", None, None),
        ("yesterday", None, None),
    ],
)
def test_dicom_dt(dt: str, zone: str | None, expected: str | None) -> None:
    assert fhir_dt(dt, zone) == expected


def test_fhir_date_and_order() -> None:
    assert fhir_date("20240229") == "2024-02-29"
    assert fhir_date("20230229") is None
    assert fhir_date("2024-01-01") is None
    values = ["2024-01-31T10:00:00+01:00", "2024-01-31T09:30:00+00:00", "2024-01-30"]
    assert min(values, key=sort_key) == "2024-01-30"
    assert min(values[:2], key=sort_key) == "2024-01-31T10:00:00+01:00"  # 09:00 UTC


@pytest.mark.parametrize("version", VERSIONS)
def test_the_mapping_survives_unexpected_attribute_values(version: FhirVersion) -> None:
    """Aggregates come from Redis: whatever a record holds, the output stays valid."""
    study = {
        "patient_id": 5,
        "patient_name": "Doe^John",
        "patient_sex": ["M"],
        "started": 7,
        "accession_number": ["A"],
        "accession_issuer": "RIS",
        "procedures": ["x", {"code": " ", "scheme": "LN"}],
        "reasons": [None],
        "reason_texts": [1, ""],
        "interpreters": "House",
        "referrer": ["x"],
        "institution": {},
        "coding_schemes": "x",
    }
    series = {
        "modality": 3,
        "series_number": -1,
        "body_part": 5,
        "anatomic_region": "SCT",
        "laterality": "X",
        "specimens": "S",
        "operators": {"Alphabetic": "A^B"},
        "performing_physicians": [5],
        "manufacturer": 1,
        "started": [],
        "image_label": 5,
    }
    record = {
        "series_uid": "1.2.3",
        "sop_class_uid": 12,
        "instance_number": "1",
        "acquired": 5,
        "laterality": 1,
        "title": [],
        "selection": {"kind": "kos", "series": [5, {"study": "1.2", "series": "1.2.3"}]},
        "dose": {"accumulated": {"concept": "x", "measures": 5}, "events": [1, {"target": 2}]},
    }
    odd = {
        "series_uid": "1.2.3",
        "selection": {"series": [{"study": "1.2", "series": "1.3", "instances": 7}]},
        "dose": {
            "events": [
                {
                    "concept": {"code": "113819", "scheme": "DCM", "meaning": "x"},
                    "measures": [{"concept": {"code": "113830", "scheme": "DCM"}, "value": "9"}],
                    "uid": 3,
                }
            ]
        },
    }
    junk = StudyAggregate(
        "1.2",
        study=Sourced("1.2.3.4", study),
        instances={"1.2.3.4": record, "1.2.3.5": odd},
        series={"1.2.3": Sourced("1.2.3.4", series)},
    )
    validate(imaging_study(junk, version, options=OPTIONS), version)
    validate_bundle(study_bundle(junk, version, OPTIONS), version)
    if version == "R4":  # the guides are R4: Osiris reads the private image label too
        validate(imaging_study(junk, version, options=MappingOptions(profile="osiris")), version)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_uid_that_is_no_oid_is_never_written_as_urn_oid(version: FhirVersion) -> None:
    # A real file (pydicom-data color-pl.dcm) whose UIDs start with 999: valid DICOM
    # syntax, but no OID (first arc 0, 1 or 2).
    study = aggregate_of("color-pl.dcm")
    assert study.study_uid == "999.999.2.19941105.112000"
    resource = imaging_study(study, version)
    assert resource["identifier"][0] == {
        "use": "official",
        "system": "urn:dicom:uid",
        "value": "999.999.2.19941105.112000",
    }
    validate(resource, version)
    # A study whose UID is an OID keeps the urn:oid: form.
    ct = imaging_study(aggregate_of("CT_small.dcm"), version)
    assert ct["identifier"][0]["value"] == f"urn:oid:{ct['id']}"


def test_a_specimen_uid_that_is_no_oid_stays_bare() -> None:
    ds = dataset("CT_small.dcm")
    specimen = Dataset()
    specimen.SpecimenIdentifier = "S-1"
    specimen.SpecimenUID = "999.1.2"
    ds.SpecimenDescriptionSequence = [specimen]
    series = imaging_study(aggregate(summary_of(ds)), "R4")["series"][0]
    assert series["specimen"][0]["identifier"] == {"system": "urn:dicom:uid", "value": "999.1.2"}


@pytest.mark.parametrize("scheme", ["SRT", "SNM3", "99SDM"])
def test_snomed_rt_anatomy_becomes_snomed_ct(scheme: str) -> None:
    # Anatomic Region Sequence as older modalities write it: T-A0100 Brain in SNOMED-RT.
    ds = dataset("MR_small.dcm")
    ds.AnatomicRegionSequence = [code("T-A0100", scheme, "Brain")]
    ds.ProcedureCodeSequence = [code("P5-0905E", scheme, "MRI of brain")]
    study = imaging_study(aggregate(summary_of(ds)), "R4")
    assert study["series"][0]["bodySite"] == {"system": SCT, "code": "12738006", "display": "Brain"}
    # PS3.16 Table O-1 lists P5-0905E too; the procedure is translated like the anatomy.
    assert study["procedureCode"] == [
        {"coding": [{"system": SCT, "code": "426252008", "display": "MRI of brain"}]}
    ]


def test_an_untranslatable_snomed_rt_code_is_never_emitted() -> None:
    ds = dataset("CT_small.dcm")
    ds.AnatomicRegionSequence = [code("T-XXXXX", "SRT", "Somewhere")]
    ds.BodyPartExamined = "HEAD"
    ds.ReasonForRequestedProcedureCodeSequence = [code("D-XXXXX", "SRT", "Some finding")]
    r4 = imaging_study(aggregate(summary_of(ds)), "R4")
    # Body Part Examined through Annex L instead; the reason keeps its meaning as text.
    assert r4["series"][0]["bodySite"] == {"system": SCT, "code": "69536005", "display": "Head"}
    assert r4["reasonCode"] == [{"text": "Some finding"}]
    assert "urn:oid:2.16.840.1.113883.6.5" not in str(r4)
    del ds.BodyPartExamined
    assert "bodySite" not in imaging_study(aggregate(summary_of(ds)), "R4")["series"][0]


def test_a_person_name_encoded_with_another_vr_is_read_and_the_mismatch_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Real modalities write Operators' Name as LO: explicit VR keeps that on the wire.
    ds = dataset("MR_small.dcm")
    ds.add_new(0x00081070, "LO", ["Tech^Terry", "Doe^Jane"])  # OperatorsName
    ds.add_new(0x00081050, "SH", "A^B^C^D^E^F")  # PerformingPhysicianName: 6 components
    summary = summary_of(ds)
    assert summary.series["operators"] == [{"Alphabetic": "Tech^Terry"}, {"Alphabetic": "Doe^Jane"}]
    assert "performing_physicians" not in summary.series and "00081050" in summary.warnings
    assert summary.mismatches == (("00081070", "LO"),)
    series = imaging_study(aggregate(summary), "R4")["series"][0]
    assert [p["actor"]["display"] for p in series["performer"][:2]] == ["Terry Tech", "Jane Doe"]
    with caplog.at_level(logging.WARNING):
        log_warnings(summary)
    (line,) = [r.getMessage() for r in caplog.records if "another VR" in r.getMessage()]
    assert "00081070 OperatorsName as LO" in line and "Terry" not in line


def test_site_time_zone_is_opt_in_and_follows_summer_time() -> None:
    ds = dataset("CT_small.dcm")  # Study 2004-01-19, Series 1997-04-30, no offset once removed
    del ds.TimezoneOffsetFromUTC
    header = header_of(ds)
    plain = imaging_study(aggregate(summarize(header)), "R4")
    assert (plain["started"], plain["series"][0]["started"]) == ("2004-01-19", "1997-04-30")
    options = MappingOptions(site_timezone="Europe/Berlin")
    berlin = imaging_study(aggregate(summarize(header, site_zone=options.site_zone)), "R4")
    assert berlin["started"] == "2004-01-19T07:27:30+01:00"  # winter: CET
    assert berlin["series"][0]["started"] == "1997-04-30T11:27:49+02:00"  # summer: CEST
    validate(berlin, "R4")
    # The header's own offset always wins over the site's zone.
    own = summarize(header_of(dataset("CT_small.dcm")), site_zone=options.site_zone)
    assert own.study["started"].endswith("-05:00")


def test_site_time_zone_never_guesses_a_repeated_or_skipped_hour() -> None:
    zone = MappingOptions(site_timezone="Europe/Berlin").site_zone
    assert zone is not None
    assert combine("2024-10-27", "02:30:00", zone) == "2024-10-27"  # happens twice
    assert combine("2024-03-31", "02:30:00", zone) == "2024-03-31"  # never happens
    assert combine("2024-03-31", "03:30:00", zone) == "2024-03-31T03:30:00+02:00"
    assert combine("2024-07-01", "12:00:00", ZoneInfo("America/St_Johns")) == (
        "2024-07-01T12:00:00-02:30"
    )
    with pytest.raises(ValueError, match="IANA"):
        MappingOptions(site_timezone="Mars/Olympus_Mons")
