"""Stopping the SCP without cutting an instance in half.

On SIGTERM, SIGINT or SIGHUP the SCP stops accepting associations at once, lets the
open ones go on (a modality in the middle of a study gets Success for every instance it
still sends) for at most ``SCP2FHIR_DRAIN_SECONDS`` (20 s by default), then aborts those
still open. A second
signal aborts them at once. ``scp2fhir up`` stops the SCPs first and its Redis last, so
every instance acknowledged during the drain is in Redis.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

#: The signals that stop the SCP (a terminal's Ctrl-C, a service manager, a closed terminal).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: A second stop signal aborts the open associations only this long after the first.
DOUBLE_SIGNAL_SECONDS = 1.0
#: How often a wait for a stop looks whether one was asked for.
POLL_SECONDS = 0.1


class StopRequest:
    """A stop asked for by the first stop signal (or by setting the caller's ``stop``
    event); :attr:`hurried` by a second signal, at least :data:`DOUBLE_SIGNAL_SECONDS`
    after the first (sooner, it is the same request delivered twice: a service manager
    signals a whole control group, and the prefork parent forwards what it got).

    The signal handler only assigns attributes and the waiting side polls: setting a
    :class:`threading.Event` from a handler can deadlock, because the handler runs in the
    main thread, which may hold that event's lock at the moment the signal arrives.
    """

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()
        self._signalled_at: float | None = None
        self._hurried = False

    def install(self) -> StopRequest:
        """Handle the stop signals (main thread only). They are unblocked here, for a
        process that blocked them until it could handle them (a new acceptor process:
        :mod:`scp.prefork`); one that arrived meanwhile is handled now."""
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if self._signalled_at is None:
            self._signalled_at = now
        elif now - self._signalled_at >= DOUBLE_SIGNAL_SECONDS:
            self._hurried = True

    @property
    def requested(self) -> bool:
        return self._signalled_at is not None or self.stop.is_set()

    @property
    def hurried(self) -> bool:
        return self._hurried

    def wait(self, timeout: float | None = None) -> bool:
        """Until a stop is requested (True) or ``timeout`` seconds passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.requested:
            left = (
                POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
            )
            if left <= 0:
                return False
            time.sleep(left)
        self.stop.set()  # (outside the handler) for whoever else watches the event
        return True


def drain(server: Any, ae_title: str, request: StopRequest, seconds: float) -> None:
    """Stop accepting on ``server``, wait for its open associations, abort the rest."""
    server.shutdown()  # the accept loop ends and the listening socket is closed
    open_ = list(server.active_associations)
    if open_:
        logger.info(
            "ae=%s draining %d open associations (up to %.0f s)", ae_title, len(open_), seconds
        )
    deadline = time.monotonic() + seconds
    while open_ and time.monotonic() < deadline and not request.hurried:
        time.sleep(POLL_SECONDS)
        open_ = [a for a in open_ if a.is_alive()]
    open_ = [a for a in open_ if a.is_alive()]
    if open_:
        logger.warning("ae=%s aborting %d associations still open", ae_title, len(open_))
        for assoc in open_:
            assoc.abort()
        for assoc in open_:
            assoc.join(5)
