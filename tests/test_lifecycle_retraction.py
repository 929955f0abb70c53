"""`retract` and `forget` against a real Redis, real files and real RQ jobs: a retraction
never loses to an emission in progress, and `forget` leaves nothing of the study in
Redis, only once the FHIR server has (or never will have) the retraction."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rq import SimpleWorker
from rq.registry import FailedJobRegistry

from scp import keys
from scp.header import read_header
from scp.inbox import Inbox
from scp.signals import COMPLETED, Signal, SignalStore
from tests.lifecycle_support import worker_context
from tests.support import free_port, make_study, read_json
from workers.context import WorkerContext
from workers.jobs import drain_inbox, emit
from workers.lifecycle.retraction import LifecycleError, forget, retract


def receive(ctx: WorkerContext, files: list[Path], study_uid: str) -> None:
    inbox = Inbox(ctx.clients.data, ctx.clients.rq)
    for path in files:
        inbox.push(study_uid, read_header(path).json)
    drain_inbox()


def emit_now(ctx: WorkerContext, study_uid: str) -> None:
    seen = int(ctx.clients.data.zscore(keys.OPEN_STUDIES, study_uid) or 0)
    assert emit(ctx, study_uid, seen, "t")


def test_retract_waits_for_an_emission_in_progress(redis_url: str, tmp_path: Path) -> None:
    ctx = worker_context(redis_url, tmp_path)
    study = make_study(tmp_path / "s", [("CT", 2)])
    receive(ctx, study.files, study.study_uid)
    emit_now(ctx, study.study_uid)
    data = ctx.clients.data
    path = tmp_path / "out" / "ImagingStudy" / f"{study.study_uid}.json"
    # An emission holds the study's lease: it read the aggregate before the retraction
    # and is about to write the file as available.
    assert data.set(keys.study_lease(study.study_uid), "emitting", nx=True, px=60_000)
    done = threading.Event()

    def run_retract() -> None:
        retract(ctx, study.study_uid, "wrong patient")
        done.set()

    thread = threading.Thread(target=run_retract)
    thread.start()
    time.sleep(1.0)
    assert not done.is_set(), "retract must not rewrite while an emission holds the lease"
    assert data.hget(keys.study_retraction(study.study_uid), "reason") == "wrong patient"
    path.write_text(path.read_text())  # the emission writes its (available) file now ...
    data.delete(keys.study_lease(study.study_uid))  # ... and releases the lease
    thread.join(10)
    assert done.is_set()
    assert read_json(path)["status"] == "entered-in-error"
    assert data.get(keys.study_lease(study.study_uid)) is None, "retract released it"


def all_mentions(ctx: WorkerContext, *uids: str) -> list[str]:
    """Every key outside RQ's own whose name or content names one of ``uids``."""
    data = ctx.clients.data
    found = []
    for key in data.scan_iter(match="scp2fhir:*", count=1000):
        kind = data.type(key)
        content: Any
        if kind == "string":
            content = data.get(key)
        elif kind == "hash":
            content = data.hgetall(key)
        elif kind == "list":
            content = data.lrange(key, 0, -1)
        elif kind == "zset":
            content = data.zrange(key, 0, -1)
        elif kind == "stream":
            content = data.xrange(key)
        else:
            content = kind
        text = f"{key} {json.dumps(content, default=str)}"
        if any(uid in text for uid in uids):
            found.append(key)
    return sorted(found)


#: The deliver queue of the environment's one destination.
DEFAULT_QUEUE = keys.deliver_queue(keys.DEFAULT_DESTINATION)


def test_forget_leaves_nothing_of_the_study(redis_url: str, tmp_path: Path) -> None:
    # A FHIR server that never answers: the retraction's delivery is dead-lettered.
    ctx = worker_context(
        redis_url,
        tmp_path,
        SCP2FHIR_FHIR_BASE_URL=f"http://127.0.0.1:{free_port()}/fhir",
        SCP2FHIR_FHIR_MAX_ATTEMPTS="1",
        SCP2FHIR_FHIR_TIMEOUT_SECONDS="2",
    )
    study = make_study(tmp_path / "s", [("CT", 3), ("MR", 2)])
    other = make_study(tmp_path / "o", [("CT", 2)])
    data = ctx.clients.data
    # A header that cannot be folded into it (another study's, pushed under its UID).
    Inbox(data, ctx.clients.rq).push(study.study_uid, read_header(other.files[0]).json)
    receive(ctx, study.files, study.study_uid)
    receive(ctx, other.files, other.study_uid)
    assert data.llen(keys.DEAD_LETTER) == 1
    step = Signal("mpps", COMPLETED, tuple(sorted(study.sop_uids)), (study.study_uid,))
    SignalStore(data, ctx.clients.rq, 3_600_000).create("mpps:1.2.3.4.5", step)
    emit_now(ctx, study.study_uid)
    emit_now(ctx, other.study_uid)

    retract(ctx, study.study_uid, "erasure request")
    with pytest.raises(LifecycleError, match="does not have the retraction yet"):
        forget(ctx.clients, ctx.settings, study.study_uid)
    SimpleWorker([DEFAULT_QUEUE], connection=ctx.clients.rq).work(burst=True)
    assert data.hget(keys.DELIVER_FAILED, study.study_uid), "dead-lettered"
    assert len(FailedJobRegistry(DEFAULT_QUEUE, connection=ctx.clients.rq)) >= 1

    outcome = forget(ctx.clients, ctx.settings, study.study_uid)
    assert any("by hand" in line for line in outcome.done)
    uids = [study.study_uid, *study.series, *study.sop_uids]
    assert all_mentions(ctx, *uids) == []
    failed = FailedJobRegistry(DEFAULT_QUEUE, connection=ctx.clients.rq)
    assert study.study_uid not in json.dumps([failed.get_job_ids()])
    for job_id in failed.get_job_ids():
        assert study.study_uid not in str(ctx.clients.rq.hgetall(f"rq:job:{job_id}"))
    # The other study is untouched, and forgetting twice says why not.
    assert all_mentions(ctx, other.study_uid)
    with pytest.raises(LifecycleError, match="not retracted"):
        forget(ctx.clients, ctx.settings, study.study_uid)


@pytest.mark.parametrize("policy", ["stay", "revive"])
def test_a_store_after_retraction_follows_the_setting(
    redis_url: str, tmp_path: Path, policy: str
) -> None:
    ctx = worker_context(redis_url, tmp_path, SCP2FHIR_RETRACTED_ON_STORE=policy)
    study = make_study(tmp_path / "s", [("CT", 3)])
    receive(ctx, study.files[:2], study.study_uid)
    emit_now(ctx, study.study_uid)
    retract(ctx, study.study_uid, None)
    assert ctx.store.load(study.study_uid).status == "entered-in-error"
    receive(ctx, study.files[2:], study.study_uid)  # a C-STORE after the retraction
    aggregate = ctx.store.load(study.study_uid)
    assert len(aggregate.instances) == 3, "folded either way"
    if policy == "stay":
        assert aggregate.retraction is not None and aggregate.status == "entered-in-error"
    else:
        assert aggregate.retraction is None and aggregate.status == "available"
    emit_now(ctx, study.study_uid)
    written = read_json(tmp_path / "out" / "ImagingStudy" / f"{study.study_uid}.json")
    assert written["status"] == aggregate.status
