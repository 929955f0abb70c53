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
        logger.warning(
            "assoc=%s calling=%s rejected: %d associations open, limit %d",
            assoc.name,
            calling,
            others,
            policy.max_per_ae,
        )
        metrics.recorder().count("association_rejections_total", reason="per-ae-limit")
        assoc.acse.send_reject(_TRANSIENT, _PRESENTATION, _LOCAL_LIMIT)
        # pynetdicom closes the socket right after this handler returns, racing the DUL
        # thread that sends the rejection; kill() waits until the peer has it and closed
        # (or the ARTIM timer ran out).
        assoc.kill()


def _count(items: Iterable[object]) -> int:
    return sum(1 for _ in items)
