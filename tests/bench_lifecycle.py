"""Benchmark part: time from the last instance to the ImagingStudy file, with an MPPS
completion signal and with the quiet period alone (`python -m tests.bench` runs it;
`python -m tests.bench_lifecycle` alone)."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.lifecycle_support import mpps_create, mpps_set
from tests.support import make_study, storescu, wait_for

MPPS = "1.2.840.10008.3.1.2.3.3"
#: The quiet period of this scenario: long enough to tell the two apart.
LATENCY_QUIET_SECONDS = 10.0


def completion_latency(reps: int, work: Path, instances: int = 100) -> None:
    from tests.bench import line
    from tests.bench_receivers import System

    print(
        f"\nlast instance -> ImagingStudy written ({instances} CT instances, "
        f"quiet period {LATENCY_QUIET_SECONDS:g}s)"
    )
    system = System({}, quiet_seconds=LATENCY_QUIET_SECONDS)
    quiet: list[float] = []
    signalled: list[float] = []
    try:
        for rep in range(reps):
            study = make_study(work / f"quiet{rep}", [("CT", instances)])
            storescu(system.port, study.files)
            sent = time.monotonic()
            wait_for(system.output(study.study_uid).exists, LATENCY_QUIET_SECONDS + 60, "file")
            quiet.append(time.monotonic() - sent)

            study = make_study(work / f"mpps{rep}", [("CT", instances)])
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(MPPS)
            assoc = ae.associate("127.0.0.1", system.port, ae_title="SCP2FHIR")
            step = generate_uid()
            assoc.send_n_create(mpps_create(study.study_uid), MPPS, step)
            storescu(system.port, study.files)
            sent = time.monotonic()
            assoc.send_n_set(mpps_set("COMPLETED", study.files), MPPS, step)
            wait_for(system.output(study.study_uid).exists, LATENCY_QUIET_SECONDS + 60, "file")
            signalled.append(time.monotonic() - sent)
            assoc.release()
    finally:
        system.stop()
    line("quiet period only (s, median)", f"{statistics.median(quiet):.2f}")
    line("MPPS COMPLETED after the last C-STORE (s, median)", f"{statistics.median(signalled):.2f}")
    line("ratio MPPS / quiet", f"{statistics.median(signalled) / statistics.median(quiet):.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    reps = int((argv or sys.argv[1:] or ["3"])[0])
    with tempfile.TemporaryDirectory(prefix="scp2fhir-bench-") as tmp:
        completion_latency(reps, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
