from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from scp.server import serve
from scp.settings import Settings
from tests.hapi.harness import HapiServer, Validator
from tests.support import RedisProcess, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
#: Short enough to keep the suite quick, long enough that a study sent by one
#: storescu run is never split on a loaded 2-core machine.
TEST_QUIET_SECONDS = 1.5


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


# The Java test servers (tests/hapi): each started once per test run, on first use.


@pytest.fixture(scope="session")
def hapi_r4() -> Iterator[HapiServer]:
    server = HapiServer("R4").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hapi_r5() -> Iterator[HapiServer]:
    server = HapiServer("R5").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def validator() -> Iterator[Validator]:
    engine = Validator().start()
    yield engine
    engine.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def data(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The HL7 validator's counts and warnings, when tests/test_conformance.py ran."""
    conformance = sys.modules.get("tests.conformance")
    if conformance is not None and conformance.LAST:
        terminalreporter.write_sep("=", "conformance: the HL7 validator's warnings")
        terminalreporter.write_line(conformance.report(conformance.LAST))


def pipeline_env(redis_url: str, output_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "SCP2FHIR_REDIS_URL": redis_url,
        "SCP2FHIR_PORT": str(port),
        "SCP2FHIR_QUIET_SECONDS": str(TEST_QUIET_SECONDS),
        "SCP2FHIR_OUTPUT_DIR": str(output_dir),
        "PYTHONPATH": str(ROOT),
    }
    env.update(extra)
    return env


@dataclass
class Pipeline:
    port: int
    output_dir: Path
    settings: Settings

    def study_file(self, study_uid: str) -> Path:
        return self.output_dir / "ImagingStudy" / f"{study_uid}.json"


class ScpThread:
    """The real SCP (scp.server.serve) in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=serve, args=(settings, self.stop_event), daemon=True)

    def start(self, port: int) -> ScpThread:
        self.thread.start()
        wait_for(lambda: echo(port), timeout=10, what="the SCP to answer C-ECHO")
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)


def echo(port: int, ae_title: str = "SCP2FHIR") -> bool:
    """A whole C-ECHO association (a bare TCP connect would hold an acceptor thread
    until the ACSE timeout)."""
    from pynetdicom import AE

    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return False
    ok = bool(assoc.send_c_echo().Status == 0)
    assoc.release()
    return ok


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "scp.cli", "worker"],
        env=env,
        cwd=ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def pipeline(redis_url: str, tmp_path: Path) -> Iterator[Pipeline]:
    """SCP (in-process thread) + one `scp2fhir worker` process on a private Redis."""
    port = free_port()
    output_dir = tmp_path / "out"
    env = pipeline_env(redis_url, output_dir, port)
    settings = Settings.from_env(env)
    scp = ScpThread(settings).start(port)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        yield Pipeline(port, output_dir, settings)
    finally:
        scp.stop()
        stop_process(worker)
