"""C-MOVE from the PACS to scp2fhir's own SCP (Study Root), a study or some of its series.

The PACS sends the instances with C-STORE sub-operations to the move destination, so
they come in through the normal SCP path: Success only once Redis has the header, then
fold, quiet period, emission, delivery. A move succeeds only when the PACS reports
Success with no failed sub-operations; anything else raises
:class:`~scp.pacs.errors.MoveFailed` with the counts, and what did arrive stays: a rerun
moves what is still missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from scp.pacs.association import Session, describe
from scp.pacs.errors import AssociationRefused, BadAnswer, MoveFailed

_PENDING = (0xFF00, 0xFF01)

#: What the final C-MOVE statuses of PS3.4 C.4.2.1.5 mean, for the operator.
_MEANING = {
    0xA701: "out of resources, unable to calculate the number of matches",
    0xA702: "out of resources, unable to perform sub-operations",
    0xA801: "move destination unknown to the PACS",
    0xA900: "identifier does not match SOP class",
    0xB000: "sub-operations complete, one or more failures",
    0xFE00: "cancelled",
}


@dataclass(frozen=True)
class MoveResult:
    """A C-MOVE that succeeded: every sub-operation completed (warnings included)."""

    completed: int
    warning: int


def move_study(session: Session, study_uid: str, series_uids: Sequence[str] = ()) -> MoveResult:
    """Move the whole study, or only ``series_uids`` of it (one C-MOVE per series)."""
    if not series_uids:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        return _move(session, identifier, study_uid)
    completed = warning = 0
    for series_uid in series_uids:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        result = _move(session, identifier, study_uid)
        completed += result.completed
        warning += result.warning
    return MoveResult(completed, warning)


def _move(session: Session, identifier: Dataset, study_uid: str) -> MoveResult:
    destination = session.settings.move_destination
    counts = {"completed": 0, "failed": 0, "warning": 0}
    try:
        responses = session.move(identifier, destination)
        for status, dataset in responses:
            counts = _counts(dataset, counts)
            if status in _PENDING:
                continue
            # 0xB000 also means "one or more warnings": stored all the same.
            if status in (0x0000, 0xB000) and counts["failed"] == 0:
                return MoveResult(counts["completed"], counts["warning"])
            meaning = _MEANING.get(status, "")
            hint = (
                f"; the PACS must know {destination} (SCP2FHIR_PACS_MOVE_DESTINATION) as "
                "scp2fhir's address, and the scp2fhir SCP must be running"
                if status == 0xA801 or counts["completed"] == 0
                else ""
            )
            raise MoveFailed(
                f"{session.address}: C-MOVE of study {study_uid} to {destination} ended "
                f"{describe(status, dataset)}{' ' + meaning if meaning else ''}: "
                f"{counts['completed']} completed, {counts['failed']} failed, "
                f"{counts['warning']} warnings{hint}",
                status,
                counts["completed"],
                counts["failed"],
                counts["warning"],
            )
    except ValueError as exc:  # pynetdicom: no accepted context for the request
        session.close(abort=True)
        raise AssociationRefused(
            f"{session.address}: the PACS does not offer Study Root C-MOVE ({exc})"
        ) from None
    raise BadAnswer(f"{session.address}: C-MOVE of study {study_uid} ended without a status")


_SUBOPERATIONS = {
    "completed": "NumberOfCompletedSuboperations",
    "failed": "NumberOfFailedSuboperations",
    "warning": "NumberOfWarningSuboperations",
}


def _counts(dataset: Dataset, previous: dict[str, int]) -> dict[str, int]:
    """The sub-operation counts of a response; a response that omits one (they are
    optional on the final one) keeps the last known value."""
    counts = dict(previous)
    for name, keyword in _SUBOPERATIONS.items():
        value = dataset.get(keyword)
        if value is not None:
            try:
                counts[name] = int(value)
            except (TypeError, ValueError):
                raise BadAnswer(f"C-MOVE response has {keyword}={value!r}") from None
    return counts


__all__ = ["MoveResult", "move_study"]
