"""Who may associate, and how many at once.

Three checks, cheapest first:

1. Peer address (``SCP2FHIR_ALLOWED_PEERS``): refused at TCP accept, before any DICOM
   is spoken (:meth:`scp.transport.ReusePortServer.verify_request`).
2. Called and calling AE titles: pynetdicom rejects a wrong called AE title and, with
   ``SCP2FHIR_ALLOWED_CALLING_AETS`` set, an unknown calling AE title, with the
   standard A-ASSOCIATE-RJ diagnostics.
3. Associations per calling AE (``SCP2FHIR_MAX_ASSOCIATIONS_PER_AE``): a modality that
   opens too many at once gets a transient "local limit exceeded" rejection, so one
   sender cannot take every slot of ``SCP2FHIR_MAX_ASSOCIATIONS``.

Every refusal, whichever check made it (here, in pynetdicom or in :mod:`scp.transport`),
goes through :func:`record_rejection`: one WARNING line naming the association, the
calling and called AE titles, the peer and the reason, and one count of
``scp2fhir_association_rejections_total{reason}``, the reason being one of
:data:`REJECTION_REASONS`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

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
    max_per_ae: int = 0  # 0: no limit of its own

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


def handle_requested(event: events.Event, policy: AccessPolicy) -> None:
    """EVT_REQUESTED: reject a calling AE that already holds its share of associations."""
    if policy.max_per_ae <= 0:
        return
    assoc = event.assoc
    # At this point pynetdicom has the A-ASSOCIATE-RQ but has not yet copied its calling
    # AE title to assoc.requestor.ae_title.
    request = assoc.requestor.primitive
    if request is None:
        return
    calling = str(request.calling_ae_title).strip()
    server = assoc._server  # set by pynetdicom on every acceptor association
    others = _count(
        a
        for a in (server.active_associations if server is not None else [])
        if a is not assoc and str(a.requestor.ae_title).strip() == calling
    )
    if others >= policy.max_per_ae:
        record_rejection(
            "per-ae-limit",
            peer=str(assoc.requestor.address),
            assoc=assoc.name,
            calling=calling,
            called=str(request.called_ae_title),
            detail=f"{others} associations open, limit {policy.max_per_ae}",
        )
        assoc.acse.send_reject(_TRANSIENT, _PRESENTATION, _LOCAL_LIMIT)
        # pynetdicom closes the socket right after this handler returns, racing the DUL
        # thread that sends the rejection; kill() waits until the peer has it and closed
        # (or the ARTIM timer ran out).
        assoc.kill()


def _count(items: Iterable[object]) -> int:
    return sum(1 for _ in items)
