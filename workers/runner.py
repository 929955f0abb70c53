"""The ``scp2fhir worker`` process: RQ workers (with RQ's scheduler) on scp2fhir's queues.

Without a FHIR server it is one RQ worker on the fold, emit and deliver queues. With
``SCP2FHIR_FHIR_BASE_URL`` set, deliveries get an RQ worker of their own, in a second
process the first one starts, signals and stops: an RQ worker runs one job at a time,
and a delivery may wait up to its timeout for a server that does not answer. Folding and
quiet checks never wait behind it, so a slow or absent FHIR server never delays
emission, however few workers run. The two stop together: a signal to the process
(``scp2fhir up``, a service manager, Ctrl-C) reaches both, and either one ending ends the
other, so a supervisor sees one process that lives or dies.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.process import BaseProcess
from types import FrameType

from rq import Worker

from scp import keys, logs, metrics
from scp.connections import connect
from scp.settings import Settings
from workers.context import WorkerContext, install
from workers.jobs import ensure_group, ensure_sweep_scheduled

logger = logging.getLogger(__name__)

#: Seconds between RQ maintenance runs (which include taking over a dead scheduler's lock).
MAINTENANCE_SECONDS = 60
#: Seconds the delivery worker gets to finish its job after the main worker stopped.
DELIVERIES_STOP_SECONDS = 30.0
#: prctl(2) option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1


class _Worker(Worker):
    """An RQ worker that passes the stop signals it gets on to its delivery worker.

    RQ ignores a second signal within a second of the first, so the delivery worker
    stops warm even when a Ctrl-C reaches it both from the terminal and from here."""

    companion: BaseProcess | None = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._forward(signum)
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        self._forward(signum)
        super().request_force_stop(signum, frame)

    def _forward(self, signum: int) -> None:
        if self.companion is not None and self.companion.pid and self.companion.is_alive():
            os.kill(self.companion.pid, signum)


def run(settings: Settings, burst: bool = False) -> None:
    context = _context(settings)
    # Aggregates an earlier release left in Redis (open, undelivered or retained studies)
    # are read in today's layout from now on; once per Redis.
    context.store.upgrade_all()
    ensure_sweep_scheduled(context)
    if settings.fhir_base_url is None:
        # Listed in order of preference: folding first.
        queues = [keys.FOLD_QUEUE, keys.EMIT_QUEUE, keys.DELIVER_QUEUE]
        _work(_rq_worker(context, queues), settings, burst)
        return
    worker = _rq_worker(context, [keys.FOLD_QUEUE, keys.EMIT_QUEUE])
    deliveries = multiprocessing.get_context("spawn").Process(
        target=_serve_deliveries, args=(settings, burst, os.getpid()), name="deliveries"
    )
    deliveries.start()
    worker.companion = deliveries
    stopping = threading.Event()
    if not burst:
        threading.Thread(
            target=_stop_when_gone, args=(deliveries, stopping), name="deliveries", daemon=True
        ).start()
    try:
        _work(worker, settings, burst)
    finally:
        stopping.set()
        if burst:
            deliveries.join()  # it ends when its queue is empty too
        _stop(deliveries)


def _context(settings: Settings) -> WorkerContext:
    clients = connect(settings.require_redis_url())
    ensure_group(clients.data)
    # No flush thread here: RQ forks a work horse per job, and a thread holding the
    # recorder's lock at fork time would deadlock the horse. Jobs flush when they end.
    metrics.install(metrics.Recorder(clients.data))
    context = WorkerContext.build(settings, clients)
    install(context)
    return context


def _rq_worker(context: WorkerContext, queues: list[str]) -> _Worker:
    # RQ retries the scheduler lock of a dead worker only at maintenance time (10 min by
    # default), and no quiet check runs until someone holds it: check every minute.
    worker = _Worker(
        queues, connection=context.clients.rq, maintenance_interval=MAINTENANCE_SECONDS
    )
    logger.info(
        "worker=%s queues=%s output=%s", worker.name, ",".join(queues), context.settings.output_dir
    )
    return worker


def _work(worker: Worker, settings: Settings, burst: bool) -> None:
    # When Redis goes away mid-job RQ logs the error and returns; the process then ends
    # and `scp2fhir up` (or the service manager) starts it again.
    worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)


def _serve_deliveries(settings: Settings, burst: bool, parent: int) -> None:
    """The delivery worker's process (started with ``spawn``: a fresh interpreter)."""
    if sys.platform == "linux":
        # Killed with its parent (kill -9 included): never an orphan serving on alone.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        return  # the parent died before the line above took effect
    logs.configure(settings.log_level, "worker", settings.log_format, settings.log_hash_uids)
    _work(_rq_worker(_context(settings), [keys.DELIVER_QUEUE]), settings, burst)


def _stop_when_gone(deliveries: BaseProcess, stopping: threading.Event) -> None:
    """Ends this worker (warm, by the signal RQ handles) if its delivery worker ends
    first, so the process supervisor restarts both."""
    deliveries.join()
    if stopping.is_set():
        return
    logger.error("delivery worker exited with %s; stopping this worker", deliveries.exitcode)
    os.kill(os.getpid(), signal.SIGTERM)


def _stop(deliveries: BaseProcess) -> None:
    if deliveries.is_alive():
        assert deliveries.pid is not None
        os.kill(deliveries.pid, signal.SIGTERM)
    deliveries.join(DELIVERIES_STOP_SECONDS)
    if deliveries.is_alive():
        logger.warning("delivery worker did not stop in time; killing it")
        deliveries.kill()
        deliveries.join()
