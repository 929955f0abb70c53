"""The internal jobs are queued with retries (an abandoned one runs again instead of
landing in RQ's failed registry as AbandonedJobError), and a job that fails every time
still lands there, after its retries, where an operator looks."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import FailedJobRegistry

from scp import keys
from scp.inbox import request_drain_job
from scp.retries import INTERNAL_RETRIES
from scp.signals import request_checks
from tests.support import build_context
from workers import context, jobs
from workers.context import install


def queued_jobs(connection: redis.Redis, queue: str) -> list[Job]:
    q = Queue(queue, connection=connection)
    ids = q.get_job_ids() + q.scheduled_job_registry.get_job_ids()
    return [Job.fetch(job_id, connection=connection) for job_id in ids]


def test_every_internal_job_is_queued_with_retries(redis_url: str, tmp_path: Path) -> None:
    ctx = build_context(
        {"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_OUTPUT_DIR": str(tmp_path / "out")}
    )
    install(ctx)
    request_drain_job(ctx.fold_queue)
    jobs.schedule_checks(ctx, ["1.2.3.4"])
    jobs.ensure_sweep_scheduled(ctx)
    request_checks(ctx.clients.data, ctx.emit_queue, ["1.2.3.5"])
    found = queued_jobs(ctx.clients.rq, keys.FOLD_QUEUE) + queued_jobs(
        ctx.clients.rq, keys.EMIT_QUEUE
    )
    names = sorted(str(job.func_name) for job in found)
    assert names == sorted(
        [
            "workers.jobs.drain_inbox",
            "workers.jobs.check_quiet",
            "workers.jobs.sweep",
            "workers.jobs.check_signal",
        ]
    )
    assert {job.func_name: job.retries_left for job in found} == dict.fromkeys(
        names, INTERNAL_RETRIES
    )
    ctx.clients.close()


def test_a_job_that_fails_every_time_lands_in_the_failed_registry(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain job on a worker that has no context fails each run: tried 1 + retries
    times, then filed as failed."""
    connection = redis.Redis.from_url(redis_url)
    monkeypatch.setattr(context, "_current", None)
    fold = Queue(keys.FOLD_QUEUE, connection=connection)
    request_drain_job(fold)
    SimpleWorker([fold], connection=connection).work(burst=True)
    failed = FailedJobRegistry(keys.FOLD_QUEUE, connection=connection).get_job_ids()
    assert len(failed) == 1
    job = Job.fetch(failed[0], connection=connection)
    assert job.func_name == "workers.jobs.drain_inbox"
    assert job.retries_left == 0, "every retry was used first"
    connection.close()
