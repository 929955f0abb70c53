"""C-FIND against the PACS (Study Root): the studies of a day, the series of a study.

A PACS caps result sets (Orthanc's ``LimitFindResults`` answers Cancel, dcm4chee
``0xA700``), and an answer of thousands of records is no proof of completeness when
the cap is unknown. So every query is for one day, and a day whose answer is capped, or
longer than :attr:`~scp.pacs.settings.PacsSettings.max_results`, is asked again in two
halves by Study Time, down to one minute. Neighbouring windows share their boundary
second (a Study Time of ``101500.5`` lies in neither ``-101500`` nor ``101501-``), and
records are merged by Study Instance UID. A capped minute is an error, not a guess.

Limitation: studies without a Study Date are found by no day; studies without a Study
Time are found only on days that need no splitting.

Every record is checked: a Study/Series Instance UID that is not a UID, or a count
that is not a whole number, makes the whole answer :class:`~scp.pacs.errors.BadAnswer`
(a PACS that sends garbage once cannot be trusted with the rest of that answer). Only
UIDs, dates and counts are asked for; nothing else the PACS sends is read.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from scp.pacs.association import Session, describe
from scp.pacs.errors import BadAnswer, QueryFailed

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_PENDING = (0xFF00, 0xFF01)
#: Final statuses that mean "there were more matches than the PACS would send".
_CAPPED = (0xFE00, 0xA700)
#: A window this short (seconds) is not split further.
MIN_WINDOW_SECONDS = 60
_END_OF_DAY = 24 * 3600 - 1


@dataclass(frozen=True)
class PacsStudy:
    study_uid: str
    #: Study Date as the PACS has it (YYYYMMDD), "" if none.
    study_date: str
    #: Number of Study Related Instances, None if the PACS did not say.
    instances: int | None


@dataclass(frozen=True)
class PacsSeries:
    series_uid: str
    #: Number of Series Related Instances, None if the PACS did not say.
    instances: int | None


@dataclass(frozen=True)
class _Answer:
    records: list[Dataset]
    capped: bool


def studies_on(session: Session, day: dt.date) -> list[PacsStudy]:
    """Every study the PACS has with Study Date ``day``, split into time windows as
    needed; raises a :class:`~scp.pacs.errors.PacsError` if that cannot be had."""
    found: dict[str, PacsStudy] = {}
    _collect(session, day, None, found)
    return sorted(found.values(), key=lambda s: s.study_uid)


def _collect(
    session: Session, day: dt.date, window: tuple[int, int] | None, found: dict[str, PacsStudy]
) -> None:
    identifier = _identifier(
        "STUDY",
        StudyInstanceUID="",
        StudyDate=day.strftime("%Y%m%d"),
        StudyTime="" if window is None else _time_range(*window),
        NumberOfStudyRelatedInstances="",
    )
    answer = _find(session, identifier)
    if answer.capped:
        low, high = window or (0, _END_OF_DAY)
        if high - low <= MIN_WINDOW_SECONDS:
            raise QueryFailed(
                f"{session.address}: more than {session.settings.max_results} studies (or more "
                f"than the PACS sends) on {day.isoformat()} between {_clock(low)} and "
                f"{_clock(high)}; raise SCP2FHIR_PACS_MAX_RESULTS or the PACS's limit",
                0xFE00,
            )
        middle = (low + high) // 2
        _collect(session, day, (low, middle), found)
        _collect(session, day, (middle, high), found)
        return
    for index, record in enumerate(answer.records):
        study = _study(session, record, index)
        found[study.study_uid] = study


def study_by_uid(session: Session, study_uid: str) -> PacsStudy | None:
    """The study with that Study Instance UID, whatever its date, or None."""
    identifier = _identifier(
        "STUDY", StudyInstanceUID=study_uid, StudyDate="", NumberOfStudyRelatedInstances=""
    )
    answer = _find(session, identifier)
    studies = [_study(session, record, index) for index, record in enumerate(answer.records)]
    return next((study for study in studies if study.study_uid == study_uid), None)


def _study(session: Session, record: Dataset, index: int) -> PacsStudy:
    """One STUDY-level record, checked."""
    return PacsStudy(
        study_uid=_uid(session, record, "StudyInstanceUID", index),
        study_date=_text(record, "StudyDate")[:8],
        instances=_count(session, record, "NumberOfStudyRelatedInstances", index),
    )


def series_of(session: Session, study_uid: str) -> list[PacsSeries]:
    """The series of one study with their instance counts."""
    identifier = _identifier(
        "SERIES",
        StudyInstanceUID=study_uid,
        SeriesInstanceUID="",
        NumberOfSeriesRelatedInstances="",
    )
    answer = _find(session, identifier)
    if answer.capped:
        raise QueryFailed(
            f"{session.address}: study {study_uid} has more series than "
            f"{session.settings.max_results} (SCP2FHIR_PACS_MAX_RESULTS) or the PACS sends",
            0xFE00,
        )
    found: dict[str, PacsSeries] = {}
    for index, record in enumerate(answer.records):
        uid = _uid(session, record, "SeriesInstanceUID", index)
        found[uid] = PacsSeries(
            uid, _count(session, record, "NumberOfSeriesRelatedInstances", index)
        )
    return sorted(found.values(), key=lambda s: s.series_uid)


def _identifier(level: str, **elements: str) -> Dataset:
    """A query identifier: matching keys with values, return keys empty (DICOM keywords)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in elements.items():
        setattr(identifier, keyword, value)
    return identifier


def _find(session: Session, identifier: Dataset) -> _Answer:
    limit = session.settings.max_results
    records: list[Dataset] = []
    for status, record, status_set in session.find(identifier):
        if status in _PENDING:
            if record is None:
                session.close(abort=True)
                raise BadAnswer(
                    f"{session.address}: C-FIND answer #{len(records) + 1} cannot be decoded"
                )
            records.append(record)
            if len(records) > limit:
                # Stop reading: aborting is the one way to stop a PACS that goes on and on
                # (a C-CANCEL may be ignored); the next request opens a new association.
                session.close(abort=True)
                return _Answer(records, capped=True)
            continue
        if status == 0x0000:
            return _Answer(records, capped=False)
        if status in _CAPPED or 0xB000 <= status <= 0xBFFF:
            return _Answer(records, capped=True)
        raise QueryFailed(
            f"{session.address}: C-FIND failed with status {describe(status, status_set)}",
            status,
        )
    raise BadAnswer(f"{session.address}: C-FIND ended without a final status")


def _time_range(low: int, high: int) -> str:
    start = "" if low == 0 else _tm(low)
    end = "" if high >= _END_OF_DAY else _tm(high)
    return f"{start}-{end}"


def _tm(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _text(record: Dataset, keyword: str) -> str:
    try:
        value = record.get(keyword)
    except Exception:  # an undecodable value reads as absent; UIDs and counts are checked
        return ""
    return "" if value is None else str(value).strip()


def _uid(session: Session, record: Dataset, keyword: str, index: int) -> str:
    value = _text(record, keyword)
    if not value or len(value) > 64 or not _UID.match(value):
        raise BadAnswer(
            f"{session.address}: C-FIND answer #{index + 1} has no valid {keyword} "
            "(the PACS sent garbage)"
        )
    return value


def _count(session: Session, record: Dataset, keyword: str, index: int) -> int | None:
    if keyword not in record:
        return None
    try:
        value = str(record[keyword].value if record[keyword].value is not None else "").strip()
    except Exception:  # pydicom could not read it as an IS: garbage, not "no count"
        value = "?"
    if value == "":
        return None
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise BadAnswer(
            f"{session.address}: C-FIND answer #{index + 1} has {keyword}={value[:20]!r}, "
            "not a count (the PACS sent garbage)"
        )
    return count
