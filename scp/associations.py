"""One log line and one count per association: who, from where, how long, what came of it.

Bound to pynetdicom's EVT_ACCEPTED, EVT_RELEASED and EVT_ABORTED; ``handle_store``
reports each C-STORE outcome here.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field

from pynetdicom import events

from scp import metrics

logger = logging.getLogger(__name__)


@dataclass
class _Tally:
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    refused: int = 0


class AssociationLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: weakref.WeakKeyDictionary[object, _Tally] = weakref.WeakKeyDictionary()

    def accepted(self, event: events.Event) -> None:
        with self._lock:
            self._tallies[event.assoc] = _Tally()
        metrics.recorder().count(
            "associations_total", calling_ae=str(event.assoc.requestor.ae_title).strip()
        )

    def stored(self, event: events.Event, success: bool) -> None:
        with self._lock:
            tally = self._tallies.get(event.assoc)
            if tally is None:
                return
            if success:
                tally.stored += 1
            else:
                tally.refused += 1

    def ended(self, event: events.Event, how: str) -> None:
        with self._lock:
            tally = self._tallies.pop(event.assoc, None)
        if tally is None:
            return
        requestor = event.assoc.requestor
        logger.info(
            "assoc=%s calling=%s peer=%s %s after %.1fs: stored=%d refused=%d",
            event.assoc.name,
            str(requestor.ae_title).strip(),
            requestor.address,
            how,
            time.monotonic() - tally.started,
            tally.stored,
            tally.refused,
        )

    def released(self, event: events.Event) -> None:
        self.ended(event, "released")

    def aborted(self, event: events.Event) -> None:
        self.ended(event, "aborted")
