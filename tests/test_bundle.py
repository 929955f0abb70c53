"""Companion resources: the transaction Bundle (Patient, Endpoint, Device, ImagingStudy)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import unquote

import pytest
from fhir.resources import get_fhir_model_class as model_r5
from fhir.resources.R4B import get_fhir_model_class as model_r4b
from pydicom.data import get_charset_files

from scp.header import extract_header
from tests.golden import assert_golden
from tests.samples import (
    aggregate,
    enriched_ct,
    enriched_mr_knee,
    read,
    summary_of,
    summary_of_file,
)
from tests.support import for_models
from workers.fold import StudyAggregate
from workers.mapping import (
    FhirVersion,
    MappingOptions,
    emitted,
    imaging_study,
    study_bundle,
    study_resources,
)
from workers.summary import summarize

VERSIONS: list[FhirVersion] = ["R4", "R5"]
OPTIONS = MappingOptions(
    accession_system="urn:oid:1.2.826.0.1.3680043.8.498.4242.200",
    patient_id_system="urn:oid:1.2.826.0.1.3680043.8.498.4242.300",
    wado_rs_base_url="https://pacs.example.org/dicom-web/",
    bundle=True,
)


def validate_bundle(bundle: dict[str, Any], version: str) -> None:
    """The Bundle and every resource in it, each against its own model."""
    model = model_r4b if version == "R4" else model_r5
    model("Bundle").model_validate(for_models(bundle))
    for entry in bundle["entry"]:
        resource = entry["resource"]
        model(resource["resourceType"]).model_validate(for_models(resource))


def enriched() -> StudyAggregate:
    return aggregate(summary_of(enriched_ct()), summary_of(enriched_mr_knee()))


def by_type(bundle: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in bundle["entry"]:
        out.setdefault(entry["resource"]["resourceType"], []).append(entry)
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_enriched_bundle_golden_and_valid(version: FhirVersion) -> None:
    bundle = study_bundle(enriched(), version, OPTIONS)
    validate_bundle(bundle, version)
    assert_golden(f"Bundle_enriched_{version}.json", bundle)


def test_japanese_names_bundle_golden() -> None:
    path = get_charset_files("chrH31.dcm")[0]
    bundle = study_bundle(aggregate(summarize(extract_header(read(path)).json)), "R5", OPTIONS)
    validate_bundle(bundle, "R5")
    assert_golden("Bundle_chrH31_R5.json", bundle)
    patient = by_type(bundle)["Patient"][0]["resource"]
    assert [n["text"] for n in patient["name"]] == ["Tarou Yamada", "山田 太郎", "やまだ たろう"]


def test_bundle_structure() -> None:
    bundle = study_bundle(enriched(), "R5", OPTIONS)
    assert bundle["type"] == "transaction"
    entries = by_type(bundle)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == [
        "Patient",
        "Endpoint",
        "Device",
        "Device",
        "ImagingStudy",
        # the CT's Patient's Weight, once the study is dated by the instance whose Study
        # Date is valid (attribute consensus)
        "Observation",
    ]
    patient = entries["Patient"][0]
    # Conditional create on the identifier: a second study of the patient finds the first.
    assert patient["request"]["method"] == "POST"
    assert unquote(patient["request"]["ifNoneExist"]) == (
        "identifier=urn:oid:1.2.826.0.1.3680043.8.498.4242.100|MRN-0042"
    )
    assert patient["resource"]["gender"] == "male"
    assert patient["resource"]["birthDate"] == "1970-02-15"
    assert patient["resource"]["name"][0]["text"] == "Dr. John Adam Doe Jr."
    study_entry = entries["ImagingStudy"][0]
    study = study_entry["resource"]
    assert study_entry["request"] == {"method": "PUT", "url": f"ImagingStudy/{study['id']}"}
    assert study["subject"] == {"reference": patient["fullUrl"], "type": "Patient"}
    endpoint = entries["Endpoint"][0]
    assert study["endpoint"] == [{"reference": endpoint["fullUrl"]}]
    assert endpoint["resource"]["address"] == "https://pacs.example.org/dicom-web"
    assert endpoint["request"]["method"] == "PUT"
    device_urls = {e["fullUrl"] for e in entries["Device"]}
    actors = {p["actor"].get("reference") for s in study["series"] for p in s["performer"]}
    assert device_urls <= actors
    # Every urn:uuid reference resolves inside the bundle.
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert all(url.startswith("urn:uuid:") for url in full_urls)
    assert _references(study) <= full_urls


def test_bundle_is_deterministic_and_shares_devices_across_studies() -> None:
    assert study_bundle(enriched(), "R4", OPTIONS) == study_bundle(enriched(), "R4", OPTIONS)
    other = enriched_ct()
    other.StudyInstanceUID = other.StudyInstanceUID + ".9"
    first = by_type(study_bundle(enriched(), "R4", OPTIONS))["Device"][0]
    second = by_type(study_bundle(aggregate(summary_of(other)), "R4", OPTIONS))["Device"][0]
    assert first["request"] == second["request"] and first["fullUrl"] == second["fullUrl"]


def test_no_patient_entry_without_an_identifier_system() -> None:
    ds = enriched_ct()
    del ds.IssuerOfPatientID, ds.IssuerOfPatientIDQualifiersSequence
    study = aggregate(summary_of(ds))
    bundle = study_bundle(study, "R4", MappingOptions(bundle=True))
    assert "Patient" not in by_type(bundle)
    subject = by_type(bundle)["ImagingStudy"][0]["resource"]["subject"]
    mrn = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
    assert subject == {
        "type": "Patient",
        "identifier": {"type": {"coding": [mrn]}, "value": "MRN-0042"},
    }
    # The configured default applies when the header names no issuer at all.
    with_default = study_bundle(study, "R4", OPTIONS)
    patient = by_type(with_default)["Patient"][0]["resource"]
    assert patient["identifier"][0]["system"] == OPTIONS.patient_id_system
    validate_bundle(with_default, "R4")


@pytest.mark.parametrize("version", VERSIONS)
def test_standalone_study_contains_its_endpoint(version: FhirVersion) -> None:
    resource = imaging_study(enriched(), version, options=OPTIONS)
    assert resource["endpoint"] == [{"reference": "#wado-rs"}]
    assert resource["contained"][0]["address"] == "https://pacs.example.org/dicom-web"
    (model_r4b if version == "R4" else model_r5)("ImagingStudy").model_validate(resource)


def test_emitted_follows_the_bundle_option() -> None:
    study = aggregate(summary_of_file("CT_small.dcm"))
    assert emitted(study, "R4")["resourceType"] == "ImagingStudy"
    assert emitted(study, "R4", OPTIONS)["resourceType"] == "Bundle"
    types = [r["resourceType"] for r in study_resources(study, "R5", OPTIONS)]
    assert types == ["Patient", "Endpoint", "Device", "ImagingStudy"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://pacs/wado", "is not an http"),
        ("https://pacs.example.org/wado/studies", "sub-resource"),
        ("https://pacs.example.org/wado?x=1", "query"),
    ],
)
def test_endpoint_address_rules(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MappingOptions(wado_rs_base_url=url)


def test_options_check_systems() -> None:
    with pytest.raises(ValueError, match="absolute URI"):
        MappingOptions(accession_system="not a uri")
    assert MappingOptions(wado_rs_base_url="http://h:8042/dicom-web///").wado_rs_base_url == (
        "http://h:8042/dicom-web"
    )


def _references(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["reference"]} if isinstance(value.get("reference"), str) else set()
        for child in value.values():
            found |= _references(child)
        return found
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value)) if value else set()
    return set()


@pytest.mark.parametrize(
    ("profile", "version"),
    [("base", "R4"), ("base", "R5"), ("mii", "R4"), ("osiris", "R4"), ("qicore", "R4")],
)
def test_weight_and_height_are_vital_sign_observations_for_every_profile(
    profile: str, version: FhirVersion
) -> None:
    # A real enhanced CT (pydicom's eCT_Supplemental.dcm): Patient's Weight 75 kg, Size 1.6 m.
    study = aggregate(summary_of_file("eCT_Supplemental.dcm"))
    options = MappingOptions(patient_id_system="urn:oid:1.2.3.4", bundle=True, profile=profile)
    bundle = study_bundle(study, version, options)
    validate_bundle(bundle, version)
    patient_url = by_type(bundle)["Patient"][0]["fullUrl"]
    study_url = by_type(bundle)["ImagingStudy"][0]["fullUrl"]
    started = by_type(bundle)["ImagingStudy"][0]["resource"]["started"]
    observations = {
        o["resource"]["code"]["coding"][0]["code"]: o for o in by_type(bundle)["Observation"]
    }
    assert sorted(observations) == ["29463-7", "8302-2"]
    weight, height = observations["29463-7"]["resource"], observations["8302-2"]["resource"]
    assert weight["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/bodyweight"]
    assert weight["category"][0]["coding"][0]["code"] == "vital-signs"
    assert weight["valueQuantity"] == {
        "value": 75,
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }
    assert height["valueQuantity"]["value"] == 160 and height["valueQuantity"]["code"] == "cm"
    for observation in (weight, height):
        assert observation["subject"] == {"reference": patient_url, "type": "Patient"}
        assert observation["effectiveDateTime"] == started == "2006-12-19T11:11:54.812-05:00"
        assert observation["derivedFrom"] == [{"reference": study_url, "type": "ImagingStudy"}]
    assert observations["29463-7"]["request"] == {
        "method": "PUT",
        "url": f"Observation/{weight['id']}",
    }


def test_no_vital_signs_without_a_date_or_whose_they_are() -> None:
    summary = summary_of_file("examples_overlay.dcm")  # Patient's Size 1.73 m, no weight
    bundle = study_bundle(aggregate(summary), "R4", OPTIONS)
    (height,) = [e["resource"] for e in by_type(bundle)["Observation"]]
    assert height["valueQuantity"]["value"] == 173  # 1.73 m, exactly
    attrs = dict(summary.study)
    del attrs["started"]
    undated = replace(summary, study=attrs)
    assert "Observation" not in by_type(study_bundle(aggregate(undated), "R4", OPTIONS))
    attrs = dict(summary.study)
    del attrs["patient_id"]
    anonymous = replace(summary, study=attrs)
    assert "Observation" not in by_type(study_bundle(aggregate(anonymous), "R4", OPTIONS))
