"""Reconcile and backfill against a real PACS: Debian's Orthanc (tests/orthanc.py), the
real SCP and a real worker (tests/conftest.py ``pipeline``), the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scp import keys, metrics
from tests.conftest import ROOT, Pipeline, pipeline_env
from tests.orthanc import OrthancProcess, dated_study
from tests.support import build_context, storescu
from tests.test_cli import cli
from tests.test_pipeline import assert_matches, wait_for_study


@pytest.fixture(scope="module")
def orthanc() -> Iterator[OrthancProcess]:
    server = OrthancProcess().start()
    yield server
    server.remove()


@pytest.fixture
def pacs(orthanc: OrthancProcess, pipeline: Pipeline) -> OrthancProcess:
    """The module's Orthanc, emptied, moving to this test's SCP."""
    if orthanc.process is None:  # a test stopped it
        orthanc.start()
    orthanc.clear()
    orthanc.point_at(pipeline.port)
    return orthanc


def scp2fhir(pipeline: Pipeline, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    assert pipeline.redis_url
    env = pipeline_env(pipeline.redis_url, pipeline.output_dir, pipeline.port, **extra)
    return cli(*args, env=env, timeout=180)


def reconcile(
    pipeline: Pipeline, pacs: OrthancProcess, since: str, until: str, *flags: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return scp2fhir(
        pipeline, "reconcile", "--pacs", pacs.address, "--since", since, "--until", until,
        *flags, **extra,
    )  # fmt: skip


def reconcile_json(
    pipeline: Pipeline, pacs: OrthancProcess, day: str, *flags: str, **extra: str
) -> tuple[int, dict[str, Any]]:
    result = reconcile(pipeline, pacs, day, day, "--json", *flags, **extra)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def states(report: dict[str, Any]) -> dict[str, str]:
    return {s["study_uid"]: s["state"] for s in report["studies"]}


def test_study_sent_while_scp2fhir_was_down_is_missing_then_fetched(
    pacs: OrthancProcess, pipeline: Pipeline, tmp_path: Path
) -> None:
    study = dated_study(tmp_path / "s", [("CT", 6), ("MR", 4)], "20210304")
    pacs.store(study.files)  # scp2fhir never saw it

    code, report = reconcile_json(pipeline, pacs, "2021-03-04")
    assert code == 1
    assert states(report) == {study.study_uid: "missing"}
    assert report["studies"][0]["pacs"] == 10 and report["studies"][0]["held"] == 0

    code, report = reconcile_json(pipeline, pacs, "2021-03-04", "--fetch")
    assert code == 0, report
    assert report["studies"][0]["fetch"] == {"completed": 10, "warning": 0}
    assert_matches(wait_for_study(pipeline, study, 10), study)

    code, report = reconcile_json(pipeline, pacs, "2021-03-04")
    assert code == 0 and states(report) == {study.study_uid: "complete"}


def test_partially_received_study_is_completed_series_by_series(
    pacs: OrthancProcess, pipeline: Pipeline, tmp_path: Path
) -> None:
    study = dated_study(tmp_path / "s", [("CT", 5), ("MR", 4), ("CT", 3)], "20210305")
    pacs.store(study.files)
    by_series = list(study.series.values())
    first, second, third = ([f for f in study.files if f.stem in set(uids)] for uids in by_series)
    storescu(pipeline.port, first + second[:1] + third)  # the PACS's routing lost 3 MR
    partial = wait_for_study(pipeline, study, 9)
    assert partial["numberOfInstances"] == 9

    code, report = reconcile_json(pipeline, pacs, "2021-03-05")
    assert code == 1
    (entry,) = report["studies"]
    assert entry["state"] == "incomplete" and (entry["pacs"], entry["held"]) == (12, 9)
    mr_series = list(study.series)[1]
    assert entry["gaps"] == [{"series_uid": mr_series, "pacs": 4, "held": 1}]

    code, report = reconcile_json(pipeline, pacs, "2021-03-05", "--fetch")
    assert code == 0, report
    # Only the series that fell short was moved (all of it: a C-MOVE names series).
    assert report["studies"][0]["fetch"] == {"completed": 4, "warning": 0}
    assert_matches(wait_for_study(pipeline, study, 12), study)


def test_complete_after_the_aggregate_expired_and_unknown_to_the_pacs(
    pacs: OrthancProcess, pipeline: Pipeline, tmp_path: Path, data: Any
) -> None:
    both = dated_study(tmp_path / "both", [("CT", 4), ("MR", 2)], "20210306")
    ours = dated_study(tmp_path / "ours", [("MR", 3)], "20210306", "120000")
    pacs.store(both.files)
    storescu(pipeline.port, both.files + ours.files)
    wait_for_study(pipeline, both, 6)
    wait_for_study(pipeline, ours, 3)
    wait_for_closed(data, both.study_uid, ours.study_uid)
    # What SCP2FHIR_RETENTION_SECONDS does to an emitted study: its aggregate goes; only
    # the ledger remembers what was emitted.
    data.delete(*keys.study_aggregate_keys(both.study_uid))

    code, report = reconcile_json(pipeline, pacs, "2021-03-06")
    assert code == 0, report
    assert states(report) == {both.study_uid: "complete", ours.study_uid: "unknown to the PACS"}
    entry = next(s for s in report["studies"] if s["study_uid"] == both.study_uid)
    assert (entry["pacs"], entry["held"], entry["emitted"]) == (6, 6, 6)
    assert report["counts"] == {
        "missing": 0,
        "incomplete": 0,
        "complete": 1,
        "unknown to the PACS": 1,
    }

    result = reconcile(pipeline, pacs, "2021-03-06", "20210306")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"reconcile {pacs.address}  2021-03-06..2021-03-06"
    assert any(line.startswith("complete") and both.study_uid in line for line in lines)
    assert any(line.startswith("unknown to the PACS") and ours.study_uid in line for line in lines)
    assert lines[-1] == "2 studies: 0 missing, 0 incomplete, 1 complete, 1 unknown to the PACS"


def wait_for_closed(data: Any, *study_uids: str) -> None:
    from tests.support import wait_for

    wait_for(
        lambda: all(data.hexists(keys.LEDGER, uid) for uid in study_uids),
        timeout=30,
        what="the studies' ledger entries",
    )


def test_capped_answers_are_asked_again_in_smaller_windows(
    pacs: OrthancProcess, pipeline: Pipeline, tmp_path: Path
) -> None:
    times = ["000000", "020000", "063000", "101500", "101500.5", "120000", "183000", "235959"]
    studies = [
        dated_study(tmp_path / f"s{i}", [("CT", 1)], "20210307", t) for i, t in enumerate(times)
    ]
    pacs.store([f for s in studies for f in s.files])
    expected = {s.study_uid: "missing" for s in studies}

    # Our own cap: more than 3 results and the answer is dropped and asked again.
    code, report = reconcile_json(pipeline, pacs, "2021-03-07", SCP2FHIR_PACS_MAX_RESULTS="3")
    assert code == 1 and states(report) == expected

    # The PACS's cap: Orthanc's LimitFindResults answers Cancel after 3.
    capped = OrthancProcess(pipeline.port, LimitFindResults=3).start()
    try:
        capped.store([f for s in studies for f in s.files])
        code, report = reconcile_json(pipeline, capped, "2021-03-07")
        assert code == 1 and states(report) == expected
    finally:
        capped.remove()


def _studies_over_days(folder: Path, days: list[str], per_day: int) -> list[Any]:
    return [
        dated_study(folder / f"{day}-{i}", [("CT", 3)], day, f"{8 + i:02d}{i * 5 % 60:02d}00")
        for day in days
        for i in range(per_day)
    ]


def _backfill(
    pipeline: Pipeline, pacs: OrthancProcess, since: str, until: str, **extra: str
) -> subprocess.Popen[str]:
    assert pipeline.redis_url
    env = pipeline_env(
        pipeline.redis_url,
        pipeline.output_dir,
        pipeline.port,
        SCP2FHIR_PACS_MOVES="2",
        **extra,
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scp.cli",
            "backfill",
            "--pacs",
            pacs.address,
            "--since",
            since,
            "--until",
            until,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _backfill_until(
    pipeline: Pipeline,
    pacs: OrthancProcess,
    data: Any,
    since: str,
    until: str,
    done: int,
    **extra: str,
) -> subprocess.Popen[str]:
    """A backfill, once ``done`` of its studies are done (and it is still running)."""
    from tests.support import wait_for

    run = _backfill(pipeline, pacs, since, until, **extra)
    try:
        wait_for(
            lambda: _studies_done(data, pacs, since, until) >= done or run.poll() is not None,
            timeout=120,
            what=f"{done} studies backfilled",
            step=0.01,
        )
        assert run.poll() is None, f"the backfill ended before {done} studies were done"
    except BaseException:
        run.kill()
        run.wait(30)
        raise
    return run


def _studies_done(data: Any, pacs: OrthancProcess, since: str, until: str) -> int:
    import datetime as dt

    from scp.pacs import PacsAddress
    from workers.reconcile.runs import BackfillRun

    run = BackfillRun(
        data,
        PacsAddress.parse(pacs.address),
        dt.date.fromisoformat(since),
        dt.date.fromisoformat(until),
    )
    return int(data.hget(keys.backfill(run.run_id), "studies_done") or 0)


def _received(data: Any) -> int:
    field = metrics.encode_field("instances_received_total", {"status": "0x0000"})
    return int(data.hget(keys.METRICS_COUNTERS, field) or 0)


def _assert_every_study_once(pipeline: Pipeline, studies: list[Any]) -> None:
    for study in studies:
        assert_matches(wait_for_study(pipeline, study, 3), study)
    written = sorted(p.name for p in (pipeline.output_dir / "ImagingStudy").glob("*.json"))
    assert written == sorted(f"{s.study_uid}.json" for s in studies)


@pytest.mark.slow
def test_backfill_killed_half_way_resumes_and_fetches_every_study_once(
    pacs: OrthancProcess, pipeline: Pipeline, tmp_path: Path, data: Any
) -> None:
    from tests.support import wait_for

    days = ["20210310", "20210311", "20210312", "20210313", "20210314"]
    studies = _studies_over_days(tmp_path, days, 10)
    pacs.store([f for s in studies for f in s.files])
    since, until = "2021-03-10", "2021-03-14"
    # Five came the normal way before: complete, they must not be fetched at all.
    routed = studies[::10]
    storescu(pipeline.port, [f for s in routed for f in s.files])
    uids = [s.study_uid for s in routed]
    wait_for(lambda: all(data.hlen(keys.study_instances(u)) == 3 for u in uids), 30, "folds")

    first = _backfill_until(pipeline, pacs, data, since, until, done=20)
    first.kill()  # SIGKILL: no chance to save anything
    first.wait(30)
    done_at_kill = _studies_done(data, pacs, since, until)
    assert 20 <= done_at_kill < 50

    second = _backfill(pipeline, pacs, since, until)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert "resuming backfill" in err
    assert "studies/s" in err and "instances/s" in err and "ETA" in err
    assert out.strip().endswith("0 failed")
    _assert_every_study_once(pipeline, studies)
    # Never fetched again once complete: beyond the 150 instances (15 routed, 135 moved),
    # at most the studies whose moves the kill cut short (2 movers x 3 instances) came twice.
    wait_for(lambda: _received(data) >= 150, timeout=10, what="the SCP's counters")
    assert 150 <= _received(data) <= 150 + 2 * 3
    assert _studies_done(data, pacs, since, until) == 50


def test_backfill_interrupted_by_ctrl_c_says_so_and_resumes(
    pacs: OrthancProcess, pipeline: Pipeline, tmp_path: Path, data: Any
) -> None:
    import signal

    studies = _studies_over_days(tmp_path, ["20210316", "20210317"], 8)
    pacs.store([f for s in studies for f in s.files])
    since, until = "2021-03-16", "2021-03-17"

    run = _backfill_until(pipeline, pacs, data, since, until, done=4)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "scp2fhir: backfill: interrupted; the same command resumes"
    )
    assert not data.keys(keys.backfill_lock("*")), "the lock outlived the run"

    rerun = _backfill(pipeline, pacs, since, until)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "resuming backfill" in err
    _assert_every_study_once(pipeline, studies)


@pytest.mark.slow
def test_pacs_stopped_mid_backfill_is_a_clear_error_and_a_rerun_finishes(
    pacs: OrthancProcess, pipeline: Pipeline, tmp_path: Path, data: Any
) -> None:
    import signal

    days = ["20210320", "20210321", "20210322"]
    studies = _studies_over_days(tmp_path, days, 10)
    pacs.store([f for s in studies for f in s.files])
    since, until = "2021-03-20", "2021-03-22"

    run = _backfill_until(pipeline, pacs, data, since, until, done=8, SCP2FHIR_PACS_TIMEOUT="5")
    # Frozen while the PACS stops: at 10 studies/s the backfill would otherwise finish the
    # remaining 22 during a slow Orthanc shutdown and never meet the stopped PACS.
    run.send_signal(signal.SIGSTOP)
    try:
        assert _studies_done(data, pacs, since, until) < 30, "the backfill ended first"
        pacs.stop()
    finally:
        run.send_signal(signal.SIGCONT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 3, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"scp2fhir: backfill: {pacs.address}: ") and "resumes" in last
    received = _received(data)

    pacs.start()
    rerun = _backfill(pipeline, pacs, since, until)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    _assert_every_study_once(pipeline, studies)
    assert received <= _received(data) <= 90 + 2 * 3


@pytest.mark.parametrize("fault", ["destination unknown", "scp2fhir down"])
def test_fetch_the_pacs_cannot_deliver_is_a_clear_failure(
    pacs: OrthancProcess, pipeline: Pipeline, tmp_path: Path, data: Any, fault: str
) -> None:
    from tests.support import free_port

    study = dated_study(tmp_path / "s", [("CT", 2)], "20210308")
    pacs.store(study.files)
    extra = {}
    if fault == "destination unknown":
        extra["SCP2FHIR_PACS_MOVE_DESTINATION"] = "NOWHERE"
    else:
        pacs.point_at(free_port())
    code, report = reconcile_json(pipeline, pacs, "2021-03-08", "--fetch", **extra)
    assert code == 1
    error = report["studies"][0]["fetch"]["error"]
    assert f"C-MOVE of study {study.study_uid}" in error and "0 completed" in error
    destination = extra.get("SCP2FHIR_PACS_MOVE_DESTINATION", "SCP2FHIR")
    assert f"the PACS must know {destination} (SCP2FHIR_PACS_MOVE_DESTINATION)" in error
    assert not data.exists(keys.study_instances(study.study_uid))


def test_scheduled_reconcile_records_drift_for_status_and_metrics(
    pacs: OrthancProcess, pipeline: Pipeline, tmp_path: Path, data: Any
) -> None:
    import datetime as dt

    from rq.registry import ScheduledJobRegistry

    from scp.connections import connect
    from scp.pacs import PacsAddress, PacsSettings
    from scp.status import render_text, snapshot
    from scp.web import RedisCollector
    from tests.support import free_port
    from workers.context import install
    from workers.reconcile import schedule

    assert not data.exists(keys.RECONCILE_SCHEDULED), "off by default, yet scheduled"
    today = dt.date.today().strftime("%Y%m%d")
    missing = dated_study(tmp_path / "m", [("CT", 3)], today)
    both = dated_study(tmp_path / "b", [("MR", 2)], today, "130000")
    pacs.store(missing.files + both.files)
    storescu(pipeline.port, both.files)
    wait_for_study(pipeline, both, 2)

    assert pipeline.redis_url
    clients = connect(pipeline.redis_url)
    context = build_context(pipeline.env, clients)
    install(context)
    settings = PacsSettings(
        pacs=PacsAddress.parse(pacs.address), reconcile_days=2, reconcile_every_hours=6
    )
    schedule.install(settings)
    outcome = schedule.scheduled_reconcile()
    assert outcome["error"] == "" and outcome["missing_instances"] == 3
    assert outcome["counts"] == {
        "missing": 1,
        "incomplete": 0,
        "complete": 1,
        "unknown to the PACS": 0,
    }
    # The next one is scheduled, once, on the emit queue.
    assert data.pttl(keys.RECONCILE_SCHEDULED) > 6 * 3600 * 1000
    registry = ScheduledJobRegistry(queue=context.emit_queue)  # type: ignore[no-untyped-call]
    jobs = [context.emit_queue.fetch_job(i) for i in registry.get_job_ids()]
    assert [j.func_name for j in jobs if j and j.func_name == schedule.JOB] == [schedule.JOB]
    assert not schedule.ensure_scheduled(context)

    text = render_text(snapshot(data, clients.rq, 1.0))
    assert f"last reconcile with {pacs.address}" in text
    assert "1 missing, 0 incomplete, 1 complete, 0 unknown to the PACS; 3 instances missing" in text
    gauges = {
        (m.name, tuple(s.labels.values())): s.value
        for m in RedisCollector(clients, 1.0).collect()
        for s in m.samples
        if m.name.startswith("scp2fhir_reconcile")
    }
    assert gauges[("scp2fhir_reconcile_studies", ("missing",))] == 1
    assert gauges[("scp2fhir_reconcile_missing_instances", ())] == 3
    assert gauges[("scp2fhir_reconcile_failed", ())] == 0

    # A PACS that cannot be reached: the failure is what the status shows, not old counts.
    schedule.install(
        PacsSettings(pacs=PacsAddress.parse(f"GONE@127.0.0.1:{free_port()}"), timeout=2,
                     reconcile_every_hours=6)
    )  # fmt: skip
    outcome = schedule.scheduled_reconcile()
    assert "cannot connect" in outcome["error"]
    assert "failed: GONE@127.0.0.1" in render_text(snapshot(data, clients.rq, 1.0))
    names = {m.name for m in RedisCollector(clients, 1.0).collect()}
    assert "scp2fhir_reconcile_studies" not in names
    clients.close()
