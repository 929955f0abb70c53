"""The ``scp2fhir worker`` process: an RQ worker (with RQ's scheduler) on scp2fhir's queues."""

from __future__ import annotations

import logging

from rq import Worker

from scp import keys, metrics
from scp.connections import connect
from scp.pacs.settings import PacsSettings
from scp.settings import Settings
from workers.context import WorkerContext, install
from workers.jobs import ensure_group, ensure_sweep_scheduled
from workers.reconcile import schedule

logger = logging.getLogger(__name__)

#: Seconds between RQ maintenance runs (which include taking over a dead scheduler's lock).
MAINTENANCE_SECONDS = 60


def run(settings: Settings, burst: bool = False, pacs: PacsSettings | None = None) -> None:
    clients = connect(settings.require_redis_url())
    ensure_group(clients.data)
    # No flush thread here: RQ forks a work horse per job, and a thread holding the
    # recorder's lock at fork time would deadlock the horse. Jobs flush when they end.
    metrics.install(metrics.Recorder(clients.data))
    context = WorkerContext.build(settings, clients)
    install(context)
    ensure_sweep_scheduled(context)
    if pacs is not None:  # the scheduled reconcile (off unless configured)
        schedule.install(pacs)
        schedule.ensure_scheduled(context, delay_seconds=schedule.FIRST_DELAY_SECONDS)
    # Listed in order of preference: folding first, so a slow FHIR server never delays it.
    queues = [keys.FOLD_QUEUE, keys.EMIT_QUEUE, keys.DELIVER_QUEUE]
    # RQ retries the scheduler lock of a dead worker only at maintenance time (10 min by
    # default), and no quiet check runs until someone holds it: check every minute.
    worker = Worker(queues, connection=clients.rq, maintenance_interval=MAINTENANCE_SECONDS)
    logger.info("worker=%s queues=%s output=%s", worker.name, ",".join(queues), settings.output_dir)
    # When Redis goes away mid-job RQ logs the error and returns; the process then ends
    # and `scp2fhir up` (or the service manager) starts it again.
    worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
