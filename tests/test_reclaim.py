"""The sweep folds at once what a work horse of this host read and never acknowledged
because it died, with the production idle time (RECLAIM_IDLE_MS, 60 s) untouched; a
consumer that may still run (this host, alive; another host) waits that idle time."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from scp import keys
from scp.header import read_header
from scp.inbox import Inbox
from tests.faults import generate_study
from tests.support import build_context
from workers import jobs
from workers.context import install


def gone_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_sweep_reclaims_entries_of_a_dead_local_work_horse_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    ctx = build_context(
        {"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_OUTPUT_DIR": str(tmp_path / "out")}
    )
    install(ctx)
    jobs.ensure_group(ctx.clients.data)
    data = ctx.clients.data
    study = generate_study(tmp_path / "study", [("CT", 12)])
    inbox = Inbox(data, ctx.clients.rq)
    for path in study.files:
        inbox.push(study.study_uid, read_header(path).json)
    host = socket.gethostname()
    dead = f"{host}-{gone_pid()}"
    alive = f"{host}-{os.getpid()}"  # this test process: it runs
    elsewhere = f"other-host-{gone_pid()}"  # only its own host can tell
    for consumer in (dead, alive, elsewhere):
        data.xreadgroup(keys.INBOX_GROUP, consumer, {keys.INBOX: ">"}, count=4)
    assert jobs.RECLAIM_IDLE_MS == 60_000
    result: dict[str, Any] = jobs.sweep()
    assert result["reclaimed"] == 4, "the dead horse's entries, folded now"
    pending = {c["name"]: c["pending"] for c in data.xinfo_consumers(keys.INBOX, keys.INBOX_GROUP)}
    assert pending.get(dead, 0) == 0
    assert pending[alive] == 4 and pending[elsewhere] == 4, "left to the idle time"
    folded = ctx.store.load(study.study_uid).instances
    assert len(folded) == 4
    ctx.clients.close()
