"""Pure: a study aggregate -> a FHIR ImagingStudy (R4 4.0.1 or R5 5.0.0) as a JSON dict.

Shared by the workers and ``scp2fhir convert``. Output is deterministic: series
sorted by number then UID, instances by number then UID, modalities sorted.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from workers.dicomtime import fhir_datetime
from workers.fold import StudyAggregate

FhirVersion = Literal["R4", "R5"]
Resource = dict[str, Any]

DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
RFC3986_SYSTEM = "urn:ietf:rfc:3986"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def fhir_id(study_uid: str) -> str:
    """Stable FHIR id for a study: the UID itself (a valid UID is a valid id), else a hash.

    Hashed ids start with a letter, so they can never equal a UID-derived one.
    """
    if _FHIR_ID.match(study_uid):
        return study_uid
    return "h" + hashlib.sha256(study_uid.encode()).hexdigest()[:63]


def imaging_study(aggregate: StudyAggregate, version: FhirVersion) -> Resource:
    study = aggregate.study.attrs if aggregate.study else {}
    by_series: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for sop_uid, record in aggregate.instances.items():
        by_series.setdefault(record["series_uid"], []).append((sop_uid, record))

    series_list = []
    for series_uid, members in by_series.items():
        sourced = aggregate.series.get(series_uid)
        series_list.append(_series(series_uid, sourced.attrs if sourced else {}, members, version))
    series_list.sort(key=lambda s: (s.get("number", 1 << 31), s["uid"]))

    resource: Resource = {
        "resourceType": "ImagingStudy",
        "id": fhir_id(aggregate.study_uid),
        "identifier": _identifiers(aggregate.study_uid, study),
        "status": "available",
    }
    modalities = sorted({code for s in series_list if (code := _modality_code(s)) is not None})
    if modalities:
        codings = [_modality_coding(code) for code in modalities]
        resource["modality"] = codings if version == "R4" else [{"coding": [c]} for c in codings]
    resource["subject"] = _subject(study)
    started = fhir_datetime(
        study.get("study_date"), study.get("study_time"), study.get("timezone_offset")
    )
    if started:
        resource["started"] = started
    if study.get("study_description"):
        resource["description"] = study["study_description"]
    resource["numberOfSeries"] = len(series_list)
    resource["numberOfInstances"] = len(aggregate.instances)
    resource["series"] = series_list
    return resource


def _identifiers(study_uid: str, study: dict[str, Any]) -> list[dict[str, Any]]:
    identifiers: list[dict[str, Any]] = [
        {"use": "official", "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}
    ]
    if study.get("accession_number"):
        identifiers.append(
            {
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "value": study["accession_number"],
            }
        )
    return identifiers


def _subject(study: dict[str, Any]) -> dict[str, Any]:
    patient_id = study.get("patient_id")
    if not patient_id:
        return {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]}
    identifier: dict[str, Any] = {"value": patient_id}
    if study.get("issuer_of_patient_id"):
        identifier["assigner"] = {"display": study["issuer_of_patient_id"]}
    return {"type": "Patient", "identifier": identifier}


def _modality_coding(code: str) -> dict[str, Any]:
    return {"system": DCM_SYSTEM, "code": code}


def _modality_code(series: dict[str, Any]) -> str | None:
    modality = series["modality"]
    coding = modality if "system" in modality or "extension" in modality else modality["coding"][0]
    code = coding.get("code")
    return code if isinstance(code, str) else None


def _series(
    series_uid: str,
    attrs: dict[str, Any],
    members: list[tuple[str, dict[str, Any]]],
    version: FhirVersion,
) -> dict[str, Any]:
    series: dict[str, Any] = {"uid": series_uid}
    if isinstance(attrs.get("series_number"), int) and 0 <= attrs["series_number"] < 2**31:
        series["number"] = attrs["series_number"]
    code = attrs.get("modality")
    coding = (
        _modality_coding(code)
        if code
        else {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]}
    )
    series["modality"] = coding if version == "R4" else {"coding": [coding]}
    if attrs.get("series_description"):
        series["description"] = attrs["series_description"]
    series["numberOfInstances"] = len(members)
    started = fhir_datetime(
        attrs.get("series_date"), attrs.get("series_time"), attrs.get("timezone_offset")
    )
    if started:
        series["started"] = started
    instances = [_instance(sop_uid, record) for sop_uid, record in members]
    instances.sort(key=lambda i: (i.get("number", 1 << 31), i["uid"]))
    series["instance"] = instances
    return series


def _instance(sop_uid: str, record: dict[str, Any]) -> dict[str, Any]:
    instance: dict[str, Any] = {"uid": sop_uid}
    sop_class = record.get("sop_class_uid")
    instance["sopClass"] = (
        {"system": RFC3986_SYSTEM, "code": f"urn:oid:{sop_class}"}
        if sop_class
        else {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]}
    )
    number = record.get("instance_number")
    if isinstance(number, int) and 0 <= number < 2**31:
        instance["number"] = number
    return instance
