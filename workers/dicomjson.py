"""Reading values out of a DICOM JSON (PS3.18 Annex F) header by keyword.

This is the one place on the worker side where DICOM keywords appear: callers
ask for ``StudyInstanceUID`` and get a plain Python value back.

The typed readers (:meth:`DicomJson.text`, :meth:`~DicomJson.date`, ...) check
what they return: an element whose VR is not the one the data dictionary gives
its keyword, a value of the wrong form (a date that is no date, a UID that is
no UID), an absurdly long value, or an empty value of a required (Type 1)
attribute is left out, and its tag is recorded in :attr:`DicomJson.warnings`
(tags only, never values: values may be patient data). Nested items record
``SEQUENCE.TAG``.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from workers import dicomtime

#: A person name: its non-empty component groups, keyed Alphabetic/Ideographic/Phonetic.
PersonName = dict[str, str]
#: A coded entry: code, scheme (designator), meaning and, when given, version.
Code = dict[str, str]

PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")

#: Maximum value lengths in characters (PS3.5 Table 6.2-1); PN is per component group.
_MAX_LENGTH = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,
    "SH": 16,
    "ST": 1024,
    "TM": 16,
    "UI": 64,
}
#: A value longer than this many times its VR's maximum is absurd and left out. Values
#: somewhat over the maximum are common (an LO-sized text in an SH) and are kept.
ABSURD_FACTOR = 4
#: Cap for the VRs without a maximum (UC, UR, UT).
UNLIMITED_CAP = 65536
#: FHIR unsignedInt / positiveInt upper bound.
MAX_INT = 2**31 - 1
#: A code sequence with more items than this is left out whole (and its tag logged):
#: real ones hold a handful; a hostile one must not cost the worker time or the FHIR
#: resource megabytes.
MAX_CODE_ITEMS = 64
#: A person name element with more values than this is left out whole, likewise (the
#: mapping makes one performer or interpreter of each).
MAX_NAMES = 64
#: ... and a text element with more values than this (reasons, kernels, image types).
MAX_TEXT_VALUES = 256
#: Seconds one header may take to read (from its first :class:`DicomJson` view on).
#: Past it, sequences read as empty and are reported by tag: one pathological instance
#: is summarised without them instead of holding up every other study.
READ_BUDGET_SECONDS = 2.0

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CS = re.compile(r"^[A-Z0-9_ ]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAKS = re.compile(r"[\t\r\n]+")
_MULTILINE_VRS = frozenset({"LT", "ST", "UT"})
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
#: Free-text VRs a person name is found under in real files (Operators' Name as LO, say).
_NAME_LIKE_VRS = frozenset({"LO", "SH", "LT", "ST", "UC", "UT"})
#: A person name: at most three component groups of at most five components.
_MAX_PN_GROUPS, _MAX_PN_COMPONENTS = 3, 5


_NUMERIC_VRS = frozenset({"DS", "IS", "FD", "FL", "US", "UL", "UV", "SS", "SL", "SV"})
#: Integral numbers above this stay floats: JSON readers lose precision past 2**53.
_MAX_EXACT = 2**53


def _finite(value: Any) -> int | float | None:
    """``value`` as a finite JSON number, integral values as ``int``; else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        if value.is_integer() and abs(value) < _MAX_EXACT:
            return int(value)
        return value
    return None


#: keyword -> (tag key, VRs the data dictionary allows); filled on first use.
_SPECS: dict[str, tuple[str, frozenset[str]]] = {}


def _spec(keyword: str) -> tuple[str, frozenset[str]]:
    spec = _SPECS.get(keyword)
    if spec is None:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(f"unknown DICOM keyword {keyword}")
        vrs = frozenset(part.strip() for part in dictionary_VR(tag).split(" or "))
        spec = _SPECS[keyword] = (f"{tag:08X}", vrs)
    return spec


def _key(keyword: str) -> str:
    return _spec(keyword)[0]


def describe_tags(tags: tuple[str, ...] | list[str]) -> str:
    """``00080020`` -> ``00080020 StudyDate``; nested paths keep their dots."""
    return ", ".join(f"{tag} {_keywords(tag)}" for tag in tags)


def _keywords(path: str) -> str:
    names = []
    for part in path.split("."):
        try:
            names.append(keyword_for_tag(int(part, 16)) or "?")
        except ValueError:
            names.append("?")
    return ".".join(names)


def valid_uid(value: str) -> bool:
    """A DICOM UID (PS3.5 9.1): at most 64 characters, numeric components without
    leading zeros. Such a UID is also a valid FHIR id; whether it is an OID too, only
    :func:`is_oid` tells."""
    return len(value) <= 64 and _UID.match(value) is not None


def is_oid(value: str) -> bool:
    """Whether a (valid) UID is also an ISO object identifier, as ``urn:oid:`` needs it
    (RFC 3061, ITU-T X.660): first arc 0, 1 or 2, second arc at most 39 under 0 and 1.
    DICOM UIDs are meant to be OIDs (PS3.5 9.1), yet files carry ones like
    ``999.999.2.19941105.112000`` that are not."""
    if not valid_uid(value):
        return False
    arcs = value.split(".")
    if len(arcs) < 2 or arcs[0] not in ("0", "1", "2"):
        return False
    return arcs[0] == "2" or int(arcs[1]) <= 39


def too_long(vr: str, text: str) -> bool:
    limit = _MAX_LENGTH.get(vr)
    return len(text) > (UNLIMITED_CAP if limit is None else limit * ABSURD_FACTOR)


def clean(text: str, multiline: bool = False) -> str:
    """Strip padding and control characters (FHIR strings should have none); single-line
    values also lose line breaks."""
    if text.isprintable():  # the common case: no control characters, no line breaks
        return text.strip()
    text = _CONTROL.sub("", text)
    if not multiline:
        text = _LINE_BREAKS.sub(" ", text)
    return text.strip()


class DicomJson:
    """Read-only view over one DICOM JSON dataset."""

    __slots__ = ("_data", "_deadline", "_mismatches", "_prefix", "_warnings")

    def __init__(
        self,
        data: dict[str, Any],
        warnings: list[str] | None = None,
        prefix: str = "",
        mismatches: list[tuple[str, str]] | None = None,
        deadline: float | None = None,
    ) -> None:
        self._data = data
        self._warnings: list[str] = [] if warnings is None else warnings
        self._mismatches: list[tuple[str, str]] = [] if mismatches is None else mismatches
        self._prefix = prefix
        #: shared by a dataset and its items (time.monotonic() seconds)
        self._deadline = time.monotonic() + READ_BUDGET_SECONDS if deadline is None else deadline

    @property
    def warnings(self) -> list[str]:
        """Tags (``GGGGEEEE``, nested ``SEQUENCE.TAG``) of values that were left out."""
        return self._warnings

    @property
    def mismatches(self) -> list[tuple[str, str]]:
        """(tag, VR) of values read although their VR is not the dictionary's (a person
        name encoded as LO): kept, since the value is what the VR should have been."""
        return self._mismatches

    def warn(self, keyword: str) -> None:
        tag = self._prefix + _key(keyword)
        if tag not in self._warnings:
            self._warnings.append(tag)

    # --- raw access --------------------------------------------------------------------

    def _absent(self, keyword: str) -> bool:
        """Fast path: most keywords a reader asks for are not in a given header."""
        spec = _SPECS.get(keyword) or _spec(keyword)
        return spec[0] not in self._data

    def has(self, keyword: str) -> bool:
        return isinstance(self._data.get(_key(keyword)), dict)

    def values(self, keyword: str) -> list[Any]:
        element = self._data.get(_key(keyword))
        if not isinstance(element, dict):
            return []
        value = element.get("Value")
        return value if isinstance(value, list) else []

    def first(self, keyword: str) -> Any:
        values = self.values(keyword)
        return values[0] if values else None

    def _checked(self, keyword: str, required: bool = False) -> tuple[str, list[Any]] | None:
        """The element's VR and values; ``None`` (and a warning where due) when it is
        absent, of the wrong VR, or empty though required."""
        key, vrs = _spec(keyword)
        element = self._data.get(key)
        if not isinstance(element, dict):
            if required:
                self.warn(keyword)
            return None
        vr = element.get("vr")
        if vr not in vrs:
            self.warn(keyword)
            return None
        value = element.get("Value")
        values = value if isinstance(value, list) else []
        if not values or (values[0] is None and all(v is None for v in values)):
            if required:
                self.warn(keyword)
            return None
        return vr, values

    # --- typed readers -----------------------------------------------------------------

    def texts(self, keyword: str, required: bool = False) -> list[str]:
        """All values as cleaned text (empty values dropped)."""
        checked = self._checked(keyword, required)
        if checked is None:
            return []
        vr, values = checked
        if vr not in _TEXT_VRS or len(values) > MAX_TEXT_VALUES:
            self.warn(keyword)
            return []
        out: list[str] = []
        for value in values:
            if value is None:
                continue
            if isinstance(value, str):
                text = clean(value, multiline=vr in _MULTILINE_VRS)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                text = str(value)
            else:
                self.warn(keyword)
                return []
            if too_long(vr, text):
                self.warn(keyword)
                return []
            if text:
                out.append(text)
        if not out and required:
            self.warn(keyword)
        return out

    def text(self, keyword: str, required: bool = False) -> str | None:
        """First value as cleaned text; ``None`` when absent, empty or unusable."""
        if not required and self._absent(keyword):
            return None
        texts = self.texts(keyword, required)
        return texts[0] if texts else None

    def joined(self, keyword: str, separator: str = ", ") -> str | None:
        """All values of a multi-valued text element, joined."""
        texts = self.texts(keyword)
        return separator.join(texts) if texts else None

    def code_string(self, keyword: str, required: bool = False) -> str | None:
        """A CS value (upper-cased: lower case is a common, harmless deviation); left out
        when it is not a code string."""
        if not required and self._absent(keyword):
            return None
        text = self.text(keyword, required)
        if text is None:
            return None
        text = text.upper()
        if len(text) > 16 or not _CS.match(text):
            self.warn(keyword)
            return None
        return text

    def enumerated(self, keyword: str, allowed: frozenset[str]) -> str | None:
        """A CS value that must be one of ``allowed``."""
        text = self.code_string(keyword)
        if text is not None and text not in allowed:
            self.warn(keyword)
            return None
        return text

    def integer(self, keyword: str, low: int = 0, high: int = MAX_INT) -> int | None:
        """First value as an integer within ``low..high``."""
        checked = self._checked(keyword)
        if checked is None:
            return None
        value = checked[1][0]
        number: int | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                number = None
        if number is None or not low <= number <= high:
            self.warn(keyword)
            return None
        return number

    def numbers(self, keyword: str) -> list[int | float]:
        """All values of a numeric element (DS, IS, FD, FL and the binary integers) as
        JSON numbers; integral values become ``int`` (a DS ``"5"`` arrives as 5.0). An
        element with any value that is not a finite number is left out whole."""
        if self._absent(keyword):
            return []
        checked = self._checked(keyword)
        if checked is None:
            return []
        vr, values = checked
        if vr not in _NUMERIC_VRS:
            self.warn(keyword)
            return []
        out: list[int | float] = []
        for value in values:
            number = _finite(value)
            if number is None:
                self.warn(keyword)
                return []
            out.append(number)
        return out

    def number(self, keyword: str) -> int | float | None:
        """The first value of a numeric element (see :meth:`numbers`)."""
        numbers = self.numbers(keyword)
        return numbers[0] if numbers else None

    def uid(self, keyword: str, required: bool = False) -> str | None:
        """A valid UID; invalid ones are left out."""
        text = self.text(keyword, required)
        if text is None:
            return None
        if not valid_uid(text):
            self.warn(keyword)
            return None
        return text

    def raw_uid(self, keyword: str) -> str | None:
        """The UID text as it is (an instance's identity, even when malformed: the archive
        knows it by that value); a malformed one is still reported."""
        value = self.first(keyword)
        if not isinstance(value, str) or not value.strip():
            return None
        text = value.strip().rstrip("\x00").strip()
        if not valid_uid(text):
            self.warn(keyword)
        return text or None

    def date(self, keyword: str) -> str | None:
        """A DA value as a FHIR date."""
        return self._parsed(keyword, dicomtime.fhir_date)

    def time(self, keyword: str) -> str | None:
        """A TM value as a FHIR time (hh:mm:ss[.f])."""
        return self._parsed(keyword, dicomtime.fhir_time)

    def offset(self, keyword: str) -> str | None:
        """A UTC offset (``+hhmm``) as a FHIR zone (``+hh:mm``)."""
        return self._parsed(keyword, dicomtime.fhir_offset)

    def date_time(self, keyword: str, zone: dicomtime.Zone | None) -> str | None:
        """A DT value as a FHIR dateTime (``zone`` applies when the value has none)."""
        text = self.text(keyword)
        if text is None:
            return None
        parsed = dicomtime.fhir_dt(text, zone)
        if parsed is None:
            self.warn(keyword)
        return parsed

    def _parsed(self, keyword: str, parse: Any) -> str | None:
        if self._absent(keyword):
            return None
        text = self.text(keyword)
        if text is None:
            return None
        parsed: str | None = parse(text)
        if parsed is None:
            self.warn(keyword)
        return parsed

    def names(self, keyword: str) -> list[PersonName]:
        """PN values: the non-empty component groups of each non-empty name. A value of a
        free-text VR (LO, SH, ...) where the dictionary says PN is read as a name when it
        parses as one, and the mismatch recorded (:attr:`mismatches`)."""
        if self._absent(keyword):
            return []
        key, vrs = _spec(keyword)
        element = self._data.get(key)
        vr = element.get("vr") if isinstance(element, dict) else None
        if "PN" in vrs and vr in _NAME_LIKE_VRS:
            return self._names_in_text(keyword, vr)
        checked = self._checked(keyword)
        if checked is None:
            return []
        vr, values = checked
        if vr != "PN" or len(values) > MAX_NAMES:
            self.warn(keyword)
            return []
        out: list[PersonName] = []
        for value in values:
            if isinstance(value, str):  # tolerated: a bare string is the alphabetic group
                value = {"Alphabetic": value}
            if not isinstance(value, dict):
                self.warn(keyword)
                continue
            name: PersonName = {}
            for group in PN_GROUPS:
                text = value.get(group)
                if not isinstance(text, str):
                    continue
                text = clean(text)
                if too_long("PN", text):
                    self.warn(keyword)
                    continue
                if text.replace("^", "").strip():
                    name[group] = text
            if name:
                out.append(name)
        return out

    def _names_in_text(self, keyword: str, vr: str) -> list[PersonName]:
        """Names written under a text VR: each value must parse as a PN (at most three
        ``=``-separated groups of at most five ``^``-separated components, no group over
        the PN maximum); otherwise the element is left out as any bad value is."""
        out: list[PersonName] = []
        for value in self.values(keyword):
            if value is None:
                continue
            groups = value.split("=") if isinstance(value, str) else []
            if not groups or len(groups) > _MAX_PN_GROUPS:
                self.warn(keyword)
                return []
            name: PersonName = {}
            for group, text in zip(PN_GROUPS, groups, strict=False):
                text = clean(text)
                if text.count("^") >= _MAX_PN_COMPONENTS or too_long("PN", text):
                    self.warn(keyword)
                    return []
                if text.replace("^", "").strip():
                    name[group] = text
            if name:
                out.append(name)
        if out:
            mismatch = (self._prefix + _key(keyword), vr)
            if mismatch not in self._mismatches:
                self._mismatches.append(mismatch)
        return out

    def name(self, keyword: str) -> PersonName | None:
        names = self.names(keyword)
        return names[0] if names else None

    def private_text(self, group: int, creator: str, offset: int) -> str | None:
        """The text of private element (``group``, xx``offset``) in the block that
        ``creator`` reserved: read only where the private creator says so (the same
        element number means something else under another creator)."""
        prefix = f"{group:04X}00"
        for key in [k for k in self._data if k.startswith(prefix)]:
            element, owner = int(key[4:], 16), self._data[key]
            if not (0x10 <= element <= 0xFF and isinstance(owner, dict)):
                continue
            names = owner.get("Value")
            if isinstance(names, list) and names and names[0] == creator:
                value = self._data.get(f"{group:04X}{element << 8 | offset:04X}")
                values = value.get("Value") if isinstance(value, dict) else None
                if isinstance(values, list) and values and isinstance(values[0], str):
                    text = clean(values[0])
                    return text if text and not too_long("LO", text) else None
                return None
        return None

    def items(self, keyword: str) -> list[DicomJson]:
        """The items of a sequence, sharing this dataset's warnings."""
        if self._absent(keyword):
            return []
        element = self._data.get(_key(keyword))
        if not isinstance(element, dict):
            return []
        if element.get("vr") != "SQ":
            self.warn(keyword)
            return []
        if time.monotonic() > self._deadline:
            self.warn(keyword)  # over the read budget: left out, reported
            return []
        prefix = f"{self._prefix}{_key(keyword)}."
        return [
            DicomJson(item, self._warnings, prefix, self._mismatches, self._deadline)
            for item in self.values(keyword)
            if isinstance(item, dict)
        ]

    def codes(self, keyword: str) -> list[Code]:
        """The coded entries of a code sequence (PS3.3 Table 8.8-1), each once, in order.
        An item without a usable code value, scheme or meaning is left out; a sequence of
        more than :data:`MAX_CODE_ITEMS` items is left out whole."""
        if self._absent(keyword):
            return []
        if len(self.values(keyword)) > MAX_CODE_ITEMS:
            self.warn(keyword)
            return []
        out: list[Code] = []
        seen: set[tuple[tuple[str, str], ...]] = set()
        for item in self.items(keyword):
            code = item.code()
            if code is None:
                continue
            identity = tuple(sorted(code.items()))
            if identity not in seen:
                seen.add(identity)
                out.append(code)
        return out

    def code(self) -> Code | None:
        """This item as a coded entry (Code Value, Long Code Value or URN Code Value)."""
        value = self.text("CodeValue") or self.text("LongCodeValue")
        scheme = self.text("CodingSchemeDesignator")
        urn = None if value else self.text("URNCodeValue")
        meaning = self.text("CodeMeaning", required=True)
        if urn is not None:
            if " " in urn or ":" not in urn:
                self.warn("URNCodeValue")
                return None
            value, scheme = urn, "URN"
        elif value is None:
            self.warn("CodeValue")
            return None
        elif scheme is None:
            self.warn("CodingSchemeDesignator")
            return None
        value = " ".join(value.split())
        if meaning is None:
            return None
        code: Code = {"code": value, "scheme": scheme, "meaning": meaning}
        version = self.text("CodingSchemeVersion")
        if version:
            code["version"] = version
        return code
