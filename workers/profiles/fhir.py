"""Small builders of the FHIR elements the profiles add (extensions, quantities)."""

from __future__ import annotations

from typing import Any

from workers.profiles.profile import Resource

UCUM = "http://unitsofmeasure.org"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"


def absent(reason: str = "unknown") -> dict[str, Any]:
    """The content of an element a profile requires but the data lack: no value, only a
    data-absent-reason extension (``"_description": absent()``, ``"reasonReference":
    [absent("unsupported")]``). It says "not known", never a made-up value."""
    return {"extension": [{"url": DATA_ABSENT, "valueCode": reason}]}


def quantity(value: int | float, code: str, unit: str) -> dict[str, Any]:
    """A UCUM Quantity; ``unit`` is the human-readable unit the profile fixes."""
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def extension(url: str, **value: Any) -> dict[str, Any]:
    """``extension(url, valueString="x")`` -> ``{"url": url, "valueString": "x"}``."""
    ((key, item),) = value.items()
    return {"url": url, key: item}


def complex_extension(url: str, parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A complex extension of ``parts``; ``None`` without parts (an extension must have
    a value or sub-extensions)."""
    return {"url": url, "extension": parts} if parts else None


def add_extension(element: Resource, ext: dict[str, Any] | None) -> None:
    if ext is not None:
        element.setdefault("extension", []).append(ext)


def instances_of(series: Resource) -> list[Resource]:
    instances: list[Resource] = series.get("instance") or []
    return instances


def series_where(series: Resource) -> str:
    """``series <UID> (<modality> #<number>)``: the UID finds it, the rest reads well."""
    modality = (series.get("modality") or {}).get("code", "?")
    number = series.get("number")
    label = f"{modality} #{number}" if number is not None else modality
    return f"series {series.get('uid')} ({label})"


def decimal_text(value: int | float) -> str:
    """A number as DICOM would write it: ``5`` not ``5.0``."""
    return str(value) if isinstance(value, int) else repr(value)


def based_on_accession(study: Resource) -> list[dict[str, Any]]:
    """``basedOn``: the ServiceRequest identified by the study's Accession Number (the
    identifier typed ``ACSN``); empty without one."""
    for identifier in study.get("identifier") or []:
        codings = (identifier.get("type") or {}).get("coding") or [{}]
        if codings[0].get("code") == "ACSN":
            return [{"type": "ServiceRequest", "identifier": identifier}]
    return []
