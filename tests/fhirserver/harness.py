"""Start and stop the in-memory FHIR R4 test server (server.mjs) from Python tests.

    with FhirServer() as fhir:
        httpx.put(f"{fhir.base_url}/ImagingStudy/1.2.3", json=study)

Needs Node.js >= 20.19 and npm on PATH; the first start runs ``npm ci`` here.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Self

from tests.listening import ListeningProcess

SERVER_DIR = Path(__file__).resolve().parent


class FhirServer(ListeningProcess):
    """One ``node server.mjs`` process on a free port of 127.0.0.1."""

    what = "FHIR test server"

    def __init__(self, startup_timeout: float = 60.0, install_timeout: float = 600.0) -> None:
        super().__init__(startup_timeout)
        self.install_timeout = install_timeout

    @property
    def base_url(self) -> str:
        """FHIR base, e.g. ``http://127.0.0.1:PORT/fhir``."""
        return f"{self.root_url}/fhir"

    def start(self) -> Self:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH; the FHIR test server needs Node.js >= 20.19")
        self._install()
        self.spawn([node, "server.mjs", "0"], SERVER_DIR)
        return self

    def reset(self) -> None:
        """Drop every stored resource (server-specific ``POST /$reset``)."""
        request = urllib.request.Request(f"{self.root_url}/$reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def _install(self) -> None:
        """``npm ci`` when node_modules is missing (a fresh clone or a new machine)."""
        if (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not on PATH; needed once to install the FHIR test server")
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=SERVER_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.install_timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm ci failed in {SERVER_DIR}:\n{result.stdout}\n{result.stderr}")
