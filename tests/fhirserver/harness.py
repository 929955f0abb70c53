"""Start and stop the in-memory FHIR R4 test server (server.mjs) from Python tests.

    with FhirServer() as fhir:
        httpx.put(f"{fhir.base_url}/ImagingStudy/1.2.3", json=study)

Needs Node.js >= 20.19 on PATH and the packages of ``package-lock.json`` installed in
this folder, which ``bash tests/run.sh`` does (``npm ci``). A test never installs
anything: without them, :meth:`FhirServer.start` fails and says so.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

SERVER_DIR = Path(__file__).resolve().parent


class FhirServer:
    """One ``node server.mjs`` process on a free port of 127.0.0.1."""

    def __init__(self, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        #: Seconds from spawning node to its LISTENING line (install time excluded).
        self.startup_seconds: float | None = None
        self.process: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def root_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FhirServer is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """FHIR base, e.g. ``http://127.0.0.1:PORT/fhir``."""
        return f"{self.root_url}/fhir"

    def start(self) -> FhirServer:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH; the FHIR test server needs Node.js >= 20.19")
        self._check_installed()
        # stderr goes to a file, not a pipe nobody reads, so the server can never block on it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives until stop())
        began = time.monotonic()
        self.process = subprocess.Popen(
            [node, "server.mjs", "0"],
            cwd=SERVER_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        line = self._first_stdout_line()
        if not line.startswith("LISTENING "):
            error = self._stderr_text()
            self.stop()
            raise RuntimeError(f"FHIR test server did not start (stdout {line!r}):\n{error}")
        self.port = int(line.split()[1])
        self.startup_seconds = time.monotonic() - began
        return self

    def reset(self) -> None:
        """Drop every stored resource (server-specific ``POST /$reset``)."""
        request = urllib.request.Request(f"{self.root_url}/$reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self.port = None

    def __enter__(self) -> FhirServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _check_installed(self) -> None:
        if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
            raise RuntimeError(
                f"the FHIR test server's packages are not installed in {SERVER_DIR}: run "
                "`bash tests/run.sh` (or `npm ci` there) first; tests never download them"
            )

    def _first_stdout_line(self) -> str:
        """The first stdout line, or '' on timeout or exit.

        Read in a thread because a pipe read cannot time out; the thread then keeps
        draining stdout until the process exits.
        """
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        lines: list[str] = []
        got_line = threading.Event()

        def drain() -> None:
            try:
                for line in stdout:
                    if not got_line.is_set():
                        lines.append(line.strip())
                        got_line.set()
            except (ValueError, OSError):  # stdout closed by stop()
                pass
            got_line.set()

        threading.Thread(target=drain, name="fhirserver-stdout", daemon=True).start()
        got_line.wait(self.startup_timeout)
        return lines[0] if lines else ""

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-4000:]
