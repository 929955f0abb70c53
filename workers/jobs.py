"""The RQ jobs: drain the inbox, check whether a study has gone quiet, sweep.

* ``drain_inbox`` (fold queue) reads inbox entries in batches through the consumer
  group, folds them (:mod:`workers.aggregates`) and makes sure each touched study
  has a quiet check scheduled.
* ``check_quiet`` (emit queue, scheduled) emits the study when no instance has
  arrived for the quiet period and none is waiting to be folded; otherwise it
  schedules itself again for when the study could be quiet.
* ``sweep`` (emit queue, every :data:`SWEEP_SECONDS`) repairs what crashes leave:
  entries a dead worker had claimed, a drain request whose job was lost, open
  studies whose check was lost, emitted studies whose delivery job was lost.
* ``check_signal`` (emit queue) emits a study at once when its MPPS/IAN completion
  signals are satisfied (:mod:`workers.lifecycle.completion`); queued by the SCP when a
  signal arrives and by the drain after folding instances of a signalled study.
* ``deliver_study`` (a destination's deliver queue) sends the study's current output to
  one destination (:mod:`workers.delivery`); emission only queues it, so a slow or
  absent server never holds up the quiet checks, nor another destination.

All times come from the Redis clock, so workers on several hosts agree.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import redis

from scp import keys, metrics
from scp.inbox import DRAIN_REQUEST_TTL_MS, request_drain_job
from scp.retries import internal_retry
from scp.signals import request_checks
from workers import delivery
from workers.aggregates import InboxEntry
from workers.context import WorkerContext, current
from workers.delivery.output import admits
from workers.fold import ENTERED_IN_ERROR, StudyAggregate
from workers.lifecycle import completion
from workers.lifecycle.origin import with_origin
from workers.lifecycle.rejection import REJECTION_TITLES
from workers.mapping import Resource, imaging_study, standalone_resources, study_bundle
from workers.output import write_resource
from workers.profiles import Gaps
from workers.reclaim import claim_from, dead_local_consumers
from workers.reconcile import schedule as reconcile_schedule
from workers.summary import InstanceSummary, log_warnings, summarize

logger = logging.getLogger(__name__)

#: Inbox entries read per round trip.
BATCH_SIZE = 256
#: A drain job hands over to a fresh one after this long, so quiet checks get a turn.
DRAIN_SLICE_SECONDS = 20.0
#: After a short batch the drain waits this long for more, instead of spinning on a
#: stream that fills one instance at a time (which costs the SCP its CPU).
DRAIN_GATHER_SECONDS = 0.05
#: Seconds between sweeps.
SWEEP_SECONDS = 30.0
#: An inbox entry claimed but not acknowledged for this long belongs to a dead worker.
RECLAIM_IDLE_MS = 60_000
#: How long an emission may hold a study's lease.
LEASE_MS = 120_000
#: While instances of a study wait to be folded, its check looks again this soon.
INFLIGHT_RECHECK_MS = 250

CHECK_JOB = "workers.jobs.check_quiet"
SWEEP_JOB = "workers.jobs.sweep"


def ensure_group(connection: redis.Redis) -> None:
    """Create the inbox stream's consumer group (reading from the very first entry)."""
    try:
        connection.xgroup_create(keys.INBOX, keys.INBOX_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def redis_now_ms(connection: redis.Redis) -> int:
    seconds, micros = connection.time()
    return int(seconds) * 1000 + int(micros) // 1000


# --- drain -----------------------------------------------------------------------------


def drain_inbox() -> int:
    """Fold everything in the inbox; returns the number of instances folded."""
    ctx = current()
    data = ctx.clients.data
    # Cleared before reading: a push from now on either lands in what we read or
    # finds the flag unset and requests a new drain.
    data.delete(keys.DRAIN_REQUESTED)
    ensure_group(data)
    deadline = time.monotonic() + DRAIN_SLICE_SECONDS
    total = 0
    while True:
        reply: Any = data.xreadgroup(
            keys.INBOX_GROUP, ctx.consumer, {keys.INBOX: ">"}, count=BATCH_SIZE
        )
        raw = reply[0][1] if reply else []
        if not raw:
            break
        total += fold_entries(ctx, [_entry(entry_id, fields) for entry_id, fields in raw])
        if len(raw) < BATCH_SIZE:
            time.sleep(DRAIN_GATHER_SECONDS)
        if time.monotonic() > deadline:
            if data.set(keys.DRAIN_REQUESTED, "1", nx=True, px=DRAIN_REQUEST_TTL_MS):
                request_drain_job(ctx.fold_queue)
            break
    ensure_sweep_scheduled(ctx)
    recorder = metrics.recorder()
    recorder.count("instances_folded_total", total)
    recorder.flush()
    return total


def _entry(entry_id: str, fields: dict[str, str]) -> InboxEntry:
    return InboxEntry(entry_id, fields.get("s", ""), fields.get("h", ""))


def fold_entries(ctx: WorkerContext, entries: list[InboxEntry]) -> int:
    folded: list[tuple[str, InstanceSummary]] = []
    rejected: list[tuple[InboxEntry, str]] = []
    for entry in entries:
        try:
            summary = summarize(
                json.loads(entry.header),
                with_technique=ctx.needs_technique,
                site_zone=ctx.options.site_zone,
            )
        except Exception as exc:  # a header no summary can be made of goes to dead-letter
            logger.error(
                "entry=%s study=%s dead-lettered: %s",
                entry.entry_id,
                entry.study_uid,
                type(exc).__name__,
            )
            rejected.append((entry, type(exc).__name__))
            continue
        log_warnings(summary, logger)
        if summary.study_uid != entry.study_uid:
            rejected.append((entry, "study UID differs from the inbox entry"))
            continue
        if summary.rejection is not None:
            _log_rejection_note(summary)
        folded.append((entry.entry_id, summary))
    settings = ctx.settings
    applied = ctx.store.fold(
        folded,
        revive_rejected=settings.rejected_on_resend == "revive",
        revive_retracted=settings.retracted_on_store == "revive",
        index_ttl_ms=ctx.shared.retention_seconds * 1000,
    )
    ctx.store.reject(rejected)
    touched = {summary.study_uid for _, summary in folded}
    schedule_checks(ctx, touched)
    _request_signal_checks(ctx, touched)
    return applied


def _log_rejection_note(summary: InstanceSummary) -> None:
    note = summary.rejection
    assert note is not None
    metrics.recorder().count("rejection_notes_total", code=note.code)
    logger.info(
        "study=%s rejection note sop=%s code=%s (%s) rejects %d instances",
        summary.study_uid,
        summary.sop_uid,
        note.code,
        REJECTION_TITLES[note.code],
        len(note.rejected),
    )
    if note.elsewhere:
        logger.warning(
            "study=%s rejection note sop=%s references %d instances of other studies: not "
            "applied (IOCM puts a rejection note in the study of the instances it rejects)",
            summary.study_uid,
            summary.sop_uid,
            note.elsewhere,
        )


def _request_signal_checks(ctx: WorkerContext, study_uids: Iterable[str]) -> None:
    """Studies with completion signals get a check now that more of them is folded."""
    uids = sorted(study_uids)
    if not uids:
        return
    pipe = ctx.clients.data.pipeline(transaction=False)
    for uid in uids:
        pipe.exists(keys.study_signals(uid))
    signalled = [uid for uid, has in zip(uids, pipe.execute(), strict=True) if has]
    if signalled:
        request_checks(ctx.clients.data, ctx.emit_queue, signalled)


# --- quiet -----------------------------------------------------------------------------


def schedule_checks(ctx: WorkerContext, study_uids: Iterable[str]) -> None:
    """Schedule a quiet check for each study that has none scheduled."""
    data = ctx.clients.data
    uids = sorted(set(study_uids))
    if not uids:
        return
    now = redis_now_ms(data)
    quiet_ms = int(ctx.settings.quiet_seconds * 1000)
    for uid in uids:
        last = data.zscore(keys.OPEN_STUDIES, uid)
        delay_ms = quiet_ms if last is None else max(0, int(last) + quiet_ms - now)
        if data.set(keys.study_check(uid), "1", nx=True, px=_check_ttl(ctx, delay_ms)):
            _enqueue_check(ctx, uid, delay_ms)


def _check_ttl(ctx: WorkerContext, delay_ms: int) -> int:
    # Outlives the scheduled job by a margin: if the job is lost the flag expires and
    # the sweep schedules a new check.
    return delay_ms + int(SWEEP_SECONDS * 1000) * 4 + LEASE_MS


def _enqueue_check(ctx: WorkerContext, study_uid: str, delay_ms: int) -> None:
    ctx.emit_queue.enqueue_in(
        timedelta(milliseconds=delay_ms),
        CHECK_JOB,
        study_uid,
        description=f"quiet check study={study_uid}",
        result_ttl=300,
        job_timeout=600,
        retry=internal_retry(),
    )


def _reschedule(ctx: WorkerContext, study_uid: str, delay_ms: int) -> None:
    ctx.clients.data.pexpire(keys.study_check(study_uid), _check_ttl(ctx, delay_ms))
    _enqueue_check(ctx, study_uid, delay_ms)


def check_quiet(study_uid: str) -> str:
    """Emit ``study_uid`` if it has gone quiet; returns what happened."""
    ctx = current()
    data = ctx.clients.data
    ensure_sweep_scheduled(ctx)
    now = redis_now_ms(data)
    last = data.zscore(keys.OPEN_STUDIES, study_uid)
    if last is None:
        data.delete(keys.study_check(study_uid))
        return "not open"
    remaining = int(last) + int(ctx.settings.quiet_seconds * 1000) - now
    if data.hget(keys.INFLIGHT, study_uid):
        remaining = max(remaining, INFLIGHT_RECHECK_MS)
    if remaining > 0:
        _reschedule(ctx, study_uid, remaining)
        return "waiting"

    token = uuid.uuid4().hex
    if not data.set(keys.study_lease(study_uid), token, nx=True, px=LEASE_MS):
        _reschedule(ctx, study_uid, max(data.pttl(keys.study_lease(study_uid)), 100))
        return "leased elsewhere"
    try:
        emitted = emit(ctx, study_uid, int(last), token)
    except BaseException:
        data.delete(keys.study_lease(study_uid))
        raise
    if not emitted:
        _reschedule(ctx, study_uid, INFLIGHT_RECHECK_MS)
        return "re-opened during emission"
    return "emitted"


def check_signal(study_uid: str) -> str:
    """Emit ``study_uid`` now if its completion signals are satisfied (MPPS, IAN); else
    leave it to the quiet period. Returns what happened."""
    ctx = current()
    data = ctx.clients.data
    data.delete(keys.study_signal_check(study_uid))
    last = data.zscore(keys.OPEN_STUDIES, study_uid)
    if last is None:
        return "not open"
    readiness = completion.readiness(data, study_uid)
    if not readiness.ready:
        logger.debug("study=%s completion signal: not yet: %s", study_uid, readiness.why)
        return f"waiting: {readiness.why}"
    token = uuid.uuid4().hex
    if not data.set(keys.study_lease(study_uid), token, nx=True, px=LEASE_MS):
        return "leased elsewhere"  # someone is emitting it right now
    try:
        emitted = emit(ctx, study_uid, int(last), token, signalled=readiness.why)
    except BaseException:
        data.delete(keys.study_lease(study_uid))
        raise
    # Not closed: an instance arrived meanwhile; its fold asks for a check again.
    return "emitted on completion signal" if emitted else "re-opened during emission"


def emit(
    ctx: WorkerContext,
    study_uid: str,
    seen_ms: int,
    lease_token: str,
    signalled: str | None = None,
) -> bool:
    """Build, write (and deliver) the study's ImagingStudy; close the study unless an
    instance arrived meanwhile. ``signalled``: why a completion signal lets it go before
    its quiet period. Returns whether it was closed."""
    settings = ctx.settings
    aggregate = ctx.store.load(study_uid)
    now = redis_now_ms(ctx.clients.data)
    if not aggregate.emittable:
        # Known only from rejection notes: nothing was ever received, nothing to write
        # (its aggregate may be gone after the retention; the output is left as it is).
        closed = ctx.store.close(
            aggregate, seen_ms, lease_token, now, ctx.shared.retention_seconds * 1000
        )
        if closed:
            logger.warning(
                "study=%s has %d rejection notes and no instances: nothing emitted "
                "(instances the notes name stay rejected if they arrive)",
                study_uid,
                len(aggregate.notes),
            )
        return closed
    gaps = Gaps()
    resource = with_origin(
        imaging_study(aggregate, settings.fhir_version, options=ctx.options, gaps=gaps)
    )
    # Dose Observations and ImagingSelections (R5) as files of their own beside it,
    # written first: once the ImagingStudy's file is there, so are they.
    for derived in standalone_resources(aggregate, settings.fhir_version, ctx.options):
        write_resource(settings.output_dir, with_origin(derived), ctx.shared.file_access)
    path = write_resource(settings.output_dir, resource, ctx.shared.file_access)
    if ctx.options.bundle:
        write_resource(
            settings.output_dir,
            with_origin(study_bundle(aggregate, settings.fhir_version, ctx.options)),
            ctx.shared.file_access,
        )
    # With destinations the aggregate is kept until each has the output (the last
    # delivery starts the retention clock), so a redelivery can always rebuild it.
    destinations = [d for d in ctx.delivery.destinations if admits(d, aggregate)]
    closed = ctx.store.close(
        aggregate,
        seen_ms,
        lease_token,
        now,
        ctx.shared.retention_seconds * 1000,
        deliver_to=[keys.deliver_pending(d.name) for d in destinations],
        keep=[keys.study_delivery(study_uid, d.name) for d in ctx.delivery.destinations],
        consume_signals=signalled is not None,
    )
    for destination in destinations if closed else ():
        # After the close: a study still open when its delivery runs is skipped. If this
        # worker dies right here, the sweep queues the delivery (deliver-pending).
        delivery.enqueue_delivery(ctx, destination, study_uid)
    if closed:
        lag_ms = now - seen_ms - int(settings.quiet_seconds * 1000)
        record_emission(ctx, study_uid, resource, now, seen_ms, lag_ms)
        recorder = metrics.recorder()
        recorder.count("emissions_total")
        if signalled is not None:
            recorder.count("signalled_emissions_total")
        recorder.observe("last_instance_to_emitted_seconds", (now - seen_ms) / 1000)
        recorder.observe("emitted_after_quiet_seconds", max(0, lag_ms) / 1000)
        report_disagreements(ctx, aggregate)
        recorder.flush()  # jobs run in RQ's short-lived work horses: flush before exit
        # The folder and the id, not the path: with SCP2FHIR_LOG_HASH_UIDS the id is
        # hashed, and a path with a hashed name would name a file that does not exist.
        logger.info(
            "study=%s emitted id=%s status=%s series=%d instances=%d rejected=%d "
            "after_quiet_ms=%d%s folder=%s",
            study_uid,
            resource["id"],
            resource["status"],
            resource["numberOfSeries"],
            resource["numberOfInstances"],
            len(aggregate.received) - len(aggregate.instances),
            lag_ms,
            "" if signalled is None else f" on completion signal ({signalled})",
            path.parent,
        )
        if resource["status"] == ENTERED_IN_ERROR:
            logger.warning(
                "study=%s is entered-in-error: %s",
                study_uid,
                "retracted by an operator"
                if aggregate.retraction is not None
                else "every instance was rejected",
            )
        log_gaps(study_uid, ctx.options.profile, gaps)
    return closed


def report_disagreements(ctx: WorkerContext, aggregate: StudyAggregate) -> None:
    """Log, count and keep (for ``status``) the attributes the study's instances disagree
    on: DICOM keywords and counts, never values."""
    data = ctx.clients.data
    found = aggregate.disagreements
    if not found:
        data.hdel(keys.DISAGREEMENTS, aggregate.study_uid)
        return
    recorder = metrics.recorder()
    for item in found:
        recorder.count("attribute_disagreements_total", keyword=item.keyword)
    data.hset(
        keys.DISAGREEMENTS,
        aggregate.study_uid,
        json.dumps([item.as_json() for item in found], separators=(",", ":")),
    )
    logger.warning(
        "study=%s instances disagree on %d attributes: %s",
        aggregate.study_uid,
        len(found),
        "; ".join(item.line() for item in found),
    )


def record_emission(
    ctx: WorkerContext,
    study_uid: str,
    resource: Resource,
    now_ms: int,
    seen_ms: int,
    after_quiet_ms: int,
) -> None:
    """What the status page shows of the study's last emission (counts, when, how late)."""
    key = keys.study_emission(study_uid)
    pipe = ctx.clients.data.pipeline(transaction=False)
    pipe.hset(
        key,
        mapping={
            "at": now_ms,
            "last_arrival": seen_ms,
            "series": resource["numberOfSeries"],
            "instances": resource["numberOfInstances"],
            "after_quiet_ms": after_quiet_ms,
        },
    )
    pipe.pexpire(key, ctx.shared.retention_seconds * 1000)
    pipe.execute()


def log_gaps(study_uid: str, profile: str, gaps: Gaps) -> None:
    """One line naming what the profile wanted and the headers could not give (element
    paths and DICOM tags, never values); ``scp2fhir convert --explain`` shows the same.
    INFO, not WARNING: a gap is the data's shape (no Analysis in any DICOM header), not a
    fault of the bridge."""
    if len(gaps):
        logger.info(
            "study=%s profile=%s gaps=%d: %s",
            study_uid,
            profile,
            len(gaps),
            "; ".join(gap.line() for gap in gaps),
        )


# --- sweep -----------------------------------------------------------------------------


def ensure_sweep_scheduled(ctx: WorkerContext) -> None:
    if ctx.clients.data.set(keys.SWEEP_SCHEDULED, "1", nx=True, px=int(SWEEP_SECONDS * 1000) * 3):
        ctx.emit_queue.enqueue_in(
            timedelta(seconds=SWEEP_SECONDS),
            SWEEP_JOB,
            description="sweep: reclaim, re-drain, re-check",
            result_ttl=60,
            retry=internal_retry(),
        )


def sweep() -> dict[str, Any]:
    """Repair what crashed processes left behind."""
    ctx = current()
    data = ctx.clients.data
    data.delete(keys.SWEEP_SCHEDULED)
    ensure_group(data)
    reclaimed = 0
    # A work horse of this host that died holds its entries until they look idle; it
    # will never acknowledge them: fold them now.
    for dead in dead_local_consumers(data, ctx.consumer):
        while claimed := claim_from(data, dead, ctx.consumer, BATCH_SIZE):
            entries = [_entry(entry_id, fields) for entry_id, fields in claimed if fields]
            if entries:  # a batch of deleted entries only reclaims nothing
                logger.warning(
                    "consumer=%s is gone: reclaimed %d inbox entries", dead, len(entries)
                )
            reclaimed += fold_entries(ctx, entries)
    start = "0-0"
    while True:
        reply: Any = data.xautoclaim(
            keys.INBOX, keys.INBOX_GROUP, ctx.consumer, RECLAIM_IDLE_MS, start, count=BATCH_SIZE
        )
        start, claimed = reply[0], reply[1]
        entries = [_entry(entry_id, fields) for entry_id, fields in claimed if fields]
        if entries:
            logger.warning("reclaimed %d inbox entries from a stopped worker", len(entries))
            reclaimed += fold_entries(ctx, entries)
        if start == "0-0" or not claimed:
            break
    forgotten = ctx.store.forget_idle_consumers(RECLAIM_IDLE_MS)
    # The emitted index lists studies for `scp2fhir status`; past the retention their
    # aggregates are gone, and so goes their entry (else it grows by a study, forever).
    retention_ms = ctx.shared.retention_seconds * 1000
    expired: list[str] = data.zrangebyscore(  # type: ignore[assignment]
        keys.EMITTED, "-inf", redis_now_ms(data) - retention_ms
    )
    if expired:
        data.zrem(keys.EMITTED, *expired)
        data.hdel(keys.DISAGREEMENTS, *expired)
    backlog = data.xlen(keys.INBOX)
    if backlog and data.set(keys.DRAIN_REQUESTED, "1", nx=True, px=DRAIN_REQUEST_TTL_MS):
        request_drain_job(ctx.fold_queue)
    open_studies: list[str] = data.zrange(keys.OPEN_STUDIES, 0, -1)  # type: ignore[assignment]
    unchecked = [uid for uid in open_studies if not data.exists(keys.study_check(uid))]
    schedule_checks(ctx, unchecked)
    redelivered = delivery.sweep_deliveries(ctx)
    reconcile_schedule.ensure_scheduled(ctx)  # re-schedules a lost one; off by default
    ensure_sweep_scheduled(ctx)
    return {
        "reclaimed": reclaimed,
        "backlog": backlog,
        "rescheduled": len(unchecked),
        "redelivered": redelivered,
        "forgotten_consumers": forgotten,
    }


# --- delivery --------------------------------------------------------------------------


def deliver_study(
    study_uid: str, attempt: int = 1, destination: str = keys.DEFAULT_DESTINATION
) -> str:
    """Send the study's current output to one destination (its deliver queue); jobs
    queued before destinations existed name none: the default one."""
    return delivery.deliver(current(), study_uid, attempt, destination)
