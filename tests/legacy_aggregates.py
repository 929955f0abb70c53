"""The aggregate writes of the release before the study lifecycle (commit 15638de,
``workers/aggregates.py``), kept verbatim so the upgrade tests can leave Redis exactly as
that release left it: the study's attributes in ``scp2fhir:study:S`` (source, attrs),
each series' in ``scp2fhir:study:S:series:SE``, the instance records without generation
or variant digests, and the expiry its close set."""

from __future__ import annotations

import json
from collections.abc import Sequence

import redis

from scp import keys
from workers.summary import InstanceSummary

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

_CLOSE = """
local open, inflight, emitted, check, lease = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local pending = KEYS[6]
local study, seen, token, now, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local closed = 0
local score = redis.call('ZSCORE', open, study)
if score and tonumber(score) == tonumber(seen) and not redis.call('HGET', inflight, study) then
  redis.call('ZREM', open, study)
  redis.call('ZADD', emitted, now, study)
  redis.call('DEL', check)
  if tonumber(retention) > 0 then
    for i = 7, #KEYS do redis.call('PEXPIRE', KEYS[i], retention) end
  else
    for i = 7, #KEYS do redis.call('PERSIST', KEYS[i]) end
    redis.call('ZADD', pending, now, study)
  end
  closed = 1
end
if redis.call('GET', lease) == token then redis.call('DEL', lease) end
return closed
"""


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def legacy_fold(connection: redis.Redis, folded: Sequence[tuple[str, InstanceSummary]]) -> int:
    """``AggregateStore.fold`` of that release: (inbox entry id, summary) pairs."""
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
            keys.legacy_series(s.study_uid, s.series_uid),
            keys.study_instances(s.study_uid),
            _dumps(s.study) if index in study_wins else "",
            _dumps(s.series) if index in series_wins else "",
            _dumps(s.instance),
        ]
    script = connection.register_script(_FOLD)
    return int(script(keys=[keys.INBOX, keys.INFLIGHT], args=args))


def legacy_close(
    connection: redis.Redis,
    study_uid: str,
    series_uids: Sequence[str],
    seen_ms: int,
    now_ms: int,
    retention_ms: int,
    until_delivered: bool = False,
) -> bool:
    """``AggregateStore.close`` of that release (lease token "t")."""
    study_keys = [keys.study(study_uid), keys.study_instances(study_uid)] + [
        keys.legacy_series(study_uid, uid) for uid in series_uids
    ]
    script = connection.register_script(_CLOSE)
    closed = script(
        keys=[
            keys.OPEN_STUDIES,
            keys.INFLIGHT,
            keys.EMITTED,
            keys.study_check(study_uid),
            keys.study_lease(study_uid),
            keys.DELIVER_PENDING,
            *study_keys,
        ],
        args=[study_uid, seen_ms, "t", now_ms, 0 if until_delivered else retention_ms],
    )
    return bool(closed)
