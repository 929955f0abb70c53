"""Several destinations from one bridge, with real parts: two FHIR servers (two instances
of the Medplum router of tests/fhirserver) and a folder, real ``scp2fhir worker``
processes, one Redis. Each destination gets its own copy (version, profile, what it
leaves out, pseudonymized or not); one that is down or hangs delays no other; nothing is
lost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fhir.resources.imagingstudy import ImagingStudy as ImagingStudyR5

from scp import keys, metrics
from tests import conftest_delivery
from tests.conftest import ROOT, run_cli
from tests.conftest_delivery import (
    FAST_QUIET_SECONDS,
    FaultProxy,
    SilentServer,
    Worker,
    push,
    study_headers,
    wait_delivered,
)
from tests.fhirserver.harness import FhirServer
from tests.support import wait_for
from tests.test_pseudonymize import identifying_headers, identifying_values, leaks

# The delivery fixtures (pytest finds fixtures among a module's names).
fhir_server = conftest_delivery.fhir_server
fhir = conftest_delivery.fhir
proxy = conftest_delivery.proxy

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MII_STUDY = (
    "https://www.medizininformatik-initiative.de/fhir/ext/modul-bildgebung/"
    "StructureDefinition/mii-pr-bildgebung-bildgebungsstudie"
)
QICORE_STUDY = "http://hl7.org/fhir/us/qicore/StructureDefinition/qicore-imagingstudy"


@pytest.fixture(scope="module")
def second_server() -> Iterator[FhirServer]:
    server = FhirServer().start()
    yield server
    server.stop()


@pytest.fixture
def research_server(second_server: FhirServer) -> FhirServer:
    second_server.reset()
    return second_server


def bridge_env(redis_url: str, tmp_path: Path, configuration: str) -> dict[str, str]:
    """A worker's environment: Redis and timers in variables, destinations in the file."""
    path = tmp_path / "scp2fhir.toml"
    path.write_text(configuration, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")}
    env.update(
        {
            "SCP2FHIR_CONFIG": str(path),
            "SCP2FHIR_REDIS_URL": redis_url,
            "SCP2FHIR_QUIET_SECONDS": str(FAST_QUIET_SECONDS),
            "SCP2FHIR_OUTPUT_DIR": str(tmp_path / "out"),
            "SCP2FHIR_RETENTION_SECONDS": "3600",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


#: Short timers for every destination of these tests.
FAST = """
timeout_seconds = {timeout}
[destinations.retry]
base_seconds = 0.2
max_seconds = 1
max_attempts = 100
"""


def server_destination(
    name: str, url: str, keys: str = "", tables: str = "", timeout: float = 2
) -> str:
    """A ``[[destinations]]`` entry: its own keys, then the fast timers, then ``tables``."""
    head = f'[[destinations]]\nname = "{name}"\nurl = "{url}"\n{keys}\n'
    return head + FAST.format(timeout=timeout) + tables + "\n"


def ready(worker: Worker, *names: str) -> None:
    """Wait until the worker's delivery process of each destination serves its queue (so
    the times measured are deliveries', not interpreters starting)."""
    serving = [f"queues={keys.deliver_queue(name)} " for name in names]

    def all_serving() -> bool:
        log = worker.text()
        return all(line in log for line in serving)

    wait_for(all_serving, 60, "the destinations' delivery workers")


def from_ae(headers: list[dict[str, Any]], ae_title: str) -> list[dict[str, Any]]:
    """The headers as the SCP pushes them when ``ae_title`` sent them."""
    for header in headers:
        header["00020016"] = {"vr": "AE", "Value": [ae_title]}
    return headers


def everything(base_url: str) -> list[dict[str, Any]]:
    """Every resource a server holds (of the types a study's Bundle can create)."""
    found = []
    for kind in ("ImagingStudy", "Patient", "Device", "Endpoint", "Observation"):
        response = httpx.get(f"{base_url}/{kind}", params={"_count": 1000}, timeout=10)
        response.raise_for_status()
        found += [e["resource"] for e in response.json().get("entry", [])]
    return found


def imaging_studies(base_url: str) -> list[dict[str, Any]]:
    return [r for r in everything(base_url) if r["resourceType"] == "ImagingStudy"]


def pending_of(redis_url: str, destination: str) -> list[str]:
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        members: Any = data.zrange(keys.deliver_pending(destination), 0, -1)
        return sorted(members)
    finally:
        data.close()


def test_three_destinations_one_down_the_others_on_time_then_it_catches_up(
    proxy: FaultProxy,
    research_server: FhirServer,
    redis_url: str,
    data: redis.Redis,
    tmp_path: Path,
) -> None:
    """ehr (R4, QI-Core) is down; research (R4, MII, a pseudonymized Bundle, no MR and
    nothing the QA workstation sent) and repository (R5 folder, no CT images) get every
    study meanwhile; ehr catches up when it is back. Every copy holds what its filter
    lets through; the aggregates are kept until the last destination has them."""
    key = tmp_path / "research.key"
    key.write_text("research-key-0123456789abcdef\n")
    configuration = (
        server_destination("ehr", proxy.base_url, 'profile = "qicore"')
        + server_destination(
            "research",
            research_server.base_url,
            'profile = "mii"\nbundle = true\n',
            '[destinations.leave_out]\nmodalities = ["MR"]\ncalling_aets = ["QA_WS"]\n'
            f'[destinations.pseudonymize]\nkey_file = "{key}"\n'
            'patient_id_system = "https://dic.example.org/sid/patient"\n',
        )
        + f'[[destinations]]\nname = "repository"\nfolder = "{tmp_path / "repo"}"\n'
        f'fhir_version = "R5"\n[destinations.leave_out]\nsop_classes = ["{CT_IMAGE}"]\n'
    )
    proxy.stop()  # ehr is down: connections refused
    worker = Worker(bridge_env(redis_url, tmp_path, configuration), tmp_path / "w.log")
    try:
        ready(worker, "ehr", "research", "repository")
        mixed, headers = study_headers(tmp_path / "a", [("CT", 3), ("MR", 2)])
        _, qa_headers = study_headers(tmp_path / "qa", [("CT", 1)], study_uid=mixed.study_uid)
        only_mr, mr_headers = study_headers(tmp_path / "b", [("MR", 2)])
        push(redis_url, from_ae(headers, "MODALITY1") + from_ae(qa_headers, "QA_WS"))
        push(redis_url, from_ae(mr_headers, "MODALITY2"))
        began = time.monotonic()

        # research and repository get their copies while ehr is down.
        wait_for(lambda: len(imaging_studies(research_server.base_url)) == 1, 30, "research")
        repo = tmp_path / "repo" / "ImagingStudy"
        wait_for(lambda: len(list(repo.glob("*.json"))) == 2, 30, "the repository's files")
        wait_for(lambda: pending_of(redis_url, "research") == [], 10, "research done")
        wait_for(lambda: pending_of(redis_url, "repository") == [], 10, "repository done")
        on_time = time.monotonic() - began
        assert worker.text().count("ConnectError") >= 2, "ehr was being tried all along"
        assert pending_of(redis_url, "ehr") == sorted([mixed.study_uid, only_mr.study_uid])
        for uid in (mixed.study_uid, only_mr.study_uid):
            assert data.pttl(keys.study(uid)) == -1, "kept: ehr does not have it yet"

        (study,) = imaging_studies(research_server.base_url)
        assert study["numberOfInstances"] == 3 and study["numberOfSeries"] == 1
        assert [s["modality"]["code"] for s in study["series"]] == ["CT"]
        assert study["meta"]["profile"][0] == MII_STUDY
        assert mixed.study_uid not in json.dumps(study), "pseudonymized"
        files = {p.name: json.loads(p.read_text()) for p in repo.glob("*.json")}
        assert sorted(files) == sorted(f"{u}.json" for u in (mixed.study_uid, only_mr.study_uid))
        for resource in files.values():
            ImagingStudyR5.model_validate(resource)  # the repository's copy is R5
            assert resource["numberOfInstances"] == 2
            assert {s["modality"]["coding"][0]["code"] for s in resource["series"]} == {"MR"}

        proxy.start()  # ehr is back
        first = wait_delivered(proxy.base_url, mixed.study_uid, 6, timeout=30)
        wait_delivered(proxy.base_url, only_mr.study_uid, 2, timeout=30)
        assert first["meta"]["profile"][0] == QICORE_STUDY
        wait_for(lambda: pending_of(redis_url, "ehr") == [], 10, "ehr done")
        for uid in (mixed.study_uid, only_mr.study_uid):
            ttl = data.pttl(keys.study(uid))
            assert 0 < ttl <= 3600 * 1000, "every destination has it: the retention runs"
        assert len(imaging_studies(research_server.base_url)) == 1, "only-MR study left out"

        status = cli(bridge_env(redis_url, tmp_path, configuration), "status", "--json")
        assert status.returncode == 0, status.stderr
        rows = {d["name"]: d for d in json.loads(status.stdout)["destinations"]}
        assert set(rows) == {"ehr", "research", "repository"}
        assert all(d["pending"] == 0 and d["dead_lettered"] == 0 for d in rows.values())
        counters = data.hgetall(keys.METRICS_COUNTERS)
        attempts = "delivery_attempts_total"
        field = metrics.encode_field
        assert int(counters[field(attempts, {"destination": "ehr", "outcome": "transient"})]) >= 2
        assert int(counters[field(attempts, {"destination": "research", "outcome": "delivered"})])
        histogram = data.hgetall(keys.metrics_histogram("emitted_to_delivered_seconds"))
        for name in ("research", "repository", "ehr"):
            count = int(histogram[f"destination={name}|count"])
            mean = int(histogram[f"destination={name}|sum_us"]) / count / 1e6
            print(f"{name}: {count} studies, emitted -> delivered {mean:.2f} s on average")
        print(f"research and repository had every study {on_time:.1f} s after the push")
    finally:
        worker.stop()


def test_a_destination_that_never_answers_delays_no_other(
    research_server: FhirServer, redis_url: str, tmp_path: Path
) -> None:
    """ehr accepts connections and never answers (its timeout is far longer than the
    test); research gets every study all the same, one after another, while ehr's first
    delivery still waits for its answer."""
    silent = SilentServer()
    configuration = server_destination("ehr", silent.base_url, timeout=600) + server_destination(
        "research", research_server.base_url
    )
    worker = Worker(bridge_env(redis_url, tmp_path, configuration), tmp_path / "w.log")
    try:
        for index in range(3):
            study, headers = study_headers(tmp_path / f"s{index}", [("CT", 2)])
            push(redis_url, headers)
            # The bound is how long the test runs, not a speed: ehr's request is still
            # waiting, so a research delivery queued behind it would never come.
            wait_delivered(research_server.base_url, study.study_uid, 2, timeout=60)
            if index == 0:  # ehr's delivery process may start after research's delivered
                wait_for(lambda: silent.waiting() >= 1, 60, "ehr's first delivery to wait")
            assert silent.waiting() >= 1, "ehr's first delivery still waits for its answer"
        assert "no answer within" not in worker.text()
        assert len(pending_of(redis_url, "ehr")) == 3
    finally:
        worker.stop()
        silent.close()


def test_the_pseudonymized_copy_on_the_server_holds_no_identifying_value(
    research_server: FhirServer, redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    """Two research destinations with different keys on one server: what the server
    stores holds none of the identifying values of the sent headers; the same study sent
    again maps to the same pseudonyms (nothing new is written); the other key gives other
    ones."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.key").write_text(f"key-of-research-{name}-0123456789\n")
    pseudonymized = (
        "[destinations.pseudonymize]\n"
        'key_file = "{key}"\nbirth_date = "year"\ndates = "shift"\n'
        'patient_id_system = "https://dic.example.org/sid/patient"\n'
        'accession_system = "https://dic.example.org/sid/accession"\n'
    )
    configuration = "".join(
        server_destination(
            f"research-{name}",
            research_server.base_url,
            'profile = "mii"\nbundle = true\n',
            pseudonymized.format(key=tmp_path / f"{name}.key"),
        )
        for name in ("a", "b")
    )
    worker = Worker(bridge_env(redis_url, tmp_path, configuration), tmp_path / "w.log")
    headers = identifying_headers()
    values = identifying_values(headers)
    try:
        push(redis_url, headers)
        wait_for(lambda: len(imaging_studies(research_server.base_url)) == 2, 30, "both copies")
        wait_for(lambda: not data.exists(keys.deliver_pending("research-b")), 10, "done")
        stored = everything(research_server.base_url)
        assert {r["resourceType"] for r in stored} >= {"ImagingStudy", "Patient", "Device"}
        assert leaks(values, stored) == []
        patients = [r for r in stored if r["resourceType"] == "Patient"]
        assert sorted(p["birthDate"] for p in patients) == ["1970", "1970"]
        first = {s["id"]: s for s in imaging_studies(research_server.base_url)}
        uids = [s["identifier"][0]["value"] for s in first.values()]
        assert len(set(uids)) == 2 and all(u.startswith("urn:oid:2.25.") for u in uids)

        push(redis_url, headers)  # the same study again
        wait_for(lambda: worker.text().count("not sent again") == 2, 30, "the resend settled")
        again = {s["id"]: s for s in imaging_studies(research_server.base_url)}
        assert again.keys() == first.keys(), "the same pseudonyms: the same resources"
        assert all(s["meta"]["versionId"] == "1" for s in again.values())
        log = worker.text()
        for value in ("MRN-0042", "Doe"):
            assert value not in log
        assert re.search(r"destination=research-a delivered ImagingStudy/\S+ version=1", log)
    finally:
        worker.stop()


# --- operations: retry-failed per destination, config check --------------------------------


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


def test_retry_failed_for_one_destination(
    redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    configuration = (
        '[[destinations]]\nname = "ehr"\nurl = "http://127.0.0.1:9/fhir"\n'
        f'[[destinations]]\nname = "research"\nfolder = "{tmp_path / "r"}"\n'
    )
    env = bridge_env(redis_url, tmp_path, configuration)
    data.hset(keys.deliver_failed("ehr"), "1.2.3", "job-e")
    data.hset(keys.deliver_failed("research"), "1.2.3", "job-r")
    result = cli(env, "retry-failed", "--destination", "research")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["research", "1.2.3"]
    assert "re-queued 1 deliveries (research: 1)" in result.stderr
    assert data.hgetall(keys.deliver_failed("ehr")) == {"1.2.3": "job-e"}, "untouched"
    assert data.hlen(keys.deliver_failed("research")) == 0
    assert data.llen(f"rq:queue:{keys.deliver_queue('research')}") == 1
    assert data.llen(f"rq:queue:{keys.deliver_queue('ehr')}") == 0
    unknown = cli(env, "retry-failed", "--destination", "pacs")
    assert unknown.returncode == 2
    assert "--destination pacs: no such destination (ehr, research)" in unknown.stderr


def test_config_check_reaches_redis_and_each_destination(
    fhir: FhirServer, redis_url: str, tmp_path: Path
) -> None:
    token = "token-not-to-be-printed"
    good = (
        f'[[destinations]]\nname = "ehr"\nurl = "{fhir.base_url}"\n'
        f'[destinations.auth]\nmethod = "bearer"\ntoken = "{token}"\n'
        f'[[destinations]]\nname = "files"\nfolder = "{tmp_path / "files"}"\n'
    )
    result = cli(bridge_env(redis_url, tmp_path, good), "config", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert token not in result.stdout
    assert re.search(r"ok\s+redis redis://127\.0\.0\.1:\d+/0: PING answered", result.stdout)
    assert re.search(
        r"ok\s+destination ehr: .*: FHIR 4\.0\.1; ImagingStudy update=yes", result.stdout
    )
    assert re.search(r"ok\s+destination files: folder .* is writable", result.stdout)

    down = good + '[[destinations]]\nname = "gone"\nurl = "http://127.0.0.1:9/fhir"\n'
    result = cli(bridge_env(redis_url, tmp_path, down), "config", "check")
    assert result.returncode == 1
    assert re.search(r"FAIL\s+destination gone: .*/metadata: ServerUnavailable", result.stdout)
    r5 = good + f'[[destinations]]\nname = "r5"\nurl = "{fhir.base_url}"\nfhir_version = "R5"\n'
    result = cli(bridge_env(redis_url, tmp_path, r5), "config", "check")
    assert result.returncode == 1
    assert "FAIL  destination r5: " in result.stdout and "speaks FHIR 4.0.1" in result.stdout
    no_redis = {
        **bridge_env(redis_url, tmp_path, good),
        "SCP2FHIR_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    result = cli(no_redis, "config", "check")
    assert result.returncode == 1 and "FAIL  redis redis://127.0.0.1:9/0" in result.stdout
