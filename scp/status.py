"""What the system is doing right now, read from Redis: for ``scp2fhir status`` and the
status page. Identifiers only (UIDs, counts, times), never patient data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from rq import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from scp import keys


@dataclass(frozen=True)
class OpenStudy:
    study_uid: str
    series: int
    instances: int
    waiting_to_fold: int
    seconds_until_quiet: float


@dataclass(frozen=True)
class EmittedStudy:
    study_uid: str
    emitted_at_ms: int


@dataclass(frozen=True)
class QueueState:
    name: str
    queued: int
    started: int
    scheduled: int
    failed: int


@dataclass(frozen=True)
class Snapshot:
    now_ms: int
    inbox_backlog: int
    open_studies: list[OpenStudy] = field(default_factory=list)
    emitted: list[EmittedStudy] = field(default_factory=list)
    queues: list[QueueState] = field(default_factory=list)
    dead_letters: int = 0
    #: Outcome of the last scheduled reconcile with the PACS (None: none has run).
    reconcile: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def snapshot(data: redis.Redis, rq: redis.Redis, quiet_seconds: float, last: int = 10) -> Snapshot:
    seconds, micros = data.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    open_studies = []
    arrivals: list[tuple[str, float]] = data.zrange(  # type: ignore[assignment]
        keys.OPEN_STUDIES, 0, -1, withscores=True
    )
    for study_uid, last_ms in arrivals:
        records: list[str] = data.hvals(keys.study_instances(study_uid))  # type: ignore[assignment]
        series = {json.loads(r).get("series_uid") for r in records}
        inflight = data.hget(keys.INFLIGHT, study_uid)
        open_studies.append(
            OpenStudy(
                study_uid=study_uid,
                series=len(series),
                instances=len(records),
                waiting_to_fold=int(str(inflight)) if inflight else 0,
                seconds_until_quiet=max(0.0, (last_ms + quiet_seconds * 1000 - now_ms) / 1000),
            )
        )
    recent: list[tuple[str, float]] = data.zrevrange(  # type: ignore[assignment]
        keys.EMITTED, 0, last - 1, withscores=True
    )
    queues = []
    for queue in sorted(Queue.all(connection=rq), key=lambda q: q.name):
        if not queue.name.startswith("scp2fhir"):
            continue
        queues.append(
            QueueState(
                name=queue.name,
                queued=queue.count,
                started=StartedJobRegistry(queue=queue).count,
                scheduled=ScheduledJobRegistry(queue=queue).count,  # type: ignore[no-untyped-call]
                failed=FailedJobRegistry(queue=queue).count,
            )
        )
    return Snapshot(
        now_ms=now_ms,
        inbox_backlog=int(str(data.xlen(keys.INBOX))),
        open_studies=open_studies,
        emitted=[EmittedStudy(uid, int(ms)) for uid, ms in recent],
        queues=queues,
        dead_letters=int(str(data.llen(keys.DEAD_LETTER))),
        reconcile=_last_reconcile(data),
    )


def _last_reconcile(data: redis.Redis) -> dict[str, Any] | None:
    raw = data.get(keys.RECONCILE_LAST)
    try:
        outcome = json.loads(str(raw)) if raw else None
    except ValueError:
        return None
    return outcome if isinstance(outcome, dict) else None


def reconcile_line(snap: Snapshot) -> str | None:
    """The drift found by the last scheduled reconcile, as one line."""
    outcome = snap.reconcile
    if outcome is None:
        return None
    ago = (snap.now_ms - int(outcome.get("at_ms", snap.now_ms))) / 1000
    where = f"last reconcile with {outcome.get('pacs')} ({ago:.0f}s ago, {outcome.get('since')}.."
    where += f"{outcome.get('until')})"
    if outcome.get("error"):
        return f"{where}: failed: {outcome['error']}"
    counts = ", ".join(f"{n} {state}" for state, n in (outcome.get("counts") or {}).items())
    return f"{where}: {counts}; {outcome.get('missing_instances', 0)} instances missing"


def render_text(snap: Snapshot) -> str:
    """The snapshot as the plain text ``scp2fhir status`` prints."""
    lines = [
        f"open studies: {len(snap.open_studies)}   inbox backlog: {snap.inbox_backlog}"
        f"   dead letters: {snap.dead_letters}"
    ]
    if snap.open_studies:
        lines.append(
            f"  {'study instance uid':<64} {'series':>6} {'inst':>6} {'to fold':>7} {'quiet in':>9}"
        )
        for study in snap.open_studies:
            lines.append(
                f"  {study.study_uid:<64} {study.series:>6} {study.instances:>6} "
                f"{study.waiting_to_fold:>7} {study.seconds_until_quiet:>8.1f}s"
            )
    lines.append(f"last emitted: {len(snap.emitted)}")
    for item in snap.emitted:
        ago = (snap.now_ms - item.emitted_at_ms) / 1000
        lines.append(f"  {item.study_uid:<64} {ago:>8.0f}s ago")
    drift = reconcile_line(snap)
    if drift:
        lines.append(drift)
    lines.append("queues (queued / started / scheduled / failed):")
    for queue in snap.queues:
        lines.append(
            f"  {queue.name:<20} {queue.queued:>6} {queue.started:>6} "
            f"{queue.scheduled:>6} {queue.failed:>6}"
        )
    return "\n".join(lines)
