"""MPPS and IAN as completion signals, through the real SCP (pynetdicom's SCU sends
N-CREATE/N-SET), dcmtk storescu for the instances and a real `scp2fhir worker`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from scp import keys
from tests.conftest import ScpThread, pipeline_env, start_worker, stop_process
from tests.lifecycle_support import ian, mpps_create, mpps_set
from tests.support import make_study, read_json, storescu, wait_for

MPPS = "1.2.840.10008.3.1.2.3.3"
IAN = "1.2.840.10008.5.1.4.33"
#: Long enough that an emission within it can only come from a completion signal.
LONG_QUIET = 60.0


@dataclass
class Running:
    port: int
    out: Path
    redis_url: str

    def file(self, study_uid: str) -> Path:
        return self.out / "ImagingStudy" / f"{study_uid}.json"


@pytest.fixture
def running(redis_url: str, tmp_path: Path) -> Iterator[Running]:
    from tests.support import free_port

    port = free_port()
    env = pipeline_env(redis_url, tmp_path / "out", port, SCP2FHIR_QUIET_SECONDS=str(LONG_QUIET))
    scp = ScpThread(env).start(port)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        yield Running(port, tmp_path / "out", redis_url)
    finally:
        scp.stop()
        stop_process(worker)


class Scu:
    """One association proposing MPPS and IAN, as a modality or PACS would."""

    def __init__(self, port: int) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MPPS)
        ae.add_requested_context(IAN)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")
        assert self.assoc.is_established

    def create(self, sop_class: str, uid: str | None, ds: Dataset) -> tuple[int, Any]:
        status, reply = self.assoc.send_n_create(ds, sop_class, uid)
        return int(status.Status), reply

    def set(self, uid: str, ds: Dataset) -> int:
        return int(self.set_status(uid, ds).Status)

    def set_status(self, uid: str, ds: Dataset) -> Dataset:
        """The whole N-SET-RSP status (Status, Error Comment, Error ID)."""
        status, _ = self.assoc.send_n_set(ds, MPPS, uid)
        assert status is not None, "no N-SET-RSP"
        return status

    def close(self) -> None:
        self.assoc.release()


def test_mpps_completed_emits_before_the_quiet_period(running: Running, tmp_path: Path) -> None:
    study = make_study(tmp_path / "s", [("CT", 5), ("MR", 3)])
    scu = Scu(running.port)
    step = generate_uid()
    try:
        assert scu.create(MPPS, step, mpps_create(study.study_uid))[0] == 0x0000
        storescu(running.port, study.files)
        sent = time.monotonic()
        assert scu.set(step, mpps_set("COMPLETED", study.files)) == 0x0000
        resource = wait_for(
            lambda: (
                running.file(study.study_uid).exists() and read_json(running.file(study.study_uid))
            ),
            LONG_QUIET / 2,
            "the signalled emission",
        )
        assert time.monotonic() - sent < LONG_QUIET / 2
        assert resource["numberOfInstances"] == 8
        # The step is final: a further N-SET is refused as PS3.4 Table F.7.2-2 says.
        refused = scu.set_status(step, mpps_set("DISCONTINUED", study.files))
        assert refused.Status == 0x0110 and refused.ErrorID == 0xA710
        assert refused.ErrorComment == "Performed Procedure Step Object may no longer be updated"
        # ... whatever the N-SET holds: the step's state is checked first.
        refused = scu.set_status(step, mpps_set("FINISHED", study.files))
        assert refused.Status == 0x0110 and refused.ErrorID == 0xA710
    finally:
        scu.close()


def test_mpps_listing_instances_not_arrived_waits(running: Running, tmp_path: Path) -> None:
    study = make_study(tmp_path / "s", [("CT", 4)])
    scu = Scu(running.port)
    step = generate_uid()
    try:
        assert scu.create(MPPS, step, mpps_create(study.study_uid))[0] == 0x0000
        storescu(running.port, study.files[:3])
        assert scu.set(step, mpps_set("COMPLETED", study.files)) == 0x0000
        time.sleep(3)
        assert not running.file(study.study_uid).exists(), "one listed instance is missing"
        storescu(running.port, study.files[3:])  # the last one: complete now
        wait_for(lambda: running.file(study.study_uid).exists(), LONG_QUIET / 2, "emission")
        assert read_json(running.file(study.study_uid))["numberOfInstances"] == 4
    finally:
        scu.close()


def test_ian_from_a_pacs_emits_at_once(running: Running, tmp_path: Path) -> None:
    study = make_study(tmp_path / "s", [("MR", 3)])
    storescu(running.port, study.files)
    scu = Scu(running.port)
    try:
        status, _ = scu.create(IAN, generate_uid(), ian(study.study_uid, study.files))
        assert status == 0x0000
        wait_for(lambda: running.file(study.study_uid).exists(), LONG_QUIET / 2, "emission")
    finally:
        scu.close()


def test_bad_mpps_input_gets_dimse_statuses_and_stores_nothing(
    running: Running, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "s", [("CT", 2)])
    other = make_study(tmp_path / "o", [("MR", 2)])
    storescu(running.port, other.files)  # its series is now known to be another study's
    data = redis.Redis.from_url(running.redis_url, decode_responses=True)
    wait_for(lambda: data.hlen(keys.study_instances(other.study_uid)) == 2, 20, "the fold")
    scu = Scu(running.port)
    try:
        # N-SET for a step nobody created.
        assert scu.set(generate_uid(), mpps_set("COMPLETED", study.files)) == 0x0112
        # N-CREATE with a final status, and without any study.
        assert (
            scu.create(MPPS, generate_uid(), mpps_create(study.study_uid, "COMPLETED"))[0] == 0x0106
        )
        no_study = mpps_create(study.study_uid)
        del no_study.ScheduledStepAttributesSequence
        assert scu.create(MPPS, generate_uid(), no_study)[0] == 0x0120
        # A valid step, then an N-SET listing another study's series; then an unknown status.
        step = generate_uid()
        assert scu.create(MPPS, step, mpps_create(study.study_uid))[0] == 0x0000
        assert scu.create(MPPS, step, mpps_create(study.study_uid))[0] == 0x0111
        assert scu.set(step, mpps_set("COMPLETED", other.files)) == 0x0106
        assert scu.set(step, mpps_set("FINISHED", study.files)) == 0x0106
        # An IAN without its study.
        bad_ian = ian(study.study_uid, study.files)
        del bad_ian.StudyInstanceUID
        assert scu.create(IAN, generate_uid(), bad_ian)[0] == 0x0120
        # Nothing of the refused requests was kept: the step is still in progress.
        signals = data.hgetall(keys.study_signals(study.study_uid))
        assert list(signals) == [f"mpps:{step}"]
        assert '"state":"IN PROGRESS"' in signals[f"mpps:{step}"]
        # The association still works.
        assert scu.set(step, mpps_set("COMPLETED", study.files)) == 0x0000
    finally:
        scu.close()
        data.close()


def test_a_final_step_listing_no_instance_is_accepted_but_shortens_nothing(
    running: Running, tmp_path: Path
) -> None:
    """PS3.4 Table F.7.2-1: a Performed Series Sequence item may reference no instance
    (Type 2). Such a COMPLETED step is valid: Success, but it proves nothing about what
    the study holds, so the quiet period decides."""
    from workers.lifecycle.completion import readiness

    study = make_study(tmp_path / "s", [("CT", 2)])
    storescu(running.port, study.files)
    data = redis.Redis.from_url(running.redis_url, decode_responses=True)
    wait_for(lambda: data.hlen(keys.study_instances(study.study_uid)) == 2, 20, "the fold")
    scu = Scu(running.port)
    step = generate_uid()
    try:
        assert scu.create(MPPS, step, mpps_create(study.study_uid))[0] == 0x0000
        completed = mpps_set("COMPLETED", study.files)
        for item in completed.PerformedSeriesSequence:
            item.ReferencedImageSequence = []
        assert scu.set(step, completed) == 0x0000
        assert not readiness(data, study.study_uid).ready
        time.sleep(3)
        assert not running.file(study.study_uid).exists()
        assert data.zscore(keys.OPEN_STUDIES, study.study_uid) is not None
    finally:
        scu.close()
        data.close()


@pytest.mark.parametrize("sop_class", [MPPS, IAN])
def test_mpps_and_ian_are_accepted_in_the_scp_role_only(running: Running, sop_class: str) -> None:
    """A peer that proposes to be the SCP of MPPS/IAN itself (SCP/SCU Role Selection,
    PS3.7 D.3.3.4) gets no such role: scp2fhir is their SCP, never their SCU."""
    from pynetdicom import build_role

    ae = AE(ae_title="INVERTED")
    ae.add_requested_context(sop_class)
    assoc = ae.associate(
        "127.0.0.1",
        running.port,
        ae_title="SCP2FHIR",
        ext_neg=[build_role(sop_class, scu_role=False, scp_role=True)],
    )
    try:
        assert assoc.is_established
        (context,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class]
        # The requestor stays the SCU (the default roles); it is never made the SCP.
        assert context.as_scu is True and context.as_scp is False
    finally:
        if assoc.is_established:
            assoc.release()


def test_an_invalid_step_uid_is_refused_and_never_logged(
    running: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import warnings

    study = make_study(tmp_path / "s", [("CT", 1)])
    scu = Scu(running.port)
    bad = "1.2.PATIENT-ID-1234"
    try:
        with caplog.at_level(logging.INFO, logger="scp.mpps"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns the SCU side about the bad UID
            # The response would carry the request's UID: a step stored under another
            # could never be found again. PS3.7: 0x0117 invalid object instance.
            assert scu.create(MPPS, bad, mpps_create(study.study_uid))[0] == 0x0117
            assert scu.set(bad, mpps_set("COMPLETED", study.files)) == 0x0112
    finally:
        scu.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "scp.mpps"]
    assert len(lines) == 2 and all("uid=<invalid>" in line for line in lines)
    assert "PATIENT" not in " ".join(lines)


def test_a_completed_step_is_answered_success_when_its_check_cannot_be_queued(
    running: Running, tmp_path: Path
) -> None:
    """The step is stored; failing the N-SET would make the modality retry one the step
    now refuses (A710). The quiet period decides instead."""
    study = make_study(tmp_path / "s", [("CT", 2)])
    storescu(running.port, study.files)
    data = redis.Redis.from_url(running.redis_url, decode_responses=True)
    scu = Scu(running.port)
    step = generate_uid()
    try:
        assert scu.create(MPPS, step, mpps_create(study.study_uid))[0] == 0x0000
        # A real Redis error on the queue the check goes to (WRONGTYPE).
        queue_key = f"rq:queue:{keys.EMIT_QUEUE}"
        raw = redis.Redis.from_url(running.redis_url)
        saved = raw.dump(queue_key)
        raw.delete(queue_key)
        raw.set(queue_key, "not a list")
        try:
            assert scu.set(step, mpps_set("COMPLETED", study.files)) == 0x0000
        finally:
            raw.delete(queue_key)
            if isinstance(saved, bytes):
                raw.restore(queue_key, 0, saved)
            raw.close()
        assert '"state":"COMPLETED"' in str(data.hget(keys.signal(f"mpps:{step}"), "signal"))
        assert data.get(keys.study_signal_check(study.study_uid)) is None, "may be tried again"
    finally:
        scu.close()
        data.close()
