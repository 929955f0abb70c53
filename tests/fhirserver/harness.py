"""Start and stop the in-memory FHIR R4 test server (server.mjs) from Python tests.

    with FhirServer() as fhir:
        httpx.put(f"{fhir.base_url}/ImagingStudy/1.2.3", json=study)

Needs Node.js >= 20.19 and the server's packages, which ``bash tests/run.sh`` installs
(``npm ci`` here): a test never installs anything.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path
from typing import Self

from tests.listening import ListeningProcess

SERVER_DIR = Path(__file__).resolve().parent


class FhirServer(ListeningProcess):
    """One ``node server.mjs`` process on a free port of 127.0.0.1."""

    what = "FHIR test server"

    def __init__(self, startup_timeout: float = 60.0) -> None:
        super().__init__(startup_timeout)

    @property
    def base_url(self) -> str:
        """FHIR base, e.g. ``http://127.0.0.1:PORT/fhir``."""
        return f"{self.root_url}/fhir"

    def start(self) -> Self:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH; the FHIR test server needs Node.js >= 20.19")
        self._check_installed()
        self.spawn([node, "server.mjs", "0"], SERVER_DIR)
        return self

    def reset(self) -> None:
        """Drop every stored resource (server-specific ``POST /$reset``)."""
        request = urllib.request.Request(f"{self.root_url}/$reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def _check_installed(self) -> None:
        if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
            raise RuntimeError(
                f"the FHIR test server's packages are not installed in {SERVER_DIR}: run "
                "`bash tests/run.sh` (or `npm ci` there) first; tests never download them"
            )
