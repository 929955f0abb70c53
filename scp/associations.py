"""One log line and one count per association: who, from where, how long, what came of it.

Bound to pynetdicom's public events (:meth:`AssociationLog.handlers`):

* ``EVT_CONN_OPEN`` gives each connection a name unique in the log,
  ``AcceptorThread@<pid>.<n>`` (pynetdicom names it by the second it arrived, so eight
  associations in one second shared a name; the ``AcceptorThread`` prefix stays because
  pynetdicom finds a server's associations by it);
* ``EVT_ACCEPTED``, ``EVT_RELEASED``, ``EVT_ABORTED``: the accepted association's line;
  ``handle_store`` reports each C-STORE outcome here;
* ``EVT_REJECTED`` (pynetdicom's own A-ASSOCIATE-RJ: called or calling AE title, too
  many associations), an association that agrees on no presentation context, and a
  connection that never sends an A-ASSOCIATE-RQ (``EVT_FSM_TRANSITION`` until the
  request arrives, then unbound) are refusals: :func:`scp.access.record_rejection`.

A connection that closes without sending a byte is a port check (a load balancer, the
container's health check), logged at DEBUG and not counted.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import events, evt

from scp import metrics
from scp.access import record_rejection, rejection_reason

logger = logging.getLogger(__name__)

_numbers = itertools.count(1)


@dataclass
class _Tally:
    started: float = field(default_factory=time.monotonic)
    #: The A-ASSOCIATE-RQ arrived.
    requested: bool = False
    #: Refused (the refusal was logged; no end line).
    rejected: bool = False
    #: State machine events seen before the request (Evt17 closed, Evt19 invalid PDU...).
    early_events: set[str] = field(default_factory=set)
    stored: int = 0
    refused: int = 0


def _peer(assoc: Any) -> str:
    return str(assoc.requestor.address or "-")


class AssociationLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: weakref.WeakKeyDictionary[object, _Tally] = weakref.WeakKeyDictionary()

    def handlers(self) -> list[tuple[Any, Any]]:
        """``(event, handler)`` pairs for ``AE.make_server(evt_handlers=...)``."""
        return [
            (evt.EVT_CONN_OPEN, self.opened),
            (evt.EVT_FSM_TRANSITION, self.transition),
            (evt.EVT_REQUESTED, self.requested),
            (evt.EVT_ACCEPTED, self.accepted),
            (evt.EVT_REJECTED, self.rejected),
            (evt.EVT_RELEASED, self.released),
            (evt.EVT_ABORTED, self.aborted),
            (evt.EVT_CONN_CLOSE, self.closed),
        ]

    def _tally(self, assoc: object) -> _Tally | None:
        with self._lock:
            return self._tallies.get(assoc)

    def opened(self, event: events.Event) -> None:
        # Before the association's thread starts: renaming it is safe here.
        event.assoc.name = f"AcceptorThread@{os.getpid()}.{next(_numbers)}"
        with self._lock:
            self._tallies[event.assoc] = _Tally()

    def transition(self, event: events.Event) -> None:
        tally = self._tally(event.assoc)
        if tally is not None and not tally.requested:
            tally.early_events.add(str(event.fsm_event))

    def requested(self, event: events.Event) -> None:
        # From here on the state machine is not watched: no cost per PDU.
        event.assoc.unbind(evt.EVT_FSM_TRANSITION, self.transition)
        tally = self._tally(event.assoc)
        if tally is not None:
            tally.requested = True

    def accepted(self, event: events.Event) -> None:
        assoc = event.assoc
        if not assoc.accepted_contexts:
            # pynetdicom aborts it right after this event.
            tally = self._tally(assoc)
            if tally is not None:
                tally.rejected = True
            proposed = sorted({str(c.abstract_syntax) for c in assoc.requestor.requested_contexts})
            record_rejection(
                "no-presentation-context",
                peer=_peer(assoc),
                assoc=assoc.name,
                calling=str(assoc.requestor.ae_title),
                called=str(assoc.acceptor.ae_title),
                detail="proposed: " + ", ".join(proposed[:5]) + (", ..." * (len(proposed) > 5)),
            )
            return
        metrics.recorder().count(
            "associations_total", calling_ae=str(assoc.requestor.ae_title).strip()
        )

    def rejected(self, event: events.Event) -> None:
        assoc = event.assoc
        tally = self._tally(assoc)
        if tally is not None:
            tally.rejected = True
        answer = assoc.acceptor.primitive
        request = assoc.requestor.primitive
        record_rejection(
            rejection_reason(
                getattr(answer, "result", None),
                getattr(answer, "result_source", None),
                getattr(answer, "diagnostic", None),
            ),
            peer=_peer(assoc),
            assoc=assoc.name,
            calling=str(getattr(request, "calling_ae_title", "-")),
            called=str(getattr(request, "called_ae_title", "-")),
        )

    def stored(self, event: events.Event, success: bool) -> None:
        tally = self._tally(event.assoc)
        if tally is None:
            return
        with self._lock:
            if success:
                tally.stored += 1
            else:
                tally.refused += 1

    def closed(self, event: events.Event) -> None:
        """A connection that ended before its A-ASSOCIATE-RQ is refused or a port check."""
        tally = self._tally(event.assoc)
        if tally is None or tally.requested:
            return
        with self._lock:
            self._tallies.pop(event.assoc, None)
        if getattr(event.assoc, "refusal_recorded", False):
            return  # the transport logged and counted it (scp.transport.PromptDUL._record)
        assoc = event.assoc
        elapsed = time.monotonic() - tally.started
        # Evt19: an invalid PDU; Evt18: the ARTIM timer (the ACSE timeout) ran out. The
        # peer closing (Evt17) is only seen after this event, hence the elapsed time.
        if "Evt19" in tally.early_events:
            record_rejection(
                "protocol-error",
                peer=_peer(assoc),
                assoc=assoc.name,
                detail="not a DICOM association request",
            )
        elif "Evt18" in tally.early_events or elapsed >= float(assoc.acse_timeout or 0):
            record_rejection(
                "acse-timeout",
                peer=_peer(assoc),
                assoc=assoc.name,
                detail=f"no association request after {elapsed:.1f}s",
            )
        else:
            logger.debug(
                "assoc=%s peer=%s closed after %.1fs before an association request (a port check?)",
                assoc.name,
                _peer(assoc),
                elapsed,
            )

    def ended(self, event: events.Event, how: str) -> None:
        with self._lock:
            tally = self._tallies.pop(event.assoc, None)
        if tally is None or tally.rejected:
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
