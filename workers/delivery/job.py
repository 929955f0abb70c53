"""The delivery jobs, one queue per destination, and what schedules them.

``emit`` writes the file, closes the study (keeping its aggregate: it is listed in each
destination's ``deliver-pending``) and calls :func:`enqueue_delivery` for each
destination that gets something of it. The job (:func:`deliver`), for one destination:

1. takes the study's delivery lock for that destination (one delivery per study and
   destination at a time; a second job waits a second and comes back) and clears its
   ``deliver-queued`` flag, so an emission from now on queues a fresh job;
2. skips a study that is receiving again (its next emission delivers it);
3. builds the destination's output from the *current* aggregate (the newest content,
   whichever emission queued the job: :mod:`workers.delivery.output` leaves out, maps,
   pseudonymizes) and skips it if the destination already has exactly that; with
   ``validate`` the server's ``$validate`` checks it first (:mod:`workers.delivery.validation`);
4. writes it (:class:`workers.delivery.writer.StudyWriter`, or a file for a folder
   destination) and records id, version and content hash; once no destination waits for
   the study any more, the retention clock of its aggregate starts.

A transient failure schedules attempt n+1 with RQ's scheduler after
:func:`workers.delivery.retry.backoff_seconds`; the job itself ends normally. A
permanent failure, or the last allowed attempt failing, raises: RQ moves the job to the
destination queue's FailedJobRegistry (the dead-letter list in the RQ dashboard) and the
study is recorded in the destination's ``deliver-failed``. ``scp2fhir retry-failed``
(:func:`retry_failed`) queues fresh jobs for them. The periodic sweep
(:func:`sweep_deliveries`) queues a job for any pending study that lost its own (a worker
died between closing and enqueueing).

Every destination has its own queue, served by a delivery worker process of its own
(:mod:`workers.runner`), so one that is down, slow or rejecting never delays another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rq import Queue, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry

from scp import keys, metrics
from scp.connections import RedisClients
from workers.delivery import conformance, validation
from workers.delivery.client import get_client
from workers.delivery.conformance import Capabilities
from workers.delivery.errors import (
    GaveUp,
    NothingToDeliver,
    PermanentDeliveryError,
    TransientDeliveryError,
    Unsupported,
)
from workers.delivery.output import destination_output
from workers.delivery.retry import backoff_seconds
from workers.delivery.settings import Destination
from workers.delivery.state import Delivered, DeliveryState
from workers.delivery.writer import StudyWriter, WriteResult, imaging_study_of
from workers.fold import StudyAggregate
from workers.lifecycle.retraction import entered_in_error
from workers.mapping import fhir_id
from workers.output import resource_path, write_resource

if TYPE_CHECKING:  # workers.context imports the delivery settings, and so this package
    from workers.context import WorkerContext

logger = logging.getLogger(__name__)

#: Dotted path of the job (a thin wrapper in workers.jobs).
DELIVER_JOB = "workers.jobs.deliver_study"
#: A job that finds another worker delivering the study comes back this much later.
BUSY_RETRY_SECONDS = 1.0
#: The queued flag outlives its job by this much; if the job is lost, the flag expires
#: and the sweep queues a new one.
QUEUED_MARGIN_SECONDS = 3600
#: Dead-lettered jobs stay in the FailedJobRegistry this long.
FAILURE_TTL_SECONDS = 365 * 86400


def job_timeout_seconds(destination: Destination) -> int:
    """Enough for the requests one attempt may make: token, capabilities, search, a
    write, a gzip fallback and every conflict re-read and re-write."""
    requests = 6 + 2 * destination.retry.conflict_retries
    return int(destination.timeout_seconds * requests) + 60


def enqueue_delivery(
    ctx: WorkerContext,
    destination: Destination,
    study_uid: str,
    attempt: int = 1,
    delay_seconds: float = 0.0,
    force: bool = False,
) -> bool:
    """Queue (or schedule) a delivery of ``study_uid`` to ``destination`` unless one is
    already queued (``force``: the caller is the queued one, handing its turn on);
    returns whether one was queued."""
    return _enqueue(ctx.clients, destination, study_uid, attempt, delay_seconds, force)


def _enqueue(
    clients: RedisClients,
    destination: Destination,
    study_uid: str,
    attempt: int,
    delay_seconds: float,
    force: bool,
    note: str = "",
) -> bool:
    data = clients.data
    name = destination.name
    timeout = job_timeout_seconds(destination)
    flag_ms = int((delay_seconds + timeout + QUEUED_MARGIN_SECONDS) * 1000)
    flag = keys.study_deliver_queued(study_uid, name)
    if not data.set(flag, "1", nx=not force, px=flag_ms):
        return False
    queue = Queue(destination.queue, connection=clients.rq)
    options: dict[str, Any] = {
        "description": f"deliver study={study_uid} to={name} attempt={attempt}{note}",
        "result_ttl": 3600,
        "failure_ttl": FAILURE_TTL_SECONDS,
        "job_timeout": timeout,
    }
    try:
        if delay_seconds > 0:
            # RQ's scheduler keeps whole seconds, truncated, so "in 2.0 s" may run after
            # 1.1 s: round the moment up, or a Retry-After would not be honoured.
            at = datetime.fromtimestamp(math.ceil(time.time() + delay_seconds), tz=UTC)
            queue.enqueue_at(at, DELIVER_JOB, study_uid, attempt, name, **options)
        else:
            queue.enqueue(DELIVER_JOB, study_uid, attempt, name, **options)
    except BaseException:
        data.delete(flag)
        raise
    return True


def deliver(ctx: WorkerContext, study_uid: str, attempt: int, destination_name: str) -> str:
    """Deliver the study's current output to one destination; returns what happened
    (the job's result)."""
    destination = ctx.delivery.named(destination_name)
    if destination is None:
        logger.warning(
            "study=%s not delivered: destination %s is not configured in this worker",
            study_uid,
            destination_name,
        )
        return f"not delivered: destination {destination_name} is not configured here"
    data = ctx.clients.data
    name = destination.name
    lock = keys.study_deliver_lock(study_uid, name)
    token = uuid.uuid4().hex
    if not data.set(lock, token, nx=True, px=job_timeout_seconds(destination) * 1000):
        # This job is the queued one (its flag is still set): hand the turn on, or the
        # newest output would wait for nobody.
        enqueue_delivery(ctx, destination, study_uid, attempt, BUSY_RETRY_SECONDS, force=True)
        return "busy: another worker is delivering this study; queued again"
    recorder = metrics.recorder()
    retry = destination.retry
    try:
        data.delete(keys.study_deliver_queued(study_uid, name))
        result = _deliver_locked(ctx, destination, study_uid, attempt)
        recorder.count("delivery_attempts_total", outcome=result.split(":")[0], destination=name)
        return result
    except TransientDeliveryError as exc:
        recorder.count("delivery_attempts_total", outcome="transient", destination=name)
        if attempt >= retry.max_attempts:
            error = GaveUp(f"gave up after {attempt} attempts; last: {exc}")
            _dead_letter(ctx, destination, study_uid, error)
            raise error from exc
        delay = backoff_seconds(attempt, retry.base_seconds, retry.max_seconds, exc.retry_after)
        logger.warning(
            "study=%s destination=%s delivery attempt %d/%d failed: %s; next attempt in %.1fs",
            study_uid,
            name,
            attempt,
            retry.max_attempts,
            exc,
            delay,
        )
        enqueue_delivery(ctx, destination, study_uid, attempt + 1, delay)
        return f"attempt {attempt} failed ({exc}); next in {delay:.1f}s"
    except PermanentDeliveryError as exc:
        recorder.count("delivery_attempts_total", outcome="permanent", destination=name)
        _dead_letter(ctx, destination, study_uid, exc)
        raise
    except Exception as exc:
        # A bug or Redis trouble: dead-letter it too, or the sweep would queue it forever.
        recorder.count("delivery_attempts_total", outcome="error", destination=name)
        _dead_letter(ctx, destination, study_uid, exc)
        raise
    finally:
        recorder.flush()  # jobs run in RQ's short-lived work horses
        data.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
            1,
            lock,
            token,
        )


def _deliver_locked(
    ctx: WorkerContext, destination: Destination, study_uid: str, attempt: int
) -> str:
    data = ctx.clients.data
    name = destination.name
    if data.zscore(keys.OPEN_STUDIES, study_uid) is not None:
        return "skipped: the study is receiving again; its next emission delivers it"
    state = DeliveryState(data, name, ctx.delivery.names)
    seen = state.pending_score(study_uid)
    began = time.monotonic()
    if destination.url is not None:
        client = get_client(destination, data)
        caps = conformance.load(client, destination, data)
        if not caps.speaks(destination.fhir_version):
            raise Unsupported(
                f"the server speaks FHIR {caps.fhir_version}, but destination {name} has "
                f"fhir_version={destination.fhir_version}: nothing sent"
            )
    else:
        caps = Capabilities()  # a folder takes anything a server could
    aggregate = ctx.store.load(study_uid)
    study_keys = _study_keys(aggregate)
    retention_ms = ctx.shared.retention_seconds * 1000
    output = _output(ctx, destination, aggregate, study_uid, standalone=not caps.transaction)
    known = state.load(study_uid)
    if output is None:
        state.delivered(study_uid, known, seen, study_keys, retention_ms)
        logger.info(
            "study=%s destination=%s leaves out every instance: nothing sent", study_uid, name
        )
        return "left out: the destination leaves out every instance of the study"
    digest = hashlib.sha256(
        json.dumps(output, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    if known.sha256 == digest and known.resource_id:
        state.delivered(study_uid, known, seen, study_keys, retention_ms)
        logger.info(
            "study=%s destination=%s unchanged since version %s of ImagingStudy/%s: not sent again",
            study_uid,
            name,
            known.version,
            known.resource_id,
        )
        return f"unchanged: ImagingStudy/{known.resource_id} version {known.version}"
    if destination.folder is not None:
        path = write_resource(destination.folder, output, ctx.shared.file_access)
        result = WriteResult(str(output["id"]), None, 0, f"file {path}")
    else:
        if destination.validate:
            validation.check(client, destination, study_uid, imaging_study_of(output)[0])
        result = StudyWriter(client, destination, caps).write(study_uid, output, known)
    now_ms = int(time.time() * 1000)
    record = Delivered(result.resource_id, result.version, digest, now_ms)
    dead_job = state.failed_job(study_uid)
    retained = state.delivered(study_uid, record, seen, study_keys, retention_ms)
    if dead_job:
        # Delivered after all (a later emission): its old dead letter is obsolete.
        FailedJobRegistry(destination.queue, connection=ctx.clients.rq).remove(
            dead_job, delete_job=True
        )
    if seen is not None:
        seconds, micros = data.time()
        emitted_ms = int(seconds) * 1000 + int(micros) // 1000 - int(seen)
        metrics.recorder().observe(
            "emitted_to_delivered_seconds", max(0, emitted_ms) / 1000, destination=name
        )
    logger.info(
        "study=%s destination=%s delivered ImagingStudy/%s version=%s how=%s status=%d "
        "attempt=%d ms=%d%s",
        study_uid,
        name,
        result.resource_id,
        result.version,
        result.how,
        result.status,
        attempt,
        (time.monotonic() - began) * 1000,
        "" if retained else " (another destination or newer output waits: aggregate kept)",
    )
    return f"delivered: ImagingStudy/{result.resource_id} version {result.version} ({result.how})"


def _output(
    ctx: WorkerContext,
    destination: Destination,
    aggregate: StudyAggregate,
    study_uid: str,
    standalone: bool,
) -> dict[str, Any] | None:
    if aggregate.received:
        return destination_output(destination, aggregate, standalone)
    # The aggregate is kept until delivery succeeds, so this is a study emitted before
    # delivery was configured, a retraction after the retention, keys removed by hand, or
    # a dead letter retried after the retention. The output folder's file may still be
    # here, and serves a destination that gets exactly what the folder got (never one
    # that leaves out or pseudonymizes).
    settings = ctx.settings
    plain = (
        not destination.transforms()
        and destination.options == ctx.options
        and destination.fhir_version == settings.fhir_version
    )
    kinds = ("Bundle", "ImagingStudy") if not standalone else ("ImagingStudy",)
    for kind in kinds if plain else ():
        path = resource_path(settings.output_dir, {"resourceType": kind, "id": fhir_id(study_uid)})
        if path.exists():
            loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            if aggregate.retraction is not None:
                loaded = entered_in_error(loaded)
            return loaded
    raise NothingToDeliver("neither the study's aggregate nor its output file is left")


def _study_keys(aggregate: StudyAggregate) -> list[str]:
    return keys.study_aggregate_keys(aggregate.study_uid)


def _dead_letter(
    ctx: WorkerContext, destination: Destination, study_uid: str, error: BaseException
) -> None:
    job = get_current_job()
    job_id = job.id if job is not None else "-"
    state = DeliveryState(ctx.clients.data, destination.name, ctx.delivery.names)
    aggregate = ctx.store.load(study_uid)
    state.dead_lettered(
        study_uid, job_id, _study_keys(aggregate), ctx.shared.retention_seconds * 1000
    )
    metrics.recorder().count("delivery_failures_total", destination=destination.name)
    logger.error(
        "study=%s destination=%s delivery dead-lettered (job %s in %s's failed registry; "
        "`scp2fhir retry-failed --destination %s` re-queues it): %s: %s",
        study_uid,
        destination.name,
        job_id,
        destination.queue,
        destination.name,
        type(error).__name__,
        error,
    )


def sweep_deliveries(ctx: WorkerContext) -> int:
    """Queue a delivery for each pending study (of any destination) that has none queued,
    running or dead-lettered (its job was lost); returns how many were queued."""
    data = ctx.clients.data
    queued = 0
    for destination in ctx.delivery.destinations:
        state = DeliveryState(data, destination.name)
        failed = state.failed()
        for uid in state.pending():
            if uid in failed or data.zscore(keys.OPEN_STUDIES, uid) is not None:
                continue
            if data.exists(keys.study_deliver_lock(uid, destination.name)):
                continue
            if enqueue_delivery(ctx, destination, uid):
                queued += 1
    if queued:
        logger.warning("sweep queued %d deliveries that had lost their job", queued)
    return queued


def retry_failed(
    clients: RedisClients, destination: Destination, only: Iterable[str] = ()
) -> list[str]:
    """Queue a fresh delivery (attempt 1) to ``destination`` for every study it
    dead-lettered, or only for ``only``; their failed jobs leave the registry. Returns
    the study UIDs queued."""
    wanted = set(only)
    registry = FailedJobRegistry(destination.queue, connection=clients.rq)
    state = DeliveryState(clients.data, destination.name)
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
        _enqueue(clients, destination, uid, 1, 0.0, force=True, note=" (retry-failed)")
        for job_id in job_ids:
            registry.remove(job_id, delete_job=True)
        logger.info(
            "study=%s destination=%s re-queued for delivery (was job %s)",
            uid,
            destination.name,
            ",".join(job_ids) or "-",
        )
    return sorted(studies)
