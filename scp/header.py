"""Header extraction: a DICOM dataset in, its metadata as DICOM JSON (PS3.18 Annex F) out.

What is kept: every public, non-bulk element, sequences included. What is left
out, always: pixel data of every kind, overlay/waveform/audio/spectroscopy data,
encapsulated documents, any binary value (OB/OD/OF/OL/OV/OW/UN) longer than
:data:`BULK_THRESHOLD` bytes, private elements (they are the bulk of many vendors'
headers; only the few a worker reads, :data:`scp.header_rules.KEPT_PRIVATE`, stay,
bounded) and group lengths. An element that cannot
be decoded, a text value longer than :data:`MAX_TEXT_BYTES` and the element a
truncated dataset ends in are skipped and reported by tag, so one bad value never
costs the whole instance.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from scp.header_rules import (
    BULK_THRESHOLD,
    KEPT_PRIVATE_CREATORS,
    KEPT_PRIVATE_GROUPS,
    MAX_PRIVATE_BYTES,
    MAX_SEQUENCE_DEPTH,
    MAX_TEXT_BYTES,
    TEXT_VRS,
    is_bulk,
    is_private_creator,
    kept_private_json,
    kept_private_vr,
    normalize_text,
)
from scp.rawjson import Truncated, Unsupported, dataset_to_json, part10_to_json

logger = logging.getLogger(__name__)

#: Values longer than this are deferred by pydicom and dropped here unless textual.
_DEFER_SIZE = 64 * 1024

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


class Unreadable(InvalidDicomError):
    """The bytes are no DICOM dataset that can be read: not Part 10, cut before its
    first element, a broken deflate stream, a length running past the end... The one
    exception :func:`read_header` and :func:`read_dataset_bytes` raise for bad input
    (pydicom's own failure is chained as ``__cause__``; the message is its type name,
    never a value). Being an :class:`~pydicom.errors.InvalidDicomError`, it is caught
    where pydicom's refusal was."""


#: What pydicom raises, for bytes it cannot parse, from reading or from decoding a value.
_READ_FAILURES: tuple[type[BaseException], ...] = (
    InvalidDicomError,
    BytesLengthException,
    OSError,
    EOFError,
    ValueError,
    struct.error,
    zlib.error,
)


@dataclass
class Header:
    """A dataset's metadata in DICOM JSON, with the tags that had to be skipped."""

    json: dict[str, Any]
    skipped: list[str] = field(default_factory=list)


def read_header(path: str | Path) -> Header:
    """Header of a DICOM Part 10 file: the fast encoder where it applies, else pydicom.

    Raises :class:`Unreadable` for a file that is no readable DICOM (and OSError when
    the file cannot be opened at all)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise Unreadable("empty file")
        # Mapped, not read: only the header's pages are touched, however large the pixel data.
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return Header(part10_to_json(view)[1])
            except Truncated as exc:
                truncated: str | None = exc.key or "truncated"
            except Unsupported:
                truncated = None
            finally:
                view.release()
    return _discard(_pydicom_header(path), truncated)


def read_dataset_bytes(data: bytes, transfer_syntax: str, part10: Callable[[], bytes]) -> Header:
    """Header of an in-memory dataset (no file meta) in ``transfer_syntax``; ``part10``
    builds the whole file for pydicom when the fast encoder gives way. Raises
    :class:`Unreadable` for bytes that are no readable dataset."""
    try:
        return Header(dataset_to_json(data, transfer_syntax))
    except Truncated as exc:
        truncated: str | None = exc.key or "truncated"
    except Unsupported:
        truncated = None
    return _discard(_pydicom_header(io.BytesIO(part10())), truncated)


def _pydicom_header(source: str | Path | BinaryIO) -> Header:
    try:
        return extract_header(read_dataset(source))
    except _READ_FAILURES as exc:
        raise Unreadable(type(exc).__name__) from exc


def _discard(header: Header, truncated: str | None) -> Header:
    """Leave out the element a truncated dataset ends in and report it. pydicom reads
    such a dataset without complaint, dropping or keeping part of that element."""
    if truncated is not None:
        header.json.pop(truncated, None)
        header.skipped.append(truncated)
    return header


def read_dataset(source: str | Path | BinaryIO) -> Dataset:
    """Read a DICOM Part 10 file up to (not including) its pixel data."""
    return dcmread(source, stop_before_pixels=True, defer_size=_DEFER_SIZE)


def extract_header(ds: Dataset) -> Header:
    """Turn ``ds`` into DICOM JSON without bulk or private data."""
    skipped: list[str] = []
    return Header(_dataset_json(ds, skipped, depth=0), skipped)


def _unread_verdict(ds: Dataset, tag: BaseTag) -> str | None:
    """Judge an element by its encoding, before its value is read (pydicom defers long
    values and reads them on access: a hostile one may be huge): "bulk" for a binary
    value over :data:`BULK_THRESHOLD`, "too long" for text over :data:`MAX_TEXT_BYTES`,
    None when the value has to be read to tell."""
    raw = ds.get_item(tag, keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.length <= BULK_THRESHOLD:
        return None
    vr = raw.VR
    if vr is None or vr == "UN":  # implicit VR, or explicit UN: pydicom uses the dictionary's
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    if vr in _BINARY_VRS:
        return "bulk"
    if vr in TEXT_VRS and raw.length > MAX_TEXT_BYTES:
        return "too long"
    return None


def _numbers_with_gaps(elem: DataElement) -> dict[str, Any] | None:
    """IS/DS values with empty ones among them ("1\\"), which pydicom cannot put in
    JSON: null where a value is empty (PS3.18 F.2.5), as the fast path writes them."""
    if elem.VR not in ("IS", "DS"):
        return None
    values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
    number = int if elem.VR == "IS" else float
    try:
        return {
            "vr": elem.VR,
            "Value": [None if value in ("", None) else number(value) for value in values],
        }
    except (TypeError, ValueError, OverflowError):
        return None


def _value_length(ds: Dataset, tag: BaseTag) -> int | None:
    raw = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement):
        return raw.length
    return None


def _kept_private(ds: Dataset, tag: BaseTag, creators: dict[int, str]) -> dict[str, Any] | None:
    """A private creator or element of :data:`~scp.header_rules.KEPT_PRIVATE` as the
    fast path writes it; ``None`` for any other private element."""
    length = _value_length(ds, tag)
    if length is not None and length > MAX_PRIVATE_BYTES:
        return None
    try:
        value = ds[tag].value
    except Exception:  # a private value pydicom cannot decode is simply not kept
        return None
    if not isinstance(value, str):
        return None
    if is_private_creator(tag.element):
        creator = value.strip(" \0")
        if (tag.group, creator) not in KEPT_PRIVATE_CREATORS:
            return None
        creators[tag.element] = creator
        return {"vr": "LO", "Value": [creator]}
    kept_vr = kept_private_vr(tag.group, tag.element, creators)
    if kept_vr is None or len(value.encode("utf-8")) > MAX_PRIVATE_BYTES:
        return None
    return kept_private_json(kept_vr, value)


def _dataset_json(ds: Dataset, skipped: list[str], depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    creators: dict[int, str] = {}
    for tag in list(ds.keys()):
        if tag.is_private:
            if depth == 0 and tag.group in KEPT_PRIVATE_GROUPS and tag.element:
                kept = _kept_private(ds, tag, creators)
                if kept is not None:
                    out[f"{tag:08X}"] = kept
            continue
        if tag.element == 0 or is_bulk(tag) or (tag.group == 2 and depth == 0):
            continue  # (group 0002 belongs to the file meta, never to a dataset)
        key = f"{tag:08X}"
        verdict = _unread_verdict(ds, tag)
        if verdict is not None:
            if verdict == "too long":
                skipped.append(key)
            continue
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
            numbers = _numbers_with_gaps(elem)
            if numbers is None:
                skipped.append(key)
            else:
                out[key] = numbers
    return out
