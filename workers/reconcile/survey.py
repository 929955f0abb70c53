"""The verdicts of a day, or of a date range: C-FIND at the PACS, holdings in Redis.

One C-FIND per day (:func:`scp.pacs.query.studies_on`); a SERIES-level C-FIND only for
studies whose counts disagree. Studies scp2fhir has for the range that the PACS did not
list are asked for once more by UID (the PACS may have corrected their date) before they
are called unknown to it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterator

import redis

from scp import keys
from scp.pacs import QueryFailed, Session, series_of, studies_on
from scp.pacs.query import PacsStudy, study_by_uid
from workers import ledger
from workers.reconcile import holdings, verdict
from workers.reconcile.verdict import Verdict


def days(since: dt.date, until: dt.date) -> Iterator[dt.date]:
    """Every day from ``since`` to ``until``, both included."""
    day = since
    while day <= until:
        yield day
        day += dt.timedelta(days=1)


def survey_day(
    session: Session, connection: redis.Redis, day: dt.date, skip: Collection[str] = ()
) -> list[Verdict]:
    """A verdict for every study the PACS has on ``day`` (but those in ``skip``)."""
    studies = [s for s in studies_on(session, day) if s.study_uid not in skip]
    return judge(session, connection, studies)


def judge(session: Session, connection: redis.Redis, studies: list[PacsStudy]) -> list[Verdict]:
    """Compare PACS studies with scp2fhir's holdings, asking for series where needed."""
    held = holdings.read(connection, [s.study_uid for s in studies])
    verdicts = []
    for study in studies:
        holding = held[study.study_uid]
        found = verdict.by_study(study, holding)
        if found is None:
            pacs_series = series_of(session, study.study_uid)
            if any(series.instances is None for series in pacs_series):
                raise QueryFailed(
                    f"{session.address}: the PACS returns neither Number of Study nor Number "
                    f"of Series Related Instances for study {study.study_uid}; nothing to "
                    "compare with",
                    0,
                )
            found = verdict.by_series(study, holding, pacs_series, holding.series_counts())
        verdicts.append(found)
    return verdicts


def survey(
    session: Session, connection: redis.Redis, since: dt.date, until: dt.date
) -> list[Verdict]:
    """Every study of ``since``..``until``: those the PACS has, then those only scp2fhir has."""
    found: list[Verdict] = []
    for day in days(since, until):
        found += survey_day(session, connection, day)
    listed = {v.study_uid for v in found}
    held_here = held_between(connection, since, until)
    ours = {uid: date for uid, date in held_here.items() if uid not in listed}
    elsewhere = []  # listed by the PACS under another date
    for uid in sorted(ours):
        study = study_by_uid(session, uid)
        if study is not None:
            elsewhere.append(study)
    found += judge(session, connection, elsewhere)
    moved = {s.study_uid for s in elsewhere}
    unknown = [uid for uid in sorted(ours) if uid not in moved]
    held = holdings.read(connection, unknown)
    found += [verdict.unknown_to_pacs(held[uid], ours[uid]) for uid in unknown]
    return found


def held_between(connection: redis.Redis, since: dt.date, until: dt.date) -> dict[str, str]:
    """Study UID -> Study Date (YYYYMMDD) of what scp2fhir emitted or holds open for
    that range: the ledger, plus open studies (not yet emitted) read from their aggregate."""
    low, high = int(since.strftime("%Y%m%d")), int(until.strftime("%Y%m%d"))
    emitted = ledger.studies_between(connection, since, until)
    result = {uid: str(date) for uid, date in emitted.items()}
    open_uids: list[str] = connection.zrange(keys.OPEN_STUDIES, 0, -1)  # type: ignore[assignment]
    pipe = connection.pipeline(transaction=False)
    for uid in open_uids:
        pipe.hget(keys.study(uid), "attrs")
    for uid, attrs in zip(open_uids, pipe.execute(), strict=True):
        date = ledger.date_of(json.loads(attrs)) if attrs else 0
        if low <= date <= high:
            result.setdefault(uid, str(date))
    return result
