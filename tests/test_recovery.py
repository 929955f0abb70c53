"""Recovery after hard faults as shipped: `scp2fhir up` with its default timers.

Unlike ``tests/test_faults.py`` nothing here shortens a reclaim, sweep or lease timer,
deletes RQ's scheduler locks or restarts a worker: the supervisor restarts what dies, RQ
and ``workers.scheduling`` recover the scheduler, and the test only measures. Only the
quiet period is short (:data:`QUIET_SECONDS`). Redis is external (``SCP2FHIR_REDIS_URL``),
owned by the test, which kills it with SIGKILL and starts it again on its append-only file.

Each case: the study is emitted exactly once with every acknowledged instance, within
the quiet period plus the case's bound, and RQ's failed registry stays empty.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.worker import BaseWorker

from scp import keys
from tests.conftest import echo, pipeline_env
from tests.faults import children_of, emitted_lines, generate_study
from tests.support import GeneratedStudy, RedisProcess, free_port, read_json, storescu, wait_for

#: The one shortened timer: the quiet period (production: 60 s).
QUIET_SECONDS = 5.0
#: Seconds past the quiet period within which a study is emitted after Redis or the
#: scheduler's worker was killed (the scheduler is running again within ~5 s).
SCHEDULER_BOUND_SECONDS = 30.0
#: Seconds past the quiet period after a worker was killed mid-fold: its batch is
#: reclaimed once idle for RECLAIM_IDLE_MS (60 s) by the sweep (every 30 s).
RECLAIM_BOUND_SECONDS = 60 + 30 + 30.0
#: An abandoned job is found by RQ's maintenance (every minute) once its execution's
#: heartbeat (90 s) expired.
ABANDONED_SECONDS = 90 + 60 + 60.0
QUEUES = (keys.FOLD_QUEUE, keys.EMIT_QUEUE, keys.DELIVER_QUEUE)


@dataclass
class Site:
    """`scp2fhir up` on an external Redis; its log holds every child's output."""

    tmp: Path
    redis_server: RedisProcess
    port: int
    up: subprocess.Popen[bytes]
    log: Path

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def rq_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def kill_redis(self) -> None:
        assert self.redis_server.process is not None
        self.redis_server.process.kill()  # SIGKILL: no AOF flush, no goodbye
        self.redis_server.process.wait()

    def restart_redis(self) -> None:
        """A new redis-server on the same port and data folder (its append-only file)."""
        again = RedisProcess(*self.redis_server.extra)
        shutil.rmtree(again.dir)
        again.dir, again.port = self.redis_server.dir, self.redis_server.port
        self.redis_server = again.start()

    def workers(self) -> list[BaseWorker]:
        connection = self.rq_client()
        try:
            return [w for w in Worker.all(connection=connection) if w.pid]
        finally:
            connection.close()

    def scheduler_worker_pid(self) -> int:
        """The worker process whose RQ scheduler holds the emit queue's lock."""
        client = self.client()
        try:
            holder = client.get(RQScheduler.get_locking_key(keys.EMIT_QUEUE))
            assert holder, "no scheduler holds the emit queue's lock"
            pid = int(client.hget(SCHEDULER_KEY_TEMPLATE % holder, "pid") or 0)
        finally:
            client.close()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])  # the scheduler's parent

    def failed_jobs(self) -> dict[str, list[str]]:
        connection = self.rq_client()
        try:
            found = {q: FailedJobRegistry(q, connection=connection).get_job_ids() for q in QUEUES}
        finally:
            connection.close()
        return {q: ids for q, ids in found.items() if ids}

    def study(self, study_uid: str) -> dict[str, Any] | None:
        path = self.tmp / "out" / "ImagingStudy" / f"{study_uid}.json"
        return read_json(path) if path.exists() else None


def kill9_family(pid: int) -> None:
    """SIGKILL to a worker and what it forked (RQ's scheduler and work horse), as when
    its host loses it: a kill of the worker alone leaves its scheduler running."""
    family = children_of(pid)
    for target in [pid, *family]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    own = RedisProcess("--appendonly", "yes", "--appendfsync", "everysec").start()
    port = free_port()
    env = pipeline_env(
        own.url,
        tmp_path / "out",
        port,
        SCP2FHIR_QUIET_SECONDS=str(QUIET_SECONDS),
        SCP2FHIR_SCP_PROCESSES="1",
        SCP2FHIR_WORKERS="2",
        SCP2FHIR_WEB_PORT="0",
        SCP2FHIR_DASHBOARD_PORT="0",
        SCP2FHIR_DATA_DIR=str(tmp_path / "data"),
        SCP2FHIR_SPOOL_DIR=str(tmp_path / "spool"),
    )
    log = tmp_path / "up.log"
    with log.open("wb") as handle:
        up = subprocess.Popen(
            [sys.executable, "-m", "scp.cli", "up"],
            cwd=tmp_path,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    made = Site(tmp_path, own, port, up, log)
    try:
        wait_for(lambda: b"ready:" in log.read_bytes(), 60, "up to be ready")
        wait_for(lambda: echo(port), 30, "the SCP to answer C-ECHO", step=0.2)
        wait_for(lambda: len(made.workers()) == 2, 30, "two RQ workers", step=0.2)
        yield made
    finally:
        up.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            up.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)  # anything a killed worker left behind
        made.redis_server.stop()


def send(site: Site, study: GeneratedStudy) -> float:
    """Send the study (every file acknowledged, or storescu fails); returns when the last
    acknowledgement came (monotonic)."""
    storescu(site.port, study.files)
    return time.monotonic()


def wait_folded(site: Site, study: GeneratedStudy) -> None:
    """Every instance folded and the study's quiet check scheduled: the quiet period runs."""
    client = site.client()

    def folded() -> bool:
        pending: Any = client.xpending(keys.INBOX, keys.INBOX_GROUP)
        return (
            client.hlen(keys.study_instances(study.study_uid)) == len(study.sop_uids)
            and pending["pending"] == 0
            and bool(client.exists(keys.study_check(study.study_uid)))
        )

    try:
        wait_for(folded, 30, "the study folded", step=0.1)
    finally:
        client.close()


def wait_emitted(site: Site, study: GeneratedStudy, last_ack: float, bound: float) -> float:
    """Waits for the complete study to be emitted and closed; returns how long after its
    quiet period that was (seconds); fails past ``bound``."""

    def done() -> bool:
        resource = site.study(study.study_uid)
        if resource is None or resource["numberOfInstances"] != len(study.sop_uids):
            return False
        try:
            client = site.client()
            try:
                return client.zscore(keys.OPEN_STUDIES, study.study_uid) is None
            finally:
                client.close()
        except redis.ConnectionError:
            return False

    wait_for(done, QUIET_SECONDS + bound, f"study emitted within quiet + {bound:.0f}s", 0.2)
    return time.monotonic() - last_ack - QUIET_SECONDS


def assert_emitted_once(site: Site, study: GeneratedStudy) -> None:
    resource = site.study(study.study_uid)
    assert resource is not None
    uids = [i["uid"] for s in resource["series"] for i in s["instance"]]
    assert len(uids) == len(set(uids)), "an instance appears twice"
    assert set(uids) == study.sop_uids, "an acknowledged instance is missing"
    time.sleep(2 * QUIET_SECONDS)  # a second emission would come within this
    assert emitted_lines([site.output()], study.study_uid) == 1


def assert_no_failed_jobs(site: Site) -> None:
    assert site.failed_jobs() == {}, "a job landed in RQ's failed registry"


@pytest.mark.slow
def test_redis_killed_mid_quiet_period(site: Site) -> None:
    """kill -9 of Redis while the study's quiet period runs, restarted a second later on
    its append-only file: RQ's scheduler died with the connection and its lock came back
    from the file; the quiet check still fires within seconds of its time."""
    study = generate_study(site.tmp / "study", [("CT", 40), ("MR", 20)])
    last_ack = send(site, study)
    wait_folded(site, study)
    time.sleep(1.5)  # appendfsync everysec: the scheduled check is on disk
    site.kill_redis()
    time.sleep(1.0)
    site.restart_redis()
    late = wait_emitted(site, study, last_ack, SCHEDULER_BOUND_SECONDS)
    print(f"emitted {late:.1f}s after the quiet period")
    assert_emitted_once(site, study)
    assert_no_failed_jobs(site)


@pytest.mark.slow
def test_scheduler_worker_killed_mid_quiet_period(site: Site) -> None:
    """kill -9 of the worker whose scheduler holds RQ's lock (with its scheduler), in the
    quiet period: the other worker takes the lock of the dead scheduler within seconds
    (not when it expires 61 s later, nor at its next 405 s dequeue timeout)."""
    study = generate_study(site.tmp / "study", [("CT", 40), ("MR", 20)])
    last_ack = send(site, study)
    wait_folded(site, study)
    kill9_family(site.scheduler_worker_pid())
    late = wait_emitted(site, study, last_ack, SCHEDULER_BOUND_SECONDS)
    print(f"emitted {late:.1f}s after the quiet period")
    assert_emitted_once(site, study)
    assert_no_failed_jobs(site)


@pytest.mark.slow
def test_worker_killed_mid_drain(site: Site) -> None:
    """kill -9 of a worker while its work horse runs a real drain job (a batch read, not
    all folded): the supervisor starts a new worker, the sweep reclaims the batch, the
    study is emitted once; the abandoned drain job is retried by RQ, not filed as failed."""
    study = generate_study(site.tmp / "study", [("CT", 1500), ("MR", 500)])
    client = site.client()
    killed: dict[str, str] = {}

    def drain_running() -> bool:
        pending: Any = client.xpending(keys.INBOX, keys.INBOX_GROUP)
        if not pending["pending"]:
            return False
        for worker in site.workers():
            job_id = worker.get_current_job_id()
            if job_id is None:
                continue
            job = Job.fetch(job_id, connection=worker.connection)
            if job.func_name == "workers.jobs.drain_inbox":
                killed["job"], killed["worker"] = job_id, str(worker.pid)
                return True
        return False

    done = threading.Event()
    acked: list[float] = []

    def send_all() -> None:
        acked.append(send(site, study))
        done.set()

    thread = threading.Thread(target=send_all, daemon=True)
    thread.start()
    try:
        wait_for(drain_running, 120, "a drain job running with entries read", step=0.05)
        kill9_family(int(killed["worker"]))
        thread.join(300)
        assert done.is_set()
        late = wait_emitted(site, study, acked[0], RECLAIM_BOUND_SECONDS)
        print(f"emitted {late:.1f}s after the quiet period")
        assert_emitted_once(site, study)

        def handled() -> bool:
            connection = site.rq_client()
            try:
                job = Job.fetch(killed["job"], connection=connection)
            except NoSuchJobError:
                return True  # retried, done, and its result expired
            finally:
                connection.close()
            return job.get_status() != JobStatus.STARTED

        # RQ's maintenance finds the job abandoned; only then does the registry tell.
        wait_for(handled, ABANDONED_SECONDS, "the abandoned drain job handled", step=1.0)
        assert_no_failed_jobs(site)
        pending: Any = client.xpending(keys.INBOX, keys.INBOX_GROUP)
        assert pending["pending"] == 0
        assert client.llen(keys.DEAD_LETTER) == 0
    finally:
        client.close()
