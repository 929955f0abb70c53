"""``scp2fhir scp`` on every core: one listening socket, N acceptor processes.

Python runs one thread at a time per process, so one SCP process serves parallel
associations on one core. :func:`run` binds the port once, then forks
``SCP2FHIR_SCP_PROCESSES`` acceptors that each run the whole SCP
(:func:`scp.server.serve`) on the inherited socket; the kernel hands each connection
to whichever acceptor calls ``accept()`` first.

The port is bound without ``SO_REUSEPORT``: only the acceptors of this one command
share it, and a second, unrelated deployment on the same port fails at start
(:class:`PortInUse`, one line and exit status 1) instead of silently taking half
of the associations into another pipeline.

The parent does nothing but supervise: it restarts an acceptor that died (with a
growing delay when one keeps dying), on SIGTERM, SIGINT or SIGHUP sends the acceptors
SIGTERM and waits for them (their drain bound plus :data:`STOP_GRACE_SECONDS`), so each
drains its in-flight associations as a lone SCP does; acceptors that keep dying at start
stop it (:data:`YOUNG_DEATHS`). Acceptors die with the parent
(``PR_SET_PDEATHSIG``): killed with -9, it leaves no process behind holding the port.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from scp import orphans
from scp.drain import DOUBLE_SIGNAL_SECONDS, STOP_SIGNALS
from scp.processes import describe

logger = logging.getLogger(__name__)

#: How long the acceptors get after SIGTERM beyond their own drain bound
#: (``SCP2FHIR_DRAIN_SECONDS``) before they are killed: enough to abort what is left.
STOP_GRACE_SECONDS = 5.0
#: Delay before restarting an acceptor that died, doubled while it keeps dying young.
RESTART_DELAY_SECONDS = 0.5
MAX_RESTART_DELAY_SECONDS = 30.0
#: An acceptor that ran this long before it died is restarted after the first delay again.
STABLE_SECONDS = 60.0
#: Acceptors that die this many times in a row, each within :data:`YOUNG_SECONDS` of its
#: start, have something wrong that a restart does not mend (an unwritable spool folder,
#: a broken setting): the parent stops with exit status 1 rather than hold the port for
#: nobody (``scp2fhir up`` would otherwise report a listening but useless SCP as ready).
YOUNG_DEATHS = 3
YOUNG_SECONDS = 10.0


class PortInUse(Exception):
    """Another process (another deployment) listens on the port."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def listen(bind: str, port: int) -> socket.socket:
    """A socket bound to (bind, port), non-blocking: acceptors that lose the race for a
    connection get EAGAIN instead of blocking in accept(). It listens once the first
    acceptor is ready (:class:`scp.transport.AcceptorServer`): until then a sender is
    refused rather than queued for an acceptor that may never come, and ``up`` sees the
    port listening only when it is served. Raises :class:`PortInUse`."""
    family, kind, proto, _, address = socket.getaddrinfo(
        bind or None, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR only lets a restart bind over connections in TIME_WAIT; unlike
        # SO_REUSEPORT it never lets a second listener onto the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} is in use (another scp2fhir deployment or another DICOM "
                f"receiver listens on {bind or '*'}:{port}); stop it or set SCP2FHIR_PORT"
            ) from None
        raise
    sock.setblocking(False)
    return sock


@dataclass
class _Acceptor:
    index: int
    pid: int = 0
    started: float = 0.0
    #: When a dead acceptor is due to be started again (0: running).
    restart_at: float = 0.0
    delay: float = RESTART_DELAY_SECONDS


class Prefork:
    """Runs ``serve(listener)`` in ``count`` forked processes and keeps them running."""

    def __init__(
        self,
        listener: socket.socket,
        count: int,
        serve: Callable[[socket.socket], None],
        drain_seconds: float = 0.0,
    ) -> None:
        self.listener = listener
        self.serve = serve
        self.acceptors = [_Acceptor(index) for index in range(1, count + 1)]
        self._stopping = 0  # the signal that asked us to stop
        self._grace = drain_seconds + STOP_GRACE_SECONDS
        self._young_deaths = 0  # in a row
        self._stopping_at = 0.0

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._stop)
        for acceptor in self.acceptors:
            self._start(acceptor)
        while not self._stopping:
            self._reap()
            now = time.monotonic()
            for acceptor in self.acceptors:
                if not acceptor.pid and now >= acceptor.restart_at:
                    self._start(acceptor)
            time.sleep(0.2)
        code = self._stop_all()
        return 1 if self._young_deaths >= YOUNG_DEATHS else code

    def _stop(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            self._stopping, self._stopping_at = signum, time.monotonic()
        elif time.monotonic() - self._stopping_at >= DOUBLE_SIGNAL_SECONDS:
            # A second request: the acceptors abort what they still drain (scp.drain).
            for acceptor in self.acceptors:
                if acceptor.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(acceptor.pid, signal.SIGTERM)

    def _start(self, acceptor: _Acceptor) -> None:
        parent = os.getpid()
        # Blocked across the fork: a stop signal must reach the new acceptor only once its
        # own handlers are in place (scp.drain.StopRequest.install unblocks them), never
        # this process's handler nor the default action.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = -1
        try:
            pid = os.fork()
            if pid == 0:
                self._child(parent, acceptor.index)
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        acceptor.pid, acceptor.started, acceptor.restart_at = pid, time.monotonic(), 0.0
        logger.info("acceptor=%d pid=%d started", acceptor.index, pid)

    def _child(self, parent: int, index: int) -> None:
        code = 1
        try:
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)  # (still blocked: see _start)
            os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only: it stops us, once
            orphans.die_with_parent()
            if orphans.orphaned(parent):  # it died before the request took effect
                os._exit(0)
            self.serve(self.listener)
            code = 0
        except BaseException:
            logger.exception("acceptor=%d pid=%d failed", index, os.getpid())
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            # Never return into the parent's loop (nor run its atexit handlers).
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for acceptor in self.acceptors:
                if acceptor.pid == pid:
                    self._died(acceptor, status)

    def _died(self, acceptor: _Acceptor, status: int) -> None:
        now = time.monotonic()
        young = now - acceptor.started < YOUNG_SECONDS
        self._young_deaths = self._young_deaths + 1 if young else 0
        if self._young_deaths >= YOUNG_DEATHS:
            logger.error(
                "acceptor=%d pid=%d exited (%s): acceptors died %d times in a row within "
                "%.0f s of their start; stopping",
                acceptor.index,
                acceptor.pid,
                describe(os.waitstatus_to_exitcode(status)),
                self._young_deaths,
                YOUNG_SECONDS,
            )
            acceptor.pid = 0
            self._stopping = self._stopping or signal.SIGTERM
            return
        if now - acceptor.started >= STABLE_SECONDS:
            acceptor.delay = RESTART_DELAY_SECONDS
        logger.error(
            "acceptor=%d pid=%d exited (%s); restarting in %.1f s",
            acceptor.index,
            acceptor.pid,
            describe(os.waitstatus_to_exitcode(status)),
            acceptor.delay,
        )
        acceptor.pid, acceptor.restart_at = 0, now + acceptor.delay
        acceptor.delay = min(acceptor.delay * 2, MAX_RESTART_DELAY_SECONDS)

    def _stop_all(self) -> int:
        running = [a for a in self.acceptors if a.pid]
        logger.info("stopping %d acceptors (%s)", len(running), signal.Signals(self._stopping).name)
        for acceptor in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(acceptor.pid, signal.SIGTERM)
        # Our copy of the socket: the port is free as soon as the acceptors closed theirs.
        self.listener.close()
        deadline = time.monotonic() + self._grace
        code = 0
        for acceptor in running:
            status = _wait(acceptor.pid, deadline)
            if status is None:
                logger.warning(
                    "acceptor=%d pid=%d did not stop in %.0f s; killing it",
                    acceptor.index,
                    acceptor.pid,
                    self._grace,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(acceptor.pid, signal.SIGKILL)
                os.waitpid(acceptor.pid, 0)
                code = 1
            elif not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                code = 1
        return code


def _wait(pid: int, deadline: float) -> int | None:
    """The exit status of ``pid``, or None if it still runs at ``deadline``."""
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def run(
    bind: str,
    port: int,
    count: int,
    serve: Callable[[socket.socket], None],
    drain_seconds: float = 0.0,
) -> int:
    """Bind the port, then serve it with ``count`` acceptors (in this process if 1).
    Exit status: 0 after a clean stop, 1 if the port is taken or an acceptor failed."""
    try:
        listener = listen(bind, port)
    except PortInUse as exc:
        print(f"scp2fhir scp: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an address not of this host, a privileged port, a bad name
        reason = exc.strerror or type(exc).__name__
        print(
            f"scp2fhir scp: cannot listen on {bind}:{port} ({reason}); "
            "check SCP2FHIR_BIND and SCP2FHIR_PORT",
            file=sys.stderr,
        )
        return 1
    if count == 1:
        try:
            serve(listener)
        finally:
            listener.close()
        return 0
    logger.info("port=%d serving with %d acceptor processes", port, count)
    return Prefork(listener, count, serve, drain_seconds).run()
