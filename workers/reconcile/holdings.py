"""What scp2fhir holds of a study, read from Redis: its aggregate (while kept), the
instances acknowledged but not yet folded, and the ledger entry of its last emission."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from scp import keys
from workers import ledger
from workers.ledger import LedgerEntry


@dataclass(frozen=True)
class Holding:
    study_uid: str
    #: Instances in the aggregate (0 when it has expired or never existed).
    aggregate: int
    #: Instances acknowledged to a sender but not yet folded (may count a resend twice).
    waiting: int
    #: The study has arrivals not yet emitted.
    open: bool
    #: What its last emission held, if it was ever emitted.
    emitted: LedgerEntry | None

    @property
    def held(self) -> int:
        """Instances scp2fhir has: the aggregate holds everything ever emitted and what
        came since, so it counts while kept; after that, the last emission."""
        if self.aggregate:
            return self.aggregate
        return self.emitted.instances if self.emitted is not None else 0


def read(connection: redis.Redis, study_uids: list[str]) -> dict[str, Holding]:
    """Holdings of ``study_uids`` (a study scp2fhir knows nothing of holds zeros)."""
    if not study_uids:
        return {}
    pipe = connection.pipeline(transaction=False)
    for uid in study_uids:
        pipe.hlen(keys.study_instances(uid))
        pipe.zscore(keys.OPEN_STUDIES, uid)
    pipe.hmget(keys.INFLIGHT, study_uids)
    *replies, inflight = pipe.execute()
    entries = ledger.read(connection, study_uids)
    holdings = {}
    for index, uid in enumerate(study_uids):
        size, open_score = replies[2 * index], replies[2 * index + 1]
        holdings[uid] = Holding(
            study_uid=uid,
            aggregate=int(size),
            waiting=int(inflight[index] or 0),
            open=open_score is not None,
            emitted=entries.get(uid),
        )
    return holdings


def series_counts(connection: redis.Redis, holding: Holding) -> dict[str, int]:
    """Series Instance UID -> instances scp2fhir has of it (aggregate, else ledger)."""
    if not holding.aggregate:
        return dict(holding.emitted.series) if holding.emitted is not None else {}
    counts: dict[str, int] = {}
    cursor = 0
    while True:
        reply: Any = connection.hscan(keys.study_instances(holding.study_uid), cursor, count=1000)
        cursor, records = reply
        for record in records.values():
            series_uid = json.loads(record)["series_uid"]
            counts[series_uid] = counts.get(series_uid, 0) + 1
        if cursor == 0:
            return counts
