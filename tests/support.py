"""Real parts for the tests: a private redis-server, generated DICOM studies, dcmtk senders."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import redis
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import DATA_ROOT
from pydicom.uid import generate_uid

if TYPE_CHECKING:
    from scp.connections import RedisClients
    from scp.settings import ScpSettings
    from scp.shared_settings import SharedSettings
    from scp.up.settings import UpSettings
    from workers.context import WorkerContext
    from workers.delivery.settings import DeliverySettings
    from workers.settings import WorkerSettings

#: dcmtk tools from the Debian package. pynetdicom installs Python scripts with the same
#: names, which may come first on PATH: the tests mean dcmtk's.
DCMTK_BIN = Path("/usr/bin")
#: Debian's dcmtk leaves Nagle on; without this every C-STORE waits for a delayed ACK.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def sample_file(name: str) -> str:
    """Path of one of pydicom's bundled test files."""
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom has no test file {name}"
    return path


def installed_dicom_files() -> list[str]:
    """Every DICOM file pydicom and the pydicom-data wheel install: pydicom's test and
    character set files and pydicom-data's data folder. Never pydicom's
    ``get_testdata_files("*")``, which downloads what pydicom-data lists but does not ship."""
    import data_store  # the pydicom-data wheel

    pydicom_data = Path(DATA_ROOT)
    folders = [pydicom_data / "test_files", pydicom_data / "charset_files"]
    folders.append(Path(data_store.__file__).parent / "data")
    return sorted(
        str(path)
        for folder in folders
        for path in folder.iterdir()
        if path.is_file() and path.suffix not in (".py", ".pyc", ".json", ".txt")
    )


def installed_charset_file(name: str) -> str:
    """One of pydicom's character set test files, by name."""
    path = Path(DATA_ROOT) / "charset_files" / name
    assert path.is_file(), f"pydicom has no character set file {name}"
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dcmtk(tool: str) -> str:
    path = DCMTK_BIN / tool
    if not path.exists():
        raise RuntimeError(f"dcmtk's {tool} is not installed (apt-get install dcmtk)")
    return str(path)


class RedisProcess:
    """A redis-server on a free port with its data in a temporary folder."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="scp2fhir-redis-"))
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required for the tests"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_for(lambda: _pings(client), timeout=10, what="redis-server to start")
        client.close()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


# --- studies ---------------------------------------------------------------------------

#: Real modality images from pydicom's test data, by modality.
SOURCES = {"CT": "CT_small.dcm", "MR": "MR_small.dcm"}


@dataclass
class GeneratedStudy:
    study_uid: str
    files: list[Path]
    #: series UID -> SOP Instance UIDs
    series: dict[str, list[str]]

    @property
    def sop_uids(self) -> set[str]:
        return {uid for uids in self.series.values() for uid in uids}


def make_study(
    folder: Path,
    series_spec: Sequence[tuple[str, int]],
    study_uid: str | None = None,
    patient_id: str = "TEST-PID-1",
) -> GeneratedStudy:
    """Write a study of real images with fresh UIDs: one series per (modality, count)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    files: list[Path] = []
    series: dict[str, list[str]] = {}
    for number, (modality, count) in enumerate(series_spec, start=1):
        template = pydicom.dcmread(sample_file(SOURCES[modality]))
        series_uid = generate_uid()
        series[series_uid] = []
        for index in range(1, count + 1):
            ds = template.copy()
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesNumber = number
            ds.InstanceNumber = index
            ds.PatientID = patient_id
            ds.SeriesDescription = f"{modality} series {number}"
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            series[series_uid].append(str(ds.SOPInstanceUID))
    return GeneratedStudy(study_uid, files, series)


def storescu(
    port: int,
    files: Iterable[Path],
    ae_title: str = "SCP2FHIR",
    check: bool = True,
    options: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send with dcmtk's storescu over one association."""
    result = subprocess.run(
        [
            dcmtk("storescu"),
            *options,
            "-aet",
            "TESTSCU",
            "-aec",
            ae_title,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@dataclass(frozen=True)
class Parsed:
    """Every part of the configuration, as ``main()`` parses it."""

    shared: SharedSettings
    scp: ScpSettings
    worker: WorkerSettings
    up: UpSettings
    delivery: DeliverySettings


def parse_configuration(env: Mapping[str, str]) -> Parsed:
    """What ``main()`` parses from ``env``: each concern's settings and the destinations."""
    from scp import config
    from scp.settings import ScpSettings
    from scp.shared_settings import SharedSettings
    from scp.up.settings import UpSettings
    from workers.delivery.settings import delivery_settings
    from workers.settings import WorkerSettings

    loaded = config.load(env)
    worker = config.settings(loaded, WorkerSettings)
    return Parsed(
        config.settings(loaded, SharedSettings),
        config.settings(loaded, ScpSettings),
        worker,
        config.settings(loaded, UpSettings),
        delivery_settings(loaded, worker),
    )


def build_context(
    env: Mapping[str, str],
    clients: RedisClients | None = None,
    delivery: DeliverySettings | None = None,
) -> WorkerContext:
    """``WorkerContext.build`` with the worker and shared settings of ``env`` (``clients``:
    a connection to its SCP2FHIR_REDIS_URL unless given)."""
    from scp.connections import connect
    from scp.shared_settings import SharedSettings
    from scp.typed_settings import from_env
    from workers.context import WorkerContext
    from workers.settings import WorkerSettings

    shared = from_env(SharedSettings, env)
    if clients is None:
        clients = connect(shared.require_redis_url())
    return WorkerContext.build(from_env(WorkerSettings, env), shared, clients, delivery)


def for_models(resource: Any) -> Any:
    """``resource`` as fhir.resources' models can read it. The models have no field for a
    primitive extension of a value[x] choice (``"_valueString": {data-absent-reason}``,
    valid FHIR JSON that Osiris' required slices get when DICOM lacks the value; the HL7
    validator accepts it, tests/test_conformance.py), so those are left out."""
    if isinstance(resource, dict):
        return {k: for_models(v) for k, v in resource.items() if not k.startswith("_value")}
    if isinstance(resource, list):
        return [for_models(v) for v in resource]
    return resource


def r4b_model_validate(study: dict[str, Any]) -> None:
    """fhir.resources' R4B ImagingStudy model on ``study`` (see :func:`for_models`)."""
    from fhir.resources.R4B.imagingstudy import ImagingStudy

    ImagingStudy.model_validate(for_models(study))
