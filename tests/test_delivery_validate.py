"""SCP2FHIR_FHIR_VALIDATE=1: the server's own $validate before each write, against HAPI
FHIR with the MII Bildgebung 2026.0.0 package installed (built from ../shared/profiles at
test time, into memory), through real workers and Redis.

HAPI has no SNOMED CT here (nor by default: it needs loading), and the MII profile binds
``series.bodySite`` to SNOMED CT body structures (required): HAPI then calls every body site
an error. A study without body sites passes; one with them is dead-lettered, a real
rejection by the real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.registry import FailedJobRegistry

from scp import keys
from scp.header import extract_header, read_dataset
from tests import profile_datasets
from tests.conftest_delivery import (
    FaultProxy,
    Worker,
    behaviour,
    delivery_env,
    pending,
    push,
    studies_by_identifier,
    wait_delivered,
)
from tests.hapi.harness import PROFILES_DIR, HapiServer, npm_package
from tests.support import wait_for
from workers.profiles import mii

MII_RELEASE = PROFILES_DIR / "mii-bildgebung-2026.0.0"
PACKAGE = "de.medizininformatikinitiative.kerndatensatz.bildgebung"


@pytest.fixture
def hapi(hapi_r4: HapiServer) -> HapiServer:
    assert MII_RELEASE.is_dir(), f"{MII_RELEASE} is missing: the test needs ../shared/profiles"
    hapi_r4.reset()
    return hapi_r4


@pytest.fixture
def proxy(hapi: HapiServer) -> Iterator[FaultProxy]:
    started = FaultProxy(hapi.root_url, behaviour=behaviour(hapi)).start()
    yield started
    started.stop()


BODY_SITE_TAGS = ("00180015", "00082218")  # Body Part Examined, Anatomic Region Sequence


def mii_study(folder: Path, body_sites: bool) -> tuple[str, list[Any]]:
    """The profile datasets' study (every modality), as the SCP would push it; without
    ``body_sites`` its headers lose Body Part Examined and Anatomic Region."""
    headers = [extract_header(read_dataset(f)).json for f in profile_datasets.study(folder)]
    if not body_sites:
        headers = [{k: v for k, v in h.items() if k not in BODY_SITE_TAGS} for h in headers]
    return profile_datasets.STUDY_UID, headers


def install_mii(hapi: HapiServer, folder: Path) -> None:
    """The MII release as an NPM package (.tgz) in ``folder``, installed into HAPI."""
    package = folder / f"{PACKAGE}-2026.0.0.tgz"
    package.write_bytes(npm_package(MII_RELEASE, PACKAGE, "2026.0.0"))
    assert hapi.install_package(PACKAGE, "2026.0.0", package.read_bytes()) >= 20


def validate_env(redis_url: str, tmp_path: Path, proxy: FaultProxy) -> dict[str, str]:
    return delivery_env(
        redis_url,
        tmp_path / "out",
        proxy.base_url,
        SCP2FHIR_PROFILE="mii",
        SCP2FHIR_FHIR_VALIDATE="1",
        SCP2FHIR_FHIR_TIMEOUT_SECONDS="60",
    )


def test_a_study_the_servers_validator_accepts_is_written(
    hapi: HapiServer, proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    install_mii(hapi, tmp_path)
    worker = Worker(validate_env(redis_url, tmp_path, proxy), tmp_path / "w.log")
    try:
        study_uid, headers = mii_study(tmp_path / "s", body_sites=False)
        push(redis_url, headers)
        delivered = wait_delivered(proxy.base_url, study_uid, len(headers), timeout=120, step=0.5)
        assert delivered["meta"]["profile"][0] == mii.STUDY_PROFILE
        requests = [(p.method, p.path.split("?")[0]) for p in proxy.writes()]
        assert requests == [
            ("POST", "/fhir/ImagingStudy/$validate"),
            ("PUT", "/fhir/ImagingStudy"),
        ]
        wait_for(lambda: "validated by the server" in worker.text(), 10, "the validation line")
        log = worker.text()
        assert (
            f"study={study_uid} destination=default validated by the server against "
            f"{mii.STUDY_PROFILE}: 0 errors" in log
        )
    finally:
        worker.stop()


def test_errors_of_the_servers_validator_dead_letter_the_study(
    hapi: HapiServer, proxy: FaultProxy, redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    install_mii(hapi, tmp_path)
    worker = Worker(validate_env(redis_url, tmp_path, proxy), tmp_path / "w.log")
    try:
        study_uid, headers = mii_study(tmp_path / "s", body_sites=True)
        push(redis_url, headers)
        failed = FailedJobRegistry(keys.DELIVER_QUEUE, connection=redis.Redis.from_url(redis_url))
        wait_for(lambda: failed.count == 1, 120, "the dead letter")
        log = worker.text()
    finally:
        worker.stop()
    assert studies_by_identifier(hapi.base_url, study_uid) == []
    assert [p.method for p in proxy.writes()] == ["POST"], "validated, never written"
    assert f"study={study_uid} destination=default delivery dead-lettered" in log
    assert f"Invalid: $validate against {mii.STUDY_PROFILE}:" in log
    # Issue codes and FHIRPath expressions name the element; no diagnostics, no values.
    assert "error " in log and "@ ImagingStudy.series[0].bodySite" in log
    for phi in ("Mustermann", "PID-0815", "19650412"):
        assert phi not in log
    assert pending(redis_url) == [study_uid]
    assert data.hget(keys.DELIVER_FAILED, study_uid)
