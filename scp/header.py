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
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID

from scp import header_budget
from scp.header_rules import (
    BULK_THRESHOLD,
    KEPT_PRIVATE_CREATORS,
    KEPT_PRIVATE_GROUPS,
    MAX_HEADER_BYTES,
    MAX_INFLATED_BYTES,
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
from scp.inflate import Corrupt, inflate
from scp.rawjson import DEFLATED, EXPLICIT_LE, Truncated, Unsupported, decode, part10_meta

logger = logging.getLogger(__name__)

#: Values longer than this are deferred by pydicom and dropped here unless textual.
_DEFER_SIZE = 64 * 1024
#: pydicom builds a whole dataset before it can be judged: it may read at most this many
#: times the header budget from the data before the reading is given up.
PYDICOM_READ_FACTOR = 2

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


@contextmanager
def _unreadable() -> Iterator[None]:
    """Bad input, whatever pydicom (or the inflater) raised for it, as :class:`Unreadable`."""
    try:
        yield
    except Unreadable:
        raise
    except _READ_FAILURES as exc:
        raise Unreadable(type(exc).__name__) from exc


@dataclass(frozen=True)
class Limits:
    """What reading one header may cost (``SCP2FHIR_MAX_HEADER_BYTES``,
    ``SCP2FHIR_MAX_INFLATED_BYTES``; inflated data goes to a temporary file in
    ``scratch``, default the temporary folder)."""

    header_bytes: int = MAX_HEADER_BYTES
    inflated_bytes: int = MAX_INFLATED_BYTES
    scratch: Path | None = None


DEFAULT_LIMITS = Limits()


class HeaderTooLarge(Exception):
    """The header cannot be read within the limits: a deflated dataset that inflates
    beyond ``SCP2FHIR_MAX_INFLATED_BYTES`` before its pixel data, or one only pydicom
    reads whose header is far beyond the budget."""


@dataclass
class Header:
    """A dataset's metadata in DICOM JSON, with the tags that had to be skipped."""

    json: dict[str, Any]
    #: Undecodable, truncated or too long: named by tag.
    skipped: list[str] = field(default_factory=list)
    #: Left out because the header budget was short (:mod:`scp.header_budget`).
    dropped: list[str] = field(default_factory=list)


def read_header(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Header of a DICOM Part 10 file: the fast encoder where it applies, else pydicom.

    Raises :class:`Unreadable` for a file that is no readable DICOM (and OSError when
    the file cannot be opened at all), :class:`HeaderTooLarge` beyond the limits."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise Unreadable("empty file")
        # Mapped, not read: only the header's pages are touched, however large the pixel data.
        with _mapped(handle) as view, _unreadable():
            try:
                syntax, offset = part10_meta(view)
            except Unsupported:
                return _unusual_meta(path, handle, limits)
            if syntax == DEFLATED:
                return _read_deflated(view[offset:], limits)
            return _read(view[offset:], syntax, lambda: _rewound(handle), limits)


def read_dataset_bytes(
    data: bytes, transfer_syntax: str, part10: Callable[[], bytes], limits: Limits = DEFAULT_LIMITS
) -> Header:
    """Header of an in-memory dataset (no file meta) in ``transfer_syntax``; ``part10``
    builds the whole file for pydicom when the fast encoder gives way. Raises
    :class:`Unreadable` for bytes that are no readable dataset, :class:`HeaderTooLarge`
    beyond the limits."""
    with _unreadable():
        if transfer_syntax == DEFLATED:
            return _read_deflated(memoryview(data), limits)
        return _read(memoryview(data), transfer_syntax, lambda: io.BytesIO(part10()), limits)


@contextmanager
def _mapped(handle: BinaryIO) -> Iterator[memoryview]:
    """The file mapped read-only. Views of it that outlive the block (held by the
    traceback of an exception raised in it) keep the mapping until they go: closing
    it under them would raise a BufferError in place of that exception."""
    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    try:
        yield view
    finally:
        with suppress(BufferError):
            view.release()
            mapped.close()


def _rewound(handle: BinaryIO) -> BinaryIO:
    handle.seek(0)
    return handle


def _unusual_meta(path: str | Path, handle: BinaryIO, limits: Limits) -> Header:
    """A file whose meta the fast encoder cannot read (no preamble, say): pydicom's,
    unless the meta says deflated (pydicom would inflate it whole)."""
    try:
        syntax = read_file_meta_info(path).get("TransferSyntaxUID")
    except Exception:  # pydicom's own reading below says what is wrong
        syntax = None
    if syntax == DEFLATED:
        raise InvalidDicomError("deflated dataset behind an unusual file meta")
    return _read_with_pydicom(_rewound(handle), limits, cut=False)


def _read(
    view: memoryview,
    syntax: str,
    part10: Callable[[], BinaryIO],
    limits: Limits,
    cut: bool = False,
) -> Header:
    """The header of ``view`` (a dataset in ``syntax``); ``cut``: ``view`` is the first
    part only (of an inflated dataset), so the header must end within it."""
    try:
        decoded = decode(view, syntax, limits.header_bytes)
    except Truncated as exc:
        if cut:
            raise HeaderTooLarge("the header inflates beyond the limit") from None
        truncated: str | None = exc.key or "truncated"
    except Unsupported:
        truncated = None
    else:
        if cut and not decoded.reached_pixel_data:
            raise HeaderTooLarge("the header inflates beyond the limit")
        return Header(decoded.json, dropped=decoded.dropped)
    return _discard(_read_with_pydicom(part10(), limits, cut), truncated)


def _read_deflated(deflated: memoryview, limits: Limits) -> Header:
    """Inflate (at most ``limits.inflated_bytes``) into a temporary Part 10 file in
    explicit VR little endian, and read that: memory holds neither the deflated nor the
    inflated whole."""
    with tempfile.TemporaryFile(dir=limits.scratch) as scratch:
        meta = _explicit_meta()
        scratch.write(meta)
        try:
            cut = inflate(deflated, scratch, limits.inflated_bytes)
        except Corrupt:
            raise InvalidDicomError("corrupt deflated data") from None
        scratch.flush()
        if scratch.tell() == len(meta):
            return _read_with_pydicom(_rewound(scratch), limits, cut=False)  # empty dataset
        with _mapped(scratch) as view:
            return _read(view[len(meta) :], EXPLICIT_LE, lambda: _rewound(scratch), limits, cut)


def _explicit_meta() -> bytes:
    """Preamble, prefix and a file meta naming explicit VR little endian."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_file_meta_info(fp, meta, enforce_standard=False)
    return b"\0" * 128 + b"DICM" + fp.getvalue()


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


class _OverRead(Exception):
    """pydicom read more than it may."""


class _CappedReader(io.RawIOBase):
    """A file that lets pydicom read at most ``cap`` bytes (seeking is free: pydicom
    seeks past the values it defers)."""

    def __init__(self, inner: BinaryIO, cap: int) -> None:
        self._inner = inner
        self._left = cap

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._inner.read(-1 if size is None else size)
        self._left -= len(data)
        if self._left < 0:
            raise _OverRead
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()


def _read_with_pydicom(part10: BinaryIO, limits: Limits, cut: bool) -> Header:
    """pydicom's reading of a Part 10 stream, bounded: it may read at most
    :data:`PYDICOM_READ_FACTOR` times the budget; beyond, only the preferred elements
    (identity, what the workers read) are read again; beyond that too, HeaderTooLarge."""
    cap = limits.header_bytes * PYDICOM_READ_FACTOR
    size = part10.seek(0, io.SEEK_END)
    for tags in (None, sorted(header_budget.PREFERRED_TAGS)):
        part10.seek(0)
        capped = _CappedReader(part10, cap)
        try:
            ds = dcmread(
                capped, stop_before_pixels=True, defer_size=_DEFER_SIZE, specific_tags=tags
            )
        except _OverRead:
            continue
        # Stopped before the pixel data: it is where the stream now is, short of the end.
        if cut and part10.tell() >= size:
            raise HeaderTooLarge("the header inflates beyond the limit")
        try:
            header = extract_header(ds, limits.header_bytes)
        except _OverRead:  # reading a deferred value
            continue
        if tags is not None:
            header.dropped.append("(not read: all but the identity and the mapped elements)")
        return header
    raise HeaderTooLarge("the header is too large for pydicom to read within the budget")


def extract_header(ds: Dataset, budget: int | None = None) -> Header:
    """Turn ``ds`` into DICOM JSON without bulk or private data, within ``budget`` bytes
    (:mod:`scp.header_budget`; None: no budget)."""
    skipped: list[str] = []
    unread: list[str] = []
    json = _dataset_json(ds, skipped, depth=0, budget=budget, unread=unread)
    if budget is None:
        return Header(json, skipped)
    sizes = {key: header_budget.element_size(key, element) for key, element in json.items()}
    dropped = header_budget.fit(sizes, budget)
    for key in dropped:
        del json[key]
    return Header(json, skipped, sorted(unread + dropped))


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


def _dataset_json(
    ds: Dataset,
    skipped: list[str],
    depth: int,
    budget: int | None = None,
    unread: list[str] | None = None,
) -> dict[str, Any]:
    """``ds`` as DICOM JSON; at the top, elements whose encoded value alone is larger than
    ``budget`` are not even read (pydicom deferred them) and are listed in ``unread``."""
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
        if budget is not None and unread is not None and (_value_length(ds, tag) or 0) > budget:
            unread.append(key)
            continue
        try:
            elem: DataElement = ds[tag]
        except _OverRead:
            raise
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
