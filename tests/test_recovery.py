"""Recovery after hard faults as shipped: `scp2fhir up` with its default timers.

Unlike ``tests/test_faults.py`` nothing here shortens a reclaim, sweep or lease timer,
deletes RQ's scheduler locks or restarts a worker: the supervisor restarts what dies, RQ
and ``workers.scheduling`` recover the scheduler, and the test only measures. Only the
quiet period is short (:data:`QUIET_SECONDS`). Redis is external (``SCP2FHIR_REDIS_URL``),
owned by the test, which kills it with SIGKILL and starts it again on its append-only file
(`up` restarting its own Redis is the supervisor's business); one case interrupts `up`
with its private Redis as a Ctrl-C does, and starts it again.

Each case: the study is emitted exactly once with every acknowledged instance, within
the quiet period plus the case's bound, and RQ's failed registry stays empty.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
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
from scp.inbox import DRAIN_JOB
from tests.conftest import echo, pipeline_env
from tests.faults import children_of, emitted_lines, generate_study
from tests.support import GeneratedStudy, RedisProcess, free_port, read_json, storescu, wait_for

#: The one shortened timer: the quiet period (production: 60 s).
QUIET_SECONDS = 5.0
#: Seconds past the quiet period within which a study is emitted after Redis or the
#: scheduler's worker was killed (the scheduler is running again within ~5 s).
SCHEDULER_BOUND_SECONDS = 30.0
#: Seconds past the quiet period after a worker was killed mid-drain: the next sweep
#: (every 30 s) folds what its dead work horse had read (workers/reclaim.py).
RECLAIM_BOUND_SECONDS = 45.0
#: An abandoned job is found by RQ's maintenance (every minute) once its execution's
#: heartbeat (90 s) expired.
ABANDONED_SECONDS = 90 + 60 + 60.0
QUEUES = (keys.FOLD_QUEUE, keys.EMIT_QUEUE, keys.DELIVER_QUEUE)


@dataclass
class Site:
    """`scp2fhir up` on an external Redis; its log holds every child's output."""

    tmp: Path
    url: str
    port: int
    up: subprocess.Popen[bytes]
    log: Path
    #: the external Redis, when the test owns one
    redis_server: RedisProcess | None = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def rq_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def kill_redis(self) -> None:
        assert self.redis_server is not None and self.redis_server.process is not None
        self.redis_server.process.kill()  # SIGKILL: no AOF flush, no goodbye
        self.redis_server.process.wait()

    def restart_redis(self) -> None:
        """A new redis-server on the same port and data folder (its append-only file)."""
        assert self.redis_server is not None
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


def up_env(tmp_path: Path, port: int, redis_url: str | None) -> dict[str, str]:
    """`scp2fhir up` with one SCP, two workers, no web or dashboard; its own Redis in
    ``tmp_path/data`` unless ``redis_url``."""
    env = pipeline_env(
        redis_url or "",
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
    if redis_url is None:
        del env["SCP2FHIR_REDIS_URL"]
    return env


def start_up(tmp_path: Path, env: dict[str, str], url: str | None = None) -> Site:
    """`scp2fhir up` in a session of its own (a Ctrl-C reaches all of it, as from a
    terminal); returns once its SCP answers and both workers are registered."""
    log = tmp_path / "up.log"
    before = log.read_bytes() if log.exists() else b""
    with log.open("ab") as handle:
        up = subprocess.Popen(
            [sys.executable, "-m", "scp.cli", "up"],
            cwd=tmp_path,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    port = int(env["SCP2FHIR_PORT"])

    def fresh() -> bytes:
        return log.read_bytes()[len(before) :]

    wait_for(lambda: b"ready:" in fresh(), 60, "up to be ready")
    if url is None:
        found = re.findall(rb"private redis on (redis://\S+)", fresh())
        url = found[-1].decode()
    made = Site(tmp_path, url, port, up, log)
    wait_for(lambda: echo(port), 30, "the SCP to answer C-ECHO", step=0.2)
    wait_for(lambda: len(made.workers()) >= 2, 30, "two RQ workers", step=0.2)
    return made


def stop_up(site: Site) -> None:
    site.up.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        site.up.wait(60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(site.up.pid, signal.SIGKILL)  # anything a killed worker left behind


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    # appendfsync always: what Redis answered is in its append-only file, so a kill -9
    # right after an acknowledgement loses nothing (everysec may postpone up to 2 s).
    own = RedisProcess("--appendonly", "yes", "--appendfsync", "always").start()
    made: Site | None = None
    try:
        made = start_up(tmp_path, up_env(tmp_path, free_port(), own.url), own.url)
        made.redis_server = own
        yield made
    finally:
        if made is not None:
            stop_up(made)
            own = made.redis_server or own  # the one the test restarted, if it did
        own.stop()


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
    quiet period (from ``last_ack``, monotonic) that was; fails past ``bound``."""

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

    timeout = max(0.0, last_ack + QUIET_SECONDS + bound - time.monotonic())
    wait_for(done, timeout, f"study emitted within quiet + {bound:.0f}s", 0.2)
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
    wait_folded(site, study)  # and with appendfsync always the scheduled check is on disk
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

    host = socket.gethostname()

    def drain_running() -> bool:
        """A worker whose work horse (consumer <host>-<pid>) holds entries read and not
        yet folded, running a drain job RQ has as started."""
        consumers: Any = client.xinfo_consumers(keys.INBOX, keys.INBOX_GROUP)
        holding = {str(c["name"]) for c in consumers if int(c["pending"])}
        for worker in site.workers():
            job_id = worker.get_current_job_id()
            horses = [p for p in children_of(worker.pid or 0) if f"{host}-{p}" in holding]
            if job_id is None or not horses:
                continue
            job = Job.fetch(job_id, connection=worker.connection)
            if job.func_name == DRAIN_JOB and job.get_status() == JobStatus.STARTED:
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
        with site.rq_client() as connection:
            status = Job.fetch(killed["job"], connection=connection).get_status()
        assert status == JobStatus.STARTED, "the drain job ended before the kill"
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


@pytest.mark.slow
def test_up_interrupted_mid_quiet_period_then_started_again(tmp_path: Path) -> None:
    """Ctrl-C of `scp2fhir up` (SIGINT to its process group, as a terminal sends it) with
    its private Redis, while a study's quiet period runs: Redis stops at once, before RQ's
    scheduler released its lock, and the lock comes back from the append-only file at the
    next start. The study is emitted within the bound of that start (its quiet period is
    over by then)."""
    env = up_env(tmp_path, free_port(), None)
    env["SCP2FHIR_REDIS_FSYNC"] = "always"  # what Redis answered is in its append-only file
    site = start_up(tmp_path, env)
    study = generate_study(tmp_path / "study", [("CT", 40), ("MR", 20)])
    try:
        send(site, study)
        wait_folded(site, study)  # and with appendfsync always the check is on disk
        os.killpg(site.up.pid, signal.SIGINT)
        site.up.wait(90)
        assert site.study(study.study_uid) is None, "interrupted before its emission"
    finally:
        stop_up(site)
    site = start_up(tmp_path, env)
    try:
        late = wait_emitted(site, study, time.monotonic() - QUIET_SECONDS, SCHEDULER_BOUND_SECONDS)
        print(f"emitted {late:.1f}s after the second start")
        assert_emitted_once(site, study)
        assert_no_failed_jobs(site)
    finally:
        stop_up(site)
