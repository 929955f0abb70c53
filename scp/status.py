"""What the system is doing right now, read from Redis: for ``scp2fhir status`` and the
status page. Identifiers only (UIDs, counts, times), never patient data.

* :func:`snapshot`: open studies, the last emitted ones with their destinations' outcome
  (the folder always; the FHIR server: delivered, pending or dead-lettered), queues, and
  the two kinds of dead letter, which are different failures:
  *inbox dead letters* are received instances no worker could fold (``scp2fhir:dead-letter``);
  *delivery dead letters* are studies whose FHIR delivery was given up
  (``scp2fhir:deliver-failed``; ``scp2fhir retry-failed`` re-queues them).
* :func:`history`: per minute over the last hour, what was received, emitted and
  delivered and how long it took, from the per-minute sums of :mod:`scp.metrics`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from rq import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from scp import keys, metrics, statuses

#: Delivery states of an emitted study (``EmittedStudy.delivery``).
DELIVERY_STATES = {
    "delivered": "the FHIR server has the newest output",
    "pending": "written to the folder; the FHIR delivery is queued or retrying",
    "dead-lettered": "the FHIR delivery was given up (`scp2fhir retry-failed`)",
    "folder": "written to the folder; no FHIR server is configured",
    "left out": "the destination's filter takes no instance of the study",
}


@dataclass(frozen=True)
class OpenStudy:
    study_uid: str
    series: int
    instances: int
    waiting_to_fold: int
    seconds_until_quiet: float


@dataclass(frozen=True)
class DestinationOutcome:
    """Where one delivery destination stands with one emitted study."""

    name: str
    #: one of :data:`DELIVERY_STATES`
    state: str
    version: str | None = None
    at_ms: int | None = None


@dataclass(frozen=True)
class DestinationState:
    """One delivery destination: studies waiting for it, and its dead letters."""

    name: str
    pending: int
    dead_lettered: int


@dataclass(frozen=True)
class EmittedStudy:
    study_uid: str
    emitted_at_ms: int
    series: int | None = None
    instances: int | None = None
    #: Last instance to ImagingStudy written, minus the quiet period.
    after_quiet_ms: int | None = None
    #: One of :data:`DELIVERY_STATES`.
    delivery: str = "folder"
    delivered_version: str | None = None
    delivered_at_ms: int | None = None
    #: attributes the study's instances disagreed on when it was last emitted: level,
    #: attribute, DICOM keyword and instances per distinct value (never the values)
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    #: each destination's state (``delivery`` is the worst of them)
    destinations: list[DestinationOutcome] = field(default_factory=list)


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
    #: Received instances no worker could fold.
    inbox_dead_letters: int = 0
    #: Studies a destination's delivery gave up, over every destination.
    delivery_dead_letters: int = 0
    #: Outcome of the last scheduled reconcile with the PACS (None: none has run).
    reconcile: dict[str, Any] | None = None
    destinations: list[DestinationState] = field(default_factory=list)

    @property
    def past_quiet(self) -> list[OpenStudy]:
        """Open studies whose quiet period is over: they should be emitted within seconds."""
        return [s for s in self.open_studies if s.seconds_until_quiet <= 0]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def redis_now_ms(data: redis.Redis) -> int:
    seconds, micros = data.time()
    return int(seconds) * 1000 + int(micros) // 1000


def snapshot(
    data: redis.Redis,
    rq: redis.Redis,
    quiet_seconds: float,
    last: int = 10,
    destinations: Sequence[str] = (),
) -> Snapshot:
    """``destinations``: the names of the configured delivery destinations."""
    now_ms = redis_now_ms(data)
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
    recent: list[tuple[str, float]] = (
        data.zrevrange(keys.EMITTED, 0, last - 1, withscores=True)  # type: ignore[assignment]
        if last > 0
        else []
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
    states = [
        DestinationState(
            name,
            int(str(data.zcard(keys.deliver_pending(name)))),
            int(str(data.hlen(keys.deliver_failed(name)))),
        )
        for name in destinations
    ]
    return Snapshot(
        now_ms=now_ms,
        inbox_backlog=int(str(data.xlen(keys.INBOX))),
        open_studies=open_studies,
        emitted=_emitted(data, recent, destinations),
        queues=queues,
        inbox_dead_letters=int(str(data.llen(keys.DEAD_LETTER))),
        delivery_dead_letters=sum(d.dead_lettered for d in states),
        reconcile=_last_reconcile(data),
        destinations=states,
    )


def _disagreements(text: str | None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(text) if text else []
    return found


def _emitted(
    data: redis.Redis, recent: list[tuple[str, float]], destinations: Sequence[str]
) -> list[EmittedStudy]:
    """The emitted studies with their emission record, each destination's delivery state
    and attribute disagreements (one round trip)."""
    pipe = data.pipeline(transaction=False)
    for uid, _ in recent:
        pipe.hgetall(keys.study_emission(uid))
        pipe.hget(keys.DISAGREEMENTS, uid)
        for name in destinations:
            pipe.hgetall(keys.study_delivery(uid, name))
            pipe.zscore(keys.deliver_pending(name), uid)
            pipe.hexists(keys.deliver_failed(name), uid)
    replies: list[Any] = pipe.execute() if recent else []
    width = 2 + 3 * len(destinations)
    result = []
    for n, (uid, emitted_ms) in enumerate(recent):
        emission, disagreements, *per_destination = replies[width * n : width * (n + 1)]
        outcomes = []
        for d, name in enumerate(destinations):
            delivered, pending, failed = per_destination[3 * d : 3 * d + 3]
            if failed:
                state = "dead-lettered"
            elif pending is not None:
                state = "pending"
            elif delivered.get("at"):
                state = "delivered"
            else:
                state = "left out"  # its filter takes no instance of the study
            outcomes.append(
                DestinationOutcome(
                    name, state, delivered.get("version") or None, _int(delivered.get("at"))
                )
            )
        # The study's state is its worst destination's (a single one's, as it is).
        worst = min(outcomes, key=lambda o: _SEVERITY.index(o.state), default=None)
        result.append(
            EmittedStudy(
                study_uid=uid,
                emitted_at_ms=int(emitted_ms),
                series=_int(emission.get("series")),
                instances=_int(emission.get("instances")),
                after_quiet_ms=_int(emission.get("after_quiet_ms")),
                delivery="folder" if worst is None else worst.state,
                delivered_version=None if worst is None else worst.version,
                delivered_at_ms=None if worst is None else worst.at_ms,
                disagreements=_disagreements(disagreements),
                destinations=outcomes,
            )
        )
    return result


#: Delivery states, worst first: a study shows the worst of its destinations'.
_SEVERITY = ("dead-lettered", "pending", "delivered", "left out")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


# --- the last hour -----------------------------------------------------------------------


@dataclass(frozen=True)
class Minute:
    """What happened in one minute (``minute`` = Unix time // 60), over all processes."""

    minute: int
    #: C-STORE requests answered, and of those refused (any status but Success/0xB006).
    received: int = 0
    refused: int = 0
    emitted: int = 0
    delivered: int = 0
    #: Means of the minute's observations, None without any.
    receive_to_redis_ms: float | None = None
    emitted_after_quiet_s: float | None = None
    emitted_to_delivered_s: float | None = None


_STORED = {f"0x{statuses.SUCCESS:04X}", f"0x{statuses.ELEMENTS_DISCARDED:04X}"}


def history(data: redis.Redis, minutes: int = 60, now: float | None = None) -> list[Minute]:
    """The last ``minutes`` minutes, oldest first, the current (partial) minute last."""
    current = metrics.minute_of(time.time() if now is None else now)
    span = range(current - minutes + 1, current + 1)
    pipe = data.pipeline(transaction=False)
    for minute in span:
        pipe.hgetall(keys.metrics_minute(minute))
        pipe.hgetall(keys.metrics_minute_hist(minute))
    replies: list[Any] = pipe.execute()
    result = []
    for n, minute in enumerate(span):
        counters, hists = replies[2 * n], replies[2 * n + 1]
        sums: Counter[tuple[str, str]] = Counter()
        for raw, value in counters.items():
            decoded = metrics.decode_field(raw)
            amount = _int(value)
            if decoded is None or amount is None:
                continue
            name, labels = decoded
            sums[name, labels.get("status") or labels.get("outcome") or ""] += amount
        received = sum(v for (name, _), v in sums.items() if name == "instances_received_total")
        stored = sum(sums["instances_received_total", status] for status in _STORED)
        result.append(
            Minute(
                minute=minute,
                received=received,
                refused=received - stored,
                emitted=sum(v for (name, _), v in sums.items() if name == "emissions_total"),
                delivered=sums["delivery_attempts_total", "delivered"],
                receive_to_redis_ms=_mean(hists, "receive_to_redis_seconds", 1000),
                emitted_after_quiet_s=_mean(hists, "emitted_after_quiet_seconds", 1),
                emitted_to_delivered_s=_mean(hists, "emitted_to_delivered_seconds", 1),
            )
        )
    return result


def _mean(hists: dict[str, str], name: str, scale: float) -> float | None:
    count, total = _int(hists.get(f"{name}:count")), _int(hists.get(f"{name}:sum_us"))
    if not count or total is None:
        return None
    return total / count / 1e6 * scale


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


# --- text --------------------------------------------------------------------------------


def render_text(snap: Snapshot) -> str:
    """The snapshot as the plain text ``scp2fhir status`` prints."""
    lines = [
        f"open studies: {len(snap.open_studies)}   inbox backlog: {snap.inbox_backlog}",
        f"dead letters: {snap.inbox_dead_letters} inbox (instances no worker could fold), "
        f"{snap.delivery_dead_letters} delivery (FHIR deliveries given up)",
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
    if snap.emitted:
        lines.append(
            f"  {'study instance uid':<64} {'series':>6} {'inst':>6} {'emitted':>9} "
            f"{'late by':>8}  delivery"
        )
    for item in snap.emitted:
        ago = (snap.now_ms - item.emitted_at_ms) / 1000
        late = "-" if item.after_quiet_ms is None else f"{item.after_quiet_ms / 1000:.1f}s"
        delivery = item.delivery
        if item.delivery == "delivered" and item.delivered_version:
            delivery += f" (version {item.delivered_version})"
        if len(item.destinations) > 1:
            delivery = ", ".join(
                f"{o.name}: {o.state}" + (f" v{o.version}" if o.version else "")
                for o in item.destinations
            )
        lines.append(
            f"  {item.study_uid:<64} {_text(item.series):>6} {_text(item.instances):>6} "
            f"{ago:>7.0f}s ago {late:>8}  {delivery}"
        )
        for found in item.disagreements:
            counts = "/".join(str(n) for n in found["counts"])
            lines.append(
                f"    instances disagree on {found['keyword']} ({found['level']}): {counts}"
            )
    if snap.destinations:
        lines.append("destinations (studies pending / dead-lettered):")
        for destination in snap.destinations:
            lines.append(
                f"  {destination.name:<20} {destination.pending:>6} {destination.dead_lettered:>6}"
            )
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


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)
