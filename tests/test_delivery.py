"""Delivery to real FHIR servers, through real workers and Redis.

Each test runs ``scp2fhir worker`` processes against a private Redis and, once each, the
in-memory FHIR R4 server of tests/fhirserver (medplum's router) and HAPI FHIR JPA
(tests/hapi); faults come from a real HTTP proxy in between (tests/conftest_delivery).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis
from rq.registry import FailedJobRegistry

from scp import keys
from tests import conftest_delivery
from tests.conftest import ROOT, TEST_QUIET_SECONDS, ScpThread, pipeline_env, start_worker
from tests.conftest import stop_process as stop
from tests.conftest_delivery import (
    FaultProxy,
    RealServer,
    SilentServer,
    Worker,
    clone_header,
    cloned_study,
    delivery_env,
    pending,
    push,
    studies_by_identifier,
    study_headers,
    wait_delivered,
)
from tests.hapi.harness import HapiServer
from tests.support import free_port, make_study, storescu, wait_for

# The delivery fixtures (pytest finds fixtures among a module's names).
fhir_server = conftest_delivery.fhir_server
fhir = conftest_delivery.fhir
proxy = conftest_delivery.proxy


def history(base_url: str, resource_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base_url}/ImagingStudy/{resource_id}/_history", timeout=10)
    response.raise_for_status()
    return [entry["resource"] for entry in response.json()["entry"]]


def test_storescu_study_is_one_imaging_study_whose_version_grows_with_a_late_instance(
    fhir: RealServer, redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    env = pipeline_env(redis_url, tmp_path / "out", port, SCP2FHIR_FHIR_BASE_URL=fhir.base_url)
    scp = ScpThread(env).start(port)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        study = make_study(tmp_path / "study", [("CT", 6), ("MR", 4)])
        late = study.files.pop()
        storescu(port, study.files)
        first = wait_delivered(fhir.base_url, study.study_uid, 9, timeout=TEST_QUIET_SECONDS + 30)
        assert first["meta"]["versionId"] == "1"
        assert first["identifier"][0]["value"] == f"urn:oid:{study.study_uid}"
        # Delivered: the retention clock of the aggregate has started.
        wait_for(lambda: data.pttl(keys.study(study.study_uid)) > 0, 5, "retention to start")
        assert pending(redis_url) == []

        storescu(port, [late])
        second = wait_delivered(fhir.base_url, study.study_uid, 10, timeout=TEST_QUIET_SECONDS + 30)
        assert second["id"] == first["id"]
        assert second["meta"]["versionId"] == "2"
        assert len(studies_by_identifier(fhir.base_url, study.study_uid)) == 1
        assert [v["numberOfInstances"] for v in history(fhir.base_url, first["id"])] == [10, 9]
        state = data.hgetall(keys.study_delivery(study.study_uid))
        assert state["id"] == first["id"] and state["version"] == "2"
    finally:
        scp.stop()
        stop(worker)


def test_server_down_for_a_while_then_up_loses_nothing(
    proxy: FaultProxy, redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    proxy.stop()  # connections refused
    worker = Worker(delivery_env(redis_url, tmp_path / "out", proxy.base_url), tmp_path / "w.log")
    try:
        studies = []
        for index in range(4):
            study, headers = study_headers(tmp_path / f"s{index}", [("CT", 3)])
            push(redis_url, headers)
            studies.append(study)
        wait_for(lambda: worker.text().count("ConnectError") >= 8, 20, "repeated failed attempts")
        # While undelivered: listed as pending, aggregate kept without expiry, files written.
        assert sorted(pending(redis_url)) == sorted(s.study_uid for s in studies)
        for study in studies:
            assert data.pttl(keys.study(study.study_uid)) == -1
            assert (tmp_path / "out" / "ImagingStudy" / f"{study.study_uid}.json").exists()
        proxy.start()
        for study in studies:
            resource = wait_delivered(proxy.base_url, study.study_uid, 3, timeout=20)
            assert resource["meta"]["versionId"] == "1"
        wait_for(lambda: pending(redis_url) == [], 5, "nothing pending")
        assert "next attempt in" in worker.text()
    finally:
        worker.stop()


def test_answers_slower_than_the_timeout_are_retried_without_extra_versions(
    proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    env = delivery_env(
        redis_url, tmp_path / "out", proxy.base_url, SCP2FHIR_FHIR_TIMEOUT_SECONDS="1"
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        study, headers = study_headers(tmp_path / "s", [("CT", 3), ("MR", 2)])
        push(redis_url, headers[:-1])
        first = wait_delivered(proxy.base_url, study.study_uid, 4, timeout=20)
        # The server applies the late instance's update but its answer comes too late.
        proxy.inject(method="PUT", delay=2.5)
        push(redis_url, headers[-1:])
        second = wait_delivered(proxy.base_url, study.study_uid, 5, timeout=20)
        wait_for(lambda: "already current" in worker.text(), 10, "the retry to settle")
        log = worker.text()
        assert "no answer within 1s" in log
        # The retry's If-Match met the version the lost answer would have reported; the
        # re-read showed the same content, so that version was adopted, not a new one.
        assert second["meta"]["versionId"] == "2"
        assert first["id"] == second["id"]
        conflict = proxy.behaviour.conflict_status
        assert [p.status for p in proxy.writes("PUT")] == [201, 200, conflict]
    finally:
        worker.stop()


def test_another_fhir_version_is_dead_lettered_visible_and_requeued_by_retry_failed(
    fhir: RealServer, redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    # R5 output for an R4 server: medplum would refuse it (400), HAPI would store what its
    # lenient parser reads of it and drop the rest. Nothing is sent to either.
    env = delivery_env(redis_url, tmp_path / "out", fhir.base_url, SCP2FHIR_FHIR_VERSION="R5")
    worker = Worker(env, tmp_path / "w1.log")
    study, headers = study_headers(tmp_path / "s", [("CT", 2), ("MR", 1)])
    try:
        push(redis_url, headers)
        failed = FailedJobRegistry(keys.DELIVER_QUEUE, connection=redis.Redis.from_url(redis_url))
        wait_for(lambda: failed.count == 1, 20, "the delivery to be dead-lettered")
        log = worker.text()
    finally:
        worker.stop()
    assert studies_by_identifier(fhir.base_url, study.study_uid) == []
    assert "speaks FHIR 4.0.1 but fhir_version=R5: nothing is sent" in log
    assert f"study={study.study_uid} destination=default delivery dead-lettered" in log
    assert "Unsupported: the server speaks FHIR 4.0.1, but destination default has" in log
    for phi in ("CompressedSamples", "TEST-PID-1"):
        assert phi not in log
    assert data.hget(keys.DELIVER_FAILED, study.study_uid) == failed.get_job_ids()[0]
    assert pending(redis_url) == [study.study_uid]
    # Its only destination dead-lettered it: the retention clock has started, so
    # `retry-failed` can rebuild the output for that long (and no longer).
    assert 0 < data.pttl(keys.study(study.study_uid)) <= 3600 * 1000

    # The operator fixes the cause (the version), restarts the worker and re-queues.
    fixed = Worker({**env, "SCP2FHIR_FHIR_VERSION": "R4"}, tmp_path / "w2.log")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "scp.cli", "retry-failed"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["default", study.study_uid]
        assert "re-queued 1 deliveries" in result.stderr
        resource = wait_delivered(fhir.base_url, study.study_uid, 3, timeout=20)
        assert resource["meta"]["versionId"] == "1"
        wait_for(lambda: pending(redis_url) == [], 5, "nothing pending")
        assert failed.count == 0
        assert data.hget(keys.DELIVER_FAILED, study.study_uid) is None
    finally:
        fixed.stop()


def test_without_conditional_update_it_searches_then_creates_or_updates(
    proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    def strip(statement: dict[str, Any]) -> dict[str, Any]:
        for resource in statement["rest"][0]["resource"]:
            resource["conditionalUpdate"] = False
            resource["updateCreate"] = False
        return statement

    proxy.edit_capabilities = strip
    worker = Worker(delivery_env(redis_url, tmp_path / "out", proxy.base_url), tmp_path / "w.log")
    try:
        study, headers = study_headers(tmp_path / "s", [("CT", 3)])
        push(redis_url, headers[:-1])
        first = wait_delivered(proxy.base_url, study.study_uid, 2, timeout=20)
        push(redis_url, headers[-1:])
        second = wait_delivered(proxy.base_url, study.study_uid, 3, timeout=20)
        assert second["id"] == first["id"] and second["meta"]["versionId"] == "2"
        writes = [
            (p.method, p.path.split("?")[0], p.headers.get("If-None-Exist")) for p in proxy.writes()
        ]
        token = f"identifier=urn:dicom:uid%7Curn:oid:{study.study_uid}"
        assert writes == [
            ("POST", "/fhir/ImagingStudy", token),
            ("PUT", f"/fhir/ImagingStudy/{first['id']}", None),
        ]
        # The bridge searched once (the test's own polling searches too, without _count).
        searches = [p.path for p in proxy.seen if p.method == "GET" and "_count=2" in p.path]
        assert len(searches) == 1
        log = worker.text()
        assert "has no conditional update: write_mode=conditional falls back" in log
    finally:
        worker.stop()


def test_a_study_bundle_is_one_transaction(
    proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    env = delivery_env(
        redis_url,
        tmp_path / "out",
        proxy.base_url,
        SCP2FHIR_FHIR_BUNDLE="1",
        SCP2FHIR_PATIENT_ID_SYSTEM="urn:oid:1.2.3.4",
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        study, headers = study_headers(tmp_path / "s", [("CT", 2), ("MR", 2)])
        push(redis_url, headers[:-1])
        first = wait_delivered(proxy.base_url, study.study_uid, 3, timeout=20)
        assert first["subject"]["reference"].startswith("Patient/")
        push(redis_url, headers[-1:])
        second = wait_delivered(proxy.base_url, study.study_uid, 4, timeout=20)
        assert second["id"] == first["id"] and second["meta"]["versionId"] == "2"
        writes = [(p.method, p.path) for p in proxy.writes()]
        assert writes == [("POST", "/fhir"), ("POST", "/fhir")]
        patients = httpx.get(f"{proxy.base_url}/Patient", timeout=10).json().get("entry", [])
        assert len(patients) == 1
    finally:
        worker.stop()


def test_emission_does_not_wait_for_the_server(redis_url: str, tmp_path: Path) -> None:
    """One worker; the FHIR server never answers. While the first study's delivery waits
    for its answer, the second study is still emitted: emission only queues deliveries,
    and a worker's deliveries never stand in the way of its quiet checks."""
    silent = SilentServer()
    # Far longer than the test: an answer-less request never ends while it runs.
    env = delivery_env(
        redis_url, tmp_path / "out", silent.base_url, SCP2FHIR_FHIR_TIMEOUT_SECONDS="600"
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        first, headers = study_headers(tmp_path / "a", [("CT", 1)])
        push(redis_url, headers)
        wait_for(lambda: silent.waiting() == 1, 30, "the first delivery to wait for its answer")
        assert (tmp_path / "out" / "ImagingStudy" / f"{first.study_uid}.json").exists()
        other, headers = study_headers(tmp_path / "b", [("MR", 1)])
        push(redis_url, headers)
        path = tmp_path / "out" / "ImagingStudy" / f"{other.study_uid}.json"
        # The bound is how long the test runs, not a speed: the request of the first
        # delivery is still waiting, so an emission behind it would never come.
        wait_for(path.exists, 60, "the second study's emission")
        assert silent.waiting() >= 1, "the first delivery is still waiting for its answer"
        assert "no answer within" not in worker.text()
        emitted = f"study={other.study_uid} emitted"
        wait_for(lambda: emitted in worker.text(), 10, "the emission's log line")
    finally:
        worker.stop()
        silent.close()


def test_429_500_and_a_4xx_with_patient_data_in_its_outcome(
    proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    """Each injected answer handled as specified: 429 waits Retry-After, 500 retries, a
    4xx dead-letters at once with a log line free of the values the outcome echoes; a
    later emission of the study (a late instance) delivers it and clears the dead letter."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "business-rule",
                "diagnostics": "Patient DOE^JANE born 19700101 is unknown",
                "details": {"text": "DOE^JANE", "coding": [{"code": "UNKNOWN_PATIENT"}]},
                "expression": ["ImagingStudy.subject.where(display='DOE^JANE')"],
            }
        ],
    }
    proxy.inject(status=429, retry_after="2", method="PUT")
    proxy.inject(status=500, method="PUT")
    proxy.inject(status=422, method="PUT", outcome=outcome)
    env = delivery_env(redis_url, tmp_path / "out", proxy.base_url)
    worker = Worker(env, tmp_path / "w.log")
    try:
        study, headers = study_headers(tmp_path / "s", [("MR", 3)])
        push(redis_url, headers[:2])
        failed = FailedJobRegistry(keys.DELIVER_QUEUE, connection=redis.Redis.from_url(redis_url))
        wait_for(lambda: failed.count == 1, 20, "the dead letter")
        puts = proxy.writes("PUT")
        assert [p.status for p in puts] == [429, 500, 422]
        # Retry-After: 2 was honoured (the backoff alone would be at most 1 s here).
        assert puts[1].at - puts[0].at >= 2.0
        assert puts[0].headers["Content-Type"] == "application/fhir+json; fhirVersion=4.0"
        log = worker.text()
        assert "error business-rule [UNKNOWN_PATIENT] @ ImagingStudy.subject.where" in log
        assert "DOE" not in log and "19700101" not in log
        assert "Rejected: PUT ImagingStudy: HTTP 422" in log

        push(redis_url, headers[2:])  # the cause is gone (the fault was used once)
        wait_delivered(proxy.base_url, study.study_uid, 3, timeout=20)
        assert [p.status for p in proxy.writes("PUT")] == [429, 500, 422, 201]
        wait_for(lambda: failed.count == 0, 5, "the obsolete dead letter to go")
        assert pending(redis_url) == []
    finally:
        worker.stop()


def test_client_id_mode_and_a_concurrent_edit(
    proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    """PUT to the stable id with If-Match; someone else's edit is detected (412),
    re-read, logged and the bridge's content re-applied on the version read."""
    env = delivery_env(
        redis_url, tmp_path / "out", proxy.base_url, SCP2FHIR_FHIR_WRITE_MODE="client-id"
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        study, headers = study_headers(tmp_path / "s", [("MR", 4)])
        push(redis_url, headers[:2])
        first = wait_delivered(proxy.base_url, study.study_uid, 2, timeout=20)
        assert first["id"] == study.study_uid
        push(redis_url, headers[2:3])
        second = wait_delivered(proxy.base_url, study.study_uid, 3, timeout=20)
        assert second["meta"]["versionId"] == "2"

        edited = {**second, "description": "edited by someone else"}
        answer = httpx.put(
            f"{proxy.base_url}/ImagingStudy/{first['id']}",
            json=edited,
            headers={"Content-Type": "application/fhir+json"},
            timeout=10,
        )
        assert answer.status_code == 200
        push(redis_url, headers[3:])
        final = wait_delivered(proxy.base_url, study.study_uid, 4, timeout=20)
        assert final["meta"]["versionId"] == "4"
        assert final.get("description") != "edited by someone else"
        bridge = [p for p in proxy.writes("PUT") if p.headers.get("User-Agent") == "scp2fhir"]
        assert {p.path for p in bridge} == {f"/fhir/ImagingStudy/{study.study_uid}"}
        assert [(p.status, p.headers.get("If-Match")) for p in bridge] == [
            (201, None),
            (200, 'W/"1"'),
            (proxy.behaviour.conflict_status, 'W/"2"'),
            (200, 'W/"3"'),
        ]
        assert "concurrent edit detected on ImagingStudy" in worker.text()
    finally:
        worker.stop()


def test_gzip_bodies_when_the_server_takes_them_plain_when_it_refuses(
    proxy: FaultProxy, redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    env = delivery_env(
        redis_url, tmp_path / "out", proxy.base_url, SCP2FHIR_FHIR_GZIP_MIN_BYTES="2000"
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        if proxy.behaviour.reads_gzip:
            # HAPI reads compressed bodies itself: they go compressed, and what it stored
            # (12 instances, then 12 more in another study) is what was sent.
            for name, modality in (("a", "CT"), ("b", "MR")):
                study, headers = study_headers(tmp_path / name, [(modality, 12)])
                push(redis_url, headers)
                wait_delivered(proxy.base_url, study.study_uid, 12, timeout=20)
            puts = [(p.headers.get("Content-Encoding"), p.status) for p in proxy.writes("PUT")]
            assert puts == [("gzip", 201), ("gzip", 201)]
            assert "sending plain bodies" not in worker.text()
            assert not data.keys(keys.fhir_no_gzip("*"))
            return
        # The medplum test server cannot read gzip (400): the body goes plain at once.
        first, headers = study_headers(tmp_path / "a", [("CT", 12)])
        push(redis_url, headers)
        wait_delivered(proxy.base_url, first.study_uid, 12, timeout=20)
        # Logged (and remembered) right after the plain body was accepted.
        wait_for(lambda: "sending plain bodies" in worker.text(), 5, "the gzip warning")
        assert data.keys(keys.fhir_no_gzip("*"))
        second, headers = study_headers(tmp_path / "b", [("MR", 12)])
        push(redis_url, headers)
        wait_delivered(proxy.base_url, second.study_uid, 12, timeout=20)

        # Once that hour is over, a server that takes gzip gets gzip.
        data.delete(*data.keys(keys.fhir_no_gzip("*")))
        proxy.accept_gzip = True
        third, headers = study_headers(tmp_path / "c", [("CT", 12)])
        push(redis_url, headers)
        wait_delivered(proxy.base_url, third.study_uid, 12, timeout=20)
        puts = [(p.headers.get("Content-Encoding"), p.status) for p in proxy.writes("PUT")]
        assert puts == [("gzip", 400), (None, 201), (None, 201), ("gzip", 201)]
    finally:
        worker.stop()


def test_a_5000_instance_study_is_one_resource_and_a_late_instance_updates_it(
    proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    """5000 instances in 4 series (about 1 MB of ImagingStudy, sent gzip-compressed where
    the server reads it): one resource; one late instance makes version 2 of it."""
    env = delivery_env(
        redis_url,
        tmp_path / "out",
        proxy.base_url,
        SCP2FHIR_FHIR_TIMEOUT_SECONDS="120",
        # No pause while 5000 headers are pushed may close the study early.
        SCP2FHIR_QUIET_SECONDS="3",
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        _, (template,) = study_headers(tmp_path / "t", [("CT", 1)])
        study_uid, headers = cloned_study(template, 4, 1250)
        push(redis_url, headers)
        first = wait_delivered(proxy.base_url, study_uid, 5000, timeout=300, step=1)
        assert first["meta"]["versionId"] == "1"
        assert [len(s["instance"]) for s in first["series"]] == [1250] * 4
        assert len({i["uid"] for s in first["series"] for i in s["instance"]}) == 5000
        series_uid = first["series"][0]["uid"]
        push(redis_url, [clone_header(template, study_uid, series_uid, 1251)])
        second = wait_delivered(proxy.base_url, study_uid, 5001, timeout=300, step=1)
        assert second["id"] == first["id"] and second["meta"]["versionId"] == "2"
        sent = [p for p in proxy.writes("PUT") if p.status in (200, 201)]
        assert [p.status for p in sent] == [201, 200]
        encoding = "gzip" if proxy.behaviour.reads_gzip else None
        assert [p.headers.get("Content-Encoding") for p in sent] == [encoding, encoding]
        assert min(p.body_bytes for p in sent) > 100_000
    finally:
        worker.stop()


def test_r5_output_to_an_r5_server(hapi_r5: HapiServer, redis_url: str, tmp_path: Path) -> None:
    """SCP2FHIR_FHIR_VERSION=R5 to HAPI's R5 server (medplum's router is R4 only): the study
    Bundle as a transaction with its conditional Patient, then a late instance's version 2."""
    hapi_r5.reset()
    env = delivery_env(
        redis_url,
        tmp_path / "out",
        hapi_r5.base_url,
        SCP2FHIR_FHIR_VERSION="R5",
        SCP2FHIR_FHIR_BUNDLE="1",
        SCP2FHIR_PATIENT_ID_SYSTEM="urn:oid:1.2.3.4",
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        study, headers = study_headers(tmp_path / "s", [("CT", 2), ("MR", 2)])
        push(redis_url, headers[:-1])
        first = wait_delivered(hapi_r5.base_url, study.study_uid, 3, timeout=30)
        assert first["meta"]["versionId"] == "1"
        # R5 shapes: series.modality is a CodeableConcept, bodySite a CodeableReference.
        assert first["series"][0]["modality"]["coding"][0]["code"] == "CT"
        assert first["subject"]["reference"].startswith("Patient/")
        push(redis_url, headers[-1:])
        second = wait_delivered(hapi_r5.base_url, study.study_uid, 4, timeout=30)
        assert second["id"] == first["id"] and second["meta"]["versionId"] == "2"
        # Only the transaction Bundle creates the Patient (conditionally: once).
        patients = httpx.get(f"{hapi_r5.base_url}/Patient", timeout=10).json().get("entry", [])
        assert len(patients) == 1
    finally:
        worker.stop()
