"""QI-Core ImagingStudy (US, R4; ``qicore-imagingstudy``, must-support flags of 6.0.0).

QI-Core adds no extension and raises no cardinality: it asks that must-support
elements be populated whenever the data exist. The base mapping already fills every
series element DICOM can give (uid, number, modality, description, numberOfInstances,
bodySite, laterality, specimen, started, performer, instance). This profile adds
``basedOn`` in R4 too (the ServiceRequest by its Accession Number; the base mapping
emits it only in R5) and reports must-support elements the headers left empty.
"""

from __future__ import annotations

from workers.fold import StudyAggregate
from workers.profiles.fhir import based_on_accession, series_where
from workers.profiles.gaps import MUST_SUPPORT, Gaps
from workers.profiles.profile import Profile, Resource

STUDY_PROFILE = "http://hl7.org/fhir/us/qicore/StructureDefinition/qicore-imagingstudy"

#: Must-support series elements a DICOM header can fill, and their source tags.
_SERIES_MUST_SUPPORT = [
    ("number", "(0020,0011) Series Number absent"),
    ("description", "(0008,103E) Series Description absent"),
    ("bodySite", "(0018,0015) Body Part Examined / (0008,2218) Anatomic Region absent or unmapped"),
    ("started", "(0008,0021) Series Date absent and no acquisition date"),
]


class QiCoreProfile(Profile):
    name = "qicore"
    url = STUDY_PROFILE
    version = "6.0.0"
    fhir_versions = frozenset({"R4"})

    def refine_study(self, study: Resource, aggregate: StudyAggregate, gaps: Gaps) -> None:
        self.claim(study)
        if "extension" in (study.get("subject") or {}):
            gaps.add("study", "subject", MUST_SUPPORT, "(0010,0020) Patient ID absent")
        if "started" not in study:
            gaps.add("study", "started", MUST_SUPPORT, "(0008,0020) Study Date absent")
        based_on = based_on_accession(study)
        if based_on and "basedOn" not in study:
            study["basedOn"] = based_on
        elif not based_on:
            gaps.add("study", "basedOn", MUST_SUPPORT, "(0008,0050) Accession Number absent")
        gaps.add(
            "study",
            "procedureReference",
            MUST_SUPPORT,
            "a Procedure resource: DICOM headers do not identify one",
        )
        for series in study.get("series") or []:
            for element, reason in _SERIES_MUST_SUPPORT:
                if element not in series:
                    gaps.add(series_where(series), element, MUST_SUPPORT, reason)


PROFILE = QiCoreProfile()
