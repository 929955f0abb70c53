"""What the bridge knows about each study's delivery to each destination, in Redis (keys
in :mod:`scp.keys`, each with the destination's name).

* ``study:S:delivery:D``: the server's id for the study's ImagingStudy, the version the
  bridge last wrote to D (If-Match on the next write) and a hash of the content it sent
  (an unchanged study is not sent again, so the server's history shows real changes).
* ``deliver-pending:D``: studies whose newest output D does not have yet. Their
  aggregates are kept without expiry (``AggregateStore.close(deliver_to=...)``) while
  any destination still waits for them; the retention clock starts when the last one
  has it or has dead-lettered it (:meth:`DeliveryState.delivered`,
  :meth:`DeliveryState.dead_lettered`), and only if the study is not open again.
* ``deliver-failed:D``: dead-lettered studies and their RQ job ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from scp import keys

# KEYS: open, then (pending, failed, state) of this destination and of every other one,
#       then the study's aggregate keys.
# ARGV: study, mode ('delivered' or 'dead'), pending score seen when the delivery read the
#       aggregate ('' if none), retention (ms), number of destinations, the dead letter's
#       job id, then state field/value pairs.
_SETTLE = """
local open = KEYS[1]
local pending, failed, state = KEYS[2], KEYS[3], KEYS[4]
local study, mode, seen = ARGV[1], ARGV[2], ARGV[3]
local retention, n = tonumber(ARGV[4]), tonumber(ARGV[5])
if mode == 'delivered' then
  redis.call('HSET', state, unpack(ARGV, 7))
  redis.call('HDEL', failed, study)
  local score = redis.call('ZSCORE', pending, study)
  if score and seen ~= '' and tonumber(score) == tonumber(seen) then
    redis.call('ZREM', pending, study)
  end
else
  redis.call('HSET', failed, study, ARGV[6])
end
-- Receiving again, or a destination (this one with newer output included) still waits
-- for it without having dead-lettered it: keep everything.
local waiting = redis.call('ZSCORE', open, study)
for i = 0, n - 1 do
  if not waiting and redis.call('ZSCORE', KEYS[2 + 3 * i], study)
      and redis.call('HEXISTS', KEYS[3 + 3 * i], study) == 0 then
    waiting = true
  end
end
if waiting then
  if redis.call('EXISTS', state) == 1 then redis.call('PERSIST', state) end
  return 0
end
for i = 0, n - 1 do redis.call('PEXPIRE', KEYS[4 + 3 * i], retention) end
for i = 2 + 3 * n, #KEYS do redis.call('PEXPIRE', KEYS[i], retention) end
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
    """One destination's records; ``others`` names every other destination (whose pending
    sets decide, with this one's, when a study's aggregate may start to expire)."""

    def __init__(
        self, connection: redis.Redis, destination: str, others: Sequence[str] = ()
    ) -> None:
        self._redis = connection
        self.destination = destination
        self.others = tuple(name for name in others if name != destination)
        self._settle = connection.register_script(_SETTLE)

    def _state_key(self, study_uid: str) -> str:
        return keys.study_delivery(study_uid, self.destination)

    def load(self, study_uid: str) -> Delivered:
        record: Any = self._redis.hgetall(self._state_key(study_uid))
        at = record.get("at")
        return Delivered(
            resource_id=record.get("id") or None,
            version=record.get("version") or None,
            sha256=record.get("sha256") or None,
            at_ms=int(at) if at else None,
        )

    def pending_score(self, study_uid: str) -> float | None:
        score: Any = self._redis.zscore(keys.deliver_pending(self.destination), study_uid)
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
        no destination waits for it any more. Returns whether the clock started."""
        fields: list[str] = []
        for name, value in (
            ("id", record.resource_id),
            ("version", record.version),
            ("sha256", record.sha256),
            ("at", record.at_ms),
        ):
            fields += [name, "" if value is None else str(value)]
        seen = "" if seen_score is None else repr(seen_score)
        return self._run(study_uid, "delivered", seen, "", study_keys, retention_ms, fields)

    def dead_lettered(
        self, study_uid: str, job_id: str, study_keys: Sequence[str], retention_ms: int
    ) -> bool:
        """Record a dead letter; start the retention clock as :meth:`delivered` does (so
        ``retry-failed`` can rebuild the output for the retention period)."""
        return self._run(study_uid, "dead", "", job_id, study_keys, retention_ms, [])

    def _run(
        self,
        study_uid: str,
        mode: str,
        seen: str,
        job_id: str,
        study_keys: Sequence[str],
        retention_ms: int,
        fields: list[str],
    ) -> bool:
        names = (self.destination, *self.others)
        per_destination = [
            key
            for name in names
            for key in (
                keys.deliver_pending(name),
                keys.deliver_failed(name),
                keys.study_delivery(study_uid, name),
            )
        ]
        started = self._settle(
            keys=[keys.OPEN_STUDIES, *per_destination, *study_keys],
            args=[study_uid, mode, seen, retention_ms, len(names), job_id, *fields],
        )
        return bool(started)

    def forget_resource(self, study_uid: str) -> None:
        """The server no longer has the resource (deleted): the next write starts afresh."""
        self._redis.hdel(self._state_key(study_uid), "id", "version", "sha256")

    def failed_job(self, study_uid: str) -> str | None:
        job_id: Any = self._redis.hget(keys.deliver_failed(self.destination), study_uid)
        return str(job_id) if job_id else None

    def failed(self) -> dict[str, str]:
        result: Any = self._redis.hgetall(keys.deliver_failed(self.destination))
        return dict(result)

    def clear_failed(self, study_uid: str) -> None:
        self._redis.hdel(keys.deliver_failed(self.destination), study_uid)

    def pending(self) -> list[str]:
        result: Any = self._redis.zrange(keys.deliver_pending(self.destination), 0, -1)
        return list(result)
