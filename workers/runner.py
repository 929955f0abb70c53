"""The ``scp2fhir worker`` process: an RQ worker (with RQ's scheduler) on scp2fhir's queues."""

from __future__ import annotations

import logging

from rq import Worker

from scp import keys, metrics
from scp.connections import connect
from scp.settings import Settings
from workers.context import WorkerContext, install
from workers.jobs import ensure_group, ensure_sweep_scheduled

logger = logging.getLogger(__name__)


def run(settings: Settings, burst: bool = False) -> None:
    clients = connect(settings.require_redis_url())
    ensure_group(clients.data)
    # No flush thread here: RQ forks a work horse per job, and a thread holding the
    # recorder's lock at fork time would deadlock the horse. Jobs flush when they end.
    metrics.install(metrics.Recorder(clients.data))
    context = WorkerContext.build(settings, clients)
    install(context)
    ensure_sweep_scheduled(context)
    worker = Worker([keys.FOLD_QUEUE, keys.EMIT_QUEUE, keys.DELIVER_QUEUE], connection=clients.rq)
    logger.info(
        "worker=%s queues=%s,%s output=%s",
        worker.name,
        keys.FOLD_QUEUE,
        keys.EMIT_QUEUE,
        settings.output_dir,
    )
    worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
