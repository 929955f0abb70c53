"""Start and stop the Java test servers of ``tests/hapi`` from Python tests.

    with HapiServer("R4") as hapi:            # HAPI FHIR JPA, embedded H2
        httpx.put(f"{hapi.base_url}/ImagingStudy/1.2.3", json=study)
        hapi.reset()                          # $expunge everything between tests
    with Validator() as validator:            # the HL7 validator engine, offline
        outcome = validator.validate(resource, "R4", guide="mii-bildgebung-2026.0.0")

Each is one ``java`` process on a free port of 127.0.0.1 (it prints ``LISTENING <port>``
once it serves), stopped by its PID. Needs Java 17 and Maven; the first start builds the
program (``mvn -B -q package``: Maven Central into ~/.m2 once, then offline) unless
``tests/run.sh`` already did.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from tests.listening import ListeningProcess

HAPI_DIR = Path(__file__).resolve().parent
CLASSPATH_FILE = HAPI_DIR / "target" / "classpath.txt"
#: ../shared/profiles beside the clone (README "Development"): the validator's guides.
PROFILES_DIR = HAPI_DIR.parent.parent.parent / "shared" / "profiles"

#: Heap per role: a JPA server holds its H2 database in memory; the validator holds the R4
#: and R5 core definitions and every guide's snapshots.
HEAP = {"server": "1g", "validator": "1536m"}
#: Two shared cores: a serial collector leaves them to the tests, at a small cost in pauses.
JVM_FLAGS = ["-XX:+UseSerialGC", "-Djava.awt.headless=true", "-XX:+ExitOnOutOfMemoryError"]


def build(timeout: float = 1200.0) -> None:
    """``mvn -B -q package`` when the program is missing or older than its sources."""
    sources = [HAPI_DIR / "pom.xml", *HAPI_DIR.glob("src/**/*")]
    newest = max(p.stat().st_mtime for p in sources if p.is_file())
    if CLASSPATH_FILE.exists() and CLASSPATH_FILE.stat().st_mtime >= newest:
        return
    mvn = shutil.which("mvn")
    if mvn is None or shutil.which("java") is None:
        raise RuntimeError(
            "the HAPI test server needs Java 17 and Maven (apt-get install openjdk-17-jdk-headless "
            "maven; tests/run.sh installs them)"
        )
    result = subprocess.run(
        [mvn, "-B", "-q", "package"],
        cwd=HAPI_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0 or not CLASSPATH_FILE.exists():
        raise RuntimeError(f"mvn package failed in {HAPI_DIR}:\n{result.stdout}\n{result.stderr}")
    CLASSPATH_FILE.touch()


def npm_package(
    folder: Path,
    name: str,
    version: str,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> bytes:
    """An NPM package (.tgz, as FHIR implementation guides are published) of the
    conformance resources (StructureDefinition, CodeSystem, ValueSet) in ``folder``, built
    in memory; ``edit`` may change each resource first (a stricter local copy of a guide).

    A StructureDefinition whose base is neither FHIR's nor another one of ``folder`` (MII's
    report profiles build on other MII modules, not at hand) is left out: HAPI refuses a
    package whose snapshots it cannot generate."""
    manifest = {"name": name, "version": version, "fhirVersions": ["4.0.1"]}
    resources = {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(folder.glob("*.json"))
        if path.name.startswith(("StructureDefinition-", "CodeSystem-", "ValueSet-"))
    }
    resolvable = {"http://hl7.org/fhir/StructureDefinition/"}
    kept: dict[str, dict[str, Any]] = {
        n: r for n, r in resources.items() if r["resourceType"] != "StructureDefinition"
    }
    grown = True
    while grown:
        grown = False
        for file_name, resource in resources.items():
            if file_name in kept:
                continue
            base = str(resource.get("baseDefinition", "")).split("|")[0]
            if base in resolvable or base.startswith("http://hl7.org/fhir/StructureDefinition/"):
                kept[file_name] = resource
                resolvable.add(resource["url"])
                grown = True
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:

        def add(member: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"package/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("package.json", json.dumps(manifest).encode())
        for file_name, resource in sorted(kept.items()):
            if edit is not None:
                edit(resource)
            add(file_name, json.dumps(resource, ensure_ascii=False).encode("utf-8"))
    return buffer.getvalue()


class JavaProcess(ListeningProcess):
    """One ``org.scp2fhir.hapi.Main`` process (see Main.java for the roles)."""

    def __init__(self, role: str, argument: str, startup_timeout: float = 600.0) -> None:
        super().__init__(startup_timeout)
        self.role = role
        self.what = f"HAPI {role}"
        self.argument = argument

    def start(self) -> Self:
        build()
        classpath = f"{HAPI_DIR / 'target' / 'classes'}:{CLASSPATH_FILE.read_text().strip()}"
        command = ["java", f"-Xmx{HEAP[self.role]}", *JVM_FLAGS, "-cp", classpath]
        command += ["org.scp2fhir.hapi.Main", self.role, self.argument, "0"]
        self.spawn(command, HAPI_DIR, {**os.environ, "LC_ALL": "C.UTF-8"}, lifeline=True)
        return self

    def stop(self, grace: float = 30.0) -> None:
        super().stop(grace)

    def _post(self, path: str, body: bytes, content_type: str, timeout: float) -> Any:
        request = urllib.request.Request(
            f"{self.root_url}{path}",
            data=body,
            method="POST",
            headers={"Content-Type": content_type, "Accept": "application/fhir+json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())


class HapiServer(JavaProcess):
    """HAPI FHIR JPA (R4 or R5) with compose's settings: client ids of any form, external
    references; base ``http://127.0.0.1:PORT/fhir``."""

    #: What a version conflict (If-Match on an older version) is answered with.
    conflict_status = 409

    def __init__(self, fhir_version: str = "R4", startup_timeout: float = 600.0) -> None:
        super().__init__("server", fhir_version, startup_timeout)
        self.fhir_version = fhir_version

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/fhir"

    def start(self) -> Self:
        super().start()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 120.0) -> None:
        """Ready once ``GET /fhir/metadata`` answers 200 (the CapabilityStatement needs the
        whole JPA stack)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}/metadata", timeout=30) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                error = self.stderr_text()
                self.stop()
                raise RuntimeError(f"HAPI did not answer /fhir/metadata:\n{error}")
            time.sleep(0.5)

    def reset(self) -> None:
        """Drop every resource and its history (HAPI's ``$expunge`` of everything)."""
        parameters = {
            "resourceType": "Parameters",
            "parameter": [{"name": "expungeEverything", "valueBoolean": True}],
        }
        self._post("/fhir/$expunge", json.dumps(parameters).encode(), "application/fhir+json", 120)

    def install_package(self, name: str, version: str, tgz: bytes) -> int:
        """Install an NPM package (its StructureDefinitions, ValueSets, CodeSystems) into the
        server, as ``hapi.fhir.implementationguides`` would; returns resources installed.
        A reset removes them again."""
        query = f"?name={name}&version={version}"
        answer = self._post(f"/$install-package{query}", tgz, "application/gzip", 300)
        return int(answer["installed"])


class Validator(JavaProcess):
    """The HL7 validator engine with the guides of ``profiles`` (one folder per guide)."""

    def __init__(self, profiles: Path = PROFILES_DIR, startup_timeout: float = 600.0) -> None:
        super().__init__("validator", str(profiles), startup_timeout)

    def start(self) -> Self:
        if not Path(self.argument).is_dir():
            raise FileNotFoundError(
                f"{self.argument} is missing: the validator loads the guides of "
                "../shared/profiles beside the clone (CI always has them)"
            )
        super().start()
        return self

    def guides(self) -> dict[str, int]:
        """Guide folder -> conformance resources loaded from it."""
        with urllib.request.urlopen(f"{self.root_url}/guides", timeout=30) as response:
            loaded: dict[str, int] = json.loads(response.read())
            return loaded

    def validate(
        self,
        resource: dict[str, Any],
        fhir_version: str,
        guide: str | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        """The validator's OperationOutcome for ``resource``."""
        query = f"?fhirVersion={fhir_version}"
        if guide:
            query += f"&guide={guide}"
        if profile:
            query += f"&profile={quote(profile, safe='')}"
        body = json.dumps(resource, ensure_ascii=False).encode("utf-8")
        outcome: dict[str, Any] = self._post(
            f"/validate{query}", body, "application/fhir+json", 300
        )
        return outcome
