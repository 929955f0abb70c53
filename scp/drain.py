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


class StopRequest:
    """Set by the first stop signal; :attr:`hurry` by the second."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()
        self.hurry = threading.Event()
        self._first = 0.0

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        # A second signal within a second is the same request delivered twice (a service
        # manager signals a whole control group: the prefork parent forwards it too).
        if self.stop.is_set() and time.monotonic() - self._first >= DOUBLE_SIGNAL_SECONDS:
            self.hurry.set()
        if not self.stop.is_set():
            self._first = time.monotonic()
        self.stop.set()


def drain(server: Any, ae_title: str, hurry: threading.Event, seconds: float) -> None:
    """Stop accepting on ``server``, wait for its open associations, abort the rest."""
    server.shutdown()  # the accept loop ends and the listening socket is closed
    open_ = list(server.active_associations)
    if open_:
        logger.info(
            "ae=%s draining %d open associations (up to %.0f s)", ae_title, len(open_), seconds
        )
    deadline = time.monotonic() + seconds
    while open_ and time.monotonic() < deadline and not hurry.wait(0.1):
        open_ = [a for a in open_ if a.is_alive()]
    open_ = [a for a in open_ if a.is_alive()]
    if open_:
        logger.warning("ae=%s aborting %d associations still open", ae_title, len(open_))
        for assoc in open_:
            assoc.abort()
        for assoc in open_:
            assoc.join(5)
