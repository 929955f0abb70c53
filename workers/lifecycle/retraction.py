"""Operator retraction and erasure: ``scp2fhir retract`` and ``scp2fhir forget``.

* :func:`retract` records the retraction in Redis (kept until ``forget``), rewrites the
  study's files as ``entered-in-error`` (from its aggregate, or from the file itself once
  the aggregate is past its retention) and, with a FHIR server, queues a delivery: the
  resource becomes ``entered-in-error`` through the usual If-Match path (only if scp2fhir
  wrote it: :mod:`workers.lifecycle.origin`). Running it again changes nothing.
* :func:`forget` removes everything scp2fhir holds in Redis for a retracted study
  (aggregate, signals, delivery state, index entries, dead-lettered headers), for
  erasure requests. Files in the output folder are listed, not deleted: like the
  server's resource they are output, marked entered-in-error.

Each writes one audit line (who, when, which study, why; never patient data).
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scp import keys
from scp.connections import RedisClients
from scp.settings import Settings
from workers.dicomjson import valid_uid
from workers.fold import ENTERED_IN_ERROR, StudyAggregate
from workers.lifecycle.origin import with_origin, written_by_us
from workers.mapping import Resource, fhir_id, imaging_study, study_bundle
from workers.output import resource_path, write_resource

if TYPE_CHECKING:  # workers.context imports the delivery code, which imports this module
    from workers.context import WorkerContext

logger = logging.getLogger(__name__)
audit = logging.getLogger("scp2fhir.audit")

#: A reason is operator text: kept short and on one line.
MAX_REASON = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class LifecycleError(ValueError):
    """The operation cannot be done as asked (one line for the operator)."""


@dataclass
class Outcome:
    study_uid: str
    #: what was done, one line each, for the operator
    done: list[str] = field(default_factory=list)


def operator() -> str:
    """Who runs the command: the login name and the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def clean_reason(reason: str | None) -> str:
    text = _CONTROL.sub(" ", reason or "").strip()
    return text[:MAX_REASON]


def entered_in_error(output: Resource) -> Resource:
    """``output`` (an ImagingStudy or a Bundle holding one) with the study marked
    entered-in-error."""
    if output.get("resourceType") == "ImagingStudy":
        return {**output, "status": ENTERED_IN_ERROR}
    entries = []
    for entry in output.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "ImagingStudy":
            entry = {**entry, "resource": {**resource, "status": ENTERED_IN_ERROR}}
        entries.append(entry)
    return {**output, "entry": entries}


def _check_uid(study_uid: str) -> None:
    if not valid_uid(study_uid):
        raise LifecycleError(f"{study_uid!r} is not a Study Instance UID")


def retract(ctx: WorkerContext, study_uid: str, reason: str | None) -> Outcome:
    """Mark ``study_uid`` entered-in-error everywhere scp2fhir wrote it (idempotent)."""
    from workers.delivery import enqueue_delivery
    from workers.delivery.output import admits

    _check_uid(study_uid)
    data = ctx.clients.data
    outcome = Outcome(study_uid)
    seconds, micros = data.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    why = clean_reason(reason)
    by = operator()
    fresh = data.hsetnx(keys.study_retraction(study_uid), "at", now_ms)
    if fresh:
        data.hset(keys.study_retraction(study_uid), mapping={"by": by, "reason": why})
        outcome.done.append("retraction recorded")
    else:
        outcome.done.append("already retracted: recorded retraction kept")
    aggregate = ctx.store.load(study_uid)
    written = _rewrite_files(ctx, aggregate)
    outcome.done += [f"wrote {path}" for path in written]
    # Every destination that has (or would take) the study gets the new version.
    targets = [
        d
        for d in ctx.delivery.destinations
        if admits(d, aggregate) or data.exists(keys.study_delivery(study_uid, d.name))
    ]
    if targets and (written or aggregate.emittable):
        # Listed as pending (its aggregate kept) until each has the new version.
        pipe = data.pipeline(transaction=True)
        for destination in targets:
            pipe.zadd(keys.deliver_pending(destination.name), {study_uid: now_ms})
        for key in keys.study_aggregate_keys(study_uid):
            pipe.persist(key)
        pipe.execute()
        for destination in targets:
            enqueue_delivery(ctx, destination, study_uid, force=True)
        names = ", ".join(d.name for d in targets)
        outcome.done.append(f"delivery to {names} queued (workers send it)")
    if not written and not aggregate.emittable:
        outcome.done.append("nothing of the study is held or was written here")
    audit.warning(
        "audit: retract study=%s by=%s at=%s reason=%s result=%s",
        study_uid,
        by,
        datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat(timespec="seconds"),
        json.dumps(why, ensure_ascii=True),
        "recorded" if fresh else "unchanged",
    )
    return outcome


def _rewrite_files(ctx: WorkerContext, aggregate: StudyAggregate) -> list[Path]:
    """The study's files, rewritten as entered-in-error: rebuilt from the aggregate when
    it is still held, else the files as they are with the status changed."""
    settings = ctx.settings
    outputs: list[Resource] = []
    if aggregate.received:
        outputs.append(imaging_study(aggregate, settings.fhir_version, options=ctx.options))
        if ctx.options.bundle:
            outputs.append(study_bundle(aggregate, settings.fhir_version, ctx.options))
    else:
        for kind in ("ImagingStudy", "Bundle"):
            path = resource_path(
                settings.output_dir, {"resourceType": kind, "id": fhir_id(aggregate.study_uid)}
            )
            if path.exists():
                found: Resource = json.loads(path.read_text(encoding="utf-8"))
                if written_by_us(found):
                    outputs.append(entered_in_error(found))
                else:
                    logger.warning("file=%s was not written by scp2fhir: left alone", path)
    return [write_resource(settings.output_dir, with_origin(o)) for o in outputs]


def forget(clients: RedisClients, settings: Settings, study_uid: str) -> Outcome:
    """Remove everything scp2fhir holds in Redis for a retracted study."""
    _check_uid(study_uid)
    data = clients.data
    if not data.exists(keys.study_retraction(study_uid)):
        raise LifecycleError(
            f"study {study_uid} is not retracted: `scp2fhir retract --study {study_uid}` first"
        )
    if data.hget(keys.INFLIGHT, study_uid) or data.zscore(keys.OPEN_STUDIES, study_uid):
        raise LifecycleError(
            f"study {study_uid} is receiving instances: try again once it has been emitted"
        )
    outcome = Outcome(study_uid)
    records: Any = data.hvals(keys.study_instances(study_uid))
    series = {json.loads(text).get("series_uid") for text in records}
    doomed = [keys.study(study_uid)]
    doomed += [str(k) for k in data.scan_iter(match=keys.study_pattern(study_uid), count=500)]
    for series_uid in sorted(s for s in series if isinstance(s, str)):
        if data.get(keys.series_study(series_uid)) == study_uid:
            doomed.append(keys.series_study(series_uid))
    deleted = int(data.delete(*doomed)) if doomed else 0
    # Every destination's pending and dead-letter index (``:D`` per destination).
    pending = [str(k) for k in data.scan_iter(match=f"{keys.DELIVER_PENDING}*", count=500)]
    failed = [str(k) for k in data.scan_iter(match=f"{keys.DELIVER_FAILED}*", count=500)]
    pipe = data.pipeline(transaction=True)
    for index in (keys.OPEN_STUDIES, keys.EMITTED, *pending):
        pipe.zrem(index, study_uid)
    for table in (keys.INFLIGHT, keys.DISAGREEMENTS, *failed):
        pipe.hdel(table, study_uid)
    pipe.execute()
    letters = 0
    held: Any = data.lrange(keys.DEAD_LETTER, 0, -1)
    for letter in held:  # dead-lettered headers hold patient data
        try:
            if json.loads(letter).get("study_uid") == study_uid:
                letters += int(data.lrem(keys.DEAD_LETTER, 0, str(letter)))
        except (ValueError, AttributeError):
            continue
    outcome.done.append(f"removed {deleted} keys and {letters} dead-lettered headers")
    for kind in ("ImagingStudy", "Bundle"):
        path = resource_path(settings.output_dir, {"resourceType": kind, "id": fhir_id(study_uid)})
        if path.exists():
            outcome.done.append(f"left {path} (entered-in-error output; delete it if required)")
    seconds, _ = data.time()
    audit.warning(
        "audit: forget study=%s by=%s at=%s keys=%d dead_letters=%d",
        study_uid,
        operator(),
        datetime.fromtimestamp(int(seconds), tz=UTC).isoformat(timespec="seconds"),
        deleted,
        letters,
    )
    return outcome
