"""Delivery promises of the README that had no test: a lost delivery job, a study that
re-opens under a queued delivery, a server without transactions, the CapabilityStatement
cache, untrusted certificates, and what delivery logs at DEBUG.

Real parts as in ``tests/test_delivery.py``: ``scp2fhir worker`` processes, a private
Redis, the in-memory FHIR server (tests/fhirserver) behind the fault proxy.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis

from scp import keys
from tests import conftest_delivery
from tests.certs import make_pki
from tests.conftest_delivery import (
    FaultProxy,
    TokenServer,
    Worker,
    delivery_env,
    pending,
    push,
    studies_by_identifier,
    study_headers,
    wait_delivered,
    worker_context,
)
from tests.faults import spawn
from tests.fhirserver.harness import FhirServer
from tests.support import wait_for
from workers.context import install
from workers.jobs import sweep

# The delivery fixtures (pytest finds fixtures among a module's names).
fhir_server = conftest_delivery.fhir_server
fhir = conftest_delivery.fhir
proxy = conftest_delivery.proxy

#: The test patient: none of it may appear in any log line.
PATIENT = {"name": "Doe^Jane^Q", "id": "PID-SECRET-4711", "birth": "19700101"}


def with_patient(headers: list[Any]) -> list[Any]:
    for header in headers:
        header["00100010"] = {"vr": "PN", "Value": [{"Alphabetic": PATIENT["name"]}]}
        header["00100020"] = {"vr": "LO", "Value": [PATIENT["id"]]}
        header["00100030"] = {"vr": "DA", "Value": [PATIENT["birth"]]}
    return headers


# --- a worker killed between closing a study and queueing its delivery ---------------------


def test_a_delivery_lost_with_its_worker_is_queued_by_the_sweep(
    fhir: FhirServer, redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    """kill -9 of the worker right after its emission closed the study, before the
    delivery job was queued (``tests/delivery_crash.py`` stops it there): the study is
    listed in deliver-pending with no job anywhere; the sweep queues one and it lands."""
    marker = tmp_path / "paused"
    env = delivery_env(redis_url, tmp_path / "out", fhir.base_url)
    crashing = spawn(
        "worker",
        [sys.executable, "-m", "tests.delivery_crash", "worker"],
        {**env, "SCP2FHIR_TEST_PAUSE_MARKER": str(marker)},
        tmp_path / "crashing.log",
    )
    study, headers = study_headers(tmp_path / "s", [("CT", 2), ("MR", 1)])
    try:
        push(redis_url, headers)
        wait_for(marker.exists, 30, "the emission to close the study and stop")
    finally:
        crashing.kill9()
    uid = study.study_uid
    assert (tmp_path / "out" / "ImagingStudy" / f"{uid}.json").exists()
    assert pending(redis_url) == [uid], "closed, not delivered: listed as pending"
    assert data.zscore(keys.OPEN_STUDIES, uid) is None
    assert not data.exists(keys.study_deliver_queued(uid)), "no delivery job was queued"
    assert data.llen(f"rq:queue:{keys.DELIVER_QUEUE}") == 0
    assert studies_by_identifier(fhir.base_url, uid) == []

    worker = Worker(env, tmp_path / "w.log")
    try:
        # The shipped sweep (the job every worker schedules every 30 s), run here at once.
        install(worker_context(env))
        assert sweep()["redelivered"] == 1
        resource = wait_delivered(fhir.base_url, uid, 3, timeout=30)
        assert resource["meta"]["versionId"] == "1"
        wait_for(lambda: pending(redis_url) == [], 10, "nothing pending")
        assert sweep()["redelivered"] == 0, "a delivered study is not queued again"
    finally:
        worker.stop()


# --- a study that re-opens while its delivery waits in the queue -------------------------


def test_a_queued_delivery_of_a_reopened_study_is_skipped(
    proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    """One worker delivers one study at a time: study Y's delivery waits in the queue
    behind a slow delivery of X. Meanwhile Y receives instances again. When Y's queued
    job runs, Y is open: it is skipped (nothing sent), and Y's next emission delivers
    everything, once."""
    proxy.inject(method="PUT", delay=8)  # X's write: applied, answered 8 s later
    env = delivery_env(redis_url, tmp_path / "out", proxy.base_url, SCP2FHIR_QUIET_SECONDS="1")
    worker = Worker(env, tmp_path / "w.log")
    try:
        x, x_headers = study_headers(tmp_path / "x", [("CT", 1)])
        push(redis_url, x_headers)
        wait_for(lambda: len(proxy.writes("PUT")) == 1, 20, "X's delivery to be under way")
        y, y_headers = study_headers(tmp_path / "y", [("MR", 12)])
        push(redis_url, y_headers[:2])
        y_file = tmp_path / "out" / "ImagingStudy" / f"{y.study_uid}.json"
        wait_for(y_file.exists, 20, "Y's first emission")
        # Y keeps receiving (a slow sender), so it is open whenever its queued job runs.
        skipped = "skipped: the study is receiving again"
        sent = 2
        for header in y_headers[2:]:
            push(redis_url, [header])
            sent += 1
            if skipped in job_results(redis_url):
                break
            time.sleep(0.5)
        assert skipped in job_results(redis_url), "Y's queued delivery was not skipped"
        resource = wait_delivered(proxy.base_url, y.study_uid, sent, timeout=30)
        assert resource["meta"]["versionId"] == "1", "delivered once, with everything"
        y_writes = [p for p in proxy.writes("PUT") if y.study_uid in p.path]
        assert len(y_writes) == 1, "the skipped job sent nothing"
        wait_delivered(proxy.base_url, x.study_uid, 1)
    finally:
        worker.stop()


def job_results(redis_url: str) -> str:
    """The results of the finished delivery jobs, joined (what each job returned)."""
    from rq.job import Job
    from rq.registry import FinishedJobRegistry

    connection = redis.Redis.from_url(redis_url)
    try:
        registry = FinishedJobRegistry(keys.DELIVER_QUEUE, connection=connection)
        jobs = Job.fetch_many(registry.get_job_ids(), connection=connection)
        return "\n".join(str(job.return_value()) for job in jobs if job is not None)
    finally:
        connection.close()


# --- what the server offers --------------------------------------------------------------


def test_without_transactions_a_bundle_study_is_delivered_as_its_imaging_study(
    proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    def no_transactions(statement: dict[str, Any]) -> dict[str, Any]:
        for rest in statement["rest"]:
            rest["interaction"] = [
                i for i in rest.get("interaction", []) if i.get("code") != "transaction"
            ]
        return statement

    proxy.edit_capabilities = no_transactions
    env = delivery_env(
        redis_url,
        tmp_path / "out",
        proxy.base_url,
        SCP2FHIR_FHIR_BUNDLE="1",
        SCP2FHIR_PATIENT_ID_SYSTEM="urn:oid:1.2.3.4",
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        study, headers = study_headers(tmp_path / "s", [("CT", 2)])
        push(redis_url, headers)
        resource = wait_delivered(proxy.base_url, study.study_uid, 2, timeout=20)
        writes = [(p.method, p.path.split("?")[0]) for p in proxy.writes()]
        assert writes == [("PUT", "/fhir/ImagingStudy")], "the ImagingStudy alone, no Bundle"
        assert resource["subject"].get("identifier"), "by identifier: no Patient was written"
        assert httpx.get(f"{proxy.base_url}/Patient", timeout=10).json().get("entry") is None
        # The Bundle is still written to the folder, as configured.
        assert list((tmp_path / "out" / "Bundle").glob("*.json"))
        assert "does not take transaction Bundles" in worker.text()
    finally:
        worker.stop()


def test_the_capability_statement_is_read_once_and_shared_then_read_again(
    proxy: FaultProxy, redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    """Read at the first delivery, cached in Redis for 10 minutes for every worker (each
    delivery runs in a fresh process), read again once the cache entry is gone."""
    env = delivery_env(redis_url, tmp_path / "out", proxy.base_url)

    def metadata_reads() -> int:
        return len([p for p in proxy.seen if p.path.split("?")[0].endswith("/metadata")])

    first = Worker(env, tmp_path / "w1.log")
    try:
        for name in ("a", "b"):
            study, headers = study_headers(tmp_path / name, [("CT", 1)])
            push(redis_url, headers)
            wait_delivered(proxy.base_url, study.study_uid, 1, timeout=20)
    finally:
        first.stop()
    assert metadata_reads() == 1
    cached = [k for k in data.scan_iter(keys.fhir_capabilities("*"))]
    assert len(cached) == 1
    assert 0 < data.ttl(cached[0]) <= 600
    assert json.loads(data.get(cached[0]) or "{}")["conditional_update"] is True

    second = Worker(env, tmp_path / "w2.log")  # another worker process: the same cache
    try:
        study, headers = study_headers(tmp_path / "c", [("CT", 1)])
        push(redis_url, headers)
        wait_delivered(proxy.base_url, study.study_uid, 1, timeout=20)
        assert metadata_reads() == 1
        data.delete(cached[0])  # what its expiry does after 10 minutes
        study, headers = study_headers(tmp_path / "d", [("CT", 1)])
        push(redis_url, headers)
        wait_delivered(proxy.base_url, study.study_uid, 1, timeout=20)
        assert metadata_reads() == 2
    finally:
        second.stop()


# --- certificates --------------------------------------------------------------------------


def refused_twice(worker: Worker) -> bool:
    """The worker's log shows two failed attempts on an unverifiable certificate."""
    return worker.text().count("CERTIFICATE_VERIFY_FAILED") >= 2


def _tls_server_context(tmp: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """A server context with a certificate of one private CA; that CA, and another's."""
    ca, server, _ = make_pki(tmp / "pki")
    other_ca, _, _ = make_pki(tmp / "other")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert, server.key)
    return context, ca, other_ca


def test_a_fhir_server_with_an_untrusted_certificate_gets_nothing(
    fhir: FhirServer, redis_url: str, tmp_path: Path
) -> None:
    context, ca, other_ca = _tls_server_context(tmp_path)
    tls_proxy = FaultProxy(fhir.root_url, tls=context).start()
    try:
        study, headers = study_headers(tmp_path / "s", [("CT", 1)])
        for trusted, log in ((other_ca, "untrusted.log"), (None, "system.log")):
            extra = {"SCP2FHIR_FHIR_CA_BUNDLE": str(trusted)} if trusted else {}
            env = delivery_env(redis_url, tmp_path / "out", tls_proxy.base_url, **extra)
            worker = Worker(env, tmp_path / log)
            try:
                if trusted is other_ca:
                    push(redis_url, headers)
                wait_for(partial(refused_twice, worker), 30, "repeated refused handshakes")
            finally:
                worker.stop()
            assert tls_proxy.seen == [], "not one request got through the handshake"
            assert pending(redis_url) == [study.study_uid]
        # The control: the CA that did sign it is trusted, and the same study lands.
        env = delivery_env(
            redis_url, tmp_path / "out", tls_proxy.base_url, SCP2FHIR_FHIR_CA_BUNDLE=str(ca)
        )
        worker = Worker(env, tmp_path / "trusted.log")
        try:
            wait_delivered(fhir.base_url, study.study_uid, 1, timeout=30)
        finally:
            worker.stop()
    finally:
        tls_proxy.stop()


def test_a_token_server_with_an_untrusted_certificate_gets_no_secret(
    fhir: FhirServer, proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    context, ca, other_ca = _tls_server_context(tmp_path)
    tokens = TokenServer("scp2fhir-bridge", secret="s3cret-of-the-bridge").start()
    assert tokens._server is not None
    tokens._server.socket = context.wrap_socket(tokens._server.socket, server_side=True)
    token_url = tokens.url.replace("http://", "https://")
    proxy.require_bearer = tokens.valid
    auth = {
        "SCP2FHIR_FHIR_AUTH": "client-credentials",
        "SCP2FHIR_FHIR_TOKEN_URL": token_url,
        "SCP2FHIR_FHIR_CLIENT_ID": "scp2fhir-bridge",
        "SCP2FHIR_FHIR_CLIENT_SECRET": "s3cret-of-the-bridge",
    }
    try:
        study, headers = study_headers(tmp_path / "s", [("CT", 1)])
        env = delivery_env(
            redis_url,
            tmp_path / "out",
            proxy.base_url,
            SCP2FHIR_FHIR_CA_BUNDLE=str(other_ca),
            **auth,
        )
        worker = Worker(env, tmp_path / "untrusted.log")
        try:
            push(redis_url, headers)
            wait_for(partial(refused_twice, worker), 30, "refused handshakes with the token server")
        finally:
            worker.stop()
        assert tokens.requests == 0, "the secret never left: no token request was read"
        assert proxy.writes() == []
        assert "s3cret-of-the-bridge" not in worker.text()
        env = delivery_env(
            redis_url, tmp_path / "out", proxy.base_url, SCP2FHIR_FHIR_CA_BUNDLE=str(ca), **auth
        )
        worker = Worker(env, tmp_path / "trusted.log")
        try:
            wait_delivered(fhir.base_url, study.study_uid, 1, timeout=30)
        finally:
            worker.stop()
        assert tokens.requests >= 1
    finally:
        tokens.stop()


# --- logs ------------------------------------------------------------------------------------


def test_delivery_logs_at_debug_hold_no_patient_data(
    proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    """A worker at DEBUG delivers a study Bundle (Patient included) through a first
    attempt that fails, a rejected one and a success: its whole log (RQ, httpx, httpcore,
    scp2fhir) has the study's UID but not the patient's name, ID or birth date."""
    proxy.inject(method="POST", status=500)
    env = delivery_env(
        redis_url,
        tmp_path / "out",
        proxy.base_url,
        SCP2FHIR_LOG_LEVEL="DEBUG",
        SCP2FHIR_FHIR_BUNDLE="1",
        SCP2FHIR_PATIENT_ID_SYSTEM="urn:oid:1.2.3.4",
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        study, headers = study_headers(tmp_path / "s", [("CT", 2)])
        push(redis_url, with_patient(headers))
        resource = wait_delivered(proxy.base_url, study.study_uid, 2, timeout=30)
        patient = httpx.get(f"{proxy.base_url}/{resource['subject']['reference']}", timeout=10)
        assert patient.json()["identifier"][0]["value"] == PATIENT["id"], "the data went out"
        wait_for(
            lambda: f"study={study.study_uid} destination=default delivered" in worker.text(),
            10,
            "the log",
        )
    finally:
        worker.stop()
    log = worker.text()
    assert "DEBUG" in log and "attempt 1/" in log
    for secret in (*PATIENT.values(), "Doe", "Jane", "1970-01-01"):
        assert secret not in log, f"{secret!r} in the delivery log"
