"""Who may associate, and how many at once.

Checks, cheapest first:

1. Peer address (``SCP2FHIR_ALLOWED_PEERS``): refused at TCP accept, before any DICOM is
   spoken (:meth:`scp.transport.AcceptorServer.verify_request`).
2. Connections not yet associated (``SCP2FHIR_MAX_PENDING_CONNECTIONS``): each holds a
   *pending* slot from accept until its association is admitted (or it ends). When all
   are taken, a new connection drops the one that has waited longest: an honest sender
   negotiates within milliseconds, so stalled or hostile peers go first, and however
   many there are they never touch the association slots (:class:`Slots`).
3. Called and calling AE titles: pynetdicom rejects a wrong called AE title and, with
   ``SCP2FHIR_ALLOWED_CALLING_AETS`` set, an unknown calling AE title, with the
   standard A-ASSOCIATE-RJ diagnostics.
4. Associations per calling AE (``SCP2FHIR_MAX_ASSOCIATIONS_PER_AE``) and in all
   (``SCP2FHIR_MAX_ASSOCIATIONS``), counted over admitted associations only: a request
   beyond either gets a transient "local limit exceeded" rejection (:func:`handle_requested`).

Every refusal, whichever check made it (here, in pynetdicom or in :mod:`scp.transport`),
goes through :func:`record_rejection`: one WARNING line naming the association, the
calling and called AE titles, the peer and the reason, and one count of
``scp2fhir_association_rejections_total{reason}``, the reason being one of
:data:`REJECTION_REASONS`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pynetdicom import events

from scp import metrics

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A-ASSOCIATE-RJ: rejected-transient, by the service provider (presentation related),
#: local limit exceeded (PS3.8 9.3.4).
_TRANSIENT, _PRESENTATION, _LOCAL_LIMIT = 0x02, 0x03, 0x02


#: Why an association (or a connection) was refused: the ``reason`` label's values.
REJECTION_REASONS: dict[str, str] = {
    "called-ae-title": "the called AE title is not SCP2FHIR_AE_TITLE",
    "calling-ae-title": "the calling AE title is not in SCP2FHIR_ALLOWED_CALLING_AETS",
    "peer": "the peer address is not in SCP2FHIR_ALLOWED_PEERS",
    "per-ae-limit": "the calling AE holds SCP2FHIR_MAX_ASSOCIATIONS_PER_AE associations",
    "max-associations": "SCP2FHIR_MAX_ASSOCIATIONS associations are open",
    "pending-limit": "SCP2FHIR_MAX_PENDING_CONNECTIONS connections had not associated: the "
    "one waiting longest was dropped",
    "pdu-too-large": "a PDU longer than the limit of its kind (SCP2FHIR_MAX_PDU for data)",
    "no-presentation-context": "none of the proposed SOP classes and transfer syntaxes is "
    "supported",
    "user-identity": "the user identity was not accepted",
    "application-context": "the application context is not DICOM's",
    "protocol-version": "the protocol version is not supported",
    "protocol-error": "the peer sent something that is not a DICOM association request",
    "acse-timeout": "no association request within SCP2FHIR_ACSE_TIMEOUT",
    "tls-handshake": "the TLS handshake failed",
    "other": "another A-ASSOCIATE-RJ reason",
}

#: A-ASSOCIATE-RJ (result, source, diagnostic) -> reason (PS3.8 9.3.4).
_REJECT_REASONS = {
    (0x01, 0x01, 0x07): "called-ae-title",
    (0x01, 0x01, 0x03): "calling-ae-title",
    (0x01, 0x01, 0x02): "application-context",
    (0x02, 0x02, 0x01): "user-identity",
    (0x02, 0x02, 0x02): "protocol-version",
    (0x02, 0x03, 0x02): "max-associations",
}


def rejection_reason(result: int | None, source: int | None, diagnostic: int | None) -> str:
    """The :data:`REJECTION_REASONS` key of an A-ASSOCIATE-RJ."""
    return _REJECT_REASONS.get((result or 0, source or 0, diagnostic or 0), "other")


def record_rejection(
    reason: str,
    *,
    peer: str,
    assoc: str = "-",
    calling: str = "-",
    called: str = "-",
    detail: str = "",
) -> None:
    """Log and count one refusal. AE titles and the peer are what the peer sent: the log
    set-up escapes control characters, the metric carries only the reason."""
    if reason not in REJECTION_REASONS:
        reason = "other"
    logger.warning(
        "assoc=%s calling=%s called=%s peer=%s rejected: %s (%s)",
        assoc,
        calling.strip() or "-",
        called.strip() or "-",
        peer,
        reason,
        detail or REJECTION_REASONS[reason],
    )
    metrics.recorder().count("association_rejections_total", reason=reason)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8, 192.168.1.7"`` -> networks; raises ValueError on a bad entry."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()
    )


@dataclass(frozen=True)
class AccessPolicy:
    allowed_peers: tuple[IPNetwork, ...] = ()

    def peer_allowed(self, address: str) -> bool:
        if not self.allowed_peers:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allowed_peers)


@dataclass(eq=False)
class Ticket:
    """One connection's slot: pending until admitted, then an association's."""

    peer: str
    sock: socket.socket
    #: The threads serving the connection (the request handler's, then the
    #: association's): the slot is free once none is alive, however the connection ended.
    threads: list[threading.Thread]
    opened: float = field(default_factory=time.monotonic)
    #: Calling AE title, once admitted.
    calling_ae: str | None = None
    closed: bool = False

    def live(self) -> bool:
        return not self.closed and any(thread.is_alive() for thread in self.threads)


class Slots:
    """Pending connections and admitted associations of one SCP process, counted apart."""

    def __init__(self, max_associations: int, max_pending: int, max_per_ae: int = 0) -> None:
        self.max_associations = max_associations
        self.max_pending = max_pending
        self.max_per_ae = max_per_ae  # 0: no limit of its own
        self._lock = threading.Lock()
        self._pending: list[Ticket] = []  # oldest first
        self._admitted: list[Ticket] = []

    def counts(self) -> tuple[int, int]:
        """(pending connections, admitted associations) now."""
        with self._lock:
            self._prune()
            return len(self._pending), len(self._admitted)

    def open(self, sock: socket.socket, peer: str) -> Ticket:
        """A pending slot for a new connection, served by the calling thread; when all are
        taken, the connection that has waited longest is dropped to make room."""
        ticket = Ticket(peer, sock, [threading.current_thread()])
        with self._lock:
            self._prune()
            dropped = self._pending.pop(0) if len(self._pending) >= self.max_pending else None
            self._pending.append(ticket)
        if dropped is not None:
            dropped.closed = True
            record_rejection(
                "pending-limit",
                peer=dropped.peer,
                detail=f"dropped after {time.monotonic() - dropped.opened:.1f}s without "
                f"associating: {self.max_pending} connections waiting",
            )
            # The socket's own shutdown, not SSLSocket's, which would pull the TLS state
            # from under the thread still using it; that thread then reads end-of-file.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(dropped.sock, socket.SHUT_RDWR)
        return ticket

    def admit(self, ticket: Ticket, calling_ae: str) -> str | None:
        """Turn a pending slot into an association's; None if admitted, else why not."""
        with self._lock:
            self._prune()
            if ticket not in self._pending:
                return "connection dropped"
            if self.max_per_ae > 0:
                same = _count(t for t in self._admitted if t.calling_ae == calling_ae)
                if same >= self.max_per_ae:
                    return "per-ae-limit"
            if len(self._admitted) >= self.max_associations:
                return "max-associations"
            self._pending.remove(ticket)
            ticket.calling_ae = calling_ae
            self._admitted.append(ticket)
            return None

    def close(self, ticket: Ticket) -> None:
        """Free the slot now (it would be freed once its threads end anyway)."""
        ticket.closed = True
        with self._lock:
            self._prune()

    def _prune(self) -> None:
        self._pending = [t for t in self._pending if t.live()]
        self._admitted = [t for t in self._admitted if t.live()]


def handle_requested(event: events.Event, slots: Slots) -> None:
    """EVT_REQUESTED: admit the association, or reject it (transient, local limit
    exceeded) when its calling AE or the SCP as a whole has no association slot left."""
    assoc = event.assoc
    ticket: Ticket | None = getattr(assoc, "ticket", None)
    # At this point pynetdicom has the A-ASSOCIATE-RQ but has not yet copied its calling
    # AE title to assoc.requestor.ae_title.
    request = assoc.requestor.primitive
    if ticket is None or request is None:
        return
    calling = str(request.calling_ae_title).strip()
    refused = slots.admit(ticket, calling)
    if refused is None:
        return
    if refused == "connection dropped":  # its socket is shut already: nothing to answer
        assoc.kill()
        return
    limit = slots.max_per_ae if refused == "per-ae-limit" else slots.max_associations
    record_rejection(
        refused,
        peer=str(assoc.requestor.address),
        assoc=assoc.name,
        calling=calling,
        called=str(request.called_ae_title),
        detail=f"{REJECTION_REASONS[refused]} (limit {limit})",
    )
    assoc.acse.send_reject(_TRANSIENT, _PRESENTATION, _LOCAL_LIMIT)
    # pynetdicom closes the socket right after this handler returns, racing the DUL
    # thread that sends the rejection; kill() waits until the peer has it and closed
    # (or the ARTIM timer ran out).
    assoc.kill()


def _count(items: Iterable[object]) -> int:
    return sum(1 for _ in items)
