"""The Redis fold agrees with the pure fold, whatever the order, duplicates and workers.

Headers are pushed through the SCP's Inbox and folded by RQ drain jobs run inline
(rq's SimpleWorker in burst mode), against a real Redis.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from pydicom.uid import generate_uid
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.registry import FinishedJobRegistry

from scp import keys
from scp.connections import connect
from scp.inbox import Inbox, request_drain_job
from tests.conftest import pipeline_env, start_worker, stop_process
from tests.support import build_context, free_port, make_study, read_json, wait_for
from workers.context import WorkerContext, install
from workers.fold import StudyAggregate, fold
from workers.fold import emitted as after_emission
from workers.jobs import drain_inbox, ensure_group, sweep
from workers.summary import summarize


@pytest.fixture
def context(redis_url: str, tmp_path: Path) -> WorkerContext:
    ctx = build_context(
        {"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_OUTPUT_DIR": str(tmp_path / "out")}
    )
    ensure_group(ctx.clients.data)
    install(ctx)
    return ctx


def headers_of(tmp_path: Path) -> list[dict[str, object]]:
    from scp.header import extract_header, read_dataset

    study = make_study(tmp_path / "study", [("CT", 6), ("MR", 4)])
    return [extract_header(read_dataset(path)).json for path in study.files]


def run_queued_jobs(ctx: WorkerContext) -> None:
    # The SCP side enqueues its drain request in the background, just after the push.
    queued = f"rq:queue:{keys.FOLD_QUEUE}"
    wait_for(lambda: ctx.clients.rq.llen(queued) >= 1, 5, "the drain job")
    SimpleWorker([keys.FOLD_QUEUE], connection=ctx.clients.rq).work(burst=True)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_redis_fold_equals_pure_fold(context: WorkerContext, tmp_path: Path, seed: int) -> None:
    headers = headers_of(tmp_path)
    sends = headers * 2  # each instance twice
    random.Random(seed).shuffle(sends)
    inbox = Inbox(context.clients.data, context.clients.rq)
    for header in sends:
        inbox.push(summarize(header).study_uid, header)
    run_queued_jobs(context)

    summaries = [summarize(h) for h in headers]
    expected = fold(StudyAggregate(summaries[0].study_uid), summaries)
    assert context.store.load(expected.study_uid) == expected
    data = context.clients.data
    assert data.xlen(keys.INBOX) == 0, "every entry was acknowledged and deleted"
    assert data.hget(keys.INFLIGHT, expected.study_uid) is None
    assert data.zscore(keys.OPEN_STUDIES, expected.study_uid) is not None
    assert data.exists(keys.study_check(expected.study_uid)), "a quiet check is scheduled"


def test_a_second_fold_of_the_same_entry_is_a_no_op(context: WorkerContext, tmp_path: Path) -> None:
    headers = headers_of(tmp_path)
    inbox = Inbox(context.clients.data, context.clients.rq)
    for header in headers:
        inbox.push(summarize(header).study_uid, header)
    data = context.clients.data
    reply: Any = data.xreadgroup(keys.INBOX_GROUP, "a", {keys.INBOX: ">"}, count=100)
    entries = [(entry_id, summarize(json.loads(fields["h"]))) for entry_id, fields in reply[0][1]]
    assert context.store.fold(entries) == len(headers)
    # A worker that had claimed the same entries (e.g. reclaimed after a stall) folds them again.
    assert context.store.fold(entries) == 0
    uid = entries[0][1].study_uid
    assert len(context.store.load(uid).instances) == len(headers)
    assert data.hget(keys.INFLIGHT, uid) is None, "in-flight count not decremented twice"


def test_sweep_reclaims_entries_of_a_dead_worker(
    context: WorkerContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = headers_of(tmp_path)
    inbox = Inbox(context.clients.data, context.clients.rq)
    for header in headers:
        inbox.push(summarize(header).study_uid, header)
    data = context.clients.data
    # A worker reads the entries, then dies before folding them.
    data.xreadgroup(keys.INBOX_GROUP, "dead-worker", {keys.INBOX: ">"}, count=100)
    monkeypatch.setattr("workers.jobs.RECLAIM_IDLE_MS", 0)
    result = sweep()
    assert result["reclaimed"] == len(headers)
    uid = summarize(headers[0]).study_uid
    assert len(context.store.load(uid).instances) == len(headers)
    assert data.xlen(keys.INBOX) == 0


def test_unfoldable_entry_goes_to_dead_letter(context: WorkerContext) -> None:
    data = context.clients.data
    inbox = Inbox(data, context.clients.rq)
    inbox.push("1.2.3", {"00100010": {"vr": "PN"}})  # no UIDs at all
    drain_inbox()
    letters = [json.loads(x) for x in data.lrange(keys.DEAD_LETTER, 0, -1)]
    assert [(letter["study_uid"], letter["reason"]) for letter in letters] == [
        ("1.2.3", "NotAnInstance")
    ]
    assert data.xlen(keys.INBOX) == 0
    assert data.hget(keys.INFLIGHT, "1.2.3") is None


def test_push_is_one_atomic_step(redis_url: str) -> None:
    clients = connect(redis_url)
    inbox = Inbox(clients.data, clients.rq)
    receipt = inbox.push("1.2.3", {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}})
    data: redis.Redis = clients.data
    arrival_ms = int(receipt.entry_id.split("-")[0])
    assert data.zscore(keys.OPEN_STUDIES, "1.2.3") == arrival_ms
    assert data.hget(keys.INFLIGHT, "1.2.3") == "1"
    assert data.exists(keys.DRAIN_REQUESTED)
    queued = f"rq:queue:{keys.FOLD_QUEUE}"
    # The drain job is enqueued in the background, right after the push.
    wait_for(lambda: clients.rq.llen(queued) == 1, 5, "the drain job")
    inbox.push("1.2.3", {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}})
    time.sleep(0.3)
    assert clients.rq.llen(queued) == 1, "one drain request is enough"


def _with(header: dict[str, Any], tag: str, vr: str, value: object) -> dict[str, Any]:
    changed: dict[str, Any] = json.loads(json.dumps(header))
    changed[tag] = {"vr": vr, "Value": [value]}
    return changed


def test_redis_fold_of_a_changed_resend_and_a_moved_instance(
    context: WorkerContext, tmp_path: Path
) -> None:
    """What the pure fold promises (a changed resend replaces, an instance resent into
    another series moves there), the Redis fold does too: the same aggregate."""
    headers = headers_of(tmp_path)
    inbox = Inbox(context.clients.data, context.clients.rq)
    for header in headers:
        inbox.push(summarize(header).study_uid, header)
    run_queued_jobs(context)

    ct, mr = headers[0], headers[-1]  # make_study writes the CT series first, then MR
    changed = _with(ct, "00200013", "IS", 99)  # Instance Number corrected at the modality
    other_series = summarize(mr).series_uid
    moved = _with(headers[1], "0020000E", "UI", other_series)  # re-filed into the MR series
    for header in (changed, moved):
        inbox.push(summarize(header).study_uid, header)
    run_queued_jobs(context)

    summaries = [summarize(h) for h in headers]
    first = fold(StudyAggregate(summaries[0].study_uid), summaries)
    expected = fold(first, [summarize(changed), summarize(moved)])
    stored = context.store.load(expected.study_uid)
    assert stored == expected
    # And concretely, so the two folds cannot agree on something wrong:
    assert stored.instances[summarize(changed).sop_uid]["instance_number"] == 99
    assert stored.instances[summarize(moved).sop_uid]["series_uid"] == other_series
    members = stored.members_by_series()
    assert len(members[summarize(ct).series_uid]) == 5 and len(members[other_series]) == 5
    assert len(stored.instances) == len(headers), "replaced and moved, never added"


def test_several_worker_processes_fold_one_study_at_once(redis_url: str, tmp_path: Path) -> None:
    """Three ``scp2fhir worker`` processes drain the inbox at the same time while one
    study's instances arrive (more drain jobs are queued as a drain hands over): each
    instance is folded once, the aggregate is the pure fold's, and more than one worker
    really folded part of it."""
    base = headers_of(tmp_path)
    headers = []
    for index in range(1500):
        header = json.loads(json.dumps(base[index % len(base)]))
        header["00080018"] = {"vr": "UI", "Value": [generate_uid()]}
        header["00200013"] = {"vr": "IS", "Value": [index + 1]}
        # Descriptions differ per instance, so which instance's study and series
        # attributes win (on a tie of counts, the smallest SOP Instance UID's) shows in
        # the aggregate.
        header["00081030"] = {"vr": "LO", "Value": [f"study description {index}"]}
        header["0008103E"] = {"vr": "LO", "Value": [f"series description {index}"]}
        headers.append(header)
    study_uid = summarize(headers[0]).study_uid
    env = pipeline_env(redis_url, tmp_path / "out", free_port(), SCP2FHIR_QUIET_SECONDS="1")
    clients = connect(redis_url)
    workers = [start_worker(env, tmp_path / f"worker-{n}.log") for n in range(3)]
    try:
        wait_for(lambda: len(Worker.all(connection=clients.rq)) == 3, 30, "three workers")
        inbox = Inbox(clients.data, clients.rq)
        fold_queue = Queue(keys.FOLD_QUEUE, connection=clients.rq)
        for index, header in enumerate(headers):
            inbox.push(study_uid, header)
            if index % 100 == 99:
                request_drain_job(fold_queue)  # as a drain handing over its turn does
        path = tmp_path / "out" / "ImagingStudy" / f"{study_uid}.json"
        emitted = wait_for(
            lambda: path.exists() and read_json(path)["numberOfInstances"] == len(headers),
            60,
            "the study emitted with every instance",
        )
        assert emitted
        registry = FinishedJobRegistry(keys.FOLD_QUEUE, connection=clients.rq)
        drains = [Job.fetch(job_id, connection=clients.rq) for job_id in registry.get_job_ids()]
        folding = {job.worker_name for job in drains if job.return_value()}
        assert sum(job.return_value() or 0 for job in drains) == len(headers), "each once"
        assert len(folding) >= 2, f"only {folding} folded: the workers did not overlap"
    finally:
        for worker in workers:
            stop_process(worker)
    summaries = [summarize(h) for h in headers]
    # The pushes come faster than the quiet period, so the study was emitted once, when
    # complete: the pure fold's aggregate after one emission.
    expected = after_emission(fold(StudyAggregate(study_uid), summaries))
    store = build_context(env, clients).store
    assert store.load(study_uid) == expected
    assert clients.data.hget(keys.INFLIGHT, study_uid) is None
    pending: Any = clients.data.xpending(keys.INBOX, keys.INBOX_GROUP)
    assert pending["pending"] == 0
