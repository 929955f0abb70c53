"""Pieces shared by the ImagingStudy and its companion resources."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

from workers.dicomjson import is_oid, valid_uid
from workers.names import display

Resource = dict[str, Any]

DICOM_UID_SYSTEM = "urn:dicom:uid"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")
#: Namespace of the deterministic urn:uuid fullUrls of a study's bundle.
_NAMESPACE = uuid.UUID("5d1f0b2e-4c39-5a52-9d1e-2f0c5b6f3a10")


def fhir_id(study_uid: str) -> str:
    """Stable FHIR id for a study: the UID itself (a valid UID is a valid id), else a hash.

    Hashed ids start with a letter, so they can never equal a UID-derived one.
    """
    if _FHIR_ID.match(study_uid):
        return study_uid
    return "h" + hashlib.sha256(study_uid.encode()).hexdigest()[:63]


def is_fhir_id(value: object) -> bool:
    return isinstance(value, str) and _FHIR_ID.match(value) is not None


def stable_id(prefix: str, *parts: str) -> str:
    """A FHIR id that is the same for the same parts, in every study."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{prefix}-{digest}"


def full_url(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, chr(31).join(parts))}"


def absent() -> dict[str, Any]:
    return {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]}


def uid_value(uid: str) -> str:
    """A DICOM UID as the value of a ``urn:dicom:uid`` identifier: ``urn:oid:<UID>`` when
    the UID is an OID; else the bare UID (a ``urn:oid:`` that is no OID would be false,
    and leaving it out would make the study unsearchable by the UID the archive knows)."""
    return f"urn:oid:{uid}" if is_oid(uid) else uid


def uid_identifier(uid: str, **extra: Any) -> dict[str, Any] | None:
    """The ``urn:dicom:uid`` Identifier of a valid UID (``None`` for a malformed one)."""
    if not valid_uid(uid):
        return None
    return {**extra, "system": DICOM_UID_SYSTEM, "value": uid_value(uid)}


def study_uid_identifier(study_uid: str) -> dict[str, Any] | None:
    return uid_identifier(study_uid, use="official")


def issuer_system(issuer: object) -> str | None:
    """The Identifier.system an issuer (from the summary) names, if it names one: a
    universal entity id of type ISO (an OID), URI or UUID, or a local namespace that is
    itself an OID or an absolute URI."""
    if not isinstance(issuer, dict):
        return None
    universal, kind = issuer.get("universal"), issuer.get("type")
    if isinstance(universal, str):
        if kind == "ISO" and is_oid(universal):
            return f"urn:oid:{universal}"
        if kind == "URI" and _URI.match(universal):
            return universal
        if kind == "UUID":
            try:
                return f"urn:uuid:{uuid.UUID(universal)}"
            except ValueError:
                pass
    local = issuer.get("local")
    if isinstance(local, str):
        if is_oid(local):
            return f"urn:oid:{local}"
        if local.startswith(("urn:", "http://", "https://")) and _URI.match(local):
            return local
    return None


def identifier(
    value: str, issuer: object, default_system: str | None, **extra: Any
) -> dict[str, Any]:
    """An Identifier: system from the issuer, else ``default_system`` when the header
    names no issuer at all; an issuer that names no system stays as assigner display."""
    out: dict[str, Any] = dict(extra)
    system = issuer_system(issuer)
    if system is None and not issuer:
        system = default_system
    if system:
        out["system"] = system
    out["value"] = value
    local = issuer.get("local") if isinstance(issuer, dict) else None
    if isinstance(local, str) and local and not (system and system.endswith(local)):
        out["assigner"] = {"display": local}
    return out


def accession_identifier(study: dict[str, Any], default_system: str | None) -> dict[str, Any]:
    return identifier(
        study["accession_number"],
        study.get("accession_issuer"),
        default_system,
        type={"coding": [{"system": V2_0203, "code": "ACSN"}]},
    )


def patient_identifier(study: dict[str, Any], default_system: str | None) -> dict[str, Any]:
    return identifier(
        study["patient_id"],
        study.get("patient_id_issuer"),
        default_system,
        type={"coding": [{"system": V2_0203, "code": "MR"}]},
    )


def practitioner(name: Any) -> dict[str, Any] | None:
    """A Practitioner reference that is only a readable display of the DICOM name."""
    text = display(name) if isinstance(name, dict) else None
    return {"type": "Practitioner", "display": text} if text else None


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def count(value: Any) -> int | None:
    """A value usable as unsignedInt."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    return None
