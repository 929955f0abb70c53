"""Operator retraction and erasure: ``scp2fhir retract`` and ``scp2fhir forget``.

* :func:`retract` records the retraction in Redis (kept until ``forget``), rewrites the
  study's files as ``entered-in-error`` (from its aggregate, or from the file itself once
  the aggregate is past its retention) and, with a FHIR server, queues a delivery: the
  resource becomes ``entered-in-error`` through the usual If-Match path (only if scp2fhir
  wrote it: :mod:`workers.lifecycle.origin`). It rewrites while holding the study's
  emission lease, so an emission in progress never writes the file back as available.
  Running it again changes nothing.
* :func:`forget` removes everything scp2fhir holds in Redis for a retracted study
  (aggregate, signals and the MPPS/IAN records they name, delivery state, index entries,
  dead-lettered headers and delivery jobs), for erasure requests, once the FHIR server
  has the retraction; the retraction record goes last, in one script with the rest, so
  an interrupted ``forget`` can be run again. Files in the output folder are listed,
  not deleted: like the server's resource they are output, marked entered-in-error.

Each writes one audit line (who, when, which study, why; never patient data).
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scp import keys
from scp.connections import RedisClients
from workers.dicomjson import valid_uid
from workers.fold import ENTERED_IN_ERROR, StudyAggregate
from workers.lifecycle.origin import with_origin, written_by_us
from workers.mapping import Resource, fhir_id, imaging_study, study_bundle
from workers.output import resource_path, write_resource
from workers.settings import WorkerSettings

if TYPE_CHECKING:  # workers.context imports the delivery code, which imports this module
    from workers.context import WorkerContext

logger = logging.getLogger(__name__)
audit = logging.getLogger("scp2fhir.audit")

#: A reason is operator text: kept short and on one line.
MAX_REASON = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class LifecycleError(ValueError):
    """The operation cannot be done as asked (one line for the operator)."""


@dataclass
class Outcome:
    study_uid: str
    #: what was done, one line each, for the operator
    done: list[str] = field(default_factory=list)


def operator() -> str:
    """Who runs the command: the login name and the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def clean_reason(reason: str | None) -> str:
    text = _CONTROL.sub(" ", reason or "").strip()
    return text[:MAX_REASON]


def entered_in_error(output: Resource) -> Resource:
    """``output`` (an ImagingStudy or a Bundle holding one) with the study marked
    entered-in-error."""
    if output.get("resourceType") == "ImagingStudy":
        return {**output, "status": ENTERED_IN_ERROR}
    entries = []
    for entry in output.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "ImagingStudy":
            entry = {**entry, "resource": {**resource, "status": ENTERED_IN_ERROR}}
        entries.append(entry)
    return {**output, "entry": entries}


def _check_uid(study_uid: str) -> None:
    if not valid_uid(study_uid):
        raise LifecycleError(f"{study_uid!r} is not a Study Instance UID")


# KEYS: the study's retraction hash. ARGV: at (ms), by, reason. The first record stays.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'at', ARGV[1], 'by', ARGV[2], 'reason', ARGV[3])
return 1
"""

#: How often ``retract`` looks again while an emission holds the study's lease.
LEASE_POLL_SECONDS = 0.1
#: How long ``retract`` may hold the lease (a quiet check that finds it held comes back
#: when it expires at the latest); rewriting two files and queueing takes far less.
RETRACT_LEASE_MS = 30_000


def retract(ctx: WorkerContext, study_uid: str, reason: str | None) -> Outcome:
    """Mark ``study_uid`` entered-in-error everywhere scp2fhir wrote it (idempotent)."""
    from workers.delivery import enqueue_delivery
    from workers.delivery.output import admits

    _check_uid(study_uid)
    data = ctx.clients.data
    outcome = Outcome(study_uid)
    seconds, micros = data.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    why = clean_reason(reason)
    by = operator()
    record = data.register_script(_RECORD)
    fresh = bool(record(keys=[keys.study_retraction(study_uid)], args=[now_ms, by, why]))
    outcome.done.append("retraction recorded" if fresh else "already retracted: record kept")
    # Audited as soon as it is recorded: what follows may fail and be run again.
    audit.warning(
        "audit: retract study=%s by=%s at=%s reason=%s result=%s",
        study_uid,
        by,
        datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat(timespec="seconds"),
        json.dumps(why, ensure_ascii=True),
        "recorded" if fresh else "unchanged",
    )
    # An emission that read the aggregate before the record would write the file as
    # available after us: rewrite only while holding the lease emissions hold.
    with _study_lease(ctx, study_uid):
        aggregate = ctx.store.load(study_uid)
        written = _rewrite_files(ctx, aggregate)
        outcome.done += [f"wrote {path}" for path in written]
        # Every destination that has (or would take) the study gets the new version.
        targets = [
            d
            for d in ctx.delivery.destinations
            if admits(d, aggregate) or data.exists(keys.study_delivery(study_uid, d.name))
        ]
        if targets and (written or aggregate.emittable):
            # Listed as pending (its aggregate kept) until each has the new version.
            pipe = data.pipeline(transaction=True)
            for destination in targets:
                pipe.zadd(keys.deliver_pending(destination.name), {study_uid: now_ms})
            for key in keys.study_aggregate_keys(study_uid):
                pipe.persist(key)
            pipe.execute()
            for destination in targets:
                enqueue_delivery(ctx, destination, study_uid, force=True)
            names = ", ".join(d.name for d in targets)
            outcome.done.append(f"delivery to {names} queued (workers send it)")
    if not written and not aggregate.emittable:
        outcome.done.append("nothing of the study is held or was written here")
    return outcome


@contextmanager
def _study_lease(ctx: WorkerContext, study_uid: str) -> Iterator[None]:
    """Hold the study's emission lease (waiting while an emission holds it; a dead
    worker's lease expires after :data:`workers.jobs.LEASE_MS`)."""
    data = ctx.clients.data
    lease = keys.study_lease(study_uid)
    token = f"retract-{uuid.uuid4().hex}"
    waited = False
    while not data.set(lease, token, nx=True, px=RETRACT_LEASE_MS):
        if not waited:
            logger.info("study=%s is being emitted: retract waits for it", study_uid)
            waited = True
        time.sleep(LEASE_POLL_SECONDS)
    try:
        yield
    finally:
        data.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
            1,
            lease,
            token,
        )


def _rewrite_files(ctx: WorkerContext, aggregate: StudyAggregate) -> list[Path]:
    """The study's files, rewritten as entered-in-error: rebuilt from the aggregate when
    it is still held, else the files as they are with the status changed."""
    settings = ctx.settings
    outputs: list[Resource] = []
    if aggregate.received:
        outputs.append(imaging_study(aggregate, settings.fhir_version, options=ctx.options))
        if ctx.options.bundle:
            outputs.append(study_bundle(aggregate, settings.fhir_version, ctx.options))
    else:
        for kind in ("ImagingStudy", "Bundle"):
            path = resource_path(
                settings.output_dir, {"resourceType": kind, "id": fhir_id(aggregate.study_uid)}
            )
            if path.exists():
                found: Resource = json.loads(path.read_text(encoding="utf-8"))
                if written_by_us(found):
                    outputs.append(entered_in_error(found))
                else:
                    logger.warning("file=%s was not written by scp2fhir: left alone", path)
    return [
        write_resource(settings.output_dir, with_origin(o), ctx.shared.file_access) for o in outputs
    ]


# KEYS: retraction, open, inflight, emitted, disagreements, ledger, ledger dates (the
# reconcile's record of what was emitted: workers/ledger.py), then each destination's
# pending set and then each one's failed hash (ARGV[2] of each), then the study's own keys,
# then series index keys (ARGV[3]). ARGV[1]: the study. Refuses (returns -1) unless the
# study is still retracted and not receiving; the retraction goes with everything else,
# in this one step, so an interrupted forget can always be run again.
_FORGET = """
local study, n_dest, n_index = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('ZSCORE', KEYS[2], study) or redis.call('HGET', KEYS[3], study) then return -1 end
for _, k in ipairs({KEYS[2], KEYS[4], KEYS[7]}) do redis.call('ZREM', k, study) end
for _, k in ipairs({KEYS[3], KEYS[5], KEYS[6]}) do redis.call('HDEL', k, study) end
for i = 8, 7 + n_dest do redis.call('ZREM', KEYS[i], study) end
for i = 8 + n_dest, 7 + 2 * n_dest do redis.call('HDEL', KEYS[i], study) end
local deleted = 0
for i = #KEYS - n_index + 1, #KEYS do
  if redis.call('GET', KEYS[i]) == study then deleted = deleted + redis.call('DEL', KEYS[i]) end
end
for i = 8 + 2 * n_dest, #KEYS - n_index do deleted = deleted + redis.call('DEL', KEYS[i]) end
return deleted + redis.call('DEL', KEYS[1])
"""


def forget(
    clients: RedisClients,
    settings: WorkerSettings,
    study_uid: str,
    destinations: Sequence[str] = (keys.DEFAULT_DESTINATION,),
) -> Outcome:
    """Remove everything scp2fhir holds in Redis for a retracted study: its aggregate,
    signals (and the MPPS/IAN records they name), every destination's delivery state,
    index entries, dead-lettered headers and dead-lettered delivery jobs. ``destinations``:
    the names of the configured delivery destinations."""
    _check_uid(study_uid)
    data = clients.data
    if not data.exists(keys.study_retraction(study_uid)):
        raise LifecycleError(
            f"study {study_uid} is not retracted: `scp2fhir retract --study {study_uid}` first"
        )
    if data.hget(keys.INFLIGHT, study_uid) or data.zscore(keys.OPEN_STUDIES, study_uid):
        raise LifecycleError(
            f"study {study_uid} is receiving instances: try again once it has been emitted"
        )
    dead_at = []
    for name in destinations:
        failed: Any = data.hget(keys.deliver_failed(name), study_uid)
        if failed:
            dead_at.append(name)
        elif data.zscore(keys.deliver_pending(name), study_uid) is not None or data.exists(
            keys.study_deliver_lock(study_uid, name)
        ):
            raise LifecycleError(
                f"study {study_uid}: destination {name} does not have the retraction yet; try "
                "again once it is delivered (`scp2fhir status`)"
            )
    outcome = Outcome(study_uid)
    if dead_at:
        outcome.done.append(
            f"its delivery to {', '.join(dead_at)} was dead-lettered: the FHIR server may "
            "still show the study; mark it entered-in-error there by hand"
        )
    # What holds data but no retraction goes first: if this stops half-way, the study is
    # still retracted and `forget` can run again.
    letters = _forget_dead_letters(data, study_uid)
    jobs = _forget_failed_deliveries(clients, study_uid, destinations)
    signal_names: Any = data.hkeys(keys.study_signals(study_uid))
    own = {str(k) for k in data.scan_iter(match=keys.study_pattern(study_uid), count=500)}
    own |= {keys.study(study_uid), *(keys.signal(str(name)) for name in signal_names)}
    records: Any = data.hvals(keys.study_instances(study_uid))
    series = sorted({str(json.loads(text).get("series_uid", "")) for text in records})
    index = [keys.series_study(uid) for uid in series if uid]
    deleted = int(
        data.register_script(_FORGET)(
            keys=[
                keys.study_retraction(study_uid),
                keys.OPEN_STUDIES,
                keys.INFLIGHT,
                keys.EMITTED,
                keys.DISAGREEMENTS,
                keys.LEDGER,
                keys.LEDGER_DATES,
                *(keys.deliver_pending(name) for name in destinations),
                *(keys.deliver_failed(name) for name in destinations),
                *sorted(own - {keys.study_retraction(study_uid)}),
                *index,
            ],
            args=[study_uid, len(destinations), len(index)],
        )
    )
    if deleted < 0:
        raise LifecycleError(
            f"study {study_uid} changed meanwhile (receiving again, or not retracted): "
            "nothing removed from the aggregate; try again"
        )
    outcome.done.append(
        f"removed {deleted} keys, {letters} dead-lettered headers and {jobs} "
        "dead-lettered delivery jobs"
    )
    for kind in ("ImagingStudy", "Bundle"):
        path = resource_path(settings.output_dir, {"resourceType": kind, "id": fhir_id(study_uid)})
        if path.exists():
            outcome.done.append(f"left {path} (entered-in-error output; delete it if required)")
    seconds, _ = data.time()
    audit.warning(
        "audit: forget study=%s by=%s at=%s keys=%d dead_letters=%d",
        study_uid,
        operator(),
        datetime.fromtimestamp(int(seconds), tz=UTC).isoformat(timespec="seconds"),
        deleted,
        letters,
    )
    return outcome


def _forget_dead_letters(data: Any, study_uid: str) -> int:
    """Dead-lettered headers of the study (they hold patient data)."""
    letters = 0
    held: Any = data.lrange(keys.DEAD_LETTER, 0, -1)
    for letter in held:
        try:
            if json.loads(letter).get("study_uid") == study_uid:
                letters += int(data.lrem(keys.DEAD_LETTER, 0, str(letter)))
        except (ValueError, AttributeError):
            continue
    return letters


def _forget_failed_deliveries(
    clients: RedisClients, study_uid: str, destinations: Sequence[str]
) -> int:
    """Dead-lettered delivery jobs of the study (``retry-failed`` would revive them)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    removed = 0
    for name in destinations:
        registry = FailedJobRegistry(keys.deliver_queue(name), connection=clients.rq)
        for job_id in registry.get_job_ids():
            try:
                job = Job.fetch(job_id, connection=clients.rq)
            except NoSuchJobError:
                continue
            if job.args and str(job.args[0]) == study_uid:
                registry.remove(job, delete_job=True)
                removed += 1
    return removed
