"""What the bridge knows about each study's delivery, in Redis (keys in :mod:`scp.keys`).

* ``study:S:delivery``: the server's id for the study's ImagingStudy, the version the
  bridge last wrote (If-Match on the next write) and a hash of the content it sent
  (an unchanged study is not sent again, so the server's history shows real changes).
* ``deliver-pending``: studies whose newest output is not delivered yet. Their
  aggregates are kept without expiry (``AggregateStore.close(until_delivered=True)``);
  :meth:`DeliveryState.delivered` starts the retention clock, and only when nothing
  newer waits and the study is not open again.
* ``deliver-failed``: dead-lettered studies and their RQ job ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from scp import keys

# KEYS: pending, open, failed, state, then the study's aggregate keys.
# ARGV: study, pending score seen when the delivery read the aggregate ('' if none),
#       retention (ms), then state field/value pairs.
_DELIVERED = """
local pending, open, failed, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local study, seen, retention = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('HSET', state, unpack(ARGV, 4))
redis.call('HDEL', failed, study)
local score = redis.call('ZSCORE', pending, study)
if score and seen ~= '' and tonumber(score) == tonumber(seen) then
  redis.call('ZREM', pending, study)
  score = false
end
if score or redis.call('ZSCORE', open, study) then
  -- Newer output waits, or the study is receiving again: keep everything.
  redis.call('PERSIST', state)
  return 0
end
for i = 4, #KEYS do redis.call('PEXPIRE', KEYS[i], retention) end
return 1
"""


@dataclass(frozen=True)
class Delivered:
    """The bridge's record of its last successful write of a study."""

    resource_id: str | None = None
    version: str | None = None
    sha256: str | None = None
    at_ms: int | None = None


class DeliveryState:
    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection
        self._delivered = connection.register_script(_DELIVERED)

    def load(self, study_uid: str) -> Delivered:
        record: Any = self._redis.hgetall(keys.study_delivery(study_uid))
        at = record.get("at")
        return Delivered(
            resource_id=record.get("id") or None,
            version=record.get("version") or None,
            sha256=record.get("sha256") or None,
            at_ms=int(at) if at else None,
        )

    def pending_score(self, study_uid: str) -> float | None:
        score: Any = self._redis.zscore(keys.DELIVER_PENDING, study_uid)
        return float(score) if score is not None else None

    def delivered(
        self,
        study_uid: str,
        record: Delivered,
        seen_score: float | None,
        study_keys: Sequence[str],
        retention_ms: int,
    ) -> bool:
        """Record a successful write; start the retention clock of the study's keys if
        nothing newer waits. Returns whether the clock started."""
        fields: list[str] = []
        for name, value in (
            ("id", record.resource_id),
            ("version", record.version),
            ("sha256", record.sha256),
            ("at", record.at_ms),
        ):
            fields += [name, "" if value is None else str(value)]
        started = self._delivered(
            keys=[
                keys.DELIVER_PENDING,
                keys.OPEN_STUDIES,
                keys.DELIVER_FAILED,
                keys.study_delivery(study_uid),
                *study_keys,
            ],
            args=[study_uid, "" if seen_score is None else repr(seen_score), retention_ms, *fields],
        )
        return bool(started)

    def forget_resource(self, study_uid: str) -> None:
        """The server no longer has the resource (deleted): the next write starts afresh."""
        self._redis.hdel(keys.study_delivery(study_uid), "id", "version", "sha256")

    def mark_failed(self, study_uid: str, job_id: str) -> None:
        self._redis.hset(keys.DELIVER_FAILED, study_uid, job_id)

    def failed_job(self, study_uid: str) -> str | None:
        job_id: Any = self._redis.hget(keys.DELIVER_FAILED, study_uid)
        return str(job_id) if job_id else None

    def failed(self) -> dict[str, str]:
        result: Any = self._redis.hgetall(keys.DELIVER_FAILED)
        return dict(result)

    def clear_failed(self, study_uid: str) -> None:
        self._redis.hdel(keys.DELIVER_FAILED, study_uid)

    def pending(self) -> list[str]:
        result: Any = self._redis.zrange(keys.DELIVER_PENDING, 0, -1)
        return list(result)
