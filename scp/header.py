"""Header extraction: a DICOM dataset in, its metadata as DICOM JSON (PS3.18 Annex F) out.

What is kept: every public, non-bulk element, sequences included. What is left
out, always: pixel data of every kind, overlay/waveform/audio/spectroscopy data,
encapsulated documents, any binary value (OB/OD/OF/OL/OV/OW/UN) longer than
:data:`BULK_THRESHOLD` bytes, private elements (no worker reads them and they
are the bulk of many vendors' headers) and group lengths. An element that cannot
be decoded is skipped and reported by tag, so one bad value never costs the
whole instance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

logger = logging.getLogger(__name__)

#: Binary values longer than this (bytes) are bulk data and are not kept.
BULK_THRESHOLD = 1024
#: Sequences nested deeper than this are cut off (a hostile-input guard).
MAX_SEQUENCE_DEPTH = 12
#: Values longer than this are deferred by pydicom and dropped here unless textual.
_DEFER_SIZE = 64 * 1024

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_BULK_TAGS = frozenset(
    {
        0x7FE00008,  # Float Pixel Data
        0x7FE00009,  # Double Float Pixel Data
        0x7FE00010,  # Pixel Data
        0x54001010,  # Waveform Data
        0x00420011,  # Encapsulated Document
        0x56000020,  # Spectroscopy Data
        0x50003000,  # Audio/curve data (retired repeating group 50xx)
    }
)


@dataclass
class Header:
    """A dataset's metadata in DICOM JSON, with the tags that had to be skipped."""

    json: dict[str, Any]
    skipped: list[str] = field(default_factory=list)


def read_dataset(source: str | Path | BinaryIO) -> Dataset:
    """Read a DICOM Part 10 file up to (not including) its pixel data."""
    return dcmread(source, stop_before_pixels=True, defer_size=_DEFER_SIZE)


def extract_header(ds: Dataset) -> Header:
    """Turn ``ds`` into DICOM JSON without bulk or private data."""
    skipped: list[str] = []
    return Header(_dataset_json(ds, skipped, depth=0), skipped)


def _is_bulk(tag: BaseTag) -> bool:
    if tag in _BULK_TAGS:
        return True
    group, element = tag.group, tag.element
    # Overlay Data (60xx,3000) and retired Curve Data (50xx,3000) repeat over groups.
    return (group & 0xFF00) in (0x6000, 0x5000) and element == 0x3000


def _value_length(ds: Dataset, tag: BaseTag) -> int | None:
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement):
        return raw.length
    return None


def _dataset_json(ds: Dataset, skipped: list[str], depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        if tag.is_private or tag.element == 0 or _is_bulk(tag):
            continue
        key = f"{tag:08X}"
        try:
            elem: DataElement = ds[tag]
        except Exception:  # pydicom raises many kinds for bad raw values
            skipped.append(key)
            continue
        if elem.VR in _BINARY_VRS:
            length = _value_length(ds, tag)
            if length is None:
                value = elem.value
                length = len(value) if isinstance(value, bytes | bytearray) else 0
            if length > BULK_THRESHOLD:
                continue
        if elem.VR == "SQ":
            if depth >= MAX_SEQUENCE_DEPTH:
                skipped.append(key)
                continue
            items = [_dataset_json(item, skipped, depth + 1) for item in elem.value]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        try:
            out[key] = elem.to_json_dict(None, BULK_THRESHOLD)
        except Exception:
            skipped.append(key)
    return out
