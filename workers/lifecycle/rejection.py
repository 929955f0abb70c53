"""Pure: IOCM rejection notes (IHE RAD Imaging Object Change Management).

A rejection note is a Key Object Selection Document (SOP Class
1.2.840.10008.5.1.4.1.1.88.59) whose document title, Concept Name Code Sequence
(0040,A043), is one of the DCM codes in :data:`REJECTION_TITLES`. Its Current Requested
Procedure Evidence Sequence (0040,A375) > Referenced Series Sequence (0008,1115) >
Referenced SOP Sequence (0008,1199) names the rejected instances.

IOCM puts a rejection note in the study of the instances it rejects; references to
instances of another study are not applied (the note's summary counts them, so the
worker can log them).
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.dicomjson import DicomJson

KEY_OBJECT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"

#: DCM code value -> its meaning (PS3.16 CID 7011 "Rejected for ..." titles of IOCM)
REJECTION_TITLES: dict[str, str] = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


@dataclass(frozen=True)
class RejectionNote:
    """What a rejection note says: why, and which instances of its own study."""

    code: str
    #: SOP Instance UIDs of the note's own study that it rejects, sorted, each once
    rejected: tuple[str, ...]
    #: references to instances of other studies (not applied)
    elsewhere: int = 0


def rejection_note(dj: DicomJson, study_uid: str) -> RejectionNote | None:
    """The rejection note ``dj`` is, or ``None`` for any other object."""
    if dj.raw_uid("SOPClassUID") != KEY_OBJECT_SOP_CLASS:
        return None
    titles = dj.items("ConceptNameCodeSequence")[:1]
    if not titles:
        return None
    title = titles[0]
    if title.text("CodingSchemeDesignator") != "DCM":
        return None
    code = title.text("CodeValue")
    if code not in REJECTION_TITLES:
        return None
    rejected: set[str] = set()
    elsewhere = 0
    for study in dj.items("CurrentRequestedProcedureEvidenceSequence"):
        # An evidence item without its Study Instance UID (Type 1) is taken as the note's own.
        referenced_study = study.raw_uid("StudyInstanceUID") or study_uid
        for series in study.items("ReferencedSeriesSequence"):
            for sop in series.items("ReferencedSOPSequence"):
                uid = sop.raw_uid("ReferencedSOPInstanceUID")
                if uid is None:
                    continue
                if referenced_study == study_uid:
                    rejected.add(uid)
                else:
                    elsewhere += 1
    return RejectionNote(code, tuple(sorted(rejected)), elsewhere)
