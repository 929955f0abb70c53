"""The test command's hygiene: it never reaches beyond loopback, never installs anything
itself, and declares every package it needs (so it passes in a fresh virtual
environment, not only where the machine's Python happens to have them)."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, netguard
from tests.fhirserver import harness

#: A documentation address (RFC 5737): never this machine.
BEYOND = ("192.0.2.1", 9)


@pytest.fixture
def guard_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The guard's log of this test alone (so its deliberate attempts do not fail it)."""
    log = tmp_path / "netguard.log"
    monkeypatch.setenv(netguard.LOG, str(log))
    return log


def test_a_connection_beyond_loopback_fails_at_once_and_is_reported(guard_log: Path) -> None:
    """At once, and past code that retries connection errors (urllib turns an OSError
    into URLError; pydicom's download retries those)."""
    began = time.monotonic()
    with pytest.raises(netguard.NetworkGuardError):
        socket.create_connection(BEYOND, timeout=30)
    with pytest.raises(netguard.NetworkGuardError):
        socket.getaddrinfo("example.org", 443)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        pytest.raises(netguard.NetworkGuardError),
    ):
        udp.sendto(b"\0", ("8.8.8.8", 53))
    with pytest.raises(netguard.NetworkGuardError):
        urllib.request.urlopen("https://github.com/pydicom/pydicom-data", timeout=30)
    assert time.monotonic() - began < 5, "refused at once, not after a timeout"
    attempts = guard_log.read_text().splitlines()
    assert len(attempts) == 4 and "192.0.2.1" in attempts[0] and "example.org" in attempts[1]
    # This machine stays reachable.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=5).close()
    assert socket.getaddrinfo("localhost", 80)


def test_python_children_of_the_tests_are_guarded_too(guard_log: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", f"import socket; socket.create_connection({BEYOND!r}, 30)"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode != 0 and "NetworkGuardError" in child.stderr, child.stderr
    assert "192.0.2.1" in guard_log.read_text()


def test_pydicom_test_files_come_from_the_installed_packages(guard_log: Path) -> None:
    """What the tests read of pydicom's data is on disk (pydicom or pydicom-data); asking
    for it never downloads."""
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "emri_small.dcm"):
        path = get_testdata_file(name, download=False)
        assert isinstance(path, str) and Path(path).is_file(), name
    assert not guard_log.exists()


def test_tests_never_install_the_fhir_test_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without node_modules the harness says what to run; it does not run npm itself."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "npm-calls"
    npm = fake_bin / "npm"
    npm.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    npm.chmod(0o755)
    empty = tmp_path / "fhirserver"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(harness, "SERVER_DIR", empty)
    with pytest.raises(RuntimeError, match=r"tests/run\.sh"):
        harness.FhirServer().start()
    assert not calls.exists(), f"a test ran npm {calls.read_text()}"
    run_sh = (ROOT / "tests" / "run.sh").read_text()
    assert "npm ci" in run_sh, "tests/run.sh installs the FHIR test server"


# --- declared dependencies -------------------------------------------------------------------

#: Needed by the tests without being imported by name.
IMPLICIT = {"numpy": "pydicom decodes Dataset.pixel_array with it (test_profile_datasets)"}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    """What pyproject.toml declares (read from the file: what a fresh install gets)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return {_normalized(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in requirements}


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names
    )


def _imported_modules() -> dict[str, str]:
    """Top-level modules imported by the project's and the tests' code -> a file that does."""
    found: dict[str, str] = {}
    for folder in ("scp", "workers", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            optional = {
                id(inner)
                for node in ast.walk(tree)
                if isinstance(node, ast.Try)
                and any(_catches_import_error(h) for h in node.handlers)
                for inner in ast.walk(node)
            }
            for node in ast.walk(tree):
                if id(node) in optional:
                    continue  # `try: import x / except ImportError:` is optional
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_package_the_code_and_tests_need_is_declared() -> None:
    local = {"scp", "workers", "tests", "sitecustomize"}
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = []
    for module, where in sorted(_imported_modules().items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        owners = {_normalized(d) for d in distributions.get(module, [])}
        if not owners & declared:
            undeclared.append(f"{module} ({where}; installed by {sorted(owners) or 'nothing'})")
    for package, why in IMPLICIT.items():
        if _normalized(package) not in declared:
            undeclared.append(f"{package} ({why})")
    assert not undeclared, "not in pyproject.toml's dependencies or [test]: " + ", ".join(
        undeclared
    )
