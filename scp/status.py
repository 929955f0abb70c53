"""What the system is doing right now, read from Redis: for ``scp2fhir status`` and the
status page. Identifiers only (UIDs, counts, times), never patient data."""

from __future__ import annotations

import json
from collections.abc import Sequence
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
class DestinationState:
    """One delivery destination: studies waiting for it, and its dead letters."""

    name: str
    pending: int
    dead_lettered: int


@dataclass(frozen=True)
class Snapshot:
    now_ms: int
    inbox_backlog: int
    open_studies: list[OpenStudy] = field(default_factory=list)
    emitted: list[EmittedStudy] = field(default_factory=list)
    queues: list[QueueState] = field(default_factory=list)
    dead_letters: int = 0
    destinations: list[DestinationState] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def snapshot(
    data: redis.Redis,
    rq: redis.Redis,
    quiet_seconds: float,
    last: int = 10,
    destinations: Sequence[str] = (),
) -> Snapshot:
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
        destinations=[
            DestinationState(
                name,
                int(str(data.zcard(keys.deliver_pending(name)))),
                int(str(data.hlen(keys.deliver_failed(name)))),
            )
            for name in destinations
        ],
    )


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
    if snap.destinations:
        lines.append("destinations (studies pending / dead-lettered):")
        for destination in snap.destinations:
            lines.append(
                f"  {destination.name:<20} {destination.pending:>6} {destination.dead_lettered:>6}"
            )
    lines.append("queues (queued / started / scheduled / failed):")
    for queue in snap.queues:
        lines.append(
            f"  {queue.name:<20} {queue.queued:>6} {queue.started:>6} "
            f"{queue.scheduled:>6} {queue.failed:>6}"
        )
    return "\n".join(lines)
