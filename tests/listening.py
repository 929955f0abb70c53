"""A server process for the tests that says when it serves: it prints ``LISTENING <port>``
as its first stdout line (tests/fhirserver's node server, tests/hapi's Java servers).

Its stderr goes to a temporary file (never a pipe nobody reads, which could block it), kept
for the error message when it fails; it is stopped by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self


class ListeningProcess:
    """One process started with :meth:`spawn`; ``port`` once it listens."""

    #: Shown in errors: "the FHIR test server did not start".
    what = "server"

    def __init__(self, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        #: Seconds from spawning the process to its LISTENING line.
        self.startup_seconds: float | None = None
        self.process: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def root_url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"the {self.what} is not started")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Start the server (each subclass knows its command; it calls :meth:`spawn`)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def spawn(
        self,
        command: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        lifeline: bool = False,
    ) -> None:
        """Start ``command`` and wait for its LISTENING line (``RuntimeError`` with its
        stderr if it does not come). With ``lifeline`` its stdin is a pipe this process
        holds open: a server that exits when its stdin ends then also goes when the test
        run is killed (no orphan holding a port and a gigabyte)."""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives until stop())
        began = time.monotonic()
        self.process = subprocess.Popen(
            list(command),
            cwd=cwd,
            stdin=subprocess.PIPE if lifeline else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=None if env is None else dict(env),
        )
        line = self._first_stdout_line()
        if not line.startswith("LISTENING "):
            error = self.stderr_text()
            self.stop()
            raise RuntimeError(f"the {self.what} did not start (stdout {line!r}):\n{error}")
        self.port = int(line.split()[1])
        self.startup_seconds = time.monotonic() - began

    def stop(self, grace: float = 10.0) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
            self.process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self.port = None

    def stderr_text(self) -> str:
        """The last 4000 characters of its stderr."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-4000:]

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

        threading.Thread(target=drain, name=f"{self.what}-stdout", daemon=True).start()
        got_line.wait(self.startup_timeout)
        return lines[0] if lines else ""
