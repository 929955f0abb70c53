"""Processes that do not outlive their parent (Linux).

``scp2fhir up``'s children, the SCP's acceptor processes (:mod:`scp.prefork`), RQ's work
horses and scheduler (forked by a worker) and a worker's delivery processes ask the
kernel for SIGTERM when their parent dies (``PR_SET_PDEATHSIG``), kill -9 of the parent
included: an SCP left serving without its supervisor would acknowledge instances into a
Redis nobody watches, and a second ``up`` would find the port taken. The request is
cleared at every fork and only holds from the moment it is made, so each child makes it
itself, then checks that the parent that started it is still its parent (it may have
died in between). The kernel sends the signal when the *thread* that forked dies: ``up``
forks from its main thread only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

#: prctl(2) option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1
# Looked up once, here: a child between fork and exec must not load anything.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
#: The pid of the process about to fork (see :func:`install_fork_hook`).
_forking: int | None = None
_hooked = False


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signum))


def orphaned(parent: int) -> bool:
    """True if ``parent`` is no longer this process's parent (it died: we were reparented)."""
    return os.getppid() != parent


def preexec(parent: int) -> Callable[[], None]:
    """For ``subprocess.Popen(preexec_fn=...)``: runs in the child before exec (the request
    survives exec), which ends at once if ``parent`` died after the fork."""

    def run() -> None:
        die_with_parent()
        if orphaned(parent):
            os._exit(1)

    return run


def install_fork_hook() -> None:
    """Every child this process forks from now on (RQ's work horse and scheduler) dies
    with it."""
    global _hooked
    if _hooked:
        return
    _hooked = True
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _before_fork() -> None:
    global _forking
    _forking = os.getpid()


def _after_fork_in_child() -> None:
    die_with_parent()
    if _forking is not None and orphaned(_forking):
        os._exit(1)
