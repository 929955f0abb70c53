"""The study aggregates in Redis: folding inbox entries in, reading a study back out,
and closing a study after emission.

Each write is one Lua script, so Redis always holds a consistent state: an inbox
entry is acknowledged in the same step that folds it (a crashed worker leaves it
pending, to be claimed again; a second fold of it is a no-op because its XACK
returns 0). Redis stores the facts the pure fold keeps (:class:`workers.fold.Received`
records with their generation, attribute variants, rejections, rejection notes);
:meth:`AggregateStore.load` resolves them with :func:`workers.fold.resolve`, the same
function the pure fold uses, so both always agree.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from scp import keys
from workers import ledger
from workers.fold import Received, Rejection, Retraction, StudyAggregate, digest, resolve
from workers.summary import Attributes, InstanceSummary

logger = logging.getLogger(__name__)

#: The layout of the aggregates this code writes (:data:`scp.keys.AGGREGATE_LAYOUT`).
LAYOUT = "2"

# Every key the script touches is in KEYS (Redis requires it for ACLs and clusters):
#   KEYS: stream, inflight, then per study its keys (study, instances, variants,
#         rejected, notes, retraction) followed by the series index key of each series
#         its instances name in this batch.
#   ARGV: group, revive rejected ('1'/''), revive retracted ('1'/''), series index TTL
#         (ms), then per study: study, number of series index keys, number of entries,
#         then each entry, either
#     'i', entry id, SOP, record (the members of its JSON object, without braces: the
#         script puts rank "g" and the digests "sv", "ev" first), study variant digest,
#         its JSON (or '' if sent earlier in the batch), series variant digest, its JSON
#         (or ''), position of its series index key among the study's
#     'n', entry id, SOP of the note, DCM code, count, the rejected SOPs
_FOLD = """
local stream, inflight = KEYS[1], KEYS[2]
local group, revive_rejected, revive_retracted = ARGV[1], ARGV[2] == '1', ARGV[3] == '1'
local index_ttl = ARGV[4]
-- Byte order, as Python compares str: Lua's own '<=' follows the server's locale.
local function bytes_le(a, b)
  for j = 1, math.min(#a, #b) do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local function settle(study)
  if redis.call('HINCRBY', inflight, study, -1) <= 0 then redis.call('HDEL', inflight, study) end
end
local applied = 0
local i, k = 5, 3
while i <= #ARGV do
  local study, n_index, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local k_study, k_inst, k_var, k_rej = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local k_notes, k_retr = KEYS[k + 4], KEYS[k + 5]
  local index_base = k + 5
  k = k + 6 + n_index
  local indexed = {}
  local generation = redis.call('HGET', k_study, 'generation') or '0'
  local retracted_at = revive_retracted and redis.call('HGET', k_retr, 'at')
  for _ = 1, n do
    local kind, id, sop = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local fresh = redis.call('XACK', stream, group, id) == 1
    if kind == 'i' then
      if fresh then
        redis.call('XDEL', stream, id)
        -- Rank (workers.fold.record_rank): 0 when first received; a re-send keeps its
        -- rank unless its variants changed, then it is a correction: generation + 1.
        local rank, old = 0, redis.call('HGET', k_inst, sop)
        if old then
          local g, sv, ev = string.match(old, '^{"g":(%d+),"sv":"(%w*)","ev":"(%w*)"')
          if not g then
            local decoded = cjson.decode(old)
            g, sv, ev = decoded['g'] or 0, decoded['sv'] or '', decoded['ev'] or ''
          end
          if sv == ARGV[i + 4] and ev == ARGV[i + 6] then rank = g else rank = generation + 1 end
        end
        local record = '{"g":' .. rank .. ',"sv":"' .. ARGV[i + 4]
        record = record .. '","ev":"' .. ARGV[i + 6] .. '"'
        if ARGV[i + 3] ~= '' then record = record .. ',' .. ARGV[i + 3] end
        redis.call('HSET', k_inst, sop, record .. '}')
        if ARGV[i + 5] ~= '' then redis.call('HSETNX', k_var, ARGV[i + 4], ARGV[i + 5]) end
        if ARGV[i + 7] ~= '' then redis.call('HSETNX', k_var, ARGV[i + 6], ARGV[i + 7]) end
        indexed[tonumber(ARGV[i + 8])] = true
        if revive_rejected then
          local r = redis.call('HGET', k_rej, sop)
          if r then
            local code, note, seen = string.match(r, '^(%S+) (%S+) (%d)$')
            if seen == '1' then
              redis.call('HDEL', k_rej, sop)
            else
              redis.call('HSET', k_rej, sop, code .. ' ' .. note .. ' 1')
            end
          end
        end
        if retracted_at and tonumber(string.match(id, '^(%d+)')) > tonumber(retracted_at) then
          redis.call('DEL', k_retr)
          retracted_at = false
        end
        settle(study)
        applied = applied + 1
      end
      i = i + 9
    else
      local code, count = ARGV[i + 3], tonumber(ARGV[i + 4])
      if fresh then
        redis.call('XDEL', stream, id)
        redis.call('HSET', k_notes, sop, code)
        for j = 1, count do
          local uid = ARGV[i + 4 + j]
          local r = redis.call('HGET', k_rej, uid)
          local current = r and string.match(r, '^%S+ (%S+)')
          if (not current) or bytes_le(sop, current) then
            local seen = '0'
            if revive_rejected and redis.call('HEXISTS', k_inst, uid) == 1 then seen = '1' end
            redis.call('HSET', k_rej, uid, code .. ' ' .. sop .. ' ' .. seen)
          end
        end
        settle(study)
        applied = applied + 1
      end
      i = i + 5 + count
    end
  end
  -- The study each series was folded into (for MPPS/IAN checks): once per series.
  for position in pairs(indexed) do
    redis.call('SET', KEYS[index_base + position], study, 'PX', index_ttl)
  end
  -- A study that receives again keeps its aggregate until its next emission.
  for _, key in ipairs({k_study, k_inst, k_var, k_rej, k_notes}) do redis.call('PERSIST', key) end
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
# to deliver to (ARGV[9] pending sets after the first eight KEYS), the aggregate (and the
# destinations' delivery records) are kept (no expiry) and the study is listed as pending
# in each; the last delivery starts the clock. Without, the retention starts now. The
# ledger entry (workers/ledger.py) is written in the same step. The first key after the
# pending sets is the study's hash (its generation).
_CLOSE = """
local open, inflight, emitted, check, lease = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local signals, ledger, ledger_dates = KEYS[6], KEYS[7], KEYS[8]
local study, seen, token, now, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local consume_signals = ARGV[6] == '1'
local ledger_entry, study_date = ARGV[7], ARGV[8]
local pending = tonumber(ARGV[9])
local first_kept = 9 + pending
local k_study = KEYS[first_kept]
local closed = 0
local score = redis.call('ZSCORE', open, study)
if score and tonumber(score) == tonumber(seen) and not redis.call('HGET', inflight, study) then
  redis.call('ZREM', open, study)
  redis.call('ZADD', emitted, now, study)
  -- The quiet check that runs this close ends here. A signalled close leaves the study's
  -- own quiet check scheduled: it finds the study closed, or re-opened by a late
  -- instance (and then goes on as that study's one check).
  if not consume_signals then redis.call('DEL', check) end
  -- Records folded from now on are the next generation (a re-send after this emission).
  redis.call('HINCRBY', k_study, 'generation', 1)
  -- The completion signal that triggered this emission is used up.
  if consume_signals then redis.call('DEL', signals) end
  -- What was emitted, kept for good for reconcile (workers/ledger.py).
  redis.call('HSET', ledger, study, ledger_entry)
  redis.call('ZADD', ledger_dates, study_date, study)
  if pending == 0 then
    for i = first_kept, #KEYS do redis.call('PEXPIRE', KEYS[i], retention) end
  else
    for i = first_kept, #KEYS do redis.call('PERSIST', KEYS[i]) end
    for i = 9, 8 + pending do redis.call('ZADD', KEYS[i], now, study) end
  end
  closed = 1
end
if redis.call('GET', lease) == token then redis.call('DEL', lease) end
return closed
"""

# Upgrade a study's records of the earlier layout (the release before the study
# lifecycle: no generation, no variant digests; the study's attributes in the study hash,
# each series' in a key of its own). KEYS: study, instances, variants, then the legacy
# series keys. ARGV: the number of records, then per record its SOP, its stored text
# and its upgraded text, then variant digest/JSON pairs. A record
# changed since it was read is left alone (compare and set); the upgraded keys keep the
# aggregate's expiry.
_UPGRADE = """
local k_study, k_inst, k_var = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', k_inst) == 0 then return 0 end
local n = tonumber(ARGV[1])
local upgraded = 0
for j = 0, n - 1 do
  local sop, old, new = ARGV[2 + 3 * j], ARGV[3 + 3 * j], ARGV[4 + 3 * j]
  if redis.call('HGET', k_inst, sop) == old then
    redis.call('HSET', k_inst, sop, new)
    upgraded = upgraded + 1
  end
end
for j = 2 + 3 * n, #ARGV, 2 do redis.call('HSETNX', k_var, ARGV[j], ARGV[j + 1]) end
redis.call('HDEL', k_study, 'source', 'attrs')
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
local ttl = redis.call('PTTL', k_inst)
for _, key in ipairs({k_study, k_var}) do
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
end
return upgraded
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
        self._upgrade = connection.register_script(_UPGRADE)

    def fold(
        self,
        folded: Sequence[tuple[str, InstanceSummary]],
        *,
        revive_rejected: bool = False,
        revive_retracted: bool = False,
        index_ttl_ms: int = 7 * 86400 * 1000,
    ) -> int:
        """Fold (entry id, summary) pairs and acknowledge their entries; returns how many
        were new (entries already acknowledged by another worker are skipped)."""
        if not folded:
            return 0
        by_study: dict[str, list[tuple[str, InstanceSummary]]] = {}
        for entry_id, summary in folded:
            by_study.setdefault(summary.study_uid, []).append((entry_id, summary))
        script_keys = [keys.INBOX, keys.INFLIGHT]
        args: list[str | int] = [
            keys.INBOX_GROUP,
            "1" if revive_rejected else "",
            "1" if revive_retracted else "",
            index_ttl_ms,
        ]
        for study_uid, entries in by_study.items():
            series_uids = sorted({s.series_uid for _, s in entries if s.rejection is None})
            position = {uid: n for n, uid in enumerate(series_uids, start=1)}
            script_keys += [
                *keys.study_aggregate_keys(study_uid),
                keys.study_retraction(study_uid),
                *(keys.series_study(uid) for uid in series_uids),
            ]
            args += [study_uid, len(series_uids), len(entries)]
            sent: set[str] = set()  # variants already in this batch go once
            named = _Digests()
            for entry_id, s in entries:
                if s.rejection is not None:
                    rejected = s.rejection.rejected
                    args += ["n", entry_id, s.sop_uid, s.rejection.code, len(rejected), *rejected]
                    continue
                study_digest, series_digest = named(s.study), named(s.series)
                args += ["i", entry_id, s.sop_uid, _dumps(s.instance)[1:-1]]
                for name, attrs in ((study_digest, s.study), (series_digest, s.series)):
                    args += [name, "" if name in sent else _dumps(attrs)]
                    sent.add(name)
                args.append(position[s.series_uid])
        return int(self._fold(keys=script_keys, args=args))

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
        """Read a study's aggregate (empty if nothing is stored). Records of the earlier
        layout are upgraded first (:meth:`upgrade`), so a study received before an
        upgrade keeps its attributes."""
        aggregate, legacy = self._read(study_uid)
        if legacy:
            self.upgrade(study_uid)
            aggregate, _ = self._read(study_uid)
        return aggregate

    def _read(self, study_uid: str) -> tuple[StudyAggregate, bool]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(keys.study(study_uid), "generation")
        pipe.hgetall(keys.study_instances(study_uid))
        pipe.hgetall(keys.study_variants(study_uid))
        pipe.hgetall(keys.study_rejected(study_uid))
        pipe.hgetall(keys.study_notes(study_uid))
        pipe.hgetall(keys.study_retraction(study_uid))
        generation, instance_hash, variant_hash, rejected_hash, notes, retraction = pipe.execute()
        received: dict[str, Received] = {}
        legacy = False
        for sop, text in instance_hash.items():
            record = json.loads(text)
            if "sv" not in record:
                legacy = True
            received[sop] = Received(
                int(record.pop("g", 0)), record.pop("sv", ""), record.pop("ev", ""), record
            )
        rejected: dict[str, Rejection] = {}
        for sop, text in rejected_hash.items():
            code, _, rest = text.partition(" ")
            note, _, seen = rest.partition(" ")
            rejected[sop] = Rejection(code, note, seen == "1")
        aggregate = resolve(
            StudyAggregate(
                study_uid=study_uid,
                received=received,
                variants={name: json.loads(text) for name, text in variant_hash.items()},
                rejected=rejected,
                notes=dict(notes),
                generation=int(generation or 0),
                retraction=_retraction(retraction),
            )
        )
        return aggregate, legacy

    def upgrade(self, study_uid: str) -> int:
        """Rewrite the study's records of the earlier layout (the release before the study
        lifecycle) as records of rank 0 whose variants are the attributes that release
        had decided for the study and for each series (so the study shows what it showed
        before; a correction re-sent from now on outranks them); deletes that release's
        series keys. Returns how many records were rewritten; idempotent."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.study(study_uid))
        pipe.hgetall(keys.study_instances(study_uid))
        study_hash, instance_hash = pipe.execute()
        legacy = {sop: text for sop, text in instance_hash.items() if "sv" not in json.loads(text)}
        series_uids = sorted(
            {str(json.loads(text).get("series_uid", "")) for text in legacy.values()}
        )
        series_keys = [keys.legacy_series(study_uid, uid) for uid in series_uids]
        pipe = self._redis.pipeline(transaction=False)
        for key in series_keys:
            pipe.hget(key, "attrs")
        series_attrs = pipe.execute() if series_keys else []
        variants: dict[str, str] = {}

        def variant(text: str | None) -> str:
            attrs = json.loads(text) if text else {}
            name = digest(attrs)
            variants[name] = _dumps(attrs)
            return name

        study_variant = variant(study_hash.get("attrs"))
        series_variant = {
            uid: variant(text) for uid, text in zip(series_uids, series_attrs, strict=True)
        }
        args: list[str | int] = [len(legacy)]
        for sop, text in sorted(legacy.items()):
            record = json.loads(text)
            series = series_variant[str(record.get("series_uid", ""))]
            args += [sop, text, _record_text(0, study_variant, series, record)]
        for name, attrs in sorted(variants.items()):
            args += [name, attrs]
        study_keys = [
            keys.study(study_uid),
            keys.study_instances(study_uid),
            keys.study_variants(study_uid),
        ]
        upgraded_count = int(self._upgrade(keys=[*study_keys, *series_keys], args=args))
        if upgraded_count:
            logger.info(
                "study=%s upgraded %d records of the earlier aggregate layout",
                study_uid,
                upgraded_count,
            )
        return upgraded_count

    def upgrade_all(self) -> int:
        """Upgrade every study still held in the earlier layout (once per Redis: the
        :data:`scp.keys.AGGREGATE_LAYOUT` marker is set when none is left). Returns how
        many studies were upgraded."""
        if self._redis.get(keys.AGGREGATE_LAYOUT) == LAYOUT:
            return 0
        studies: set[str] = set()
        for key in self._redis.scan_iter(match=keys.LEGACY_SERIES_PATTERN, count=1000):
            studies.add(str(key).split(":")[2])
        upgraded = sum(1 for uid in sorted(studies) if self.upgrade(uid))
        self._redis.set(keys.AGGREGATE_LAYOUT, LAYOUT)
        if upgraded:
            logger.warning("upgraded %d studies held in the earlier aggregate layout", upgraded)
        return upgraded

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
        consume_signals: bool = False,
    ) -> bool:
        """Mark the study emitted if no instance arrived since ``seen_ms``; start the
        retention clock on its keys, or, with ``deliver_to`` (destinations' pending sets,
        :func:`scp.keys.deliver_pending`), keep them and ``keep`` (the destinations'
        delivery records) and list the study in each set (the deliveries start the clock
        once every destination has the output). Later records are the next generation;
        the completion signals that triggered the emission are used up
        (``consume_signals``); what was emitted is recorded in the ledger
        (:mod:`workers.ledger`). Releases the lease either way."""
        uid = aggregate.study_uid
        entry = ledger.entry_for(aggregate, now_ms)
        study_keys = keys.study_aggregate_keys(uid)
        kept = [*study_keys, *keep] if deliver_to else study_keys
        closed = self._close(
            keys=[
                keys.OPEN_STUDIES,
                keys.INFLIGHT,
                keys.EMITTED,
                keys.study_check(uid),
                keys.study_lease(uid),
                keys.study_signals(uid),
                keys.LEDGER,
                keys.LEDGER_DATES,
                *deliver_to,
                *kept,
            ],
            args=[
                uid,
                seen_ms,
                lease_token,
                now_ms,
                retention_ms,
                "1" if consume_signals else "",
                entry.dumps(),
                entry.study_date,
                len(deliver_to),
            ],
        )
        return bool(closed)


class _Digests:
    """:func:`workers.fold.digest` for one batch: the instances of a study mostly carry
    equal attributes, and comparing dicts costs less than serialising and hashing them.
    Remembers a few recent variants only, so a batch of all-different ones stays linear.
    (Equal dicts have equal JSON here: each attribute has one type.)"""

    RECENT = 4

    def __init__(self) -> None:
        self._recent: list[tuple[Attributes, str]] = []

    def __call__(self, attrs: Attributes) -> str:
        for known, name in self._recent:
            if known == attrs:
                return name
        name = digest(attrs)
        self._recent = [(attrs, name), *self._recent[: self.RECENT - 1]]
        return name


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _record_text(rank: int, study_variant: str, series_variant: str, record: object) -> str:
    """An instance record as the fold script writes it: rank and digests first."""
    members = _dumps(record)[1:-1]
    head = f'{{"g":{rank},"sv":"{study_variant}","ev":"{series_variant}"'
    return f"{head},{members}}}" if members else f"{head}}}"


def _retraction(h: dict[str, str]) -> Retraction | None:
    if "at" not in h:
        return None
    return Retraction(int(h["at"]), h.get("by", ""), h.get("reason", ""))
