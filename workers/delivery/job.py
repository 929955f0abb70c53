"""The delivery job on the ``scp2fhir-deliver`` queue, and what schedules it.

``emit`` writes the file, closes the study (keeping its aggregate: it is listed in
``deliver-pending``) and calls :func:`enqueue_delivery`. The job (:func:`deliver`):

1. takes the study's delivery lock (one delivery per study at a time; a second job
   waits a second and comes back) and clears the ``deliver-queued`` flag, so an
   emission from now on queues a fresh job;
2. skips a study that is receiving again (its next emission delivers it);
3. builds the output from the *current* aggregate (the newest content, whichever
   emission queued the job) and skips it if the server already has exactly that; with
   ``SCP2FHIR_FHIR_VALIDATE=1`` the server's ``$validate`` checks it first
   (:mod:`workers.delivery.validation`);
4. writes it (:class:`workers.delivery.writer.StudyWriter`) and records id, version and
   content hash; the retention clock of the aggregate starts (unless newer output waits).

A transient failure schedules attempt n+1 with RQ's scheduler after
:func:`workers.delivery.retry.backoff_seconds`; the job itself ends normally. A
permanent failure, or the last allowed attempt failing, raises: RQ moves the job to the
queue's FailedJobRegistry (the dead-letter list in the RQ dashboard) and the study is
recorded in ``deliver-failed``. ``scp2fhir retry-failed`` (:func:`retry_failed`) queues
fresh jobs for them. The periodic sweep (:func:`sweep_deliveries`) queues a job for any
pending study that lost its own (a worker died between closing and enqueueing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from rq import Queue, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry

from scp import keys, metrics
from scp.connections import RedisClients
from scp.settings import Settings
from workers.context import WorkerContext
from workers.delivery import conformance, validation
from workers.delivery.client import get_client
from workers.delivery.errors import (
    GaveUp,
    NothingToDeliver,
    PermanentDeliveryError,
    TransientDeliveryError,
    Unsupported,
)
from workers.delivery.retry import backoff_seconds
from workers.delivery.state import Delivered, DeliveryState
from workers.delivery.writer import StudyWriter, imaging_study_of
from workers.fold import StudyAggregate
from workers.mapping import fhir_id
from workers.output import resource_path

logger = logging.getLogger(__name__)

#: Dotted path of the job (a thin wrapper in workers.jobs that supplies the builder).
DELIVER_JOB = "workers.jobs.deliver_study"
#: A job that finds another worker delivering the study comes back this much later.
BUSY_RETRY_SECONDS = 1.0
#: The queued flag outlives its job by this much; if the job is lost, the flag expires
#: and the sweep queues a new one.
QUEUED_MARGIN_SECONDS = 3600
#: Dead-lettered jobs stay in the FailedJobRegistry this long.
FAILURE_TTL_SECONDS = 365 * 86400

#: Builds the study's output from its aggregate; ``standalone=True`` asks for the
#: ImagingStudy alone (for a server without transactions).
Builder = Callable[[StudyAggregate, bool], dict[str, Any]]


def job_timeout_seconds(settings: Settings) -> int:
    """Enough for the requests one attempt may make: token, capabilities, search, a
    write, a gzip fallback and every conflict re-read and re-write."""
    requests = 6 + 2 * settings.fhir_conflict_retries
    return int(settings.fhir_timeout_seconds * requests) + 60


def enqueue_delivery(
    ctx: WorkerContext,
    study_uid: str,
    attempt: int = 1,
    delay_seconds: float = 0.0,
    force: bool = False,
) -> bool:
    """Queue (or schedule) a delivery of ``study_uid`` unless one is already queued
    (``force``: the caller is the queued one, handing its turn on); returns whether one
    was queued."""
    return _enqueue(ctx.clients, ctx.settings, study_uid, attempt, delay_seconds, force)


def _enqueue(
    clients: RedisClients,
    settings: Settings,
    study_uid: str,
    attempt: int,
    delay_seconds: float,
    force: bool,
    note: str = "",
) -> bool:
    data = clients.data
    flag_ms = int((delay_seconds + job_timeout_seconds(settings) + QUEUED_MARGIN_SECONDS) * 1000)
    if not data.set(keys.study_deliver_queued(study_uid), "1", nx=not force, px=flag_ms):
        return False
    queue = Queue(keys.DELIVER_QUEUE, connection=clients.rq)
    options: dict[str, Any] = {
        "description": f"deliver study={study_uid} attempt={attempt}{note}",
        "result_ttl": 3600,
        "failure_ttl": FAILURE_TTL_SECONDS,
        "job_timeout": job_timeout_seconds(settings),
    }
    try:
        if delay_seconds > 0:
            # RQ's scheduler keeps whole seconds, truncated, so "in 2.0 s" may run after
            # 1.1 s: round the moment up, or a Retry-After would not be honoured.
            at = datetime.fromtimestamp(math.ceil(time.time() + delay_seconds), tz=UTC)
            queue.enqueue_at(at, DELIVER_JOB, study_uid, attempt, **options)
        else:
            queue.enqueue(DELIVER_JOB, study_uid, attempt, **options)
    except BaseException:
        data.delete(keys.study_deliver_queued(study_uid))
        raise
    return True


def deliver(ctx: WorkerContext, study_uid: str, attempt: int, build: Builder) -> str:
    """Deliver the study's current output; returns what happened (the job's result)."""
    settings = ctx.settings
    if settings.fhir_base_url is None:
        return "not delivered: SCP2FHIR_FHIR_BASE_URL is not set in this worker"
    data = ctx.clients.data
    lock = keys.study_deliver_lock(study_uid)
    token = uuid.uuid4().hex
    if not data.set(lock, token, nx=True, px=job_timeout_seconds(settings) * 1000):
        # This job is the queued one (its flag is still set): hand the turn on, or the
        # newest output would wait for nobody.
        enqueue_delivery(ctx, study_uid, attempt, BUSY_RETRY_SECONDS, force=True)
        return "busy: another worker is delivering this study; queued again"
    recorder = metrics.recorder()
    try:
        data.delete(keys.study_deliver_queued(study_uid))
        result = _deliver_locked(ctx, study_uid, attempt, build)
        recorder.count("delivery_attempts_total", outcome=result.split(":")[0])
        return result
    except TransientDeliveryError as exc:
        recorder.count("delivery_attempts_total", outcome="transient")
        if attempt >= settings.fhir_max_attempts:
            error = GaveUp(f"gave up after {attempt} attempts; last: {exc}")
            _dead_letter(ctx, study_uid, error)
            raise error from exc
        delay = backoff_seconds(
            attempt,
            settings.fhir_retry_base_seconds,
            settings.fhir_retry_max_seconds,
            exc.retry_after,
        )
        logger.warning(
            "study=%s delivery attempt %d/%d failed: %s; next attempt in %.1fs",
            study_uid,
            attempt,
            settings.fhir_max_attempts,
            exc,
            delay,
        )
        enqueue_delivery(ctx, study_uid, attempt + 1, delay)
        return f"attempt {attempt} failed ({exc}); next in {delay:.1f}s"
    except PermanentDeliveryError as exc:
        recorder.count("delivery_attempts_total", outcome="permanent")
        _dead_letter(ctx, study_uid, exc)
        raise
    except Exception as exc:
        # A bug or Redis trouble: dead-letter it too, or the sweep would queue it forever.
        recorder.count("delivery_attempts_total", outcome="error")
        _dead_letter(ctx, study_uid, exc)
        raise
    finally:
        recorder.flush()  # jobs run in RQ's short-lived work horses
        data.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
            1,
            lock,
            token,
        )


def _deliver_locked(ctx: WorkerContext, study_uid: str, attempt: int, build: Builder) -> str:
    settings = ctx.settings
    data = ctx.clients.data
    if data.zscore(keys.OPEN_STUDIES, study_uid) is not None:
        return "skipped: the study is receiving again; its next emission delivers it"
    state = DeliveryState(data)
    seen = state.pending_score(study_uid)
    began = time.monotonic()
    client = get_client(settings, data)
    caps = conformance.load(client, settings, data)
    if not caps.speaks(settings.fhir_version):
        raise Unsupported(
            f"the server speaks FHIR {caps.fhir_version}, but SCP2FHIR_FHIR_VERSION="
            f"{settings.fhir_version}: nothing sent"
        )
    aggregate = ctx.store.load(study_uid)
    output = _output(settings, aggregate, study_uid, build, standalone=not caps.transaction)
    digest = hashlib.sha256(
        json.dumps(output, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    known = state.load(study_uid)
    study_keys = _study_keys(aggregate)
    retention_ms = settings.retention_seconds * 1000
    if known.sha256 == digest and known.resource_id:
        state.delivered(study_uid, known, seen, study_keys, retention_ms)
        logger.info(
            "study=%s unchanged since version %s of ImagingStudy/%s: not sent again",
            study_uid,
            known.version,
            known.resource_id,
        )
        return f"unchanged: ImagingStudy/{known.resource_id} version {known.version}"
    if settings.fhir_validate:
        validation.check(client, settings, study_uid, imaging_study_of(output)[0])
    result = StudyWriter(client, settings, caps).write(study_uid, output, known)
    now_ms = int(time.time() * 1000)
    record = Delivered(result.resource_id, result.version, digest, now_ms)
    dead_job = state.failed_job(study_uid)
    retained = state.delivered(study_uid, record, seen, study_keys, retention_ms)
    if dead_job:
        # Delivered after all (a later emission): its old dead letter is obsolete.
        FailedJobRegistry(keys.DELIVER_QUEUE, connection=ctx.clients.rq).remove(
            dead_job, delete_job=True
        )
    if seen is not None:
        seconds, micros = data.time()
        emitted_ms = int(seconds) * 1000 + int(micros) // 1000 - int(seen)
        metrics.recorder().observe("emitted_to_delivered_seconds", max(0, emitted_ms) / 1000)
    logger.info(
        "study=%s delivered ImagingStudy/%s version=%s how=%s status=%d attempt=%d ms=%d%s",
        study_uid,
        result.resource_id,
        result.version,
        result.how,
        result.status,
        attempt,
        (time.monotonic() - began) * 1000,
        "" if retained else " (newer output waits: aggregate kept)",
    )
    return f"delivered: ImagingStudy/{result.resource_id} version {result.version} ({result.how})"


def _output(
    settings: Settings,
    aggregate: StudyAggregate,
    study_uid: str,
    build: Builder,
    standalone: bool,
) -> dict[str, Any]:
    if aggregate.instances:
        return build(aggregate, standalone)
    # The aggregate is kept until delivery succeeds, so this is a study emitted before
    # delivery was configured, or keys removed by hand: the file may still be here.
    for kind in ("Bundle", "ImagingStudy") if not standalone else ("ImagingStudy",):
        path = resource_path(settings.output_dir, {"resourceType": kind, "id": fhir_id(study_uid)})
        if path.exists():
            loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return loaded
    raise NothingToDeliver("neither the study's aggregate nor its output file is left")


def _study_keys(aggregate: StudyAggregate) -> list[str]:
    uid = aggregate.study_uid
    return [keys.study(uid), keys.study_instances(uid)] + [
        keys.series(uid, series_uid) for series_uid in aggregate.series
    ]


def _dead_letter(ctx: WorkerContext, study_uid: str, error: BaseException) -> None:
    job = get_current_job()
    job_id = job.id if job is not None else "-"
    DeliveryState(ctx.clients.data).mark_failed(study_uid, job_id)
    metrics.recorder().count("delivery_failures_total")
    logger.error(
        "study=%s delivery dead-lettered (job %s in %s's failed registry; "
        "`scp2fhir retry-failed` re-queues it): %s: %s",
        study_uid,
        job_id,
        keys.DELIVER_QUEUE,
        type(error).__name__,
        error,
    )


def sweep_deliveries(ctx: WorkerContext) -> int:
    """Queue a delivery for each pending study that has none queued, running or
    dead-lettered (its job was lost); returns how many were queued."""
    if ctx.settings.fhir_base_url is None:
        return 0
    data = ctx.clients.data
    state = DeliveryState(data)
    failed = state.failed()
    queued = 0
    for uid in state.pending():
        if uid in failed or data.zscore(keys.OPEN_STUDIES, uid) is not None:
            continue
        if data.exists(keys.study_deliver_lock(uid)):
            continue
        if enqueue_delivery(ctx, uid):
            queued += 1
    if queued:
        logger.warning("sweep queued %d deliveries that had lost their job", queued)
    return queued


def retry_failed(clients: RedisClients, settings: Settings, only: Iterable[str] = ()) -> list[str]:
    """Queue a fresh delivery (attempt 1) for every dead-lettered study, or only for
    ``only``; their failed jobs leave the registry. Returns the study UIDs queued."""
    wanted = set(only)
    registry = FailedJobRegistry(keys.DELIVER_QUEUE, connection=clients.rq)
    state = DeliveryState(clients.data)
    studies: dict[str, list[str]] = {uid: [] for uid in state.failed()}
    for job_id in registry.get_job_ids():
        try:
            job = Job.fetch(job_id, connection=clients.rq)
        except NoSuchJobError:
            registry.remove(job_id)
            continue
        if job.func_name != DELIVER_JOB or not job.args:
            continue
        studies.setdefault(str(job.args[0]), []).append(job_id)
    if wanted:
        studies = {uid: ids for uid, ids in studies.items() if uid in wanted}
    for uid, job_ids in sorted(studies.items()):
        state.clear_failed(uid)
        # Forced: a stale flag must not swallow an operator's explicit request.
        _enqueue(clients, settings, uid, 1, 0.0, force=True, note=" (retry-failed)")
        for job_id in job_ids:
            registry.remove(job_id, delete_job=True)
        logger.info("study=%s re-queued for delivery (was job %s)", uid, ",".join(job_ids) or "-")
    return sorted(studies)
