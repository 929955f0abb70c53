"""The ``scp2fhir worker`` process: an RQ worker (with RQ's scheduler) on scp2fhir's queues."""

from __future__ import annotations

import logging
import time

import redis
from rq import Worker

from scp import keys, metrics
from scp.connections import connect
from scp.settings import Settings
from workers.context import WorkerContext, install
from workers.jobs import ensure_group, ensure_sweep_scheduled

logger = logging.getLogger(__name__)

#: Seconds between RQ maintenance runs (which include taking over a dead scheduler's lock).
MAINTENANCE_SECONDS = 60
#: Seconds to wait before starting again after Redis went away.
REDIS_RETRY_SECONDS = 2


def run(settings: Settings, burst: bool = False) -> None:
    clients = connect(settings.require_redis_url())
    ensure_group(clients.data)
    # No flush thread here: RQ forks a work horse per job, and a thread holding the
    # recorder's lock at fork time would deadlock the horse. Jobs flush when they end.
    metrics.install(metrics.Recorder(clients.data))
    context = WorkerContext.build(settings, clients)
    install(context)
    ensure_sweep_scheduled(context)
    # Listed in order of preference: folding first, so a slow FHIR server never delays it.
    queues = [keys.FOLD_QUEUE, keys.EMIT_QUEUE, keys.DELIVER_QUEUE]
    while True:
        # RQ retries the scheduler lock of a dead worker only at maintenance time (10 min
        # by default), and no quiet check runs until someone holds it: check every minute.
        worker = Worker(queues, connection=clients.rq, maintenance_interval=MAINTENANCE_SECONDS)
        logger.info(
            "worker=%s queues=%s output=%s", worker.name, ",".join(queues), settings.output_dir
        )
        try:
            worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
        except redis.ConnectionError as exc:  # before RQ's own loop runs, e.g. registering
            logger.error("worker=%s lost Redis: %s", worker.name, type(exc).__name__)
        else:
            # RQ returns both on a requested shutdown and when it gave up on an error
            # (it logs "found an unhandled exception, quitting", e.g. Redis went away
            # mid-job). Only the first may end the process: a worker outlives Redis restarts.
            # A signal always sets the shutdown date (an idle worker never sets
            # _stop_requested: RQ raises StopRequested instead).
            if burst or worker._shutdown_requested_date is not None:
                return
        logger.error(
            "worker=%s stopped on an error; starting again in %ss", worker.name, REDIS_RETRY_SECONDS
        )
        time.sleep(REDIS_RETRY_SECONDS)
