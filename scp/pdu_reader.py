"""Read one PDU from a peer's socket, bounded in time and in size.

Every byte the SCP receives from a peer goes through :func:`read_pdu`: the DUL
reactor (:class:`scp.transport.PromptDUL`) calls it whenever its socket is
readable, and so must any faster receive path, with the bounds :func:`bounds` gives
for the connection's phase. It never waits past ``deadline`` in all (a peer that
trickles a byte every few seconds is cut off there, however often it sends), and it
checks the length a PDU announces against :class:`PduLimits` before it allocates
anything for the PDU's body.

The bounds (:func:`bounds`): until the association is established, the whole
negotiation must be done within the ACSE timeout of the connection opening, and no
PDU may be larger than :data:`MAX_CONTROL_PDU`; after it, each PDU must be whole
within the DIMSE timeout of its first bytes, a P-DATA-TF at most the maximum length
the SCP announced.

Errors (all :class:`PduError`):

* :class:`PeerClosed`: the connection ended (before or inside a PDU);
* :class:`PduTimeout`: ``deadline`` passed before the PDU was complete;
* :class:`UnknownPdu`: the first byte names no PDU type: not DICOM (an HTTP request,
  a TLS ClientHello) or out of step;
* :class:`PduTooLarge`: the announced length is over the limit for that type.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass

#: Longest association-control PDU accepted (A-ASSOCIATE-RQ above all). A request for
#: all 128 presentation contexts with 16 transfer syntaxes each takes about 70 KiB; a
#: user identity (a Kerberos ticket, a SAML assertion) adds at most twice 64 KiB.
MAX_CONTROL_PDU = 256 * 1024
#: PDU types (PS3.8 9.3.1).
P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))
_HEADER = struct.Struct(">BBL")


class PduError(Exception):
    """One PDU could not be read; the connection is of no further use."""


class PeerClosed(PduError):
    """The peer closed the connection."""


class PduTimeout(PduError):
    """The PDU was not complete by its deadline."""


class UnknownPdu(PduError):
    def __init__(self, pdu_type: int) -> None:
        super().__init__(f"unknown PDU type 0x{pdu_type:02X}")
        self.pdu_type = pdu_type


class PduTooLarge(PduError):
    def __init__(self, pdu_type: int, length: int, limit: int) -> None:
        super().__init__(f"PDU type 0x{pdu_type:02X} of {length} bytes, limit {limit}")
        self.pdu_type = pdu_type
        self.length = length
        self.limit = limit


@dataclass(frozen=True)
class PduLimits:
    """Largest PDU accepted (bytes after the 6-byte header), by kind."""

    #: P-DATA-TF: what the SCP announces as its maximum length (``SCP2FHIR_MAX_PDU``).
    p_data: int
    #: Every other type: association negotiation, release, abort.
    control: int = MAX_CONTROL_PDU

    def limit(self, pdu_type: int) -> int:
        return self.p_data if pdu_type == P_DATA_TF else self.control


#: Until the association is established nothing is large: P-DATA has no business
#: arriving at all.
_BEFORE_ASSOCIATION = PduLimits(p_data=MAX_CONTROL_PDU)


def bounds(
    associated: bool,
    opened: float,
    acse_timeout: float | None,
    dimse_timeout: float | None,
    max_p_data: int,
) -> tuple[float | None, PduLimits]:
    """(deadline, limits) for the next PDU of a connection opened at ``opened``
    (:func:`time.monotonic`); a timeout of None sets no deadline."""
    if not associated:
        deadline = None if acse_timeout is None else opened + acse_timeout
        return deadline, _BEFORE_ASSOCIATION
    deadline = None if dimse_timeout is None else time.monotonic() + dimse_timeout
    return deadline, PduLimits(p_data=max_p_data)


def read_pdu(sock: socket.socket, deadline: float | None, limits: PduLimits) -> bytearray:
    """The next whole PDU on ``sock`` (header included), complete by ``deadline``
    (:func:`time.monotonic`; None: no deadline). The socket's own timeout is restored
    afterwards."""
    previous = sock.gettimeout()
    try:
        header = bytearray(_HEADER.size)
        _fill(sock, memoryview(header), deadline)
        pdu_type, _, length = _HEADER.unpack(header)
        if pdu_type not in _PDU_TYPES:
            raise UnknownPdu(pdu_type)
        limit = limits.limit(pdu_type)
        if length > limit:
            raise PduTooLarge(pdu_type, length, limit)
        pdu = bytearray(_HEADER.size + length)
        pdu[: _HEADER.size] = header
        _fill(sock, memoryview(pdu)[_HEADER.size :], deadline)
        return pdu
    finally:
        with contextlib.suppress(OSError):  # closed meanwhile
            sock.settimeout(previous)


def _fill(sock: socket.socket, view: memoryview, deadline: float | None) -> None:
    while view:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise PduTimeout("PDU incomplete at its deadline")
        sock.settimeout(left)
        try:
            count = sock.recv_into(view)
        except TimeoutError:
            raise PduTimeout("PDU incomplete at its deadline") from None
        except OSError as exc:  # reset, or closed under us
            raise PeerClosed(str(exc)) from None
        if count == 0:
            raise PeerClosed("connection closed")
        view = view[count:]
