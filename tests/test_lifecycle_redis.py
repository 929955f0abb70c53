"""The Redis fold keeps the lifecycle rules of the pure fold: rejection notes (real KOS
documents written by highdicom), generations across an emission, revive, restarts."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pydicom
import pytest

from scp import keys, metrics
from scp.header import read_header
from scp.inbox import Inbox
from tests.lifecycle_support import rejection_note, worker_context
from tests.support import make_study
from workers.context import WorkerContext
from workers.fold import StudyAggregate, emitted, fold
from workers.jobs import drain_inbox, redis_now_ms
from workers.summary import summarize


@pytest.fixture
def context(redis_url: str, tmp_path: Path) -> WorkerContext:
    return worker_context(redis_url, tmp_path)


def headers(paths: list[Path]) -> list[dict[str, Any]]:
    return [read_header(path).json for path in paths]


def push_and_fold(ctx: WorkerContext, sent: list[dict[str, Any]]) -> None:
    inbox = Inbox(ctx.clients.data, ctx.clients.rq)
    for header in sent:
        inbox.push(summarize(header).study_uid, header)
    drain_inbox()


def close_now(ctx: WorkerContext, study_uid: str, consume_signals: bool = False) -> None:
    """What an emission does to the aggregate: close the study (next generation)."""
    data = ctx.clients.data
    seen = int(data.zscore(keys.OPEN_STUDIES, study_uid) or 0)
    aggregate = ctx.store.load(study_uid)
    assert ctx.store.close(
        aggregate, seen, "t", redis_now_ms(data), 3_600_000, consume_signals=consume_signals
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_rejection_notes_fold_in_redis_as_in_the_pure_fold(
    context: WorkerContext, tmp_path: Path, seed: int
) -> None:
    study = make_study(tmp_path / "s", [("CT", 4), ("MR", 3)])
    mr = study.files[4:]
    note = rejection_note(tmp_path / "n", mr, "113001")
    single = rejection_note(tmp_path / "n2", study.files[:1], "113038")
    # A third note naming an instance the first one names too: the smaller note's SOP
    # Instance UID (byte order) wins in Redis as in the pure fold.
    overlap = rejection_note(tmp_path / "n3", mr[:1], "113039")
    sent = headers([*study.files, note, single, overlap]) * 2
    random.Random(seed).shuffle(sent)
    push_and_fold(context, sent)

    loaded = context.store.load(study.study_uid)
    expected = fold(StudyAggregate(study.study_uid), [summarize(h) for h in sent])
    assert loaded == expected
    assert loaded.series_uids() == [next(iter(study.series))]
    assert len(loaded.instances) == 3
    assert set(loaded.notes) == {
        str(pydicom.dcmread(p).SOPInstanceUID) for p in (note, single, overlap)
    }
    assert context.clients.data.hget(keys.INFLIGHT, study.study_uid) is None
    # Every series its instances name is indexed to the study (for MPPS/IAN checks), with
    # the retention as expiry; a note's own series is not (the note is no instance).
    data = context.clients.data
    for series_uid in study.series:
        assert data.get(keys.series_study(series_uid)) == study.study_uid
        assert 0 < data.pttl(keys.series_study(series_uid)) <= 7 * 86400 * 1000
    note_series = str(pydicom.dcmread(note).SeriesInstanceUID)
    assert data.get(keys.series_study(note_series)) is None


def test_a_correction_after_emission_outranks_the_rest_in_redis(
    context: WorkerContext, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "s", [("CT", 5)], patient_id="WRONG-PID")
    first = headers(study.files)
    push_and_fold(context, first)
    close_now(context, study.study_uid)
    # The PACS reconciles the patient and re-sends two of the five instances.
    corrected = []
    for path in study.files[:2]:
        ds = pydicom.dcmread(path)
        ds.PatientID = "RIGHT-PID"
        ds.save_as(path, enforce_file_format=True)
        corrected.append(read_header(path).json)
    push_and_fold(context, corrected)
    close_now(context, study.study_uid)
    # Then an image the modality had failed to send (the old patient), and an unchanged
    # copy of an uncorrected one: neither is a correction.
    missed = make_study(tmp_path / "m", [("CT", 1)], study.study_uid, patient_id="WRONG-PID")
    late = [*headers(missed.files), first[4]]
    push_and_fold(context, late)

    loaded = context.store.load(study.study_uid)
    pure = StudyAggregate(study.study_uid)
    for batch in (first, corrected, late):
        pure = fold(pure, [summarize(h) for h in batch])
        if batch is not late:
            pure = emitted(pure)
    assert loaded == pure
    assert loaded.generation == 2
    assert loaded.study is not None and loaded.study.attrs["patient_id"] == "RIGHT-PID"
    assert [(d.keyword, d.counts) for d in loaded.disagreements] == [("PatientID", (4, 2))]


def test_revive_in_redis_as_in_the_pure_fold(redis_url: str, tmp_path: Path) -> None:
    ctx = worker_context(redis_url, tmp_path, SCP2FHIR_REJECTED_ON_RESEND="revive")
    study = make_study(tmp_path / "s", [("CT", 3)])
    note = headers([rejection_note(tmp_path / "n", study.files[:2])])
    batches = [headers(study.files), note, headers(study.files[:1])]
    pure = StudyAggregate(study.study_uid)
    for batch in batches:
        push_and_fold(ctx, batch)
        pure = fold(pure, [summarize(h) for h in batch], revive_rejected=True)
    loaded = ctx.store.load(study.study_uid)
    assert loaded == pure
    assert len(loaded.instances) == 2, "the re-sent one is back, the other stays rejected"


def test_a_signalled_emission_leaves_one_quiet_check_per_study(
    context: WorkerContext, tmp_path: Path
) -> None:
    """The study's quiet check stays scheduled past an emission its completion signal
    triggered; a late instance must not start a second chain of checks beside it."""
    from rq.job import Job
    from rq.registry import ScheduledJobRegistry

    from scp.signals import COMPLETED, Signal, SignalStore
    from workers.jobs import CHECK_JOB, check_signal

    study = make_study(tmp_path / "s", [("CT", 3)])
    sent = headers(study.files)
    push_and_fold(context, sent)
    data = context.clients.data
    ian = Signal("ian", COMPLETED, tuple(sorted(study.sop_uids)), (study.study_uid,))
    SignalStore(data, context.clients.rq, 3_600_000).create("ian:1.2.3.9", ian)
    assert check_signal(study.study_uid) == "emitted on completion signal"
    push_and_fold(context, sent[:1])  # a late copy re-opens the study

    registry = ScheduledJobRegistry(keys.EMIT_QUEUE, connection=context.clients.rq)  # type: ignore[no-untyped-call]
    checks = [
        job
        for job in Job.fetch_many(registry.get_job_ids(), connection=context.clients.rq)
        if job is not None and job.func_name == CHECK_JOB and job.args == (study.study_uid,)
    ]
    assert len(checks) == 1


def test_completion_readiness_rules(context: WorkerContext, tmp_path: Path) -> None:
    """workers.lifecycle.completion on a real Redis: every rule that may hold the
    shortcut back, one at a time."""
    from scp.signals import COMPLETED, IN_PROGRESS, Signal, SignalStore
    from workers.lifecycle.completion import readiness

    data = context.clients.data
    store = SignalStore(data, context.clients.rq, 3_600_000)
    study = make_study(tmp_path / "s", [("CT", 3)])
    other = make_study(tmp_path / "o", [("MR", 1)])
    sops = tuple(sorted(study.sop_uids))
    uid = study.study_uid
    assert readiness(data, uid).why == "no completion signal that lists instances"

    push_and_fold(context, headers(study.files[:2]))
    step = Signal("mpps", IN_PROGRESS, sops, (uid,))
    store.create("mpps:1.9.1", step)
    assert not readiness(data, uid).ready and "in progress" in readiness(data, uid).why
    store.update("mpps:1.9.1", Signal("mpps", COMPLETED, sops, (uid,)))
    assert readiness(data, uid).why == "1 of 3 listed instances not folded yet"
    # Pushed, not yet folded: still waits.
    Inbox(data, context.clients.rq).push(uid, read_header(study.files[2]).json)
    assert not readiness(data, uid).ready
    drain_inbox()
    assert readiness(data, uid).ready
    # Every listed one is folded, but the study has another instance waiting to be.
    extra = make_study(tmp_path / "x", [("CT", 1)], study_uid=uid)
    Inbox(data, context.clients.rq).push(uid, read_header(extra.files[0]).json)
    assert readiness(data, uid).why == "instances wait to be folded"
    drain_inbox()
    assert readiness(data, uid).ready
    # A step of two studies: its instances may be folded into either.
    both = (uid, other.study_uid)
    listed = tuple(sorted({*sops, *other.sop_uids}))
    store.create("mpps:1.9.2", Signal("mpps", COMPLETED, listed, both))
    assert not readiness(data, uid).ready
    push_and_fold(context, headers(other.files))
    assert readiness(data, uid).ready and readiness(data, other.study_uid).ready
    # The emission it allows uses the study's signals up.
    close_now(context, uid, consume_signals=True)
    assert data.exists(keys.study_signals(uid)) == 0
    assert not readiness(data, uid).ready


def test_disagreements_are_reported_by_keyword_and_counts_never_values(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13.2: in the log, in `status` and as a metric; tags and counts only."""
    import json
    import logging

    from scp.status import render_text, snapshot
    from workers.jobs import emit

    ctx = worker_context(redis_url, tmp_path)
    data = ctx.clients.data
    metrics.install(metrics.Recorder(data))
    study = make_study(tmp_path / "s", [("CT", 3)])
    ds = pydicom.dcmread(study.files[0])
    ds.InstitutionName = "MINORITY HOSPITAL"
    ds.save_as(study.files[0], enforce_file_format=True)
    try:
        push_and_fold(ctx, headers(study.files))
        with caplog.at_level(logging.WARNING, logger="workers.jobs"):
            seen = int(data.zscore(keys.OPEN_STUDIES, study.study_uid) or 0)
            assert emit(ctx, study.study_uid, seen, "t")
    finally:
        metrics.install(metrics.Recorder(None))
    (line,) = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
    assert "InstitutionName: 2 values among 3 instances (2/1)" in line
    stored = json.loads(data.hget(keys.DISAGREEMENTS, study.study_uid) or "[]")
    found = {"level": "study", "attribute": "institution", "keyword": "InstitutionName"}
    assert stored == [{**found, "counts": [2, 1]}]
    snap = snapshot(data, ctx.clients.rq, ctx.settings.quiet_seconds)
    (emitted,) = [e for e in snap.emitted if e.study_uid == study.study_uid]
    assert emitted.disagreements == stored
    assert "instances disagree on InstitutionName (study): 2/1" in render_text(snap)
    counters = data.hgetall(keys.METRICS_COUNTERS)
    field = metrics.encode_field("attribute_disagreements_total", {"keyword": "InstitutionName"})
    assert counters[field] == "1"
    everything = line + render_text(snap) + json.dumps(stored) + json.dumps(counters)
    assert "MINORITY" not in everything
