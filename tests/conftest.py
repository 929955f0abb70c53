from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import redis

from scp.server import serve
from scp.settings import ScpSettings
from scp.shared_settings import SharedSettings
from scp.typed_settings import from_env
from tests.hapi.harness import HapiServer, Validator
from tests.support import RedisProcess, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
#: The network guard (``tests/netguard/sitecustomize.py``): first on the PYTHONPATH of
#: every Python child, so it guards them too.
NETGUARD_DIR = ROOT / "tests" / "netguard"
#: PYTHONPATH for Python children of the tests: the guard, then the project.
CHILD_PYTHONPATH = os.pathsep.join([str(NETGUARD_DIR), str(ROOT)])
#: Short enough to keep the suite quick, long enough that a study sent by one
#: storescu run is never split on a loaded 2-core machine.
TEST_QUIET_SECONDS = 1.5


def _load_netguard() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "scp2fhir_netguard", NETGUARD_DIR / "sitecustomize.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


netguard = _load_netguard()


def pytest_configure(config: pytest.Config) -> None:
    """Guard this process and every Python child against connections beyond loopback."""
    if os.environ.get(netguard.LOG):
        return  # already set up (pytest run from within a test)
    handle, log = tempfile.mkstemp(prefix="scp2fhir-netguard-", suffix=".log")
    os.close(handle)
    os.environ[netguard.ENABLE] = "1"
    os.environ[netguard.LOG] = log
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(NETGUARD_DIR), os.environ.get("PYTHONPATH", "")) if p
    )
    netguard.install()


def network_attempts() -> list[str]:
    """Every attempt to reach beyond loopback so far, by this process or its children."""
    path = os.environ.get(netguard.LOG)
    if not path or not Path(path).exists():
        return []
    return Path(path).read_text(encoding="utf-8").splitlines()


@pytest.fixture(autouse=True)
def no_network_beyond_loopback() -> Iterator[None]:
    before = len(network_attempts())
    yield
    made = network_attempts()[before:]
    if made:
        pytest.fail(
            "the test tried to reach beyond loopback (tests/netguard):\n" + "\n".join(made),
            pytrace=False,
        )


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
        "PYTHONPATH": CHILD_PYTHONPATH,
        # One acceptor process per SCP (scp.prefork): tests start many SCPs on 2 shared
        # cores; tests/test_prefork.py sets more.
        "SCP2FHIR_SCP_PROCESSES": "1",
    }
    env.update(extra)
    return env


@dataclass
class Pipeline:
    port: int
    output_dir: Path
    #: The environment the SCP and the worker run with.
    env: dict[str, str]

    @property
    def redis_url(self) -> str:
        return self.env["SCP2FHIR_REDIS_URL"]

    def study_file(self, study_uid: str) -> Path:
        return self.output_dir / "ImagingStudy" / f"{study_uid}.json"


class ScpThread:
    """The real SCP (scp.server.serve) in a thread of the test process."""

    def __init__(self, env: Mapping[str, str]) -> None:
        """The SCP of the settings ``env`` names (parsed as ``scp2fhir scp`` does)."""
        self.stop_event = threading.Event()
        args = (from_env(ScpSettings, env), from_env(SharedSettings, env), self.stop_event)
        self.thread = threading.Thread(target=serve, args=args, daemon=True)

    def start(self, port: int) -> ScpThread:
        # serve() binds pynetdicom's per-PDU logging (and so keeps the C-STORE fast path,
        # scp.fastpath, off) when pynetdicom logs at INFO, as under pytest's log_level;
        # in production scp.logs holds it at WARNING. Start it as production does.
        library = logging.getLogger("pynetdicom")
        level = library.level
        library.setLevel(logging.WARNING)
        try:
            self.thread.start()
            wait_for(lambda: echo(port), timeout=10, what="the SCP to answer C-ECHO")
        finally:
            library.setLevel(level)
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


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``scp2fhir ARGS`` run to its end in ``env``, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "scp.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
    scp = ScpThread(env).start(port)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        yield Pipeline(port, output_dir, env)
    finally:
        scp.stop()
        stop_process(worker)
