"""``scp2fhir backfill``: fetch a whole period of an archive, day by day.

For each day not yet finished by this run (:mod:`workers.reconcile.runs`): one C-FIND
(split by time where the PACS caps it), the verdict of every study against what scp2fhir
holds, and a C-MOVE of what is missing or incomplete, up to ``SCP2FHIR_PACS_MOVES`` at
once. A study is recorded as done once it is complete or moved in full, a day once all
its studies are. A study whose move fails is named on the output and left for the next
run; a connection fault stops the run (raised). Either way the same command resumes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TextIO

import redis

from scp.pacs import PacsAddress, PacsSettings, Session
from workers.reconcile.fetcher import Fetched, Fetcher
from workers.reconcile.progress import Progress
from workers.reconcile.runs import LOCK_MS, BackfillRun, day_key
from workers.reconcile.survey import days, survey_day


class RunLocked(Exception):
    """Another process runs the same backfill."""


@dataclass
class Outcome:
    resumed: bool
    days: int = 0
    studies: int = 0
    moved: int = 0
    instances: int = 0
    failed: list[Fetched] = field(default_factory=list)


def backfill(
    connection: redis.Redis,
    address: PacsAddress,
    settings: PacsSettings,
    since: dt.date,
    until: dt.date,
    out: TextIO,
    restart: bool = False,
) -> Outcome:
    """Run (or resume) the backfill of ``since``..``until``; progress and failed studies go
    to ``out``. Raises a fatal :class:`~scp.pacs.errors.PacsError`, :class:`RunLocked`, or
    KeyboardInterrupt; the run's state then says where to resume."""
    run = BackfillRun(connection, address, since, until)
    if restart:
        run.reset()
    if not run.acquire(wait_seconds=LOCK_MS / 1000 + 5):
        raise RunLocked(
            f"another backfill of {address} {since}..{until} is running "
            f"(its lock expires in {run.lock_ttl_seconds():.0f} s unless renewed)"
        )
    try:
        outcome = Outcome(resumed=run.begin())
        finished = run.days_done()
        todo = [day for day in days(since, until) if day_key(day) not in finished]
        if outcome.resumed:
            out.write(
                f"resuming backfill {address} {since}..{until}: {len(finished)} days done, "
                f"{len(todo)} to go\n"
            )
        progress = Progress(len(todo), out)
        try:
            with Session(address, settings) as query, Fetcher(address, settings) as fetcher:
                for index, day in enumerate(todo, start=1):
                    _one_day(connection, run, query, fetcher, progress, outcome, index, day, out)
        finally:
            progress.close()
        run.end("finished" if not outcome.failed else "failed studies")
        return outcome
    except BaseException as exc:
        run.end("stopped", f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        run.release()


def _one_day(
    connection: redis.Redis,
    run: BackfillRun,
    query: Session,
    fetcher: Fetcher,
    progress: Progress,
    outcome: Outcome,
    index: int,
    day: dt.date,
    out: TextIO,
) -> None:
    verdicts = survey_day(query, connection, day, skip=run.studies_done(day))
    # Released while the moves run: an idle pynetdicom association still polls (about 4%
    # of a core), and the next day's query opens a new one in milliseconds.
    query.close()
    progress.start_day(index, day, len(verdicts))
    for item in verdicts:
        if not item.needs_fetch:
            run.study_done(day, item.study_uid, 0)
            outcome.studies += 1
            progress.study()
    failures: list[Fetched] = []

    def on_result(fetched: Fetched) -> None:
        outcome.studies += 1
        if fetched.error is not None:
            failures.append(fetched)
            out.write(f"study {fetched.verdict.study_uid} ({day}): {fetched.error}\n")
            progress.study(failed=True)
            return
        moved = fetched.result.completed + fetched.result.warning if fetched.result else 0
        run.study_done(day, fetched.verdict.study_uid, moved)
        outcome.moved += 1
        outcome.instances += moved
        progress.study(moved_instances=moved)

    fetcher.fetch([v for v in verdicts if v.needs_fetch], on_result)
    outcome.failed += failures
    if not failures:
        run.day_done(day)
    outcome.days += 1
    progress.end_day()
