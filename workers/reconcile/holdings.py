"""What scp2fhir holds of a study, read from Redis: its aggregate (while kept), the
instances acknowledged but not yet folded, and the ledger entry of its last emission.

The aggregate is read through :meth:`workers.aggregates.AggregateStore.load`, the same
reading the emission makes, so "held" means exactly the instances an ImagingStudy built
now would show; only studies that have an aggregate are loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from scp import keys
from workers import ledger
from workers.aggregates import AggregateStore
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
    #: Series Instance UID -> instances in the aggregate.
    aggregate_series: dict[str, int] = field(default_factory=dict)

    @property
    def held(self) -> int:
        """Instances scp2fhir has: the aggregate holds everything ever emitted and what
        came since, so it counts while kept; after that, the last emission."""
        if self.aggregate:
            return self.aggregate
        return self.emitted.instances if self.emitted is not None else 0

    def series_counts(self) -> dict[str, int]:
        """Series Instance UID -> instances scp2fhir has of it (aggregate, else ledger)."""
        if self.aggregate:
            return dict(self.aggregate_series)
        return dict(self.emitted.series) if self.emitted is not None else {}


def read(connection: redis.Redis, study_uids: list[str]) -> dict[str, Holding]:
    """Holdings of ``study_uids`` (a study scp2fhir knows nothing of holds zeros)."""
    if not study_uids:
        return {}
    pipe = connection.pipeline(transaction=False)
    for uid in study_uids:
        pipe.exists(keys.study_instances(uid))
        pipe.zscore(keys.OPEN_STUDIES, uid)
    pipe.hmget(keys.INFLIGHT, study_uids)
    *replies, inflight = pipe.execute()
    entries = ledger.read(connection, study_uids)
    store = AggregateStore(connection)
    holdings = {}
    for index, uid in enumerate(study_uids):
        exists, open_score = replies[2 * index], replies[2 * index + 1]
        series: dict[str, int] = {}
        if exists:
            members = store.load(uid).members_by_series()
            series = {series_uid: len(items) for series_uid, items in members.items()}
        holdings[uid] = Holding(
            study_uid=uid,
            aggregate=sum(series.values()),
            waiting=int(inflight[index] or 0),
            open=open_score is not None,
            emitted=entries.get(uid),
            aggregate_series=series,
        )
    return holdings
