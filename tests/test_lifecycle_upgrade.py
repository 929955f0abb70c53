"""Aggregates written by the release before the study lifecycle load with their
attributes: Redis is left exactly as that release left it (its fold and close scripts,
kept in tests/legacy_aggregates.py), then today's code reads, emits and folds on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest

from scp import keys
from scp.header import read_header
from scp.inbox import Inbox
from tests.conftest import pipeline_env, start_worker, stop_process
from tests.legacy_aggregates import legacy_close, legacy_fold
from tests.lifecycle_support import worker_context
from tests.support import GeneratedStudy, free_port, make_study, read_json, wait_for
from workers.context import WorkerContext
from workers.jobs import CHECK_JOB, drain_inbox, redis_now_ms
from workers.summary import InstanceSummary, summarize

RETENTION_MS = 3_600_000


@pytest.fixture
def context(redis_url: str, tmp_path: Path) -> WorkerContext:
    return worker_context(redis_url, tmp_path)


def legacy_receive(ctx: WorkerContext, files: list[Path]) -> list[InstanceSummary]:
    """The SCP pushes (its inbox is unchanged), and the earlier release's drain folds."""
    data = ctx.clients.data
    inbox = Inbox(data, ctx.clients.rq)
    summaries = []
    for path in files:
        header = read_header(path).json
        summaries.append(summarize(header))
        inbox.push(summaries[-1].study_uid, header)
    reply: Any = data.xreadgroup(keys.INBOX_GROUP, "legacy", {keys.INBOX: ">"}, count=10_000)
    entries = [entry_id for entry_id, _ in reply[0][1]]
    assert legacy_fold(data, list(zip(entries, summaries, strict=True))) == len(files)
    data.delete(keys.DRAIN_REQUESTED)
    ctx.clients.rq.delete(*ctx.clients.rq.keys("rq:*"))  # the drain job the push queued
    return summaries


def legacy_emitted(ctx: WorkerContext, study: GeneratedStudy, **kwargs: Any) -> None:
    data = ctx.clients.data
    seen = int(data.zscore(keys.OPEN_STUDIES, study.study_uid) or 0)
    assert legacy_close(
        data, study.study_uid, list(study.series), seen, redis_now_ms(data), RETENTION_MS, **kwargs
    )


def smallest(summaries: list[InstanceSummary], series_uid: str | None = None) -> InstanceSummary:
    """Whose attributes the earlier release kept: the smallest SOP Instance UID's."""
    return min(
        (s for s in summaries if series_uid is None or s.series_uid == series_uid),
        key=lambda s: s.sop_uid,
    )


def test_an_open_study_of_the_earlier_release_loads_with_its_attributes(
    context: WorkerContext, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "s", [("CT", 3), ("MR", 2)], patient_id="PID-BEFORE")
    summaries = legacy_receive(context, study.files)
    data = context.clients.data
    assert data.exists(*(keys.legacy_series(study.study_uid, uid) for uid in study.series)) == 2

    aggregate = context.store.load(study.study_uid)
    assert aggregate.study is not None
    assert aggregate.study.attrs == smallest(summaries).study
    assert aggregate.study.attrs["patient_id"] == "PID-BEFORE"
    for series_uid in study.series:
        assert aggregate.series[series_uid].attrs == smallest(summaries, series_uid).series
    assert len(aggregate.instances) == 5 and aggregate.generation == 0
    # Upgraded in place: no key of the earlier layout is left, none grows.
    assert data.exists(*(keys.legacy_series(study.study_uid, uid) for uid in study.series)) == 0
    assert data.hkeys(keys.study(study.study_uid)) == [], "its source and attrs are gone"
    records = data.hvals(keys.study_instances(study.study_uid))
    assert all({"g", "sv", "ev"} <= set(json.loads(r)) for r in records)
    assert data.ttl(keys.study_variants(study.study_uid)) == -1, "open: kept, like the rest"
    assert context.store.load(study.study_uid) == aggregate, "idempotent"


def test_a_retained_study_upgrades_at_worker_start_keeps_its_expiry_and_takes_corrections(
    context: WorkerContext, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "s", [("CT", 4)], patient_id="WRONG-PID")
    legacy_receive(context, study.files)
    legacy_emitted(context, study)
    data = context.clients.data

    assert context.store.upgrade_all() == 1
    assert data.get(keys.AGGREGATE_LAYOUT) == "2"
    assert context.store.upgrade_all() == 0, "once per Redis"
    for key in (keys.study_instances(study.study_uid), keys.study_variants(study.study_uid)):
        assert 0 < data.pttl(key) <= RETENTION_MS, key
    # A correction re-sent after the upgrade outranks the earlier records, even when the
    # PACS re-sends only part of the study.
    path = study.files[0]
    ds = pydicom.dcmread(path)
    ds.PatientID = "RIGHT-PID"
    ds.save_as(path, enforce_file_format=True)
    Inbox(data, context.clients.rq).push(study.study_uid, read_header(path).json)
    drain_inbox()
    aggregate = context.store.load(study.study_uid)
    assert aggregate.study is not None and aggregate.study.attrs["patient_id"] == "RIGHT-PID"
    assert [(d.keyword, d.counts) for d in aggregate.disagreements] == [("PatientID", (3, 1))]


def test_a_study_waiting_for_delivery_stays_kept(context: WorkerContext, tmp_path: Path) -> None:
    study = make_study(tmp_path / "s", [("MR", 2)], patient_id="PID-PENDING")
    legacy_receive(context, study.files)
    legacy_emitted(context, study, until_delivered=True)
    aggregate = context.store.load(study.study_uid)
    assert aggregate.study is not None and aggregate.study.attrs["patient_id"] == "PID-PENDING"
    data = context.clients.data
    assert data.ttl(keys.study_variants(study.study_uid)) == -1
    assert data.ttl(keys.study_instances(study.study_uid)) == -1


def test_a_worker_process_emits_a_study_the_earlier_release_received(
    redis_url: str, context: WorkerContext, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "s", [("CT", 3), ("MR", 2)], patient_id="PID-ACROSS")
    legacy_receive(context, study.files)
    # The quiet check that release's drain scheduled, still waiting in RQ.
    context.emit_queue.enqueue(CHECK_JOB, study.study_uid)
    out = tmp_path / "out"
    env = pipeline_env(redis_url, out, free_port(), SCP2FHIR_QUIET_SECONDS="0.5")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        path = out / "ImagingStudy" / f"{study.study_uid}.json"
        wait_for(path.exists, 60, "the emission")
    finally:
        stop_process(worker)
    resource = read_json(path)
    assert resource["numberOfInstances"] == 5 and resource["numberOfSeries"] == 2
    assert resource["subject"]["identifier"]["value"] == "PID-ACROSS"
    assert {s["modality"]["code"] for s in resource["series"]} == {"CT", "MR"}
