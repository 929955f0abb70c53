"""The study lifecycle through `scp2fhir up` (its private Redis, SCP processes and
workers): an IOCM rejection note sent with the study removes the series it names, and
an MPPS COMPLETED emits the study long before the quiet period."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.lifecycle_support import mpps_create, mpps_set, rejection_note
from tests.support import make_study, read_json, storescu, wait_for
from tests.test_dashboard_up import running_up, up_env

MPPS = "1.2.840.10008.3.1.2.3.3"
#: Long enough that an emission within it can only come from the completion signal.
QUIET_SECONDS = 60.0


def test_rejection_and_mpps_through_up(tmp_path: Path) -> None:
    env = up_env(0, SCP2FHIR_QUIET_SECONDS=str(QUIET_SECONDS))
    port = int(env["SCP2FHIR_PORT"])
    with running_up(tmp_path, env):
        study = make_study(tmp_path / "study", [("CT", 3), ("MR", 2)])
        mr = study.files[3:]
        note = rejection_note(tmp_path / "note", mr, "113001")
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MPPS)
        assoc = wait_for(  # "ready" is said before the SCP processes listen
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
