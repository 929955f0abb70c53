"""A private Orthanc (Debian's ``orthanc`` package) as the PACS of the reconcile tests:
its own configuration and storage in a temporary folder, free DICOM and HTTP ports on
loopback, ``TCP_NODELAY=1``. scp2fhir is one of its DICOM modalities (the move
destination and the calling AE it allows to query and move); the tests point that entry
at their own SCP through Orthanc's REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pydicom

from tests.support import GeneratedStudy, free_port, make_study, storescu, wait_for

ORTHANC = Path("/usr/sbin/Orthanc")
AE_TITLE = "ORTHANC"


class OrthancProcess:
    def __init__(self, scp_port: int = 11112, **config: Any) -> None:
        if not ORTHANC.exists():
            raise RuntimeError("Orthanc is not installed (apt-get install orthanc)")
        self.dir = Path(tempfile.mkdtemp(prefix="scp2fhir-orthanc-"))
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.config: dict[str, Any] = {
            "Name": "scp2fhir-test",
            "StorageDirectory": str(self.dir / "db"),
            "IndexDirectory": str(self.dir / "db"),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": AE_TITLE,
            "DicomPort": self.dicom_port,
            "DicomModalities": {"scp2fhir": ["SCP2FHIR", "127.0.0.1", scp_port]},
            "SaveJobs": False,
            "StableAge": 1,
            **config,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{AE_TITLE}@127.0.0.1:{self.dicom_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> OrthancProcess:
        path = self.dir / "orthanc.json"
        path.write_text(json.dumps(self.config), encoding="utf-8")
        log = (self.dir / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [str(ORTHANC), str(path)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_for(self._ready, timeout=30, what="Orthanc to answer")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/system", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """SIGTERM and wait: Orthanc holds its SQLite index until it has stopped."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self) -> str:
        path = self.dir / "orthanc.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # --- REST --------------------------------------------------------------------------

    def point_at(self, scp_port: int, ae_title: str = "SCP2FHIR", name: str = "scp2fhir") -> None:
        """Make the modality ``name`` (move destination, allowed caller) that SCP, now and
        after a restart."""
        self.config["DicomModalities"][name] = [ae_title, "127.0.0.1", scp_port]
        response = httpx.put(
            f"{self.url}/modalities/{name}",
            json={"AET": ae_title, "Host": "127.0.0.1", "Port": scp_port},
            timeout=10,
        )
        response.raise_for_status()

    def clear(self) -> None:
        for study in httpx.get(f"{self.url}/studies", timeout=10).json():
            httpx.delete(f"{self.url}/studies/{study}", timeout=30).raise_for_status()

    def instance_count(self) -> int:
        statistics = httpx.get(f"{self.url}/statistics", timeout=10).json()
        return int(statistics["CountInstances"])

    def store(self, files: Iterable[Path]) -> None:
        storescu(self.dicom_port, files, ae_title=AE_TITLE)


def dated_study(
    folder: Path,
    series_spec: list[tuple[str, int]],
    study_date: str,
    study_time: str = "101500",
) -> GeneratedStudy:
    """A study of real images (tests.support.make_study) with one Study Date and Time."""
    study = make_study(folder, series_spec)
    for path in study.files:
        ds = pydicom.dcmread(path)
        ds.StudyDate, ds.StudyTime = study_date, study_time
        ds.SeriesDate, ds.SeriesTime = study_date, study_time
        ds.save_as(path)
    return study
