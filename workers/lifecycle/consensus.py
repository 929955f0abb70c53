"""Pure: study- and series-level attributes from the values the instances carry.

Every instance record has a *rank* (:mod:`workers.fold`): 0 for an instance as first
received, whenever it arrives; a re-send of a known instance with changed study- or
series-level attributes is a correction and ranks one more than the number of times the
study had been emitted before it (a correction before the first emission ranks 1, one
after it 2, ...). The rule, per attribute:

1. Only instances that carry a value vote (an empty Patient ID never outvotes a real one).
2. The highest rank among them wins: a PACS that re-sends instances (a correction)
   speaks after its earlier records, even when it re-sends only some of them; an
   instance that only arrives late (a missed image, a workstation's key object) ranks 0
   and never overrides a correction.
3. Within that rank the value most instances carry wins; a tie goes to the value of the
   instance with the smallest SOP Instance UID (byte order) among them, so the result
   never depends on the order in which instances arrived.

Attributes that describe one thing are decided together, so a study never mixes two
records: the patient (Patient ID with its issuer, name, birth date, sex, weight, size)
and the accession number with its issuer. The key (Patient ID, Accession Number) is
decided by the rule above; its companions then only among the records that carry the
winning key. A study whose records carry no key at all decides the companions one by one.

Disagreement (more than one distinct value among the instances that carry an attribute)
is reported by attribute, DICOM keyword and counts, never by value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

Attributes = dict[str, Any]


class Vote(NamedTuple):
    """What instances with the same attributes and the same rank say."""

    rank: int
    #: SOP Instance UID of the instance (the smallest, when the vote stands for several)
    sop: str
    #: their study- or series-level attributes
    attrs: Attributes
    #: how many instances the vote stands for (they share one variant of the attributes)
    instances: int = 1


#: key attribute -> the attributes that must come from a record carrying the winning key
GROUPS: dict[str, tuple[str, ...]] = {
    "patient_id": (
        "patient_id_issuer",
        "patient_name",
        "patient_birth_date",
        "patient_sex",
        "patient_weight_kg",
        "patient_size_m",
    ),
    "accession_number": ("accession_issuer",),
}

#: summary attribute -> the DICOM keyword it is read from (for reports; never values)
KEYWORDS: dict[str, str] = {
    "patient_id": "PatientID",
    "patient_id_issuer": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "patient_weight_kg": "PatientWeight",
    "patient_size_m": "PatientSize",
    "accession_number": "AccessionNumber",
    "accession_issuer": "IssuerOfAccessionNumberSequence",
    "study_id": "StudyID",
    "study_description": "StudyDescription",
    "referrer": "ReferringPhysicianName",
    "interpreters": "NameOfPhysiciansReadingStudy",
    "procedures": "ProcedureCodeSequence",
    "reasons": "ReasonForRequestedProcedureCodeSequence",
    "reason_texts": "ReasonForTheRequestedProcedure",
    "institution": "InstitutionName",
    "department": "InstitutionalDepartmentName",
    "comments": "StudyComments",
    "coding_schemes": "CodingSchemeIdentificationSequence",
    "modality": "Modality",
    "series_description": "SeriesDescription",
    "series_number": "SeriesNumber",
    "body_part": "BodyPartExamined",
    "anatomic_region": "AnatomicRegionSequence",
    "laterality": "Laterality",
    "manufacturer": "Manufacturer",
    "model": "ManufacturerModelName",
    "station": "StationName",
    "serial_number": "DeviceSerialNumber",
    "software_versions": "SoftwareVersions",
    "operators": "OperatorsName",
    "performing_physicians": "PerformingPhysicianName",
    "specimens": "SpecimenDescriptionSequence",
}
#: attributes read from more than one element, by level
_STARTED = {"study": "StudyDate", "series": "SeriesDate"}


@dataclass(frozen=True, order=True)
class Disagreement:
    """Instances that carry an attribute carry more than one value of it."""

    #: ``study`` or ``series <Series Instance UID>``
    level: str
    attribute: str
    #: instances per distinct value, largest first (values themselves are never kept)
    counts: tuple[int, ...]

    @property
    def keyword(self) -> str:
        if self.attribute == "started":
            return _STARTED["study" if self.level == "study" else "series"]
        return KEYWORDS.get(self.attribute, self.attribute)

    def line(self) -> str:
        spread = "/".join(str(n) for n in self.counts)
        where = "" if self.level == "study" else f" in {self.level}"
        return (
            f"{self.keyword}{where}: {len(self.counts)} values among "
            f"{sum(self.counts)} instances ({spread})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "attribute": self.attribute,
            "keyword": self.keyword,
            "counts": list(self.counts),
        }


def canonical(value: Any) -> str:
    """A value's JSON text with sorted keys: equal values, equal texts."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _present(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


#: (rank, SOP Instance UID, canonical text, value, instances, vote index) of one vote
#: for one attribute
_Candidate = tuple[int, str, str, Any, int, int]


def _pick(candidates: Iterable[_Candidate]) -> Any:
    """The winning value: highest rank, then most instances, then the value of the
    smallest SOP Instance UID. ``None`` without candidates."""
    highest: int | None = None
    counts: dict[str, int] = {}
    first: dict[str, tuple[str, Any]] = {}
    for rank, sop, text, value, count, _ in candidates:
        if highest is None or rank > highest:
            highest, counts, first = rank, {}, {}
        if rank == highest:
            counts[text] = counts.get(text, 0) + count
            known = first.get(text)
            if known is None or sop < known[0]:
                first[text] = (sop, value)
    if not counts:
        return None
    best = min(counts, key=lambda text: (-counts[text], first[text][0]))
    return first[best][1]


def decide(votes: Sequence[Vote]) -> Attributes:
    """The attributes the instances' ``votes`` decide (see the module's rule). A vote for
    several instances counts as many; linear in the number of votes and attributes."""
    # One pass: per attribute, the candidate of every vote carrying it.
    table: dict[str, list[_Candidate]] = {}
    for index, (rank, sop, attrs, count) in enumerate(votes):
        for name, value in attrs.items():
            if _present(value):
                candidate = (rank, sop, canonical(value), value, count, index)
                table.setdefault(name, []).append(candidate)
    out: Attributes = {}
    grouped = {member for members in GROUPS.values() for member in members}
    for name, candidates in table.items():
        if name not in grouped:
            picked = _pick(candidates)
            if picked is not None:
                out[name] = picked
    for key, members in GROUPS.items():
        winner = out.get(key)
        # Companions come from records that carry the winning key (never another
        # patient's birth date); without any key, each is decided on its own.
        carriers = (
            None if winner is None else {c[5] for c in table[key] if c[2] == canonical(winner)}
        )
        for member in members:
            picked = _pick(c for c in table.get(member, []) if carriers is None or c[5] in carriers)
            if picked is not None:
                out[member] = picked
    return dict(sorted(out.items()))


def disagreements(level: str, votes: Sequence[Vote]) -> list[Disagreement]:
    """Attributes whose carriers hold more than one value, with the counts per value."""
    table: dict[str, dict[str, int]] = {}
    for _, _, attrs, count in votes:
        for name, value in attrs.items():
            if _present(value):
                per_value = table.setdefault(name, {})
                text = canonical(value)
                per_value[text] = per_value.get(text, 0) + count
    found = [
        Disagreement(level, name, tuple(sorted(per_value.values(), reverse=True)))
        for name, per_value in table.items()
        if len(per_value) > 1
    ]
    return sorted(found)
