"""The study lifecycle through `scp2fhir up` (its private Redis, SCP processes and
workers): an IOCM rejection note sent with the study removes the series it names, and
an MPPS COMPLETED emits the study long before the quiet period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.conftest import ROOT
from tests.lifecycle_support import mpps_create, mpps_set, rejection_note
from tests.support import free_port, make_study, read_json, storescu, wait_for

MPPS = "1.2.840.10008.3.1.2.3.3"
#: Long enough that an emission within it can only come from the completion signal.
QUIET_SECONDS = 60.0


def test_rejection_and_mpps_through_up(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")}
    env.update(
        {
            "SCP2FHIR_PORT": str(port),
            "SCP2FHIR_QUIET_SECONDS": str(QUIET_SECONDS),
            "SCP2FHIR_DASHBOARD_PORT": "0",
            "SCP2FHIR_WEB_PORT": "0",
            "SCP2FHIR_WORKERS": "1",
            "PYTHONPATH": str(ROOT),
        }
    )
    log_path = tmp_path / "up.log"
    log = log_path.open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "scp.cli", "up"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: b"ready:" in log_path.read_bytes(), 60, "up to be ready")
        study = make_study(tmp_path / "study", [("CT", 3), ("MR", 2)])
        mr = study.files[3:]
        note = rejection_note(tmp_path / "note", mr, "113001")
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MPPS)
        assoc = wait_for(
            lambda: (
                (a := ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")).is_established and a
            ),
            60,
            "the SCP to accept an association",
            step=0.5,
        )
        step = generate_uid()
        status, _ = assoc.send_n_create(mpps_create(study.study_uid), MPPS, step)
        assert status.Status == 0x0000
        storescu(port, [*study.files, note])
        sent = time.monotonic()
        status, _ = assoc.send_n_set(mpps_set("COMPLETED", study.files), MPPS, step)
        assert status.Status == 0x0000
        assoc.release()
        path = tmp_path / "out" / "ImagingStudy" / f"{study.study_uid}.json"
        wait_for(path.exists, QUIET_SECONDS / 2, "the signalled emission")
        assert time.monotonic() - sent < QUIET_SECONDS / 2
        resource = read_json(path)
        assert resource["numberOfSeries"] == 1 and resource["numberOfInstances"] == 3
        assert [m["code"] for m in resource["modality"]] == ["CT"]
        assert resource["meta"]["tag"][0]["system"] == "urn:scp2fhir"
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
        log.close()
    assert code == 0, log_path.read_text(errors="replace")[-3000:]
