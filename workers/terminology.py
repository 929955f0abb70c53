"""Code tables (shipped as data files in ``workers/data/``) and the codings made from them.

* DICOM modality codes (PS3.16 CID 29/33) with their meanings,
* Body Part Examined -> SNOMED CT (PS3.16 Annex L, Table L-1),
* Laterality -> SNOMED CT (PS3.16 CID 244),
* SNOMED-RT style codes (SRT, SNM3, 99SDM) -> SNOMED CT concept ids (PS3.16 Annex O),
* DICOM coding scheme designators -> FHIR code system URIs,
* SOP Class UID -> name (pydicom's UID dictionary, from PS3.6).
"""

from __future__ import annotations

import csv
import re
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from pydicom.uid import UID

from workers.dicomjson import Code, is_oid

Coding = dict[str, Any]

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED_SYSTEM = "http://snomed.info/sct"
RFC3986_SYSTEM = "urn:ietf:rfc:3986"
UCUM_SYSTEM = "http://unitsofmeasure.org"
LOINC_SYSTEM = "http://loinc.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"

#: series.performer.function codes (v3 ParticipationType), as FHIR's DICOM mappings use them.
PERFORMER = {"code": "PRF", "display": "performer"}
SECONDARY_PERFORMER = {"code": "SPRF", "display": "secondary performer"}
DEVICE = {"code": "DEV", "display": "device"}

#: Coding schemes of SNOMED-RT style code values: SNOMED-RT (SRT), SNOMED 3 (SNM3) and the
#: SNOMED DICOM Microglossary (99SDM), all to be read as SRT (PS3.16 Section 8.1).
LEGACY_SNOMED = frozenset({"SRT", "SNM3", "99SDM"})

_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_FHIR_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")


@cache
def _table(name: str) -> tuple[dict[str, str], ...]:
    text = resources.files("workers").joinpath("data", name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(dict(row) for row in csv.DictReader(lines))


@cache
def _modalities() -> dict[str, str]:
    return {row["code"]: row["meaning"] for row in _table("dcm_modalities.csv")}


@cache
def _body_parts() -> dict[str, tuple[str, str]]:
    return {
        row["body_part_examined"]: (row["code"], row["meaning"])
        for row in _table("annex_l_body_parts.csv")
    }


@cache
def _lateralities() -> dict[str, tuple[str, str]]:
    return {row["dicom"]: (row["code"], row["meaning"]) for row in _table("laterality.csv")}


def _snomed_rt() -> dict[str, str]:
    # PS3.16 Table O-1 as pydicom (a dependency, pinned below 4) generates it from the
    # standard for its own SRT/SCT code comparisons: read from the installed package, not
    # copied into this one. Its module is private, hence the test that reads it whole.
    from pydicom.sr._snomed_dict import mapping

    table: dict[str, str] = mapping["SRT"]
    return table


def snomed_ct_id(snomed_id: str) -> str | None:
    """The SNOMED CT concept id of a SNOMED-RT style code value (``T-A0100`` -> ``12738006``,
    Brain), per PS3.16 Table O-1; ``None`` when the table does not list it."""
    return _snomed_rt().get(snomed_id.strip().upper())


@cache
def _schemes() -> dict[str, str]:
    return {
        row["designator"]: row["system"] or f"urn:oid:{row['oid']}"
        for row in _table("coding_schemes.csv")
    }


def modality_coding(code: str) -> Coding | None:
    """A DCM coding for a modality code (with the standard's meaning when it is one of
    CID 29/33); ``None`` for a value that is no code string."""
    if not _CS.match(code):
        return None
    coding: Coding = {"system": DCM_SYSTEM, "code": code}
    meaning = _modalities().get(code)
    if meaning:
        coding["display"] = meaning
    return coding


def body_part_coding(body_part: str) -> Coding | None:
    """Body Part Examined defined term -> SNOMED CT coding per Annex L (``None`` if the
    term is not in Table L-1). Spaces and underscores are ignored, so the common variants
    ``WHOLE BODY`` or ``L_SPINE`` find WHOLEBODY and LSPINE."""
    term = body_part.upper().replace(" ", "").replace("_", "")
    entry = _body_parts().get(term)
    if entry is None:
        return None
    return {"system": SNOMED_SYSTEM, "code": entry[0], "display": entry[1]}


def laterality_coding(laterality: str) -> Coding | None:
    """R / L / B -> SNOMED CT (``None`` for U, unpaired, and anything else)."""
    entry = _lateralities().get(laterality)
    if entry is None:
        return None
    return {"system": SNOMED_SYSTEM, "code": entry[0], "display": entry[1]}


def code_system(designator: str, local: dict[str, str] | None = None) -> str | None:
    """The FHIR system URI of a DICOM coding scheme; ``local`` are the schemes the
    dataset identified itself (Coding Scheme Identification Sequence)."""
    if designator == "URN":
        return RFC3986_SYSTEM
    known = _schemes().get(designator)
    if known:
        return known
    if local and designator in local:
        return local[designator]
    return None


def coding(code: Code, local: dict[str, str] | None = None) -> Coding | None:
    """A DICOM coded entry as a FHIR Coding (``None`` if the code value cannot be a FHIR
    code). A SNOMED-RT style code becomes its SNOMED CT concept; one the standard's table
    does not list gives ``None``: it is never emitted as if it were a current code."""
    if not isinstance(code, dict):
        return None
    value = code.get("code")
    if not isinstance(value, str) or not _FHIR_CODE.match(value):
        return None
    scheme = code.get("scheme")
    if scheme in LEGACY_SNOMED:
        concept_id = snomed_ct_id(value)
        if concept_id is None:
            return None
        value, scheme = concept_id, "SCT"
        code = {k: v for k, v in code.items() if k != "version"}  # SRT's version is not SCT's
    out: Coding = {}
    system = code_system(scheme, local) if isinstance(scheme, str) else None
    if system:
        out["system"] = system
    if code.get("version") and system:
        out["version"] = code["version"]
    out["code"] = value
    if code.get("meaning"):
        out["display"] = code["meaning"]
    return out


def concept(codes: list[Code], local: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The first usable coded entry as a CodeableConcept; else a SNOMED-RT code that has no
    SNOMED CT equivalent as its meaning in ``text`` (the concept is known, its code is not
    a current one)."""
    for code in codes:
        made = coding(code, local)
        if made is not None:
            return {"coding": [made]}
    for code in codes:
        if not isinstance(code, dict):
            continue
        meaning = code.get("meaning")
        if code.get("scheme") in LEGACY_SNOMED and isinstance(meaning, str) and meaning:
            return {"text": meaning}
    return None


def sop_class_coding(uid: str) -> Coding | None:
    """A SOP Class UID as the coding ImagingStudy uses, with the class name as display;
    ``None`` for a UID that is no OID (``urn:oid:`` would be false)."""
    known, name = _sop_class(uid)
    if not known:
        return None
    # A new dict each time: callers own (and may extend) what they are given.
    out: Coding = {"system": RFC3986_SYSTEM, "code": f"urn:oid:{uid}"}
    if name is not None:
        out["display"] = name
    return out


@lru_cache(maxsize=512)
def _sop_class(uid: str) -> tuple[bool, str | None]:
    """Whether ``uid`` is an OID, and its SOP class name. Cached: a study names a few
    classes for thousands of instances, and pydicom's ``UID`` validates each one anew
    (most of an ImagingStudy's build time before). Bounded, as the UIDs come from
    headers."""
    if not is_oid(uid):
        return False, None
    name = UID(uid).name
    return True, name if name and name != uid else None


def function_concept(function: dict[str, str]) -> dict[str, Any]:
    return {"coding": [{"system": PARTICIPATION_TYPE, **function}]}
