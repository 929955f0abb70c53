"""Pure: one instance header (DICOM JSON) -> the facts the fold and the mapping need.

The summary splits a header into study-level, series-level and instance-level
attributes under FHIR-neutral names, so nothing downstream reads DICOM again.
Attribute dicts hold JSON values only; absent data is absent, never ``None``.
Values are checked here (:mod:`workers.dicomjson`): what is malformed is left
out and its tag listed in :attr:`InstanceSummary.warnings`; the caller logs
them (:func:`log_warnings`).

Instance records are stored once per instance, so they stay small: only what
varies per instance or is reduced over instances by the mapping (the acquisition
date-time, kept only when the instance has no Series Date, which is when the
mapping needs the series' earliest acquisition; the image laterality), the
rare per-instance title and, for the few instances that are selections (KOS, SEG,
RTSTRUCT) or dose reports, their bounded references (:mod:`workers.selection`) or
doses (:mod:`workers.dose`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from workers.dicomjson import Code, DicomJson, describe_tags, is_oid
from workers.dicomtime import Zone, combine
from workers.dose import dose_report
from workers.lifecycle.rejection import KEY_OBJECT_SOP_CLASS, RejectionNote, rejection_note
from workers.selection import selection
from workers.technique import technique

logger = logging.getLogger(__name__)

Attributes = dict[str, Any]


_LATERALITIES = frozenset({"R", "L", "B", "U"})
_SEXES = frozenset({"M", "F", "O"})
_ENTITY_TYPES = frozenset({"DNS", "EUI64", "ISO", "URI", "UUID", "X400", "X500"})


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
    #: Tags of values that were present but unusable and so left out (never values).
    warnings: tuple[str, ...] = ()
    #: (tag, VR) of values read although encoded with another VR than the dictionary's.
    mismatches: tuple[tuple[str, str], ...] = ()
    #: Set when the instance is an IOCM rejection note (:mod:`workers.lifecycle.rejection`).
    rejection: RejectionNote | None = None


def summarize(
    header: dict[str, Any],
    *,
    with_technique: bool = False,
    site_zone: tzinfo | None = None,
) -> InstanceSummary:
    """Split ``header`` into its study, series and instance attributes. With
    ``with_technique`` (an implementation-guide profile is active), each instance record
    also carries its acquisition technique (:mod:`workers.technique`), and each series
    record the private image label the Osiris guide reads. ``site_zone`` (the opt-in
    ``SCP2FHIR_SITE_TIMEZONE``) dates local times of a header that has no Timezone Offset
    From UTC; without it such times keep only their date."""
    dj = DicomJson(header)
    study_uid = dj.raw_uid("StudyInstanceUID")
    series_uid = dj.raw_uid("SeriesInstanceUID")
    sop_uid = dj.raw_uid("SOPInstanceUID")
    if not (study_uid and series_uid and sop_uid):
        raise NotAnInstance("StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID are required")
    zone: Zone | None = dj.offset("TimezoneOffsetFromUTC") or site_zone
    study = _study(dj, zone)
    series = _series(dj, zone)
    instance = _instance(dj, zone, series_uid, needs_acquisition="started" not in series)
    _put(instance, "selection", selection(dj, instance.get("sop_class_uid"), study_uid))
    _put(instance, "dose", dose_report(dj, instance.get("sop_class_uid"), zone))
    if with_technique:
        _put(instance, "technique", technique(dj))
        # ELSCINT1 "Image Label" (00E1,xx40), the Osiris guide's first source of a series'
        # description (the SCP keeps this one private element: scp.header_rules).
        _put(series, "image_label", dj.private_text(0x00E1, "ELSCINT1", 0x40))
    rejection = rejection_note(dj, study_uid)
    return InstanceSummary(
        study_uid,
        series_uid,
        sop_uid,
        study,
        series,
        instance,
        tuple(dj.warnings),
        tuple(dj.mismatches),
        rejection,
    )


def log_warnings(summary: InstanceSummary, log: logging.Logger = logger) -> None:
    """Warning lines naming by tag and keyword the elements left out and those read
    despite a VR other than the dictionary's (never values)."""
    if summary.mismatches:
        log.warning(
            "study=%s series=%s sop=%s read with another VR than the dictionary's: %s",
            summary.study_uid,
            summary.series_uid,
            summary.sop_uid,
            ", ".join(f"{describe_tags([tag])} as {vr}" for tag, vr in summary.mismatches),
        )
    if summary.warnings:
        log.warning(
            "study=%s series=%s sop=%s left out invalid elements: %s",
            summary.study_uid,
            summary.series_uid,
            summary.sop_uid,
            describe_tags(summary.warnings),
        )


# --- study ---------------------------------------------------------------------------------


def _study(dj: DicomJson, zone: Zone | None) -> Attributes:
    out: Attributes = {}
    _put(out, "patient_id", dj.text("PatientID"))
    _put(
        out,
        "patient_id_issuer",
        _issuer(dj.text("IssuerOfPatientID"), dj.items("IssuerOfPatientIDQualifiersSequence")),
    )
    _put(out, "patient_name", dj.name("PatientName"))
    _put(out, "patient_birth_date", dj.date("PatientBirthDate"))
    _put(out, "patient_sex", dj.enumerated("PatientSex", _SEXES))
    # Patient's Weight (kg) and Size (m) at the time of the study (PS3.3 C.7.2.2).
    weight = dj.number("PatientWeight")
    _put(out, "patient_weight_kg", weight if weight is not None and weight > 0 else None)
    size = dj.number("PatientSize")
    _put(out, "patient_size_m", size if size is not None and size > 0 else None)
    _put(out, "started", combine(dj.date("StudyDate"), dj.time("StudyTime"), zone))
    _put(out, "accession_number", dj.text("AccessionNumber"))
    _put(out, "accession_issuer", _issuer(None, dj.items("IssuerOfAccessionNumberSequence")))
    _put(out, "study_id", dj.text("StudyID"))
    _put(out, "study_description", dj.text("StudyDescription"))
    _put(out, "referrer", dj.name("ReferringPhysicianName"))
    _put(out, "interpreters", dj.names("NameOfPhysiciansReadingStudy"))
    requests = dj.items("RequestAttributesSequence")
    procedures = dj.codes("ProcedureCodeSequence")
    if not procedures:
        procedures = _unique(c for r in requests for c in r.codes("RequestedProcedureCodeSequence"))
    _put(out, "procedures", procedures)
    reasons = _unique(
        [
            *dj.codes("ReasonForRequestedProcedureCodeSequence"),
            *dj.codes("ReasonForPerformedProcedureCodeSequence"),
            *(c for r in requests for c in r.codes("ReasonForRequestedProcedureCodeSequence")),
        ]
    )
    _put(out, "reasons", reasons)
    reason_texts = _unique(
        [
            *dj.texts("ReasonForTheRequestedProcedure"),
            *(t for r in requests for t in r.texts("ReasonForTheRequestedProcedure")),
            *dj.texts("ReasonForStudy"),
        ]
    )
    _put(out, "reason_texts", reason_texts)
    _put(out, "institution", dj.text("InstitutionName"))
    _put(out, "department", dj.text("InstitutionalDepartmentName"))
    _put(out, "comments", dj.text("StudyComments"))
    _put(out, "coding_schemes", _coding_schemes(dj))
    return out


def _issuer(local: str | None, items: list[DicomJson]) -> dict[str, str] | None:
    """An identifier's issuer: local name and/or universal id with its type."""
    issuer: dict[str, str] = {}
    if local:
        issuer["local"] = local
    for item in items[:1]:
        if "local" not in issuer:
            _put(issuer, "local", item.text("LocalNamespaceEntityID"))
        universal = item.text("UniversalEntityID")
        kind = item.enumerated("UniversalEntityIDType", _ENTITY_TYPES)
        if universal and kind:
            issuer["universal"] = universal
            issuer["type"] = kind
    return issuer or None


def _coding_schemes(dj: DicomJson) -> dict[str, str]:
    """Private or local coding schemes the dataset identifies: designator -> system URI."""
    schemes: dict[str, str] = {}
    for item in dj.items("CodingSchemeIdentificationSequence"):
        designator = item.text("CodingSchemeDesignator")
        url = item.text("CodingSchemeURL")
        uid = item.uid("CodingSchemeUID")
        if designator and url and " " not in url:
            schemes[designator] = url
        elif designator and uid and is_oid(uid):
            schemes[designator] = f"urn:oid:{uid}"
    return schemes


# --- series --------------------------------------------------------------------------------


def _series(dj: DicomJson, zone: Zone | None) -> Attributes:
    out: Attributes = {}
    _put(out, "modality", dj.code_string("Modality", required=True))
    _put(out, "series_description", dj.text("SeriesDescription"))
    _put(out, "series_number", dj.integer("SeriesNumber"))
    _put(out, "started", combine(dj.date("SeriesDate"), dj.time("SeriesTime"), zone))
    _put(out, "body_part", dj.code_string("BodyPartExamined"))
    region = dj.codes("AnatomicRegionSequence")
    if not region:
        region = [c for frame in _frame_anatomy(dj) for c in frame.codes("AnatomicRegionSequence")]
    _put(out, "anatomic_region", region[0] if region else None)
    _put(out, "laterality", dj.enumerated("Laterality", _LATERALITIES))
    _put(out, "manufacturer", dj.text("Manufacturer"))
    _put(out, "model", dj.text("ManufacturerModelName"))
    _put(out, "station", dj.text("StationName"))
    _put(out, "serial_number", dj.text("DeviceSerialNumber"))
    _put(out, "software_versions", dj.joined("SoftwareVersions"))
    _put(out, "operators", dj.names("OperatorsName"))
    _put(out, "performing_physicians", dj.names("PerformingPhysicianName"))
    _put(out, "specimens", _specimens(dj))
    return out


def _frame_anatomy(dj: DicomJson) -> list[DicomJson]:
    """Frame Anatomy of a multi-frame image's shared functional groups."""
    return [
        anatomy
        for shared in dj.items("SharedFunctionalGroupsSequence")[:1]
        for anatomy in shared.items("FrameAnatomySequence")[:1]
    ]


def _specimens(dj: DicomJson) -> list[dict[str, Any]]:
    specimens: list[dict[str, Any]] = []
    for item in dj.items("SpecimenDescriptionSequence"):
        specimen: dict[str, Any] = {}
        _put(specimen, "id", item.text("SpecimenIdentifier", required=True))
        _put(specimen, "uid", item.uid("SpecimenUID", required=True))
        _put(
            specimen,
            "issuer",
            _issuer(None, item.items("IssuerOfTheSpecimenIdentifierSequence")),
        )
        _put(specimen, "description", item.text("SpecimenShortDescription"))
        if "id" in specimen or "uid" in specimen:
            specimens.append(specimen)
    return specimens


# --- instance ------------------------------------------------------------------------------


def _instance(
    dj: DicomJson, zone: Zone | None, series_uid: str, needs_acquisition: bool
) -> Attributes:
    out: Attributes = {"series_uid": series_uid}
    sop_class = dj.uid("SOPClassUID", required=True)
    _put(out, "sop_class_uid", sop_class)
    _put(out, "instance_number", dj.integer("InstanceNumber"))
    acquired = dj.date_time("AcquisitionDateTime", zone) or combine(
        dj.date("AcquisitionDate"), dj.time("AcquisitionTime"), zone
    )
    # Only a series without Series Date needs its earliest acquisition; Series Date is a
    # series-level attribute, so an instance that has it speaks for its series.
    if needs_acquisition:
        _put(out, "acquired", acquired)
    laterality = dj.enumerated("ImageLaterality", _LATERALITIES)
    if laterality is None:
        for frame in _frame_anatomy(dj):
            laterality = frame.enumerated("FrameLaterality", _LATERALITIES)
    if laterality in ("L", "R", "B"):
        out["laterality"] = laterality
    _put(out, "title", _title(dj))
    # The calling AE title the SCP received it from (destinations may leave it out).
    _put(out, "calling_ae", dj.text("SourceApplicationEntityTitle"))
    return out


def _title(dj: DicomJson) -> str | None:
    """A document's or object's own title: SR/KO concept name, document title, content
    label (presentation states, segmentations, ...), or an RT plan/structure set label."""
    if dj.code_string("ValueType") == "CONTAINER":
        names = dj.codes("ConceptNameCodeSequence")
        if names:
            return names[0]["meaning"]
    return (
        dj.text("DocumentTitle")
        or dj.text("ContentLabel")
        or dj.text("RTPlanLabel")
        or dj.text("StructureSetLabel")
    )


# --- helpers -------------------------------------------------------------------------------


def _put(out: dict[str, Any], name: str, value: Any) -> None:
    if value is not None and value != [] and value != {}:
        out[name] = value


def _unique(codes: Any) -> list[Any]:
    """Each value once, in order; linear (a hostile header may hold many)."""
    out: list[Any] = []
    seen: set[str] = set()
    for code in codes:
        identity = json.dumps(code, sort_keys=True)
        if identity not in seen:
            seen.add(identity)
            out.append(code)
    return out


__all__ = [
    "KEY_OBJECT_SOP_CLASS",
    "Attributes",
    "Code",
    "InstanceSummary",
    "NotAnInstance",
    "describe_tags",
    "log_warnings",
    "summarize",
]
