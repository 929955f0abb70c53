"""The study aggregates in Redis: folding inbox entries in, reading a study back out,
and closing a study after emission.

Each write is one Lua script, so Redis always holds a consistent state: an inbox
entry is acknowledged in the same step that folds it (a crashed worker leaves it
pending, to be claimed again; a second fold of it is a no-op because its XACK
returns 0). The attribute rule is :func:`workers.fold.prefer`, applied server-side.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from scp import keys
from workers.fold import Sourced, StudyAggregate
from workers.summary import InstanceSummary

logger = logging.getLogger(__name__)

_FOLD = """
local stream, inflight, group = KEYS[1], KEYS[2], ARGV[1]
-- Byte order, as Python compares str: Lua's own '<=' follows the server's locale.
local function bytes_le(a, b)
  for j = 1, math.min(#a, #b) do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local function prefer(key, source, attrs)
  local current = redis.call('HGET', key, 'source')
  if (not current) or bytes_le(source, current) then
    redis.call('HSET', key, 'source', source, 'attrs', attrs)
  end
  redis.call('PERSIST', key)
end
local applied = 0
for i = 2, #ARGV, 9 do
  local id, study, sop = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('XACK', stream, group, id) == 1 then
    redis.call('XDEL', stream, id)
    redis.call('HSET', ARGV[i + 5], sop, ARGV[i + 8])
    redis.call('PERSIST', ARGV[i + 5])
    -- Empty attrs: not this batch's winner for that study/series (see fold()).
    if ARGV[i + 6] ~= '' then prefer(ARGV[i + 3], sop, ARGV[i + 6]) end
    if ARGV[i + 7] ~= '' then prefer(ARGV[i + 4], sop, ARGV[i + 7]) end
    if redis.call('HINCRBY', inflight, study, -1) <= 0 then redis.call('HDEL', inflight, study) end
    applied = applied + 1
  end
end
return applied
"""

_REJECT = """
local stream, inflight, dead, group = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local rejected = 0
for i = 2, #ARGV, 3 do
  local id, study = ARGV[i], ARGV[i + 1]
  if redis.call('XACK', stream, group, id) == 1 then
    redis.call('XDEL', stream, id)
    redis.call('LPUSH', dead, ARGV[i + 2])
    if study ~= '' and redis.call('HINCRBY', inflight, study, -1) <= 0 then
      redis.call('HDEL', inflight, study)
    end
    rejected = rejected + 1
  end
end
return rejected
"""

# Close a study after its emission, unless something arrived meanwhile. With destinations
# to deliver to (ARGV[6] pending sets after the first five KEYS), the aggregate (and the
# destinations' delivery records) are kept (no expiry) and the study is listed as pending
# in each; the last delivery starts the clock. Without, the retention starts now.
_CLOSE = """
local open, inflight, emitted, check, lease = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local study, seen, token, now, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local pending = tonumber(ARGV[6])
local closed = 0
local score = redis.call('ZSCORE', open, study)
if score and tonumber(score) == tonumber(seen) and not redis.call('HGET', inflight, study) then
  redis.call('ZREM', open, study)
  redis.call('ZADD', emitted, now, study)
  redis.call('DEL', check)
  if pending == 0 then
    for i = 6, #KEYS do redis.call('PEXPIRE', KEYS[i], retention) end
  else
    for i = 6 + pending, #KEYS do redis.call('PERSIST', KEYS[i]) end
    for i = 6, 5 + pending do redis.call('ZADD', KEYS[i], now, study) end
  end
  closed = 1
end
if redis.call('GET', lease) == token then redis.call('DEL', lease) end
return closed
"""

# Forget consumers of the inbox group that hold no entry and have been idle a while. Each
# drain job reads under a name of its own (host and pid of its work horse), so without
# this the group gains a consumer per job, forever. One script: a consumer with nothing
# pending loses nothing when deleted, and none can take an entry between check and delete.
_FORGET_CONSUMERS = """
local forgotten = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    forgotten = forgotten + 1
  end
end
return forgotten
"""


@dataclass(frozen=True)
class InboxEntry:
    entry_id: str
    study_uid: str
    header: str


class AggregateStore:
    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection
        self._fold = connection.register_script(_FOLD)
        self._reject = connection.register_script(_REJECT)
        self._close = connection.register_script(_CLOSE)
        self._forget_consumers = connection.register_script(_FORGET_CONSUMERS)

    def fold(self, folded: Sequence[tuple[str, InstanceSummary]]) -> int:
        """Fold (entry id, summary) pairs and acknowledge their entries; returns how many
        were new (entries already acknowledged by another worker are skipped)."""
        if not folded:
            return 0
        # Within a batch only one instance per study and per series can win prefer(): the
        # one with the smallest SOP Instance UID (the later one on a tie, as in prefer).
        # Sending the others' attributes would only make Redis compare and discard them.
        study_winner: dict[str, int] = {}
        series_winner: dict[tuple[str, str], int] = {}
        for index, (_, s) in enumerate(folded):
            best = study_winner.get(s.study_uid)
            if best is None or s.sop_uid <= folded[best][1].sop_uid:
                study_winner[s.study_uid] = index
            key = (s.study_uid, s.series_uid)
            best = series_winner.get(key)
            if best is None or s.sop_uid <= folded[best][1].sop_uid:
                series_winner[key] = index
        study_wins = set(study_winner.values())
        series_wins = set(series_winner.values())
        args: list[str] = [keys.INBOX_GROUP]
        for index, (entry_id, s) in enumerate(folded):
            args += [
                entry_id,
                s.study_uid,
                s.sop_uid,
                keys.study(s.study_uid),
                keys.series(s.study_uid, s.series_uid),
                keys.study_instances(s.study_uid),
                _dumps(s.study) if index in study_wins else "",
                _dumps(s.series) if index in series_wins else "",
                _dumps(s.instance),
            ]
        return int(self._fold(keys=[keys.INBOX, keys.INFLIGHT], args=args))

    def reject(self, entries: Iterable[tuple[InboxEntry, str]]) -> int:
        """Move entries no worker can fold to the dead-letter list, with the reason."""
        args: list[str] = [keys.INBOX_GROUP]
        for entry, reason in entries:
            letter = {
                "entry_id": entry.entry_id,
                "study_uid": entry.study_uid,
                "reason": reason,
                "header": entry.header,
            }
            args += [entry.entry_id, entry.study_uid, _dumps(letter)]
        if len(args) == 1:
            return 0
        return int(self._reject(keys=[keys.INBOX, keys.INFLIGHT, keys.DEAD_LETTER], args=args))

    def load(self, study_uid: str) -> StudyAggregate:
        """Read a study's aggregate (empty if nothing is stored)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.study(study_uid))
        pipe.hgetall(keys.study_instances(study_uid))
        study_hash, instance_hash = pipe.execute()
        instances = {sop: json.loads(record) for sop, record in instance_hash.items()}
        series_uids = sorted({record["series_uid"] for record in instances.values()})
        pipe = self._redis.pipeline(transaction=False)
        for series_uid in series_uids:
            pipe.hgetall(keys.series(study_uid, series_uid))
        series = {uid: _sourced(h) for uid, h in zip(series_uids, pipe.execute(), strict=True) if h}
        return StudyAggregate(
            study_uid=study_uid,
            study=_sourced(study_hash) if study_hash else None,
            instances=instances,
            series={uid: s for uid, s in series.items() if s is not None},
        )

    def forget_idle_consumers(self, idle_ms: int) -> int:
        """Delete inbox consumers with nothing pending, idle for over ``idle_ms``."""
        return int(self._forget_consumers(keys=[keys.INBOX], args=[keys.INBOX_GROUP, idle_ms]))

    def close(
        self,
        aggregate: StudyAggregate,
        seen_ms: int,
        lease_token: str,
        now_ms: int,
        retention_ms: int,
        deliver_to: Sequence[str] = (),
        keep: Sequence[str] = (),
    ) -> bool:
        """Mark the study emitted if no instance arrived since ``seen_ms``; start the
        retention clock on its keys, or, with ``deliver_to`` (destinations' pending sets,
        :func:`scp.keys.deliver_pending`), keep them and ``keep`` (the destinations'
        delivery records) and list the study in each set (the deliveries start the clock
        once every destination has the output). Releases the lease either way."""
        uid = aggregate.study_uid
        study_keys = [keys.study(uid), keys.study_instances(uid)] + [
            keys.series(uid, series_uid) for series_uid in aggregate.series
        ]
        kept = [*study_keys, *keep] if deliver_to else study_keys
        closed = self._close(
            keys=[
                keys.OPEN_STUDIES,
                keys.INFLIGHT,
                keys.EMITTED,
                keys.study_check(uid),
                keys.study_lease(uid),
                *deliver_to,
                *kept,
            ],
            args=[uid, seen_ms, lease_token, now_ms, retention_ms, len(deliver_to)],
        )
        return bool(closed)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _sourced(h: dict[str, str]) -> Sourced | None:
    if "source" not in h or "attrs" not in h:
        return None
    return Sourced(h["source"], json.loads(h["attrs"]))
