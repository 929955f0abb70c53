"""The C-STORE-RQ command set and the spool file's meta information, without pydicom.

The fast path (:mod:`scp.fastpath`) takes a command only when these plain decoders can
say what pynetdicom would make of it *without* a warning or an error: the elements of
a C-STORE-RQ and no others, each once, in order, of the right length, UIDs that
pydicom calls valid. Anything else is None here, and the message goes to pynetdicom
(which then says what is wrong with it, as it always did).

:func:`encode_file_meta` writes the File Meta Information pynetdicom writes at the
head of a spooled dataset (``create_file_meta`` and pydicom's ``write_file_meta_info``);
``tests/test_fastpath.py`` checks the bytes are the same.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_C_STORE_RQ, _NO_DATASET = 0x0001, 0x0101
#: The command elements of a C-STORE-RQ (PS3.7 9.3.1.1) the fast path knows; Move
#: Originator (0000,1030/1031) is left to pynetdicom.
_GROUP_LENGTH, _SOP_CLASS, _COMMAND_FIELD, _MESSAGE_ID = 0x0000, 0x0002, 0x0100, 0x0110
_PRIORITY, _DATASET_TYPE, _SOP_INSTANCE = 0x0700, 0x0800, 0x1000
_US_ELEMENTS = frozenset({_COMMAND_FIELD, _MESSAGE_ID, _PRIORITY, _DATASET_TYPE})
_UI_ELEMENTS = frozenset({_SOP_CLASS, _SOP_INSTANCE})


@dataclass(frozen=True)
class StoreCommand:
    """What pynetdicom's ``C_STORE`` request primitive would hold."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    priority: int | None


def parse_store_command(data: bytes) -> StoreCommand | None:
    """The C-STORE-RQ with a dataset that ``data`` (a whole command set, Implicit VR
    Little Endian) encodes, or None for anything else or anything unusual."""
    values: dict[int, int | str] = {}
    offset, end, previous = 0, len(data), -1
    while offset < end:
        if offset + 8 > end:
            return None
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0 or element <= previous or offset + length > end:
            return None
        previous = element
        raw = data[offset : offset + length]
        offset += length
        if element == _GROUP_LENGTH:
            if length != 4:
                return None
        elif element in _US_ELEMENTS:
            if length != 2:
                return None
            values[element] = _US.unpack(raw)[0]
        elif element in _UI_ELEMENTS:
            uid = _uid(raw)
            if uid is None:
                return None
            values[element] = uid
        else:
            return None
    if values.get(_COMMAND_FIELD) != _C_STORE_RQ:
        return None
    dataset_type = values.get(_DATASET_TYPE)
    if dataset_type is None or dataset_type == _NO_DATASET:
        return None
    message_id, sop_class, sop_instance = (
        values.get(_MESSAGE_ID),
        values.get(_SOP_CLASS),
        values.get(_SOP_INSTANCE),
    )
    if not isinstance(message_id, int) or not sop_class or not sop_instance:
        return None
    priority = values.get(_PRIORITY)
    if priority is not None and priority not in (0, 1, 2):
        return None  # pynetdicom refuses it as an invalid message: let it
    return StoreCommand(
        message_id,
        str(sop_class),
        str(sop_instance),
        priority if isinstance(priority, int) else None,
    )


def _uid(raw: bytes) -> str | None:
    """A UI value as pydicom decodes it (trailing NULs and spaces off), if it is one
    valid UID (pynetdicom neither warns nor refuses)."""
    try:
        text = raw.decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        return None
    if not 0 < len(text) <= 64 or not _UID.fullmatch(text):
        return None
    return text


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (Explicit VR Little Endian)
    of a spooled dataset, as pynetdicom writes them. The UIDs are ASCII (as
    :func:`parse_store_command` gives them)."""
    body = b"".join(
        (
            # (0002,0001) File Meta Information Version, OB: 2-byte reserved, 4-byte length.
            b"\x02\x00\x01\x00OB\x00\x00" + struct.pack("<L", 2) + b"\x00\x01",
            _short(0x0002, b"UI", _padded(sop_class_uid, b"\0")),
            _short(0x0003, b"UI", _padded(sop_instance_uid, b"\0")),
            _short(0x0010, b"UI", _padded(transfer_syntax, b"\0")),
            _short(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\0")),
            _short(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
        )
    )
    group_length = b"\x02\x00\x00\x00UL" + struct.pack("<HL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw
