"""Pure: DICOM person names (PN) -> readable display strings and FHIR HumanNames.

A PN component group is ``family^given^middle^prefix^suffix``. Names written in a
Western script read given-first (``Doe^John`` -> ``John Doe``); names written in
CJK ideographs, kana or hangul keep their family-first order (``山田^太郎`` ->
``山田 太郎``), as the people they belong to write them.
"""

from __future__ import annotations

import re
from typing import Any

from workers.dicomjson import PN_GROUPS, PersonName

#: HL7 iso21090-EN-representation: which script group a HumanName carries.
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
_REPRESENTATION = {"Alphabetic": "ABC", "Ideographic": "IDE", "Phonetic": "SYL"}

_EAST_ASIAN = re.compile(
    "[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff65-\uff9f]"
)


def components(group: str) -> list[str]:
    """The five PN components of one group, stripped (missing ones empty)."""
    parts = [" ".join(part.split()) for part in group.split("^")[:5]]
    return parts + [""] * (5 - len(parts))


def format_group(group: str) -> str | None:
    """One component group as it is read; ``None`` when it has no content."""
    family, given, middle, prefix, suffix = components(group)
    if _EAST_ASIAN.search(group):
        ordered = [prefix, family, given, middle, suffix]
    else:
        ordered = [prefix, given, middle, family, suffix]
    text = " ".join(part for part in ordered if part)
    # A placeholder such as "----" or "*" is no name.
    return text if any(char.isalnum() for char in text) else None


def display(name: PersonName | None) -> str | None:
    """The readable form of a name: its first non-empty group (alphabetic first)."""
    if not isinstance(name, dict):
        return None
    for group in PN_GROUPS:
        text = name.get(group)
        if isinstance(text, str) and text:
            formatted = format_group(text)
            if formatted:
                return formatted
    return None


def human_names(name: PersonName | None) -> list[dict[str, Any]]:
    """FHIR HumanNames, one per non-empty group; the ideographic and phonetic ones are
    marked with the EN-representation extension. The first is ``official``."""
    out: list[dict[str, Any]] = []
    if not isinstance(name, dict):
        return out
    for group in PN_GROUPS:
        text = name.get(group)
        formatted = format_group(text) if isinstance(text, str) and text else None
        if not isinstance(text, str) or not formatted:
            continue
        family, given, middle, prefix, suffix = components(text)
        human: dict[str, Any] = {}
        if group != "Alphabetic":
            human["extension"] = [{"url": EN_REPRESENTATION, "valueCode": _REPRESENTATION[group]}]
        if not out:
            human["use"] = "official"
        human["text"] = formatted
        if family:
            human["family"] = family
        givens = [part for part in (given, middle) if part]
        if givens:
            human["given"] = givens
        if prefix:
            human["prefix"] = [prefix]
        if suffix:
            human["suffix"] = [suffix]
        out.append(human)
    return out
