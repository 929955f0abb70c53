"""The ledger: what scp2fhir has emitted, per study, kept for good.

A study's aggregate expires ``SCP2FHIR_RETENTION_SECONDS`` after its emission; the
ledger entry does not. It is what ``scp2fhir reconcile`` and ``backfill`` compare with
the PACS once the aggregate is gone: per series, how many instances the last emission
held, and the Study Date, so that the studies of a date range can be listed. It is
written by the same Lua script that closes the study after its emission
(:meth:`workers.aggregates.AggregateStore.close`), so an entry never disagrees with a
closed study. About 60 bytes per study plus 75 per series.

Redis layout (see :mod:`scp.keys`)::

    scp2fhir:ledger            HASH  S -> {"i": instances, "s": {SE: instances}, "at": ms}
    scp2fhir:ledger:dates      ZSET  S -> Study Date as YYYYMMDD (0: none)
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

import redis

from scp import keys
from workers.fold import StudyAggregate

_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")


@dataclass(frozen=True)
class LedgerEntry:
    #: Instances in the last emitted ImagingStudy.
    instances: int
    #: Series Instance UID -> instances in it.
    series: dict[str, int]
    #: Study Date as YYYYMMDD, 0 if the study has none.
    study_date: int
    #: When that emission was (ms, Redis clock).
    emitted_ms: int

    def dumps(self) -> str:
        return json.dumps(
            {"i": self.instances, "s": self.series, "at": self.emitted_ms},
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def loads(cls, text: str, study_date: int = 0) -> LedgerEntry:
        data = json.loads(text)
        series = {uid: int(count) for uid, count in data["s"].items()}
        return cls(int(data["i"]), series, study_date, int(data["at"]))


def entry_for(aggregate: StudyAggregate, emitted_ms: int) -> LedgerEntry:
    """Pure: the ledger entry of an aggregate as it is emitted."""
    series: dict[str, int] = {}
    for record in aggregate.instances.values():
        series[record["series_uid"]] = series.get(record["series_uid"], 0) + 1
    study_date = date_of(aggregate.study.attrs) if aggregate.study else 0
    return LedgerEntry(
        len(aggregate.instances), dict(sorted(series.items())), study_date, emitted_ms
    )


def date_of(study_attrs: dict[str, Any]) -> int:
    """Pure: the Study Date (YYYYMMDD) of a study's attributes (its ``started``), 0 if none."""
    started = study_attrs.get("started")
    match = _DATE.match(started) if isinstance(started, str) else None
    return int("".join(match.groups())) if match else 0


def read(connection: redis.Redis, study_uids: list[str]) -> dict[str, LedgerEntry]:
    """The entries of those studies that have one."""
    if not study_uids:
        return {}
    pipe = connection.pipeline(transaction=False)
    pipe.hmget(keys.LEDGER, study_uids)
    for uid in study_uids:
        pipe.zscore(keys.LEDGER_DATES, uid)
    texts, *dates = pipe.execute()
    return {
        uid: LedgerEntry.loads(text, int(date or 0))
        for uid, text, date in zip(study_uids, texts, dates, strict=True)
        if text
    }


def studies_between(connection: redis.Redis, since: dt.date, until: dt.date) -> dict[str, int]:
    """Study UID -> Study Date (YYYYMMDD) of the ledger's studies dated ``since``..``until``
    (inclusive)."""
    low, high = int(since.strftime("%Y%m%d")), int(until.strftime("%Y%m%d"))
    found: list[tuple[str, float]] = connection.zrangebyscore(  # type: ignore[assignment]
        keys.LEDGER_DATES, low, high, withscores=True
    )
    return {uid: int(score) for uid, score in found}
