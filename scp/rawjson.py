"""Fast path: encoded DICOM bytes -> DICOM JSON, without building a pydicom Dataset.

pydicom's element-by-element conversion costs ~3.5 ms for an ordinary CT header,
which alone would cap one association at ~280 instances/s. This reader walks the
encoded elements once and converts the common cases directly. It handles:

* explicit VR little endian (and every compressed syntax, which encodes the
  dataset that way), deflated explicit VR little endian, implicit VR little endian;
* character sets: none (read as ISO 8859-1, as pydicom does), ISO_IR 100, ISO_IR 192;
* sequences of defined and undefined length, to :data:`MAX_DEPTH` levels.

Anything else (big endian, other character sets, code extensions, ambiguous VRs it
cannot settle, malformed lengths, text values over :data:`MAX_TEXT_BYTES`, bytes that
do not decode) raises :class:`Unsupported`, and nothing else escapes; the caller then
uses pydicom (:mod:`scp.header`), which is slower but knows every corner. A dataset
that ends inside an element raises :class:`Truncated`, naming that element. The two
paths are tested to produce identical JSON over pydicom's test files and over
datasets mutated at random (``tests/test_fuzz.py``).

What is left out is the same as in :mod:`scp.header`: private elements (but the few
:data:`scp.header_rules.KEPT_PRIVATE` names), group lengths, bulk data, binary values
above the threshold, everything from Pixel Data on.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

from pydicom.datadict import dictionary_VR

from scp.header_budget import PREFERRED_TAGS
from scp.header_rules import (
    BULK_THRESHOLD,
    KEPT_PRIVATE_CREATORS,
    KEPT_PRIVATE_GROUPS,
    MAX_INFLATED_BYTES,
    MAX_PRIVATE_BYTES,
    MAX_SEQUENCE_DEPTH,
    MAX_TEXT_BYTES,
    is_bulk,
    is_private_creator,
    kept_private_json,
    kept_private_vr,
)
from scp.inflate import inflate_bytes

__all__ = [
    "Decoded",
    "Truncated",
    "Unsupported",
    "dataset_to_json",
    "decode",
    "part10_meta",
    "part10_to_json",
]


class Unsupported(Exception):
    """The fast path cannot decode this dataset; use pydicom."""


class Truncated(Unsupported):
    """The data ends inside an element (pydicom silently drops what it cannot read, so
    this is where truncation is noticed)."""

    def __init__(self, message: str, tag: int | None) -> None:
        super().__init__(message)
        #: DICOM JSON key of the top-level element the data ends in; None if the data
        #: ends before its tag.
        self.key = None if tag is None else f"{tag:08X}"


IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: VRs with a 32-bit length in explicit VR (PS3.5 Table 7.1-1; SV and UV too, since 2019).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
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
#: Elements whose values the reader needs for later ones: read in every pass.
_STATE_TAGS = frozenset({_CHARSET_TAG, _PIXEL_REPRESENTATION})
#: Estimated JSON bytes of an element besides its value (key, VR, brackets), of a
#: sequence besides its items, of an item besides its elements.
_ELEMENT_COST, _SEQUENCE_COST, _ITEM_COST = 40, 32, 3
_UNLIMITED = 1 << 62

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


@dataclass
class Decoded:
    """A dataset's JSON as the fast path read it."""

    json: dict[str, Any]
    #: Top-level keys left out because the header budget was short (see scp.header_budget).
    dropped: list[str] = field(default_factory=list)
    #: Whether the data reached Pixel Data (what follows it is never read).
    reached_pixel_data: bool = False


def part10_to_json(data: bytes | memoryview) -> tuple[str, dict[str, Any]]:
    """Decode a DICOM Part 10 file: (transfer syntax UID, dataset JSON)."""
    syntax, offset = part10_meta(data)
    return syntax, dataset_to_json(memoryview(data)[offset:], syntax)


def part10_meta(data: bytes | memoryview) -> tuple[str, int]:
    """The transfer syntax a Part 10 file's meta names, and where its dataset begins."""
    try:
        return _part10_meta(data)
    except Unsupported:
        raise
    except Exception as exc:  # struct, Unicode errors...: malformed, pydicom decides
        raise Unsupported(f"cannot decode ({type(exc).__name__})") from None


def dataset_to_json(data: bytes | memoryview, transfer_syntax: str) -> dict[str, Any]:
    """Decode an encoded dataset (no file meta) in ``transfer_syntax``, without a header
    budget; a deflated one is inflated in memory (up to the default inflate limit)."""
    if transfer_syntax != DEFLATED:
        return decode(data, transfer_syntax, budget=None).json
    try:
        inflated, cut = inflate_bytes(data, MAX_INFLATED_BYTES)
    except ValueError:
        raise Unsupported("corrupt deflated data") from None
    decoded = decode(inflated, EXPLICIT_LE, budget=None)
    if cut and not decoded.reached_pixel_data:
        raise Unsupported("the header inflates beyond the limit")
    return decoded.json


def decode(data: bytes | memoryview, transfer_syntax: str, budget: int | None) -> Decoded:
    """Decode an encoded dataset (no file meta, not deflated) in ``transfer_syntax``,
    keeping top-level elements within ``budget`` bytes (estimated) as
    :mod:`scp.header_budget` says; None: no budget."""
    try:
        return _decode(memoryview(data), transfer_syntax, budget)
    except Unsupported:
        raise
    except Exception as exc:  # struct, Unicode errors...: malformed, pydicom decides
        raise Unsupported(f"cannot decode ({type(exc).__name__})") from None


def _part10_meta(data: bytes | memoryview) -> tuple[str, int]:
    view = memoryview(data)
    if bytes(view[128:132]) != b"DICM":
        raise Unsupported("no DICM prefix")
    reader = _Reader(view, implicit=False, encoding="latin_1")
    # The meta ends where its group length says (what pynetdicom writes), not at the first
    # element of another group: a sender's dataset may begin with group 0002 elements of
    # its own, which must not stand in for the meta (its transfer syntax above all).
    meta_end = len(view)
    if bytes(view[132:138]) == b"\x02\x00\x00\x00UL" and len(view) >= 144:
        meta_end = min(meta_end, 144 + _u32(view, 140)[0])
    meta, end = reader.dataset(132, meta_end, depth=0, stop_group=0x0002)
    syntax = meta.get("00020010", {}).get("Value", [None])[0]
    if not isinstance(syntax, str):
        raise Unsupported("no transfer syntax in the file meta")
    return syntax, end


def _decode(view: memoryview, transfer_syntax: str, budget: int | None) -> Decoded:
    if transfer_syntax == EXPLICIT_BE:
        raise Unsupported("big endian")
    if transfer_syntax == DEFLATED:
        raise Unsupported("deflated: inflate first (scp.inflate)")
    implicit = transfer_syntax == IMPLICIT_LE
    reader = _Reader(view, implicit=implicit, encoding=None)
    reader.room = _UNLIMITED if budget is None else budget
    try:
        result, _ = reader.dataset(0, len(view), depth=0)
        return Decoded(result, [], reader.pixel_data)
    except _Overflow:
        pass
    # Over the budget: what the workers read first, then the rest, while each fits.
    reader = _Reader(view, implicit=implicit, encoding=None)
    reader.room = cast(int, budget)
    preferred, dropped = reader.top(lambda tag: tag in PREFERRED_TAGS or tag in _STATE_TAGS)
    rest, more = reader.top(lambda tag: tag not in PREFERRED_TAGS and tag not in _STATE_TAGS)
    kept = sorted(preferred.keys() | rest.keys())
    merged = {key: preferred.get(key) or rest[key] for key in kept}
    return Decoded(merged, sorted(dropped + more), reader.pixel_data)


class _Overflow(Exception):
    """The element being read would take the header over its budget."""


class _Reader:
    __slots__ = (
        "creators",
        "data",
        "encoding",
        "implicit",
        "pixel_data",
        "room",
        "signed_pixels",
        "size",
        "skipping",
        "top_tag",
    )

    def __init__(self, data: memoryview, implicit: bool, encoding: str | None) -> None:
        self.data = data
        self.implicit = implicit
        self.encoding = encoding  # None until Specific Character Set is seen
        self.signed_pixels: bool | None = None
        #: Tag of the top-level element being read (what truncation is reported against).
        self.top_tag: int | None = None
        #: Private blocks of a kept private group reserved by a kept creator (top level).
        self.creators: dict[int, str] = {}
        self.pixel_data = False
        #: Estimated JSON bytes kept so far, and the most allowed.
        self.size = 0
        self.room = _UNLIMITED
        #: Walking an element only to find its end: nothing is kept or counted.
        self.skipping = False

    def _grow(self, amount: int) -> None:
        if not self.skipping:
            self.size += amount
            if self.size > self.room:
                raise _Overflow

    def _overrun(self, what: str, limit: int) -> Unsupported:
        """The error for a length that runs past ``limit``: truncation when ``limit`` is
        the end of the data, a malformed length (inside an item, say) otherwise."""
        if limit >= len(self.data):
            return Truncated(what, self.top_tag)
        return Unsupported(what)

    def top(self, select: Callable[[int], bool]) -> tuple[dict[str, Any], list[str]]:
        """Read the top-level elements ``select`` picks, each whole if it fits in what is
        left of :attr:`room`, else not at all: (what was kept, keys left out)."""
        data = self.data
        end = len(data)
        out: dict[str, Any] = {}
        dropped: list[str] = []
        pos = 0
        while pos < end:
            tag = -1  # a truncated header: read it, and let the reader say so
            if pos + 4 <= end:
                tag = _u16(data, pos)[0] << 16 | _u16(data, pos + 2)[0]
            chosen = tag < 0 or select(tag)
            mark = self.size
            self.skipping = not chosen
            try:
                pos, done = self.element(pos, end, 0, out)
            except _Overflow:
                self.size = mark
                self.skipping = True
                kept_before = len(out)
                pos, done = self.element(pos, end, 0, out)
                assert len(out) == kept_before
                dropped.append(_key(tag))
            finally:
                self.skipping = False
            if done:
                break
        return out, dropped

    def dataset(
        self,
        pos: int,
        end: int,
        depth: int,
        stop_group: int | None = None,
        item: bool = False,
    ) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        data = self.data
        skip_private = stop_group is None
        while pos < end:
            if skip_private and pos + 12 <= end:
                group, _, vr_code = _tag_and_vr(data, pos)
                if group & 1 and (depth or group not in KEPT_PRIVATE_GROUPS):
                    # A private element nobody keeps (most of many vendors' headers):
                    # straight past it, as element() would go, without its call and
                    # tests. Anything unusual about it is left to element().
                    if self.implicit:
                        length, head = _u32(data, pos + 4)[0], 8
                    else:
                        vr = _VR_BY_CODE.get(vr_code, "")
                        if vr in _LONG_VRS:
                            length, head = _u32(data, pos + 8)[0], 12
                        else:
                            length, head = _u16(data, pos + 6)[0], 8
                        if not vr:
                            length = _UNDEFINED
                    if length != _UNDEFINED and pos + head + length <= end:
                        pos += head + length
                        continue
            pos, done = self.element(pos, end, depth, out, stop_group, item)
            if done:
                break
        return out, pos

    def element(
        self,
        pos: int,
        end: int,
        depth: int,
        out: dict[str, Any],
        stop_group: int | None = None,
        item: bool = False,
    ) -> tuple[int, bool]:
        """Read the element at ``pos`` into ``out``: (where the next begins, whether the
        dataset ends here)."""
        data = self.data
        if pos + 8 > end:
            if depth == 0:
                self.top_tag = (
                    _u16(data, pos)[0] << 16 | _u16(data, pos + 2)[0] if pos + 4 <= end else None
                )
            raise self._overrun("truncated element header", end)
        group, element, vr_code = _tag_and_vr(data, pos)
        tag = (group << 16) | element
        if depth == 0:
            self.top_tag = tag
        if stop_group is not None and group != stop_group:
            return pos, True
        if tag == _ITEM_END:
            if not item:
                raise Unsupported("item delimiter outside an item")
            return pos + 8, True
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
                    raise self._overrun("truncated element header", end)
                length = _u32(data, pos + 8)[0]
                pos += 12
            else:
                length = _u16(data, pos + 6)[0]
                pos += 8
        if tag == _PIXEL_DATA and depth == 0:
            self.pixel_data = True
            return end, True
        # An explicit "UN" for a tag the dictionary knows is read with the dictionary's
        # VR, and its content (a sequence, say) is encoded implicitly (PS3.5 6.2.2).
        un_known = vr == "UN" and group % 2 == 0 and _implicit_vr(tag) != "UN"
        if un_known:
            vr = _implicit_vr(tag)
        if vr in _AMBIGUOUS:
            vr = "OB" if self.skipping else self._settle(vr)  # (never a sequence)
        if length == _UNDEFINED:
            if vr == "SQ" or (vr == "UN" and not self.implicit):
                items, pos = self._sequence(
                    pos,
                    end,
                    depth,
                    undefined=True,
                    implicit=vr == "UN" or un_known or self.implicit,
                )
                if group % 2 == 0 and element != 0 and not is_bulk(tag) and not self.skipping:
                    self._grow(_SEQUENCE_COST)
                    out[_key(tag)] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                return pos, False
            raise Unsupported("undefined length outside a sequence")
        value_end = pos + length
        if value_end > end:
            raise self._overrun("value runs past the end", end)
        meta_in_dataset = group == 2 and depth == 0 and stop_group is None
        if group % 2 == 1 or element == 0 or is_bulk(tag) or meta_in_dataset or self.skipping:
            if depth == 0 and group in KEPT_PRIVATE_GROUPS and element and vr != "SQ":
                kept = (
                    None
                    if self.skipping
                    else self._private(group, element, vr, data[pos:value_end])
                )
                if kept is not None:
                    self._grow(_ELEMENT_COST + length)
                    out[_key(tag)] = kept
            return value_end, False  # (group 0002 belongs to the file meta, never to a dataset)
        if vr in _BINARY and length > BULK_THRESHOLD:
            return value_end, False
        if vr != "SQ":
            self._grow(_ELEMENT_COST + (length * 3 if vr in _STRUCT or vr == "AT" else length))
        if vr == "SQ":
            items, _ = self._sequence(
                pos, value_end, depth, undefined=False, implicit=self.implicit or un_known
            )
            self._grow(_SEQUENCE_COST)
            out[_key(tag)] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        else:
            converted = self._element(tag, vr, data[pos:value_end])
            if converted is not None:
                out[_key(tag)] = converted
        return value_end, False

    def _private(self, group: int, element: int, vr: str, raw: memoryview) -> dict[str, Any] | None:
        """A private creator or element of :data:`~scp.header_rules.KEPT_PRIVATE`, else
        ``None``. Implicit VR gives them "UN": they are text all the same."""
        if len(raw) > MAX_PRIVATE_BYTES:
            return None
        if is_private_creator(element):
            creator = str(raw, "latin_1").strip(" \0")
            if (group, creator) not in KEPT_PRIVATE_CREATORS:
                return None
            self.creators[element] = creator
            return {"vr": "LO", "Value": [creator]}
        kept_vr = kept_private_vr(group, element, self.creators)
        if kept_vr is None:
            return None
        if vr == "UN" and not self.implicit:
            raise Unsupported("kept private element as explicit UN")  # pydicom decides
        if vr not in _CHARSET_VRS and vr != "UN":
            return None
        return kept_private_json(kept_vr, str(raw, self.encoding or "latin_1"))

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
                if pos + 8 > end:
                    raise self._overrun("truncated item header", end)
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
                        raise self._overrun("item runs past the sequence", end)
                    item, _ = self.dataset(pos, pos + length, depth + 1)
                    pos += length
                if "00080005" in item:
                    raise Unsupported("character set inside an item")
                if not self.skipping:
                    self._grow(_ITEM_COST)
                    items.append(item)
            if undefined:
                raise self._overrun("sequence without delimiter", end)
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
        if len(raw) > MAX_TEXT_BYTES:
            raise Unsupported("text value too long")  # pydicom's path skips and reports it
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


#: The characters the fast path reads in UIDs and numbers; anything else goes to pydicom.
_PLAIN = {
    "UI": frozenset("0123456789. \\"),
    "IS": frozenset("0123456789+- \\"),
    "DS": frozenset("0123456789+-.eE \\"),
}


def _text_element(vr: str, text: str) -> dict[str, Any] | None:
    if vr in _SINGLE_VALUED:
        value = text.rstrip(" \0")
        return {"vr": vr, "Value": [value]} if value else {"vr": vr}
    parts = text.split("\\")
    if vr in _PLAIN and not _PLAIN[vr].issuperset(text.rstrip("\0")):
        # Other characters (tabs, NULs inside, letters) are for pydicom to judge: how it
        # strips and parses them is not worth copying.
        raise Unsupported(f"unusual characters in {vr}")
    if vr == "UI":
        values: list[Any] = [p.rstrip("\0 ").strip(" \0") for p in parts]
    elif vr in ("IS", "DS"):
        if any(p and not p.strip(" \0") for p in parts[:-1]):
            raise Unsupported("a blank number")  # pydicom refuses it; let it say so
        values = [_number(vr, p.strip(" \0")) for p in parts]
    elif vr == "PN":
        plain = text.rstrip(" \0")
        if any(ord(c) < 0x20 for c in plain) or (len(parts) > 1 and not _plain_names(parts)):
            raise Unsupported("unusual person name")  # control characters, empty values
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


def _plain_names(parts: list[str]) -> bool:
    """Whether several person names are all present and unpadded (but for the end of the
    last): how pydicom reads blank or padded ones among several is for pydicom to say."""
    names = [*parts[:-1], parts[-1].rstrip(" \0")]
    return all(n == n.strip(" \0") and _person_name(n) is not None for n in names)


def _person_name(text: str) -> dict[str, str] | None:
    if not text:
        return None
    groups = text.split("=")
    while len(groups) > 1 and groups[-1] == "":
        groups.pop()
    if groups == [""]:
        return None  # only "=" separators: no name at all, as pydicom reads it
    names = {"Alphabetic": groups[0]}
    if len(groups) > 1:
        names["Ideographic"] = groups[1]
    if len(groups) > 2:
        names["Phonetic"] = groups[2]
    return names
