"""The ``scp2fhir worker`` process: RQ workers (with RQ's scheduler) on scp2fhir's queues.

Without destinations it is one RQ worker on the fold, emit and (default) deliver queues.
With destinations, each destination's deliveries get an RQ worker of their own, in a
process the first one starts, signals and stops: an RQ worker runs one job at a time,
and a delivery may wait up to its timeout for a server that does not answer. Folding and
quiet checks never wait behind it, nor does another destination's delivery, so a slow,
absent or rejecting server never delays emission or another destination, however few
workers run. They stop together: a signal to the process (``scp2fhir up``, a service
manager, Ctrl-C) reaches all, and any one ending ends the others, so a supervisor sees
one process that lives or dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from rq import Worker

from scp import keys, logs, metrics, orphans
from scp.connections import connect
from scp.logs import library_level
from scp.pacs.settings import PacsSettings
from scp.shared_settings import SharedSettings
from workers import collector
from workers.context import WorkerContext, install
from workers.delivery.settings import DeliverySettings
from workers.jobs import ensure_group, ensure_sweep_scheduled
from workers.reconcile import schedule
from workers.scheduling import DEQUEUE_SECONDS, SchedulerKeeper
from workers.settings import WorkerSettings

logger = logging.getLogger(__name__)

#: Seconds between RQ maintenance runs (registries; the scheduler lock is looked at more often).
MAINTENANCE_SECONDS = 60
#: Seconds the delivery workers get to finish their job after the main worker stopped.
DELIVERIES_STOP_SECONDS = 30.0


class _Worker(Worker):
    """An RQ worker that passes the stop signals it gets on to its delivery workers, and
    keeps RQ's scheduler running (:mod:`workers.scheduling`).

    RQ ignores a second signal within a second of the first, so a delivery worker
    stops warm even when a Ctrl-C reaches it both from the terminal and from here.

    An idle worker waits :data:`~workers.scheduling.DEQUEUE_SECONDS` for a job, not RQ's
    405 s, so it looks at the scheduler every few seconds: a scheduler that died with
    Redis, or with the worker that held its lock, is running again within seconds."""

    companions: tuple[BaseProcess, ...] = ()
    #: Off in burst mode: RQ then enqueues what is due once and starts no scheduler.
    keep_scheduler = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keeper = SchedulerKeeper(self.connection)

    @property
    def dequeue_timeout(self) -> int:
        return DEQUEUE_SECONDS

    @property
    def should_run_maintenance_tasks(self) -> bool:
        due = self.keep_scheduler and self.keeper.due(self.scheduler)
        return due or bool(super().should_run_maintenance_tasks)

    def run_maintenance_tasks(self) -> None:
        if super().should_run_maintenance_tasks:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        if self.keep_scheduler:
            self.keeper.check(self.scheduler, self.queue_names())

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._forward(signum)
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        self._forward(signum)
        super().request_force_stop(signum, frame)

    def _forward(self, signum: int) -> None:
        for companion in self.companions:
            if companion.pid and companion.is_alive():
                os.kill(companion.pid, signum)


def run(
    settings: WorkerSettings,
    shared: SharedSettings,
    delivery: DeliverySettings | None = None,
    burst: bool = False,
    pacs: PacsSettings | None = None,
) -> None:
    # RQ forks a work horse per job and a scheduler: they die with this process, as this
    # process dies with `scp2fhir up` (a work horse runs in a session of its own).
    orphans.install_fork_hook()
    delivery = delivery or DeliverySettings()
    context = _context(settings, shared, delivery)
    # Aggregates an earlier release left in Redis (open, undelivered or retained studies)
    # are read in today's layout from now on; once per Redis.
    context.store.upgrade_all()
    ensure_sweep_scheduled(context)
    if pacs is not None:  # the scheduled reconcile (off unless configured), on the emit queue
        schedule.install(pacs)
        schedule.ensure_scheduled(context, delay_seconds=schedule.FIRST_DELAY_SECONDS)
    if not delivery:
        # Listed in order of preference: folding first. The deliver queue is served in
        # case jobs of an earlier configuration wait there (they report the missing
        # destination and end).
        queues = [keys.FOLD_QUEUE, keys.EMIT_QUEUE, keys.DELIVER_QUEUE]
        _work(_rq_worker(context, queues), shared, burst)
        return
    worker = _rq_worker(context, [keys.FOLD_QUEUE, keys.EMIT_QUEUE])
    spawn = multiprocessing.get_context("spawn")
    companions = tuple(
        spawn.Process(
            target=_serve_deliveries,
            args=(settings, shared, delivery, destination.name, burst, os.getpid()),
            name=f"deliveries-{destination.name}",
        )
        for destination in delivery.destinations
    )
    for companion in companions:
        companion.start()
    worker.companions = companions
    stopping = threading.Event()
    if not burst:
        for companion in companions:
            threading.Thread(
                target=_stop_when_gone,
                args=(companion, stopping),
                name=companion.name,
                daemon=True,
            ).start()
    try:
        _work(worker, shared, burst)
    finally:
        stopping.set()
        if burst:
            for companion in companions:
                companion.join()  # each ends when its queue is empty too
        _stop(companions)


def _context(
    settings: WorkerSettings, shared: SharedSettings, delivery: DeliverySettings
) -> WorkerContext:
    # Before any job: RQ's work horses are forked from here and inherit the settings.
    collector.tune()
    clients = connect(shared.require_redis_url())
    ensure_group(clients.data)
    # No flush thread here: RQ forks a work horse per job, and a thread holding the
    # recorder's lock at fork time would deadlock the horse. Jobs flush when they end.
    metrics.install(metrics.Recorder(clients.data))
    context = WorkerContext.build(settings, shared, clients, delivery)
    install(context)
    return context


def _rq_worker(context: WorkerContext, queues: list[str]) -> _Worker:
    # RQ's own maintenance (registries, expired jobs) every minute; the scheduler lock is
    # looked at every few seconds (_Worker).
    worker = _Worker(
        queues, connection=context.clients.rq, maintenance_interval=MAINTENANCE_SECONDS
    )
    logger.info(
        "worker=%s queues=%s output=%s", worker.name, ",".join(queues), context.settings.output_dir
    )
    return worker


def _work(worker: Worker, shared: SharedSettings, burst: bool) -> None:
    # When Redis goes away mid-job RQ logs the error and returns; the process then ends
    # and `scp2fhir up` (or the service manager) starts it again.
    # RQ logs three lines per job at INFO: they stay out of the default log.
    if isinstance(worker, _Worker):
        worker.keep_scheduler = not burst
    worker.work(burst=burst, with_scheduler=True, logging_level=library_level(shared.log_level))


def _serve_deliveries(
    settings: WorkerSettings,
    shared: SharedSettings,
    delivery: DeliverySettings,
    name: str,
    burst: bool,
    parent: int,
) -> None:
    """One destination's delivery worker process (started with ``spawn``: a fresh
    interpreter)."""
    # Killed with its parent (kill -9 included): never an orphan serving on alone.
    orphans.die_with_parent()
    if orphans.orphaned(parent):
        return  # the parent died before the line above took effect
    logs.configure(shared.log_level, "worker", shared.log_format, shared.log_hash_uids)
    destination = delivery.named(name)
    assert destination is not None
    _work(_rq_worker(_context(settings, shared, delivery), [destination.queue]), shared, burst)


def _stop_when_gone(deliveries: BaseProcess, stopping: threading.Event) -> None:
    """Ends this worker (warm, by the signal RQ handles) if a delivery worker ends
    first, so the process supervisor restarts them all."""
    deliveries.join()
    if stopping.is_set():
        return
    logger.error(
        "delivery worker %s exited with %s; stopping this worker",
        deliveries.name,
        deliveries.exitcode,
    )
    os.kill(os.getpid(), signal.SIGTERM)


def _stop(companions: tuple[BaseProcess, ...]) -> None:
    """Signal every delivery worker at once, then give them together
    :data:`DELIVERIES_STOP_SECONDS` to finish their job."""
    for deliveries in companions:
        if deliveries.is_alive():
            assert deliveries.pid is not None
            os.kill(deliveries.pid, signal.SIGTERM)
    deadline = time.monotonic() + DELIVERIES_STOP_SECONDS
    for deliveries in companions:
        deliveries.join(max(0.0, deadline - time.monotonic()))
        if deliveries.is_alive():
            logger.warning("delivery worker %s did not stop in time; killing it", deliveries.name)
            deliveries.kill()
            deliveries.join()
