"""Pure: one instance header (DICOM JSON) -> the facts the fold and the mapping need.

The summary splits a header into study-level, series-level and instance-level
attributes under FHIR-neutral names, so nothing downstream reads DICOM again.
Attribute dicts hold JSON values only; absent data is absent, never ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.dicomjson import DicomJson

Attributes = dict[str, Any]


class NotAnInstance(ValueError):
    """The header lacks a UID that identifies the instance."""


@dataclass(frozen=True)
class InstanceSummary:
    study_uid: str
    series_uid: str
    sop_uid: str
    study: Attributes
    series: Attributes
    instance: Attributes


_STUDY_TEXT = {
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "timezone_offset": "TimezoneOffsetFromUTC",
    "accession_number": "AccessionNumber",
    "study_id": "StudyID",
    "study_description": "StudyDescription",
}
_SERIES_TEXT = {
    "modality": "Modality",
    "series_description": "SeriesDescription",
    "series_date": "SeriesDate",
    "series_time": "SeriesTime",
    "timezone_offset": "TimezoneOffsetFromUTC",
}


def summarize(header: dict[str, Any]) -> InstanceSummary:
    """Split ``header`` into its study, series and instance attributes."""
    dj = DicomJson(header)
    study_uid = dj.text("StudyInstanceUID")
    series_uid = dj.text("SeriesInstanceUID")
    sop_uid = dj.text("SOPInstanceUID")
    if not (study_uid and series_uid and sop_uid):
        raise NotAnInstance("StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID are required")

    study = _texts(dj, _STUDY_TEXT)
    series = _texts(dj, _SERIES_TEXT)
    number = dj.integer("SeriesNumber")
    if number is not None:
        series["series_number"] = number

    instance: Attributes = {"series_uid": series_uid}
    sop_class = dj.text("SOPClassUID")
    if sop_class:
        instance["sop_class_uid"] = sop_class
    instance_number = dj.integer("InstanceNumber")
    if instance_number is not None:
        instance["instance_number"] = instance_number
    return InstanceSummary(study_uid, series_uid, sop_uid, study, series, instance)


def _texts(dj: DicomJson, names: dict[str, str]) -> Attributes:
    out: Attributes = {}
    for name, keyword in names.items():
        value = dj.text(keyword)
        if value is not None:
            out[name] = value
    return out
