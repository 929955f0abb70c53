"""Faults, with real processes: Redis, the SCP and workers killed with SIGKILL at chosen
moments, a sender that retries, load with memory measured, workers with a faked clock.

Each test checks the end result the README promises: every instance the SCP acknowledged
is in the emitted ImagingStudy, none twice, each study emitted (closed) exactly once.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from fhir.resources.R4B.imagingstudy import ImagingStudy as ImagingStudyR4B

from scp import keys, statuses
from tests.conftest import pipeline_env
from tests.faults import (
    Child,
    MemoryWatch,
    emitted_lines,
    generate_study,
    send_files,
    spool_files,
    start_scp,
    start_worker,
)
from tests.support import (
    GeneratedStudy,
    RedisProcess,
    free_port,
    read_json,
    storescu,
    wait_for,
)

SUCCESS = statuses.SUCCESS
#: Recovery timers for workers a test kills: a test cannot wait the minute a production
#: reclaim waits. Only the timing changes; the code that recovers is the shipped code.
FAST_RECOVERY = {
    "workers.jobs.RECLAIM_IDLE_MS": 1500,
    "workers.jobs.SWEEP_SECONDS": 1.0,
    "workers.jobs.LEASE_MS": 3000,
}
#: Peak resident set size any one process may reach under load (a leak fails the test).
MEMORY_BOUND_KIB = 300 * 1024


# --- the system, as separate processes -----------------------------------------------------


@dataclass
class System:
    """Redis, SCP and worker processes of one test, and what they left in their logs."""

    tmp: Path
    redis_server: RedisProcess
    port: int
    env: dict[str, str]
    scps: list[Child] = field(default_factory=list)
    workers: list[Child] = field(default_factory=list)
    #: every worker ever started (killed ones too): their logs count emissions
    all_workers: list[Child] = field(default_factory=list)

    @property
    def output(self) -> Path:
        return self.tmp / "out" / "ImagingStudy"

    @property
    def spool(self) -> Path:
        return self.tmp / "spool"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def start_scp(self, **env: str) -> Child:
        log = self.tmp / f"scp-{len(self.scps) + 1}.log"
        child = start_scp({**self.env, **env}, log, self.port)
        self.scps.append(child)
        return child

    def start_worker(self, faults: dict[str, Any] | None = None) -> Child:
        log = self.tmp / f"worker-{len(self.all_workers) + 1}.log"
        child = start_worker(self.env, log, faults)
        self.workers.append(child)
        self.all_workers.append(child)
        return child

    def restart_redis(self) -> None:
        """A new redis-server on the same port and data folder (its append-only file)."""
        again = RedisProcess(*self.redis_server.extra)
        shutil.rmtree(again.dir)
        again.dir, again.port = self.redis_server.dir, self.redis_server.port
        self.redis_server = again.start()

    def revive(self) -> list[Child]:
        """Start a new worker for each that died, as `scp2fhir up` does: an RQ worker whose
        job was running when Redis went away exits (see the faults report). Returns the
        dead ones."""
        dead = [w for w in self.workers if not w.alive()]
        for worker in dead:
            self.workers.remove(worker)
            worker.kill9()  # its scheduler and horse, if they outlived it
        if dead:
            self.forget_dead_schedulers()
        for _ in dead:
            self.start_worker({"timers": FAST_RECOVERY})
        return dead

    def forget_dead_schedulers(self) -> None:
        """Drop the RQ scheduler locks of killed workers: RQ lets them expire after 61 s,
        which a test does not wait for (see the faults report)."""
        client = self.client()
        for name in client.keys("rq:scheduler-lock:*"):
            client.delete(name)
        client.close()

    def study(self, study_uid: str) -> dict[str, Any] | None:
        path = self.output / f"{study_uid}.json"
        return read_json(path) if path.exists() else None

    def worker_logs(self) -> list[str]:
        return [w.output() for w in self.all_workers]

    def stop(self) -> None:
        for child in [*self.scps, *self.all_workers]:
            child.stop()
        self.redis_server.stop()


def make_system(tmp: Path, *redis_args: str, quiet: float = 2.0, **env: str) -> System:
    spool = tmp / "spool"
    spool.mkdir(exist_ok=True)
    own = RedisProcess(*redis_args).start()
    port = free_port()
    base = pipeline_env(
        own.url,
        tmp / "out",
        port,
        TMPDIR=str(spool),
        SCP2FHIR_QUIET_SECONDS=str(quiet),
        **env,
    )
    return System(tmp, own, port, base)


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    made = make_system(tmp_path, "--appendonly", "yes", "--appendfsync", "everysec")
    try:
        yield made
    finally:
        made.stop()


def wait_for_complete(system: System, study: GeneratedStudy, timeout: float = 60) -> dict[str, Any]:
    """The emitted study, once it holds every instance and the study is closed."""
    client = system.client()

    def done() -> dict[str, Any] | None:
        resource = system.study(study.study_uid)
        if resource is None or resource["numberOfInstances"] != len(study.sop_uids):
            return None
        if client.zscore(keys.OPEN_STUDIES, study.study_uid) is not None:
            return None  # written, not closed yet
        return resource

    try:
        result: dict[str, Any] = wait_for(done, timeout, f"study {study.study_uid} complete")
        return result
    finally:
        client.close()


def assert_exact(resource: dict[str, Any], study: GeneratedStudy) -> None:
    uids = [i["uid"] for s in resource["series"] for i in s["instance"]]
    assert len(uids) == len(set(uids)), "an instance appears twice"
    assert set(uids) == study.sop_uids
    assert resource["numberOfInstances"] == len(study.sop_uids)
    assert resource["numberOfSeries"] == len(study.series)
    for series in resource["series"]:
        assert {i["uid"] for i in series["instance"]} == set(study.series[series["uid"]])
        assert series["numberOfInstances"] == len(study.series[series["uid"]])
    ImagingStudyR4B.model_validate(resource)


def assert_clean(system: System) -> None:
    """Nothing left over: no entry unfolded or pending, nothing dead-lettered, nothing
    counted in flight."""
    client = system.client()
    try:
        assert client.xlen(keys.INBOX) == 0
        pending: Any = client.xpending(keys.INBOX, keys.INBOX_GROUP)
        assert pending["pending"] == 0
        assert client.llen(keys.DEAD_LETTER) == 0
        assert client.hlen(keys.INFLIGHT) == 0
    finally:
        client.close()


def stored_sop_uids(system: System, study_uid: str) -> set[str]:
    """SOP Instance UIDs Redis holds for a study: folded, or still in the inbox."""
    client = system.client()
    try:
        found = {str(uid) for uid in client.hkeys(keys.study_instances(study_uid))}
        entries: Any = client.xrange(keys.INBOX)
        for _, fields in entries:
            found |= set(re.findall(r'"00080018":\{"vr":"UI","Value":\["([0-9.]+)"\]', fields["h"]))
        return found
    finally:
        client.close()


def split(statuses_: list[int | None], study: GeneratedStudy) -> tuple[list[Path], list[Path]]:
    """(acknowledged, not acknowledged) files, by the status each got."""
    acked = [p for p, s in zip(study.files, statuses_, strict=True) if s == SUCCESS]
    failed = [p for p, s in zip(study.files, statuses_, strict=True) if s != SUCCESS]
    return acked, failed


def answers(statuses_: list[int | None], system: System) -> str:
    """What a failed assertion on ``statuses_`` needs: the statuses in runs, and the SCP's
    last log lines (why an association ended early)."""
    runs: list[str] = []
    for status, group in itertools.groupby(statuses_):
        name = "none" if status is None else f"0x{status:04X}"
        runs.append(f"{len(list(group))}x{name}")
    tail = "\n".join(system.scps[-1].output().splitlines()[-15:]) if system.scps else ""
    return f"statuses: {' '.join(runs)}\nSCP log tail:\n{tail}"


def sop_of(path: Path) -> str:
    return path.stem  # generate_study names each file by its SOP Instance UID


# --- Redis unavailable, and back ------------------------------------------------------------


def test_retrying_sender_ends_with_a_complete_study(system: System) -> None:
    """Redis dies mid-study: the SCP answers 0xA700 (never Success) and stays up; Redis
    comes back; the sender runs again (storescu, every file) and the study is complete."""
    study = generate_study(system.tmp / "study", [("CT", 30), ("MR", 10)])
    system.start_scp()
    system.start_worker({"timers": FAST_RECOVERY})

    def kill_redis(index: int, status: int | None) -> None:
        if index == 14:
            assert system.redis_server.process is not None
            system.redis_server.process.kill()
            system.redis_server.process.wait()

    first = send_files(system.port, study.files, after_each=kill_redis)
    assert first[:15] == [SUCCESS] * 15
    assert set(first[15:]) == {statuses.OUT_OF_RESOURCES}, "after the kill: 0xA700 only"
    assert system.scps[0].alive()
    system.restart_redis()
    system.revive()
    storescu(system.port, study.files)  # the sender's retry: the whole study again
    assert_exact(wait_for_complete(system, study), study)
    assert emitted_lines(system.worker_logs(), study.study_uid) == 1
    assert_clean(system)


# --- durability: Redis killed in the middle of a 1000-instance study ------------------------


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_redis_killed_mid_study_loses_nothing_acknowledged(tmp_path: Path, fsync: str) -> None:
    system = make_system(tmp_path, "--appendonly", "yes", "--appendfsync", fsync)
    try:
        study = generate_study(tmp_path / "study", [("CT", 700), ("MR", 300)])
        system.start_scp()
        system.start_worker({"timers": FAST_RECOVERY})

        def kill_redis(index: int, status: int | None) -> None:
            if index == 400:
                assert system.redis_server.process is not None
                system.redis_server.process.kill()  # SIGKILL: no AOF flush on the way out
                system.redis_server.process.wait()

        # A patient sender, as dcmtk's storescu is (no DIMSE timeout): with appendfsync
        # always, Redis answers only after its fsync, which a busy disk can stall for many
        # seconds; 30 s of SCU patience once ended the association after 28 instances.
        first = send_files(system.port, study.files, after_each=kill_redis, timeout=180)
        acked, failed = split(first, study)
        # Every instance got an answer (the association lasted), none Success after the
        # kill; before it, a stalled fsync may have cost one a 0xA700: that is no loss.
        assert None not in first and SUCCESS not in first[401:], answers(first, system)
        assert len(acked) > 300, answers(first, system)
        system.restart_redis()
        # Everything Redis acknowledged survived the kill (folded, or waiting in the inbox).
        missing = {sop_of(p) for p in acked} - stored_sop_uids(system, study.study_uid)
        assert not missing, f"{len(missing)} acknowledged instances lost"
        system.revive()
        assert send_files(system.port, failed) == [SUCCESS] * len(failed)
        assert_exact(wait_for_complete(system, study), study)
        assert emitted_lines(system.worker_logs(), study.study_uid) == 1
        assert_clean(system)
    finally:
        system.stop()


# --- workers killed in the middle of folds and of an emission -------------------------------


def test_worker_killed_mid_fold(system: System) -> None:
    """kill -9 of a worker (with its work horse and scheduler) while its drain job holds a
    batch read but not folded: another worker reclaims the batch; nothing is lost, nothing
    counted twice, the study is emitted once."""
    marker = system.tmp / "paused"
    study = generate_study(system.tmp / "study", [("CT", 600), ("MR", 400)])
    system.start_scp()
    first = system.start_worker(
        {
            "timers": FAST_RECOVERY,
            "pause": {"at": "fold", "after_instances": 300, "marker": str(marker)},
        }
    )
    storescu(system.port, study.files)  # the SCP acknowledges all; folding is behind
    wait_for(marker.exists, 60, "the worker to pause in the middle of folding")
    client = system.client()
    folded = client.hlen(keys.study_instances(study.study_uid))
    pending: Any = client.xpending(keys.INBOX, keys.INBOX_GROUP)
    client.close()
    assert 300 <= folded < 1000
    assert pending["pending"] > 0, "the paused batch is read and not acknowledged"
    first.kill9()
    system.workers.remove(first)
    system.forget_dead_schedulers()
    system.start_worker({"timers": FAST_RECOVERY})
    assert_exact(wait_for_complete(system, study), study)
    assert emitted_lines(system.worker_logs(), study.study_uid) == 1
    assert_clean(system)


def test_worker_killed_mid_emission(system: System) -> None:
    """kill -9 after the ImagingStudy was written but before the study was closed: the
    lease expires, the sweep re-checks, another worker writes the same file again and
    closes the study. The study is closed (and logged as emitted) exactly once."""
    marker = system.tmp / "paused"
    study = generate_study(system.tmp / "study", [("CT", 40), ("MR", 20)])
    system.start_scp()
    first = system.start_worker(
        {"timers": FAST_RECOVERY, "pause": {"at": "close", "marker": str(marker)}}
    )
    storescu(system.port, study.files)
    wait_for(marker.exists, 60, "the worker to pause before closing the study")
    written = system.study(study.study_uid)
    assert written is not None
    assert_exact(written, study)  # the file was complete before the crash
    first.kill9()
    system.workers.remove(first)
    system.forget_dead_schedulers()
    system.start_worker({"timers": FAST_RECOVERY})
    again = wait_for_complete(system, study)
    assert again == written, "the re-emission wrote something else"
    assert emitted_lines(system.worker_logs(), study.study_uid) == 1
    client = system.client()
    assert client.zscore(keys.EMITTED, study.study_uid) is not None
    client.close()
    assert_clean(system)


# --- the SCP killed in the middle of an association -----------------------------------------


def test_scp_killed_mid_association(system: System) -> None:
    """kill -9 of the SCP while a dataset is on the wire: every instance it acknowledged is
    stored; the sender re-sends the others to a new SCP process; the study is complete."""
    study = generate_study(system.tmp / "study", [("CT", 250), ("MR", 50)])
    scp = system.start_scp()
    system.start_worker()
    go = threading.Event()

    def trigger(index: int, status: int | None) -> None:
        if index == 120:
            go.set()

    def killer() -> None:
        go.wait(60)
        time.sleep(0.002)  # into the next C-STORE
        scp.kill9()

    thread = threading.Thread(target=killer)
    thread.start()
    first = send_files(system.port, study.files, after_each=trigger, timeout=15)
    thread.join()
    acked, failed = split(first, study)
    assert 121 <= len(acked) < len(study.files)
    missing = {sop_of(p) for p in acked} - stored_sop_uids(system, study.study_uid)
    assert not missing, f"{len(missing)} acknowledged instances are not in Redis"
    # A killed process cannot remove the dataset it was receiving (see the faults report).
    leftovers = spool_files(system.spool)
    assert len(leftovers) <= 1, leftovers
    for path in leftovers:
        path.unlink()
    system.scps.remove(scp)
    system.start_scp()
    assert send_files(system.port, failed) == [SUCCESS] * len(failed)
    assert_exact(wait_for_complete(system, study), study)
    # Once, unless the resend came after a quiet period: then the part received before the
    # crash was emitted too, and the resend re-opened the study (by design).
    assert emitted_lines(system.worker_logs(), study.study_uid) >= 1
    assert spool_files(system.spool) == []
    assert_clean(system)


# --- load -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_load_eight_associations_twenty_studies(tmp_path: Path) -> None:
    """8 parallel associations x 500 instances over 20 studies, one SCP with two acceptor
    processes and two workers (what `scp2fhir up` runs): every study emitted once with
    exact counts; the peak RSS of every process (and work horse) stays bounded."""
    system = make_system(tmp_path, quiet=4.0)
    try:
        studies = [
            generate_study(tmp_path / f"study-{n}", [("CT", 120), ("MR", 80)]) for n in range(20)
        ]
        # Association k carries every 8th instance of every study: all studies arrive on
        # all associations at once, interleaved.
        everything = [
            path for group in zip(*(s.files for s in studies), strict=True) for path in group
        ]
        parts = [everything[k::8] for k in range(8)]
        assert [len(part) for part in parts] == [500] * 8
        # One `scp2fhir scp` with two acceptor processes (scp.prefork), as `up` runs it.
        scp = system.start_scp(SCP2FHIR_SCP_PROCESSES="2")
        workers = [system.start_worker(), system.start_worker()]
        roots = {"scp": scp.pid}
        roots |= {f"worker-{i + 1}": c.pid for i, c in enumerate(workers)}
        errors: list[BaseException] = []

        def send(files: list[Path]) -> None:
            try:
                storescu(system.port, files)
            except BaseException as exc:  # reported on the test's thread
                errors.append(exc)

        started = time.monotonic()
        with MemoryWatch(roots) as memory:
            threads = [threading.Thread(target=send, args=(part,)) for part in parts]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            sent = time.monotonic() - started
            assert not errors, errors
            for study in studies:
                assert_exact(wait_for_complete(system, study, timeout=120), study)
            emitted = time.monotonic() - started
        client = system.client()
        redis_peak = int(client.info("memory")["used_memory_peak"])
        consumers = len(client.xinfo_consumers(keys.INBOX, keys.INBOX_GROUP))
        client.close()
        report = {
            "sent_s": round(sent, 1),
            "all_emitted_s": round(emitted, 1),
            "peak_rss_mib": {k: round(v / 1024) for k, v in memory.peaks.items()},
            "work_horse_peak_rss_mib": {k: round(v / 1024) for k, v in memory.child_peaks.items()},
            "redis_used_memory_peak_mib": round(redis_peak / 2**20),
            "inbox_consumers": consumers,
        }
        print(f"\nload: {report}")
        (tmp_path / "load-report.txt").write_text(repr(report))
        logs = system.worker_logs()
        assert [emitted_lines(logs, s.study_uid) for s in studies] == [1] * 20
        for name, peak in {**memory.peaks, **memory.child_peaks}.items():
            assert 0 < peak < MEMORY_BOUND_KIB, f"{name}: peak RSS {peak} KiB"
        assert_clean(system)
    finally:
        system.stop()


# --- one clock: Redis's ---------------------------------------------------------------------


@pytest.mark.parametrize("offset", [3600.0, -3600.0], ids=["ahead-1h", "behind-1h"])
def test_quiet_detection_ignores_the_workers_clock(tmp_path: Path, offset: float) -> None:
    """A worker whose wall clock is an hour off (as on another host) emits the study one
    quiet period after the last instance: a decision on the local clock would emit at
    once (ahead) or an hour late (behind). The SCP runs on the real clock."""
    quiet = 3.0
    system = make_system(tmp_path, quiet=quiet)
    try:
        system.start_scp()
        worker = system.start_worker({"clock_offset_seconds": offset})
        study = generate_study(tmp_path / "study", [("CT", 10)])
        storescu(system.port, study.files)
        last_sent = time.monotonic()
        resource = wait_for_complete(system, study, timeout=30)
        took = time.monotonic() - last_sent
        assert_exact(resource, study)
        assert quiet * 0.9 <= took <= quiet + 10, f"emitted {took:.1f} s after the last instance"
        # The clock really was off in there: RQ logs with it.
        shifted = time.time() + offset
        hours = {time.strftime(" %H:", time.localtime(shifted - d)) for d in (0, 60)}
        assert any(hour in worker.output() for hour in hours)
    finally:
        system.stop()


def test_quiet_decision_reads_only_the_redis_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: with the local clock moved by a day, check_quiet still decides from
    Redis TIME and the arrival stream ids (it reschedules, not emits, a fresh study)."""
    from scp.inbox import Inbox
    from tests.support import build_context
    from workers import jobs
    from workers.context import install

    own = RedisProcess().start()
    try:
        ctx = build_context(
            {
                "SCP2FHIR_REDIS_URL": own.url,
                "SCP2FHIR_OUTPUT_DIR": str(tmp_path / "out"),
                "SCP2FHIR_QUIET_SECONDS": "30",
            }
        )
        jobs.ensure_group(ctx.clients.data)
        install(ctx)
        study = generate_study(tmp_path / "study", [("CT", 1)])
        from scp.header import read_header

        Inbox(ctx.clients.data, ctx.clients.rq).push(
            study.study_uid, read_header(study.files[0]).json
        )
        jobs.drain_inbox()
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 86400)
        assert jobs.check_quiet(study.study_uid) == "waiting"
        monkeypatch.setattr(time, "time", lambda: real_time() - 86400)
        assert jobs.check_quiet(study.study_uid) == "waiting"
        ctx.clients.close()
    finally:
        own.stop()


# --- Redis memory stays bounded too ---------------------------------------------------------


def test_sweep_forgets_idle_consumers_and_old_emissions(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each drain job reads under a consumer name of its own: the sweep deletes those that
    hold nothing (never one with pending entries), and trims the emitted index to the
    retention, so neither grows with every job or study forever."""
    from scp.header import read_header
    from scp.inbox import Inbox
    from tests.support import build_context
    from workers import jobs
    from workers.context import install
    from workers.summary import summarize

    ctx = build_context(
        {"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_OUTPUT_DIR": str(tmp_path / "out")}
    )
    install(ctx)
    jobs.ensure_group(ctx.clients.data)
    data = ctx.clients.data
    study = generate_study(tmp_path / "study", [("CT", 30)])
    inbox = Inbox(data, ctx.clients.rq)
    for path in study.files:
        inbox.push(study.study_uid, read_header(path).json)
    # Twenty finished drain jobs, and one that died holding five entries.
    for job in range(20):
        reply: Any = data.xreadgroup(keys.INBOX_GROUP, f"host-{job}", {keys.INBOX: ">"}, count=1)
        entries = [(i, summarize(json.loads(f["h"]))) for i, f in reply[0][1]]
        ctx.store.fold(entries)
    data.xreadgroup(keys.INBOX_GROUP, "dead-horse", {keys.INBOX: ">"}, count=5)
    time.sleep(0.05)
    assert ctx.store.forget_idle_consumers(0) == 20, "only those with nothing pending"
    assert [c["name"] for c in data.xinfo_consumers(keys.INBOX, keys.INBOX_GROUP)] == ["dead-horse"]
    data.zadd(keys.EMITTED, {"1.2.3.old": 1, "1.2.3.new": jobs.redis_now_ms(data)})
    monkeypatch.setattr(jobs, "RECLAIM_IDLE_MS", 0)
    result = jobs.sweep()
    assert result["reclaimed"] == 5, "the dead job's entries are folded, not forgotten"
    assert len(ctx.store.load(study.study_uid).instances) == 25
    assert "dead-horse" not in {
        c["name"] for c in data.xinfo_consumers(keys.INBOX, keys.INBOX_GROUP)
    }
    assert data.zscore(keys.EMITTED, "1.2.3.old") is None
    assert data.zscore(keys.EMITTED, "1.2.3.new") is not None
    ctx.clients.close()


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_private_redis_of_up_keeps_what_it_acknowledged(tmp_path: Path, fsync: str) -> None:
    """`scp2fhir up`'s own Redis: append-only file on, with the configured appendfsync;
    what it acknowledged before a kill -9 is there after a restart."""
    from scp.up.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis", fsync)
    server.start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        config = client.config_get("append*")
        assert (config["appendonly"], config["appendfsync"]) == ("yes", fsync)
        for n in range(500):
            client.xadd(keys.INBOX, {"s": str(n)})
        client.close()
        assert server.process is not None
        server.process.kill()
        server.process.wait()
        server.start()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.xlen(keys.INBOX) == 500
        client.close()
    finally:
        server.stop()
