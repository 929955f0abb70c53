"""The workers' scheduled reconcile (off unless ``SCP2FHIR_RECONCILE_EVERY_HOURS`` is set):
every so many hours, one worker compares the last ``SCP2FHIR_RECONCILE_DAYS`` days with
``SCP2FHIR_PACS`` and records the outcome in Redis (:data:`scp.keys.RECONCILE_LAST`), where
``scp2fhir status``, the status page and ``/metrics`` show it as drift. It reports only:
fetching stays a decision for the operator (``scp2fhir reconcile --fetch``).

Like the sweep, the job is scheduled through RQ on the emit queue, guarded by a flag
(:data:`scp.keys.RECONCILE_SCHEDULED`) so that one is pending however many workers run;
the sweep re-schedules it if a crash lost it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from datetime import timedelta
from typing import Any

from scp import keys
from scp.pacs import PacsError, PacsSettings, Session
from workers.context import WorkerContext, current
from workers.reconcile.survey import survey
from workers.reconcile.verdict import State

logger = logging.getLogger(__name__)

JOB = "workers.reconcile.schedule.scheduled_reconcile"
#: Delay of the first reconcile after a worker starts.
FIRST_DELAY_SECONDS = 60.0

_settings: PacsSettings | None = None


def install(settings: PacsSettings) -> None:
    """Called in the worker's ``main()``; the work horses RQ forks inherit it."""
    global _settings
    _settings = settings


def ensure_scheduled(ctx: WorkerContext, delay_seconds: float | None = None) -> bool:
    """Schedule the next reconcile unless one is pending (or none is configured)."""
    settings = _settings
    if settings is None or not settings.reconcile_every_hours or settings.pacs is None:
        return False
    every = settings.reconcile_every_hours * 3600
    delay = every if delay_seconds is None else delay_seconds
    # The flag outlives the job's due time by a margin; if the job is lost it expires
    # and the sweep schedules a new one.
    flag_ms = int((delay + 3600) * 1000)
    if not ctx.clients.data.set(keys.RECONCILE_SCHEDULED, "1", nx=True, px=flag_ms):
        return False
    ctx.emit_queue.enqueue_in(
        timedelta(seconds=delay),
        JOB,
        description=f"reconcile last {settings.reconcile_days} days with {settings.pacs}",
        result_ttl=86400,
        job_timeout=int(max(3600, every)),
    )
    return True


def scheduled_reconcile() -> dict[str, Any]:
    """Reconcile the last N days; record and return the outcome."""
    ctx = current()
    settings = _settings
    assert settings is not None and settings.pacs is not None
    data = ctx.clients.data
    until = dt.date.today()
    since = until - dt.timedelta(days=settings.reconcile_days - 1)
    outcome: dict[str, Any] = {
        "at_ms": int(time.time() * 1000),
        "pacs": str(settings.pacs),
        "since": since.isoformat(),
        "until": until.isoformat(),
    }
    try:
        with Session(settings.pacs, settings) as session:
            verdicts = survey(session, data, since, until)
        outcome["counts"] = {s.value: sum(v.state is s for v in verdicts) for s in State}
        outcome["missing_instances"] = sum(
            max((v.pacs or 0) - v.held, 0) for v in verdicts if v.needs_fetch
        )
        outcome["error"] = ""
        logger.info(
            "reconcile pacs=%s %s..%s: %s; %d instances missing",
            settings.pacs,
            since,
            until,
            ", ".join(f"{n} {state}" for state, n in outcome["counts"].items()),
            outcome["missing_instances"],
        )
    except PacsError as exc:
        outcome["error"] = str(exc)
        logger.error("reconcile pacs=%s failed: %s", settings.pacs, exc)
    finally:
        data.set(keys.RECONCILE_LAST, json.dumps(outcome))
        data.delete(keys.RECONCILE_SCHEDULED)
        ensure_scheduled(ctx)
    return outcome
