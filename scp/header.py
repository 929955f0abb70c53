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

import io
import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

from scp.header_rules import BULK_THRESHOLD, MAX_SEQUENCE_DEPTH, is_bulk, normalize_text
from scp.rawjson import Unsupported, dataset_to_json, part10_to_json

logger = logging.getLogger(__name__)

#: Values longer than this are deferred by pydicom and dropped here unless textual.
_DEFER_SIZE = 64 * 1024

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


@dataclass
class Header:
    """A dataset's metadata in DICOM JSON, with the tags that had to be skipped."""

    json: dict[str, Any]
    skipped: list[str] = field(default_factory=list)


def read_header(path: str | Path) -> Header:
    """Header of a DICOM Part 10 file: the fast encoder where it applies, else pydicom."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise InvalidDicomError("empty file")
        # Mapped, not read: only the header's pages are touched, however large the pixel data.
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return Header(part10_to_json(view)[1])
            except Unsupported:
                pass
            finally:
                view.release()
    return extract_header(read_dataset(path))


def read_dataset_bytes(data: bytes, transfer_syntax: str, part10: Callable[[], bytes]) -> Header:
    """Header of an in-memory dataset (no file meta) in ``transfer_syntax``; ``part10``
    builds the whole file for pydicom when the fast encoder gives way."""
    try:
        return Header(dataset_to_json(data, transfer_syntax))
    except Unsupported:
        return extract_header(read_dataset(io.BytesIO(part10())))


def read_dataset(source: str | Path | BinaryIO) -> Dataset:
    """Read a DICOM Part 10 file up to (not including) its pixel data."""
    return dcmread(source, stop_before_pixels=True, defer_size=_DEFER_SIZE)


def extract_header(ds: Dataset) -> Header:
    """Turn ``ds`` into DICOM JSON without bulk or private data."""
    skipped: list[str] = []
    return Header(_dataset_json(ds, skipped, depth=0), skipped)


def _value_length(ds: Dataset, tag: BaseTag) -> int | None:
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement):
        return raw.length
    return None


def _dataset_json(ds: Dataset, skipped: list[str], depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        if tag.is_private or tag.element == 0 or is_bulk(tag):
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
            out[key] = normalize_text(elem.to_json_dict(None, BULK_THRESHOLD))
        except Exception:
            skipped.append(key)
    return out
