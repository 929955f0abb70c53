"""Operations: `scp2fhir status`, the web endpoint (metrics, health, status page), logs,
refusals, progress display. Real SCP and worker processes, real Redis, real senders."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from pynetdicom import AE

from scp import keys, logs
from scp.access import REJECTION_REASONS
from scp.connections import connect
from scp.header import read_header
from scp.inbox import Inbox
from scp.typed_settings import from_env
from scp.up.settings import UpSettings
from scp.web import make_server
from tests.conftest import CHILD_PYTHONPATH, ROOT, pipeline_env
from tests.faults import Child, element, send_files, spawn, start_scp, start_worker, text
from tests.faults import write_part10 as write_raw_part10
from tests.support import RedisProcess, free_port, make_study, read_json, storescu, wait_for
from workers.settings import WorkerSettings

PATIENT_ID = "OPS-PATIENT-4711"
#: Long enough that `scp2fhir status` (a fresh Python each time) sees a study while it is
#: open on a loaded 2-core machine.
OPS_QUIET_SECONDS = 6.0
VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scp.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextmanager
def web_on(redis_url: str, destinations: tuple[str, ...] = (), **env: str) -> Iterator[str]:
    """`scp2fhir web`'s server in this process (knowing those delivery destinations);
    yields its base URL."""
    parsed = {"SCP2FHIR_REDIS_URL": redis_url, **env}
    up, worker = from_env(UpSettings, parsed), from_env(WorkerSettings, parsed)
    server = make_server(up, worker.quiet_seconds, connect(redis_url), free_port(), destinations)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class System:
    port: int
    env: dict[str, str]
    scp: Child
    worker: Child
    output_dir: Path

    def study_file(self, study_uid: str) -> Path:
        return self.output_dir / "ImagingStudy" / f"{study_uid}.json"


@contextmanager
def system(redis_url: str, tmp_path: Path, quiet: float = 1.5, **extra: str) -> Iterator[System]:
    """`scp2fhir scp` and `scp2fhir worker` processes on ``redis_url``."""
    port = free_port()
    env = pipeline_env(
        redis_url, tmp_path / "out", port, SCP2FHIR_QUIET_SECONDS=str(quiet), **extra
    )
    scp = start_scp(env, tmp_path / "scp.log", port)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        yield System(port, env, scp, worker, tmp_path / "out")
    finally:
        scp.stop()
        worker.stop()


def scrape(base: str) -> str:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


# --- status, page and metrics follow a study -------------------------------------------


def test_status_metrics_and_page_follow_a_study(redis_url: str, tmp_path: Path) -> None:
    with (
        system(redis_url, tmp_path, quiet=OPS_QUIET_SECONDS) as sys_,
        web_on(redis_url, SCP2FHIR_QUIET_SECONDS=str(OPS_QUIET_SECONDS)) as web,
    ):
        study = make_study(tmp_path / "study", [("CT", 5), ("MR", 3)], patient_id=PATIENT_ID)
        storescu(sys_.port, study.files)

        # While the study is open, status names it with its counts (once folded).
        def listed() -> dict[str, object] | None:
            snap = json.loads(cli("status", "--json", env=sys_.env).stdout)
            for entry in snap["open_studies"]:
                if entry["study_uid"] == study.study_uid and entry["instances"] == 8:
                    return dict(entry)
            return None

        entry = wait_for(listed, OPS_QUIET_SECONDS, "the open study in `status`", step=0.2)
        assert entry["series"] == 2
        text_out = cli("status", env=sys_.env).stdout
        assert study.study_uid in text_out and PATIENT_ID not in text_out

        page = httpx.get(f"{web}/", timeout=10).text
        assert study.study_uid in page and PATIENT_ID not in page

        # After the quiet period it moves to "last emitted", with its counts, how late it
        # was and where it went (the folder only: no FHIR server here).
        wait_for(lambda: sys_.study_file(study.study_uid).exists(), 30, "emission")
        assert read_json(sys_.study_file(study.study_uid))["numberOfInstances"] == 8
        snap = json.loads(cli("status", "--json", env=sys_.env).stdout)
        (emitted,) = [e for e in snap["emitted"] if e["study_uid"] == study.study_uid]
        assert (emitted["series"], emitted["instances"], emitted["delivery"]) == (2, 8, "folder")
        assert 0 <= emitted["after_quiet_ms"] < 30_000
        text_out = cli("status", env=sys_.env).stdout
        assert re.search(
            rf"{re.escape(study.study_uid)}\s+2\s+8\s+\d+s ago\s+[\d.]+s\s+folder", text_out
        )

        def scraped() -> str | None:
            body = scrape(web)
            return (
                body
                if 'scp2fhir_instances_received_total{status="0x0000"} 8.0' in body
                and "scp2fhir_emissions_total 1.0" in body
                else None
            )

        body = wait_for(scraped, 15, "the metrics to show the study", step=0.3)
        assert 'scp2fhir_associations_total{calling_ae="TESTSCU"}' in body
        assert "scp2fhir_receive_to_redis_seconds_count 8.0" in body
        assert "scp2fhir_last_instance_to_emitted_seconds_count 1.0" in body
        assert "scp2fhir_emitted_after_quiet_seconds_count 1.0" in body
        assert "scp2fhir_instances_folded_total 8.0" in body
        assert "scp2fhir_open_studies 0.0" in body
        assert "scp2fhir_redis_up 1.0" in body
        assert httpx.get(f"{web}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{web}/readyz", timeout=5).status_code == 200

        # The page: the study's row with counts, delay and destinations; this minute's
        # throughput in the last hour's history (/status.json) and charts (the page).
        page = httpx.get(f"{web}/", timeout=10).text
        row = re.search(rf"<tr><td>{re.escape(study.study_uid)}</td>.*?</tr>", page)
        assert row and "<td>2</td><td>8</td>" in row.group(0) and "folder" in row.group(0)
        history = httpx.get(f"{web}/status.json", timeout=10).json()["history"]
        assert len(history) == 60
        assert sum(m["received"] for m in history) == 8
        assert sum(m["emitted"] for m in history) == 1
        assert (
            page.count("<svg") == 4
            and "<rect" in page
            and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
        )


def test_readiness_follows_redis(tmp_path: Path) -> None:
    own = RedisProcess().start()
    try:
        with web_on(own.url) as base:
            assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
            own.stop()
            assert httpx.get(f"{base}/readyz", timeout=15).status_code == 503
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            # /metrics still answers, and says Redis is down (the alert's input).
            assert "scp2fhir_redis_up 0.0" in scrape(base)
    finally:
        own.stop()


def test_web_requires_credentials_when_configured(redis_url: str) -> None:
    with web_on(
        redis_url, SCP2FHIR_DASHBOARD_USERNAME="ops", SCP2FHIR_DASHBOARD_PASSWORD="s3cret"
    ) as base:
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 401
        assert httpx.get(f"{base}/metrics", auth=("ops", "wrong"), timeout=5).status_code == 401
        assert httpx.get(f"{base}/metrics", auth=("ops", "s3cret"), timeout=5).status_code == 200


# --- dead letters of both kinds (issue 14.4) -------------------------------------------


def test_both_kinds_of_dead_letter_in_status_page_and_metrics(
    redis_url: str, tmp_path: Path
) -> None:
    closed_port = free_port()  # nothing listens: every delivery fails
    with (
        system(
            redis_url,
            tmp_path,
            SCP2FHIR_FHIR_BASE_URL=f"http://127.0.0.1:{closed_port}/fhir",
            SCP2FHIR_FHIR_MAX_ATTEMPTS="1",
        ) as sys_,
        web_on(redis_url, destinations=("default",)) as web,
    ):
        # A delivery dead letter: the study is emitted, its FHIR delivery given up.
        delivered = make_study(tmp_path / "a", [("CT", 2)])
        storescu(sys_.port, delivered.files)
        data = connect(redis_url)
        wait_for(
            lambda: data.data.hexists(keys.DELIVER_FAILED, delivered.study_uid),
            60,
            "the delivery to be dead-lettered",
            step=0.3,
        )
        # An inbox dead letter: an entry whose header belongs to another study (what the
        # fold refuses to fold), pushed the way the SCP pushes.
        other = make_study(tmp_path / "b", [("MR", 1)])
        Inbox(data.data, data.rq).push(generate_uid(), read_header(other.files[0]).json)
        wait_for(lambda: data.data.llen(keys.DEAD_LETTER) == 1, 30, "the inbox dead letter")

        snap = json.loads(cli("status", "--json", env=sys_.env).stdout)
        assert (snap["inbox_dead_letters"], snap["delivery_dead_letters"]) == (1, 1)
        (emitted,) = [e for e in snap["emitted"] if e["study_uid"] == delivered.study_uid]
        assert emitted["delivery"] == "dead-lettered"
        text_out = cli("status", env=sys_.env).stdout
        assert "dead letters: 1 inbox (instances no worker could fold), 1 delivery" in text_out

        def failure_counted() -> str | None:
            body = scrape(web)
            failed = 'scp2fhir_delivery_failures_total{destination="default"} 1.0'
            return body if failed in body else None

        body = wait_for(failure_counted, 15, "the failure count")
        assert "scp2fhir_inbox_dead_letters 1.0" in body
        assert 'scp2fhir_delivery_dead_letters{destination="default"} 1.0' in body
        page = httpx.get(f"{web}/", timeout=10).text
        assert "inbox dead letters: 1" in page and "delivery dead letters: 1" in page
        assert "dead-lettered" in page
        data.close()


# --- refusals: one line and one count each (issue 14.5) ---------------------------------


def associate(
    port: int, calling: str, called: str = "SCP2FHIR", context: str = VERIFICATION
) -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = 10
    ae.add_requested_context(context)
    return ae.associate("127.0.0.1", port, ae_title=called)


def rejection_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " rejected: " in line]


def test_every_refusal_is_logged_and_counted(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = pipeline_env(
        redis_url,
        tmp_path / "out",
        port,
        SCP2FHIR_ALLOWED_CALLING_AETS="CT01,MR02,PROBE",
        SCP2FHIR_MAX_ASSOCIATIONS="2",
        SCP2FHIR_MAX_ASSOCIATIONS_PER_AE="1",
        SCP2FHIR_ACSE_TIMEOUT="1",
    )
    scp = start_scp(env, tmp_path / "scp.log", port)
    guarded_port = free_port()
    guarded = spawn(
        "scp",
        [sys.executable, "-m", "scp.cli", "scp"],
        {**env, "SCP2FHIR_PORT": str(guarded_port), "SCP2FHIR_ALLOWED_PEERS": "10.0.0.0/8"},
        tmp_path / "guarded.log",
    )
    try:
        refusals: dict[str, str] = {}
        assert associate(port, "CT01", called="WRONG").is_rejected
        refusals["called-ae-title"] = "calling=CT01 called=WRONG"
        assert associate(port, "INTRUDER").is_rejected
        refusals["calling-ae-title"] = "calling=INTRUDER called=SCP2FHIR"
        held = associate(port, "CT01")
        assert held.is_established
        assert associate(port, "CT01").is_rejected
        refusals["per-ae-limit"] = "calling=CT01 called=SCP2FHIR"
        other = associate(port, "MR02")
        assert other.is_established
        assert associate(port, "PROBE").is_rejected
        refusals["max-associations"] = "calling=PROBE called=SCP2FHIR"
        held.release()
        other.release()
        unsupported = associate(port, "MR02", context="1.2.3.4.5.6.7.8")
        assert not unsupported.is_established
        refusals["no-presentation-context"] = "calling=MR02 called=SCP2FHIR"
        with socket.create_connection(("127.0.0.1", port)) as http:
            http.sendall(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n")
            http.settimeout(10)
            while http.recv(4096):
                pass  # until the SCP closes it
        refusals["protocol-error"] = "peer=127.0.0.1"
        with socket.create_connection(("127.0.0.1", port)) as silent:
            silent.settimeout(10)
            assert silent.recv(4096) == b""  # closed by the SCP after the ACSE timeout
        refusals["acse-timeout"] = "peer=127.0.0.1"
        socket.create_connection(("127.0.0.1", port)).close()  # a port check: not refused
        wait_for(lambda: "listening" in guarded.output(), 20, "the guarded SCP")
        with socket.create_connection(("127.0.0.1", guarded_port)) as refused:
            refused.settimeout(10)
            assert refused.recv(4096) == b""
        refusals["peer"] = "peer=127.0.0.1"

        def logged() -> list[str] | None:
            lines = rejection_lines(scp.output()) + rejection_lines(guarded.output())
            return lines if len(lines) >= len(refusals) else None

        lines = wait_for(logged, 20, "a line per refusal")
        assert len(lines) == len(refusals), "\n".join(lines)
        for reason, who in refusals.items():
            (line,) = [line for line in lines if f"rejected: {reason} " in line]
            assert "WARNING" in line and "peer=127.0.0.1" in line and who in line, line
            assert "assoc=" in line

        with web_on(redis_url) as web:

            def counted() -> dict[Any, float] | None:
                found = samples(scrape(web))
                total = sum(
                    v for (n, _), v in found.items() if n == "scp2fhir_association_rejections_total"
                )
                return found if total >= len(refusals) else None

            found = wait_for(counted, 15, "the counts", step=0.3)
        for reason in REJECTION_REASONS:
            expected = 1.0 if reason in refusals else 0.0
            key = ("scp2fhir_association_rejections_total", (("reason", reason),))
            assert found[key] == expected, reason
    finally:
        scp.stop()
        guarded.stop()


# --- logs an operator reads (issue 14.6) --------------------------------------------------


def test_default_log_is_what_an_operator_reads(redis_url: str, tmp_path: Path) -> None:
    with system(redis_url, tmp_path, SCP2FHIR_LOG_HASH_UIDS="1") as sys_:
        studies = [make_study(tmp_path / f"s{n}", [("CT", 2)]) for n in range(8)]
        # Eight associations within a second or so: pynetdicom names them by the second.
        senders = [
            threading.Thread(target=send_files, args=(sys_.port, study.files)) for study in studies
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        for study in studies:
            wait_for(lambda s=study: sys_.study_file(s.study_uid).exists(), 60, "emission")  # type: ignore[misc]
        wait_for(lambda: sys_.worker.output().count(" emitted ") >= 8, 20, "the emission lines")
    scp_log, worker_log = sys_.scp.output(), sys_.worker.output()

    # RQ's per-job lines are not in the default (INFO) log; the worker's own lines are.
    assert not re.search(r"INFO worker\[\d+\] rq\.", worker_log), worker_log[:3000]
    assert len(worker_log.splitlines()) < 40, worker_log[:3000]
    # Each association has a name of its own.
    names = re.findall(r"assoc=(\S+) calling=FAULTSCU peer=127\.0\.0\.1 released", scp_log)
    assert len(names) == 8 and len(set(names)) == 8, scp_log
    # UIDs are hashed, the peer's address is not, and no line names a file that is not there.
    for study in studies:
        assert study.study_uid not in scp_log + worker_log
    assert logs.hash_uid(studies[0].study_uid) in worker_log
    for place in re.findall(r"\b(?:path|folder|output)=(\S+)", worker_log):
        assert Path(place).exists(), place


def test_json_logs_and_hashed_uids(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "test", "json", hash_uids=True)
    try:
        logging.getLogger("scp.test").info(
            "study=%s emitted peer=%s", "1.2.840.113619.2.55.3.1", "192.168.10.20"
        )
        line = capsys.readouterr().err.strip().splitlines()[-1]
        entry = json.loads(line)
        assert entry["process"] == "test" and entry["level"] == "INFO"
        assert "1.2.840.113619" not in entry["message"]
        # The expected hash is computed here, not by the function under test.
        import hashlib

        expected = "uid:" + hashlib.sha256(b"1.2.840.113619.2.55.3.1").hexdigest()[:12]
        assert entry["message"] == f"study={expected} emitted peer=192.168.10.20"
        # A path with a UID is replaced whole: half-hashed, it would name no file.
        logging.getLogger("scp.test").warning("file=%s skipped", "/in/1.2.840.113619.2.55.3.1.dcm")
        entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert entry["message"] == f"file=<path with {expected}> skipped"
    finally:
        logging.getLogger().handlers.clear()


# --- label values and log lines are data (issue 12.6) ------------------------------------


def test_metrics_survive_any_label_value_and_any_stored_field(
    redis_url: str, tmp_path: Path
) -> None:
    with system(redis_url, tmp_path) as sys_, web_on(redis_url) as web:
        calling = 'PACS|"A"{B}='  # allowed in an AE title, and each once broke a parser
        assoc = associate(sys_.port, calling)
        assert assoc.is_established
        assoc.release()
        raw = redis.Redis.from_url(redis_url)
        # What a buggy or older writer (or a person) might leave in the counters hash.
        raw.hset(
            keys.METRICS_COUNTERS,
            mapping={
                b"\xff\xfe\x00garbage": b"1",
                b"associations_total|calling_ae=X|Y": b"3",  # scp2fhir 0.1, with a |
                b'["associations_total",{"calling_ae":5}]': b"1",
                b'["associations_total",{"nope":"x"}]': b"1",
                b'["instances_received_total",{"status":"0x0000"}]': b"not a number",
                b'["no such counter",{}]': b"1",
                b"[broken json": b"1",
                b"associations_total|calling_ae=OLD": b"2",  # 0.1, readable: kept
            },
        )
        raw.hset(
            keys.metrics_histogram("receive_to_redis_seconds"),
            mapping={b"\xff": b"1", b"le=0.001": b"x"},
        )
        raw.close()

        def shown() -> dict[Any, float] | None:
            found = samples(scrape(web))
            key = ("scp2fhir_associations_total", (("calling_ae", calling),))
            return found if key in found else None

        found = wait_for(shown, 15, "the association under its calling AE title", step=0.3)
        assert found["scp2fhir_associations_total", (("calling_ae", "OLD"),)] == 2.0
        assert not [k for k in found if k[0] == "scp2fhir_associations_total" and "X" in str(k)]
        assert ("scp2fhir_receive_to_redis_seconds_count", ()) in found

        # A peer's data with a line break cannot forge a log line.
        forged = "1.2.3.4\n2026-01-01 00:00:00,000 ERROR scp[1] scp.server: FORGED"
        body = element(0x00080016, "UI", text(CT, b"\0")) + element(
            0x00080018, "UI", text("1.2.3.4", b"\0")
        )
        path = write_raw_part10(tmp_path / "forged.dcm", body, CT, forged)
        send_files(sys_.port, [path])
        wait_for(lambda: "FORGED" in sys_.scp.output(), 10, "the refusal's log line")
    forged_lines = [line for line in sys_.scp.output().splitlines() if "FORGED" in line]
    assert forged_lines and all("scp.handlers" in line for line in forged_lines)
    assert "\\n2026-01-01" in forged_lines[0]


# --- no patient data from libraries, at any level or format (issue 12.7) ------------------

PHI = "PID-QX-73914-ZZ"

#: One element of each VR, by tag (mostly patient-level ones a RIS fills).
EVERY_VR = {
    "AE": 0x00400241, "AS": 0x00101010, "AT": 0x00209165, "CS": 0x00080060,
    "DA": 0x00100030, "DS": 0x00101030, "DT": 0x0008002A, "FD": 0x00189089,
    "FL": 0x00189087, "IS": 0x00200013, "LO": 0x00101000, "LT": 0x00104000,
    "PN": 0x00101001, "SH": 0x00200010, "SL": 0x00186020, "SS": 0x00189219,
    "ST": 0x00080081, "TM": 0x00080030, "UC": 0x00189930, "UI": 0x00081155,
    "UL": 0x00081161, "UR": 0x00080120, "US": 0x00280010, "UT": 0x00180040,
}  # fmt: skip


def malformed_everywhere(folder: Path, study: str) -> Path:
    """An instance whose every VR holds the patient's ID where it does not belong: a
    bad number, date, UID, a text with control characters... (a RIS's mapping bug)."""
    sop, series = generate_uid(), generate_uid()
    parts = {
        0x00080005: element(0x00080005, "CS", text("ISO_IR 144")),  # through pydicom
        0x00080016: element(0x00080016, "UI", text(CT, b"\0")),
        0x00080018: element(0x00080018, "UI", text(sop, b"\0")),
        0x00100020: element(0x00100020, "LO", text(PHI)),
        0x0020000D: element(0x0020000D, "UI", text(study, b"\0")),
        0x0020000E: element(0x0020000E, "UI", text(series, b"\0")),
    }
    for vr, tag in EVERY_VR.items():
        value = PHI + "\x01\\" * 3 if vr in ("LO", "LT", "PN", "SH", "ST", "UC", "UT") else PHI
        parts[tag] = element(tag, vr, text(value))
    body = b"".join(parts[tag] for tag in sorted(parts))
    return write_raw_part10(folder / "malformed.dcm", body, CT, sop)


@pytest.mark.parametrize(
    ("level", "fmt"), [("ERROR", "text"), ("WARNING", "json"), ("DEBUG", "text")]
)
def test_library_warnings_follow_level_and_format_and_carry_no_values(
    redis_url: str, tmp_path: Path, level: str, fmt: str
) -> None:
    study = generate_uid()
    path = malformed_everywhere(tmp_path, study)
    with system(
        redis_url,
        tmp_path,
        SCP2FHIR_LOG_LEVEL=level,
        SCP2FHIR_LOG_FORMAT=fmt,
        PYTHONWARNINGS="always",
    ) as sys_:
        (answer,) = send_files(sys_.port, [path])
        assert answer in (0x0000, 0xB006)
        wait_for(lambda: sys_.study_file(study).exists(), 30, "the study to be emitted")
        assert read_json(sys_.study_file(study))["subject"]["identifier"]["value"] == PHI
    outputs = {"scp": sys_.scp.output(), "worker": sys_.worker.output()}
    for name, output in outputs.items():
        assert PHI.lower() not in output.lower(), f"patient data in the {name} log"
        lines = output.splitlines()
        if level == "ERROR":
            assert not [line for line in lines if " ERROR " not in line], f"{name}: {lines}"
        if fmt == "json":
            entries = [json.loads(line) for line in lines]  # every line is one JSON object
            assert all(e["level"] in ("WARNING", "ERROR") for e in entries)
    if level == "WARNING":
        # pydicom did complain about the UI value: it was heard, and masked.
        assert "Invalid value for VR UI: '…'" in outputs["scp"]
    if level == "DEBUG":
        assert "DEBUG" in outputs["scp"] and "DEBUG" in outputs["worker"]


# --- the command line --------------------------------------------------------------------


def test_version_and_bind_flags(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": CHILD_PYTHONPATH}
    version = cli("--version", env=env)
    assert version.returncode == 0 and re.fullmatch(r"scp2fhir \d+\.\d+\.\d+\S*\n", version.stdout)
    port = free_port()
    scp = spawn(
        "scp",
        [sys.executable, "-m", "scp.cli", "scp", "--bind", "127.0.0.2", "--port", str(port)],
        {**env, "SCP2FHIR_REDIS_URL": redis_url},
        tmp_path / "scp.log",
    )
    try:
        wait_for(lambda: "listening on 127.0.0.2:" in scp.output(), 20, "the SCP")
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.2", port)) == 0
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "bound to 127.0.0.2 only"
    finally:
        scp.stop()


def test_convert_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", [("CT", 3)])
    env = {**os.environ, "PYTHONPATH": CHILD_PYTHONPATH}
    piped = cli("convert", str(tmp_path / "study"), env=env)
    assert piped.returncode == 0 and "\r" not in piped.stderr
    # On a terminal (a pty for stderr) the count is shown.
    leader, follower = pty.openpty()
    result = subprocess.run(
        [sys.executable, "-m", "scp.cli", "convert", str(study.files[0].parent)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=follower,
        timeout=60,
    )
    os.close(follower)
    shown = b""
    try:
        while chunk := os.read(leader, 4096):
            shown += chunk
    except OSError:
        pass  # the pty is drained once the child has gone
    os.close(leader)
    assert result.returncode == 0
    assert b"read 3 instances, 0 unreadable files" in shown
    assert len(result.stdout.splitlines()) == 1


def test_docker_files_are_valid() -> None:
    command = ["docker-compose", "-f", str(ROOT / "docker/compose.yaml"), "config", "-q"]
    unset = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_DASHBOARD")},
    )
    assert unset.returncode != 0, "the dashboard must not start without credentials"
    assert "set SCP2FHIR_DASHBOARD_" in unset.stderr + unset.stdout
    compose = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "SCP2FHIR_DASHBOARD_USERNAME": "ops",
            "SCP2FHIR_DASHBOARD_PASSWORD": "secret",
        },
    )
    assert compose.returncode == 0, compose.stderr
    lint = subprocess.run(
        ["hadolint", str(ROOT / "docker/Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout


# --- the README's sender settings are the ones that work (issue 14.13) --------------------


def readme_block(heading: str, language: str) -> str:
    """The first ```language block under the README heading ``heading``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"\n### {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block under {heading}"
    return match.group(1)


def test_orthanc_routes_stable_studies_to_scp2fhir(redis_url: str, tmp_path: Path) -> None:
    """Debian's Orthanc with the README's modality entry and Lua script, as they are:
    a study uploaded to Orthanc reaches scp2fhir and is emitted."""
    orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    assert Path(orthanc).exists(), "Debian's orthanc is installed by tests/run.sh"
    with system(redis_url, tmp_path) as sys_:
        lua = tmp_path / "scp2fhir.lua"
        lua.write_text(readme_block("Orthanc", "lua"))
        snippet = json.loads("{" + readme_block("Orthanc", "json") + "}")
        # The README's entry, pointed at this test's SCP; its Lua script, from here.
        (entry,) = snippet["DicomModalities"].values()
        assert entry[0] == "SCP2FHIR" and entry[2] == 11112
        modalities = {
            name: [aet, "127.0.0.1", sys_.port]
            for name, (aet, _, _) in snippet["DicomModalities"].items()
        }
        http_port = free_port()
        config = {
            "Name": "scp2fhir-test",
            "StorageDirectory": str(tmp_path / "orthanc-db"),
            "IndexDirectory": str(tmp_path / "orthanc-db"),
            "HttpPort": http_port,
            "DicomPort": free_port(),
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StableAge": 2,
            "Plugins": [],
            "DicomModalities": modalities,
            "LuaScripts": [str(lua)],
        }
        (tmp_path / "orthanc.json").write_text(json.dumps(config))
        server = spawn(
            "orthanc",
            [orthanc, str(tmp_path / "orthanc.json")],
            {**os.environ, "TCP_NODELAY": "1"},
            tmp_path / "orthanc.log",
        )
        try:
            base = f"http://127.0.0.1:{http_port}"

            def answers() -> bool:
                try:
                    return httpx.get(f"{base}/system", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(answers, 30, "Orthanc's REST API", step=0.2)
            study = make_study(tmp_path / "study", [("CT", 3), ("MR", 2)])
            for path in study.files:
                httpx.post(f"{base}/instances", content=path.read_bytes(), timeout=30)
            wait_for(lambda: sys_.study_file(study.study_uid).exists(), 60, "the routed study")
            assert read_json(sys_.study_file(study.study_uid))["numberOfInstances"] == 5
            assert "calling=ORTHANC" in sys_.scp.output()
        finally:
            server.stop()
