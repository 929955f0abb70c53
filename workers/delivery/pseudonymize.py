"""Pure: a study aggregate -> its pseudonymized copy, for a destination that asks for one.

Applied to the aggregate before the mapping (:mod:`workers.delivery.output`), so every
resource built from it (ImagingStudy, Patient, Devices, profile extensions) only ever
sees the pseudonymized data. The rules are :data:`RULES` (the README's table is checked
against it): an **allow-list** -- an attribute the table does not name is removed, so
an attribute added to the summary later never leaks into a research copy unnoticed.

Pseudonyms are keyed and deterministic (:class:`KeyedPseudonyms`, HMAC-SHA256 with the
destination's key): the same study always gets the same pseudonyms, and another system
that applies the same recipes with the same key (a research PACS) lines up:

* Patient ID: the first 32 hex digits of ``HMAC(key, "PatientID=" + value)``;
* Accession Number: the first 16 hex digits of ``HMAC(key, "AccessionNumber=" + value)``
  (16 fit DICOM's SH);
* a UID: ``2.25.`` and the integer of the UUID (version 8, RFC 9562) made of the first
  16 bytes of ``HMAC(key, "UID=" + value)``;
* a date shift (``dates = "shift"``): ``1 + n % 365`` days back, ``n`` the big-endian
  integer of the first 4 bytes of ``HMAC(key, "DateShift=" + Patient ID)``: one patient's
  studies keep their intervals.

A site with a pseudonymization service of its own plugs it in as an entry point
(:data:`~workers.delivery.settings.PSEUDONYM_HOOKS`): it makes the pseudonyms (the
:class:`Pseudonyms` methods); the rules of what is removed stay these.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal, Protocol

from workers.delivery.settings import Pseudonymization
from workers.fold import Received, Retraction, Sourced, StudyAggregate

Level = Literal["study", "series", "instance"]
Action = Literal[
    "keep", "remove", "patient-id", "accession", "uid", "date", "birth-date", "description"
]


class Pseudonyms(Protocol):
    """What makes the pseudonyms; :class:`KeyedPseudonyms`, or a site's hook."""

    def patient_id(self, value: str) -> str: ...

    def accession_number(self, value: str) -> str: ...

    def uid(self, value: str) -> str: ...

    def date_shift_days(self, patient_id: str | None) -> int: ...


class KeyedPseudonyms:
    """The recipes of the module docstring, with one HMAC-SHA256 key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, label: str, value: str) -> bytes:
        return hmac.new(self._key, f"{label}={value}".encode(), hashlib.sha256).digest()

    def patient_id(self, value: str) -> str:
        return self._mac("PatientID", value).hex()[:32]

    def accession_number(self, value: str) -> str:
        return self._mac("AccessionNumber", value).hex()[:16]

    def uid(self, value: str) -> str:
        raw = bytearray(self._mac("UID", value)[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: custom
        raw[8] = (raw[8] & 0x3F) | 0x80  # variant: RFC 9562
        return f"2.25.{int.from_bytes(raw, 'big')}"

    def date_shift_days(self, patient_id: str | None) -> int:
        return 1 + int.from_bytes(self._mac("DateShift", patient_id or "")[:4], "big") % 365


@dataclass(frozen=True)
class Rule:
    """One row of the pseudonymization table."""

    level: Level
    #: The summary attribute (:mod:`workers.summary`) the rule applies to.
    attribute: str
    #: The DICOM attributes it comes from (what the README's table shows).
    source: str
    action: Action
    #: The DICOM keywords whose values the action keeps as they are (the tests grep a
    #: pseudonymized copy for every other identifying value of the sent headers).
    kept_keywords: tuple[str, ...] = ()


#: Coded values are kept: code, scheme and meaning name a procedure, not a patient.
_CODES = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning")

_TECHNIQUE = (
    "ImageType",
    "ContrastBolusAgent",
    "ContrastBolusRoute",
    "ConvolutionKernel",
    "FilterType",
    "SequenceName",
    "ReceiveCoilName",
    "Radiopharmaceutical",
    "AttenuationCorrectionMethod",
    "ReconstructionMethod",
    "ScatterCorrectionMethod",
)

#: The table. Anything a summary holds that is not listed here is removed.
RULES: tuple[Rule, ...] = (
    Rule("study", "patient_id", "Patient ID", "patient-id"),
    Rule("study", "patient_id_issuer", "Issuer of Patient ID (and qualifiers)", "remove"),
    Rule("study", "patient_name", "Patient's Name", "remove"),
    Rule("study", "patient_birth_date", "Patient's Birth Date", "birth-date"),
    Rule("study", "patient_sex", "Patient's Sex", "keep"),
    Rule("study", "patient_weight_kg", "Patient's Weight", "keep"),
    Rule("study", "patient_size_m", "Patient's Size", "keep"),
    Rule("study", "accession_number", "Accession Number", "accession"),
    Rule("study", "accession_issuer", "Issuer of Accession Number Sequence", "remove"),
    Rule("study", "study_id", "Study ID", "remove"),
    Rule("study", "started", "Study Date and Time", "date", ("TimezoneOffsetFromUTC",)),
    Rule("study", "study_description", "Study Description", "description"),
    Rule("study", "referrer", "Referring Physician's Name", "remove"),
    Rule("study", "interpreters", "Name of Physician(s) Reading Study", "remove"),
    Rule("study", "procedures", "Procedure Code Sequence (codes)", "keep", _CODES),
    Rule("study", "reasons", "Reason for Requested/Performed Procedure (codes)", "keep", _CODES),
    Rule("study", "reason_texts", "Reason for the Requested Procedure, for Study (text)", "remove"),
    Rule("study", "institution", "Institution Name", "remove"),
    Rule("study", "department", "Institutional Department Name", "remove"),
    Rule("study", "comments", "Study Comments", "remove"),
    Rule(
        "study",
        "coding_schemes",
        "Coding Scheme Identification Sequence",
        "keep",
        ("CodingSchemeDesignator", "CodingSchemeUID"),
    ),
    Rule("series", "modality", "Modality", "keep"),
    Rule("series", "series_number", "Series Number", "keep"),
    Rule("series", "series_description", "Series Description", "description"),
    Rule("series", "started", "Series Date and Time", "date"),
    Rule("series", "body_part", "Body Part Examined", "keep"),
    Rule("series", "anatomic_region", "Anatomic Region Sequence (code)", "keep", _CODES),
    Rule("series", "laterality", "Laterality", "keep"),
    Rule("series", "manufacturer", "Manufacturer", "keep", ("Manufacturer",)),
    Rule(
        "series",
        "model",
        "Manufacturer's Model Name",
        "keep",
        ("ManufacturerModelName",),
    ),
    Rule("series", "software_versions", "Software Versions", "keep", ("SoftwareVersions",)),
    Rule("series", "station", "Station Name", "remove"),
    Rule("series", "serial_number", "Device Serial Number", "remove"),
    Rule("series", "operators", "Operators' Name", "remove"),
    Rule("series", "performing_physicians", "Performing Physician's Name", "remove"),
    Rule("series", "specimens", "Specimen Description Sequence (identifiers, UIDs)", "remove"),
    Rule("instance", "series_uid", "Series Instance UID", "uid"),
    Rule("instance", "sop_class_uid", "SOP Class UID", "keep", ("SOPClassUID",)),
    Rule("instance", "instance_number", "Instance Number", "keep"),
    Rule("instance", "acquired", "Acquisition Date and Time", "date"),
    Rule("instance", "laterality", "Image or Frame Laterality", "keep"),
    Rule("instance", "title", "Document Title, Content Label, concept name", "description"),
    Rule(
        "instance",
        "technique",
        "acquisition technique (numbers and codes the profiles record)",
        "keep",
        _TECHNIQUE,
    ),
    Rule("instance", "calling_ae", "calling AE title it was received from", "remove"),
)

#: What each action does, as the README's table says it.
ACTIONS: dict[Action, str] = {
    "keep": "kept",
    "remove": "removed",
    "patient-id": "keyed pseudonym (32 hex digits)",
    "accession": "keyed pseudonym (16 hex digits)",
    "uid": "mapped to `2.25.<integer>`",
    "date": 'kept; with `dates = "shift"` moved back by the patient\'s shift',
    "birth-date": 'removed; with `birth_date = "year"` the year only',
    "description": 'removed; with `descriptions = "keep"` kept',
}


def table_rows() -> list[str]:
    """The README's pseudonymization table, one Markdown row per rule."""
    rows = ["| Study, Series and SOP Instance UIDs | all | mapped to `2.25.<integer>` |"]
    for rule in RULES:
        rows.append(f"| {rule.source} | {rule.level} | {ACTIONS[rule.action]} |")
    rows.append("| anything else a header holds | all | removed |")
    return rows


_BY_LEVEL: dict[Level, dict[str, Rule]] = {"study": {}, "series": {}, "instance": {}}
for _rule in RULES:
    _BY_LEVEL[_rule.level][_rule.attribute] = _rule


def kept_keywords() -> frozenset[str]:
    """DICOM keywords whose values a pseudonymized copy may hold as they were sent."""
    return frozenset(k for rule in RULES for k in rule.kept_keywords)


def pseudonymize(
    aggregate: StudyAggregate, settings: Pseudonymization, pseudonyms: Pseudonyms
) -> StudyAggregate:
    """The pseudonymized copy of ``aggregate`` (which is left as it is)."""
    study_attrs = aggregate.study.attrs if aggregate.study is not None else {}
    patient_id = study_attrs.get("patient_id")
    shift = (
        pseudonyms.date_shift_days(patient_id if isinstance(patient_id, str) else None)
        if settings.dates == "shift"
        else 0
    )
    apply = _Applier(settings, pseudonyms, shift)
    uid = pseudonyms.uid

    def sourced(value: Sourced | None, level: Level) -> Sourced | None:
        if value is None:
            return None
        return Sourced(uid(value.source), apply.attributes(value.attrs, level))

    return StudyAggregate(
        study_uid=uid(aggregate.study_uid),
        study=sourced(aggregate.study, "study"),
        instances={
            uid(sop): apply.attributes(record, "instance")
            for sop, record in aggregate.instances.items()
        },
        series={
            uid(series_uid): s
            for series_uid, value in aggregate.series.items()
            if (s := sourced(value, "series")) is not None
        },
        # Only what the study's status is derived from (every instance rejected, or
        # retracted): which instances were received, no content; a retraction without who
        # and why.
        received={
            uid(sop): Received(got.rank, "", "", {}) for sop, got in aggregate.received.items()
        },
        retraction=(
            Retraction(aggregate.retraction.at_ms, "", "")
            if aggregate.retraction is not None
            else None
        ),
    )


class _Applier:
    def __init__(self, settings: Pseudonymization, pseudonyms: Pseudonyms, shift: int) -> None:
        self.settings = settings
        self.shift = shift
        self._actions: dict[Action, Callable[[Any], Any]] = {
            "keep": lambda value: value,
            "patient-id": lambda value: _text(value, pseudonyms.patient_id),
            "accession": lambda value: _text(value, pseudonyms.accession_number),
            "uid": lambda value: _text(value, pseudonyms.uid),
            "date": self._date,
            "birth-date": self._birth_date,
            "description": lambda value: value if settings.descriptions == "keep" else None,
        }

    def attributes(self, attrs: Mapping[str, Any], level: Level) -> dict[str, Any]:
        rules = _BY_LEVEL[level]
        out: dict[str, Any] = {}
        for name, value in attrs.items():
            rule = rules.get(name)
            if rule is None or rule.action == "remove":
                continue
            result = self._actions[rule.action](value)
            if result is not None:
                out[name] = result
        return out

    def _date(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        return value if self.shift == 0 else shift_date(value, self.shift)

    def _birth_date(self, value: Any) -> str | None:
        if self.settings.birth_date != "year" or not isinstance(value, str):
            return None
        year = value[:4]
        return year if year.isdigit() else None


def _text(value: Any, make: Callable[[str], str]) -> str | None:
    return make(value) if isinstance(value, str) and value else None


_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(.*)$")


def shift_date(value: str, days: int) -> str | None:
    """A FHIR date or dateTime moved ``days`` back, precision and time of day kept (a
    year or year-month moves with its first day). ``None`` if it is not one."""
    match = _DATE.match(value)
    if match is None:
        return None
    year, month, day, rest = match.groups()
    try:
        moved = date(int(year), int(month or 1), int(day or 1)) - timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    if day is not None:
        return moved.isoformat() + rest
    if month is not None:
        return f"{moved.year:04d}-{moved.month:02d}"
    return f"{moved.year:04d}"
