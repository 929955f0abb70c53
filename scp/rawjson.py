"""Fast path: encoded DICOM bytes -> DICOM JSON, without building a pydicom Dataset.

pydicom's element-by-element conversion costs ~3.5 ms for an ordinary CT header,
which alone would cap one association at ~280 instances/s. This reader walks the
encoded elements once and converts the common cases directly. It handles:

* explicit VR little endian (and every compressed syntax, which encodes the
  dataset that way), deflated explicit VR little endian, implicit VR little endian;
* character sets: none (read as ISO 8859-1, as pydicom does), ISO_IR 100, ISO_IR 192;
* sequences of defined and undefined length, to :data:`MAX_DEPTH` levels.

Anything else (big endian, other character sets, code extensions, ambiguous VRs it
cannot settle, malformed lengths) raises :class:`Unsupported`; the caller then
uses pydicom (:mod:`scp.header`), which is slower but knows every corner. The two
paths are tested to produce identical JSON over pydicom's test files.

What is left out is the same as in :mod:`scp.header`: private elements, group
lengths, bulk data, binary values above the threshold, everything from Pixel Data on.
"""

from __future__ import annotations

import base64
import struct
import zlib
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR

from scp.header_rules import BULK_THRESHOLD, MAX_SEQUENCE_DEPTH, is_bulk

__all__ = ["Unsupported", "dataset_to_json", "part10_to_json"]


class Unsupported(Exception):
    """The fast path cannot decode this dataset; use pydicom."""


IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_ALL_VRS = [
    "AE",
    "AS",
    "AT",
    "CS",
    "DA",
    "DS",
    "DT",
    "FD",
    "FL",
    "IS",
    "LO",
    "LT",
    "OB",
    "OD",
    "OF",
    "OL",
    "OV",
    "OW",
    "PN",
    "SH",
    "SL",
    "SQ",
    "SS",
    "ST",
    "SV",
    "TM",
    "UC",
    "UI",
    "UL",
    "UN",
    "UR",
    "US",
    "UT",
    "UV",
]
#: The two VR bytes read as one little-endian 16-bit number -> the VR.
_VR_BY_CODE = {int.from_bytes(vr.encode("ascii"), "little"): vr for vr in _ALL_VRS}
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_AMBIGUOUS = frozenset({"US or SS", "OB or OW", "US or OW", "US or SS or OW"})
_CHARSET_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
_STRUCT = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "FL": "f",
    "FD": "d",
    "UV": "Q",
    "SV": "q",
}
_ENCODINGS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_CHARSET_TAG = 0x00080005
_PIXEL_REPRESENTATION = 0x00280103

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_tag_and_vr = struct.Struct("<HHH").unpack_from
_KEYS: dict[int, str] = {}


def _key(tag: int) -> str:
    """DICOM JSON key of a tag ("0020000D"), cached: formatting costs more than a lookup."""
    key = _KEYS.get(tag)
    if key is None:
        key = _KEYS[tag] = f"{tag:08X}"
    return key


@lru_cache(maxsize=4096)
def _implicit_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def part10_to_json(data: bytes | memoryview) -> tuple[str, dict[str, Any]]:
    """Decode a DICOM Part 10 file: (transfer syntax UID, dataset JSON)."""
    view = memoryview(data)
    if bytes(view[128:132]) != b"DICM":
        raise Unsupported("no DICM prefix")
    reader = _Reader(view, implicit=False, encoding="latin_1")
    meta, end = reader.dataset(132, len(view), depth=0, stop_group=0x0002)
    syntax = meta.get("00020010", {}).get("Value", [None])[0]
    if not isinstance(syntax, str):
        raise Unsupported("no transfer syntax in the file meta")
    return syntax, dataset_to_json(view[end:], syntax)


def dataset_to_json(data: bytes | memoryview, transfer_syntax: str) -> dict[str, Any]:
    """Decode an encoded dataset (no file meta) in ``transfer_syntax``."""
    if transfer_syntax == EXPLICIT_BE:
        raise Unsupported("big endian")
    if transfer_syntax == DEFLATED:
        data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(bytes(data))
    view = memoryview(data)
    reader = _Reader(view, implicit=transfer_syntax == IMPLICIT_LE, encoding=None)
    result, _ = reader.dataset(0, len(view), depth=0)
    return result


class _Reader:
    __slots__ = ("data", "encoding", "implicit", "signed_pixels")

    def __init__(self, data: memoryview, implicit: bool, encoding: str | None) -> None:
        self.data = data
        self.implicit = implicit
        self.encoding = encoding  # None until Specific Character Set is seen
        self.signed_pixels: bool | None = None

    def dataset(
        self,
        pos: int,
        end: int,
        depth: int,
        stop_group: int | None = None,
        item: bool = False,
    ) -> tuple[dict[str, Any], int]:
        data = self.data
        out: dict[str, Any] = {}
        while pos < end:
            if pos + 8 > end:
                raise Unsupported("truncated element header")
            group, element, vr_code = _tag_and_vr(data, pos)
            tag = (group << 16) | element
            if stop_group is not None and group != stop_group:
                return out, pos
            if tag == _ITEM_END:
                if not item:
                    raise Unsupported("item delimiter outside an item")
                return out, pos + 8
            if self.implicit:
                vr = _implicit_vr(tag)
                length = _u32(data, pos + 4)[0]
                pos += 8
            else:
                vr = _VR_BY_CODE.get(vr_code, "")
                if not vr:
                    raise Unsupported("invalid VR")
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise Unsupported("truncated element header")
                    length = _u32(data, pos + 8)[0]
                    pos += 12
                else:
                    length = _u16(data, pos + 6)[0]
                    pos += 8
            if tag == _PIXEL_DATA and depth == 0:
                return out, end
            # An explicit "UN" for a tag the dictionary knows is read with the dictionary's
            # VR, and its content (a sequence, say) is encoded implicitly (PS3.5 6.2.2).
            un_known = vr == "UN" and group % 2 == 0 and _implicit_vr(tag) != "UN"
            if un_known:
                vr = _implicit_vr(tag)
            if vr in _AMBIGUOUS:
                vr = self._settle(vr)
            if length == _UNDEFINED:
                if vr == "SQ" or (vr == "UN" and not self.implicit):
                    items, pos = self._sequence(
                        pos,
                        end,
                        depth,
                        undefined=True,
                        implicit=vr == "UN" or un_known or self.implicit,
                    )
                    if group % 2 == 0 and element != 0 and not is_bulk(tag):
                        out[_key(tag)] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                    continue
                raise Unsupported("undefined length outside a sequence")
            value_end = pos + length
            if value_end > end:
                raise Unsupported("value runs past the end")
            if group % 2 == 1 or element == 0 or is_bulk(tag):
                pos = value_end
                continue
            if vr == "SQ":
                items, _ = self._sequence(
                    pos, value_end, depth, undefined=False, implicit=self.implicit or un_known
                )
                out[_key(tag)] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            else:
                converted = self._element(tag, vr, data[pos:value_end])
                if converted is not None:
                    out[_key(tag)] = converted
            pos = value_end
        return out, pos

    def _settle(self, vr: str) -> str:
        """Resolve an ambiguous dictionary VR the way pydicom does, or give up."""
        if vr == "US or SS" and self.signed_pixels is not None:
            return "SS" if self.signed_pixels else "US"
        raise Unsupported(f"ambiguous VR {vr}")

    def _sequence(
        self, pos: int, end: int, depth: int, undefined: bool, implicit: bool
    ) -> tuple[list[dict[str, Any]], int]:
        if depth >= MAX_SEQUENCE_DEPTH:
            raise Unsupported("sequence nesting too deep")
        data = self.data
        items: list[dict[str, Any]] = []
        saved = self.implicit
        self.implicit = implicit
        try:
            while pos < end:
                tag = (_u16(data, pos)[0] << 16) | _u16(data, pos + 2)[0]
                length = _u32(data, pos + 4)[0]
                pos += 8
                if tag == _SEQUENCE_END:
                    return items, pos
                if tag != _ITEM:
                    raise Unsupported("expected an item")
                if length == _UNDEFINED:
                    item, pos = self.dataset(pos, end, depth + 1, item=True)
                else:
                    if pos + length > end:
                        raise Unsupported("item runs past the sequence")
                    item, _ = self.dataset(pos, pos + length, depth + 1)
                    pos += length
                if "00080005" in item:
                    raise Unsupported("character set inside an item")
                items.append(item)
            if undefined:
                raise Unsupported("sequence without delimiter")
            return items, pos
        finally:
            self.implicit = saved

    def _element(self, tag: int, vr: str, raw: memoryview) -> dict[str, Any] | None:
        if vr in _BINARY:
            if len(raw) > BULK_THRESHOLD:
                return None
            if not raw:
                return {"vr": vr}
            return {"vr": vr, "InlineBinary": base64.b64encode(raw).decode("ascii")}
        if not raw:
            return {"vr": vr}
        if vr in _STRUCT:
            return self._binary_numbers(tag, vr, raw)
        if vr == "AT":
            if len(raw) % 4:
                raise Unsupported("bad AT length")
            values = [
                f"{_u16(raw, i)[0]:04X}{_u16(raw, i + 2)[0]:04X}" for i in range(0, len(raw), 4)
            ]
            return {"vr": vr, "Value": values}
        if len(vr) != 2 or not vr.isupper():
            raise Unsupported("unknown VR")
        if tag == _CHARSET_TAG:
            text = bytes(raw).decode("ascii", "strict").strip(" \0")
            if text not in _ENCODINGS:
                raise Unsupported("character set needs pydicom")
            self.encoding = _ENCODINGS[text]
            return {"vr": vr, "Value": [text]}
        text = str(raw, self.encoding or "latin_1") if vr in _CHARSET_VRS else str(raw, "latin_1")
        return _text_element(vr, text)

    def _binary_numbers(self, tag: int, vr: str, raw: memoryview) -> dict[str, Any]:
        if tag == _PIXEL_REPRESENTATION and len(raw) >= 2:
            self.signed_pixels = _u16(raw, 0)[0] == 1
        fmt = _STRUCT[vr]
        size = struct.calcsize(fmt)
        if len(raw) % size:
            raise Unsupported("bad binary number length")
        values = list(struct.unpack(f"<{len(raw) // size}{fmt}", raw))
        return {"vr": vr, "Value": values}


def _text_element(vr: str, text: str) -> dict[str, Any] | None:
    if vr in _SINGLE_VALUED:
        value = text.rstrip(" \0")
        return {"vr": vr, "Value": [value]} if value else {"vr": vr}
    parts = text.split("\\")
    if vr == "UI":
        values: list[Any] = [p.rstrip("\0 ").strip() for p in parts]
    elif vr in ("IS", "DS"):
        values = [_number(vr, p.strip(" \0")) for p in parts]
    elif vr == "PN":
        values = [_person_name(p.rstrip(" \0")) for p in parts]
    else:
        values = [
            p.rstrip(" \0") if vr not in ("CS", "AE", "DA", "TM", "DT", "AS") else p.strip(" \0")
            for p in parts
        ]
    if values == [""] or values == [None]:
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _number(vr: str, text: str) -> int | float | None:
    if not text:
        return None
    try:
        if vr == "IS":
            number = float(text)
            if not number.is_integer():
                raise Unsupported("IS with a fraction")
            return int(number)
        value = float(text)
    except ValueError:
        raise Unsupported("bad number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise Unsupported("DS not finite")
    return value


def _person_name(text: str) -> dict[str, str] | None:
    if not text:
        return None
    groups = text.split("=")
    while len(groups) > 1 and groups[-1] == "":
        groups.pop()
    names = {"Alphabetic": groups[0]}
    if len(groups) > 1:
        names["Ideographic"] = groups[1]
    if len(groups) > 2:
        names["Phonetic"] = groups[2]
    return names
