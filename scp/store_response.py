"""The C-STORE-RSP Success, encoded without pydicom.

Every instance gets the same answer: a command set (PS3.7 9.3.1.2, Implicit VR Little
Endian) that differs only in the message id and the two UIDs. pynetdicom builds it
through a pydicom Dataset, element by element, then encodes it and measures it twice
(the group length): a noticeable share of the CPU the SCP spends per instance.
:func:`success_pdata` writes the same bytes directly; ``tests/test_store_response.py``
checks they are byte for byte what pynetdicom sends. Anything else (a warning or error
status, an Error Comment, a command set that would need fragments) is left to pynetdicom.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<HHLH")
#: (0000,0100) Command Field C-STORE-RSP; the message id element's tag and length.
_COMMAND_FIELD = _US.pack(0x0000, 0x0100, 2, 0x8001)
#: (0000,0800) Command Data Set Type: none; (0000,0900) Status: Success.
_NO_DATASET_SUCCESS = _US.pack(0x0000, 0x0800, 2, 0x0101) + _US.pack(0x0000, 0x0900, 2, 0)
#: Message Control Header (PS3.8 E.2): a command, its last (only) fragment.
_LAST_COMMAND_FRAGMENT = b"\x03"
#: A PDV item's length and context id, before its value (PS3.8 9.3.5.1).
_PDV_OVERHEAD = 6


def _uid(element: int, value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0"  # UI values are padded to even length with NUL (PS3.5 9.1)
    return _ELEMENT.pack(0x0000, element, len(raw)) + raw


def encode_success(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The command set of a C-STORE-RSP with Status 0x0000."""
    body = b"".join(
        (
            _uid(0x0002, sop_class_uid),
            _COMMAND_FIELD,
            _US.pack(0x0000, 0x0120, 2, message_id),
            _NO_DATASET_SUCCESS,
            _uid(0x1000, sop_instance_uid),
        )
    )
    return _ELEMENT.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + body


def success_pdata(primitive: Any, context_id: int, max_pdu: int) -> P_DATA | None:
    """The one P-DATA of ``primitive`` if it is a plain C-STORE-RSP Success that fits one
    PDV of the peer's maximum PDU length (0: unlimited), else None."""
    if (
        type(primitive) is not C_STORE
        or primitive.MessageIDBeingRespondedTo is None
        or primitive.Status != 0
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
    ):
        return None
    sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    if not sop_class or not sop_instance or not (sop_class + sop_instance).isascii():
        return None
    encoded = encode_success(primitive.MessageIDBeingRespondedTo, sop_class, sop_instance)
    if max_pdu and len(encoded) > max_pdu - _PDV_OVERHEAD:
        return None
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + encoded))
    return pdata
