"""Radiation dose Observations: the accumulated dose and each irradiation event of the
study's dose reports (:mod:`workers.dose`), ``partOf`` the ImagingStudy.

One Observation per accumulated dose and per irradiation event; ``code`` the report's
container concept (DCM 113811 "CT Accumulated Dose Data", 113819 "CT Acquisition",
113702/113706 for projection X-ray, 113502 for a radiopharmaceutical administration),
one ``component`` per number with its DCM code and the report's UCUM unit. An event's
Irradiation Event UID is its identifier, its Target Region its ``bodySite`` and its
Acquisition Protocol its ``method``; it is dated by its DateTime Started, the accumulated
dose by the study.
"""

from __future__ import annotations

from typing import Any

from workers.fold import StudyAggregate
from workers.mapping.common import Resource, stable_id, text, uid_identifier
from workers.terminology import OBSERVATION_CATEGORY, UCUM_SYSTEM, coding, concept

IMAGING = {"system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging"}


def dose_observations(
    aggregate: StudyAggregate,
    subject: dict[str, Any],
    imaging_study: dict[str, Any],
    local_schemes: dict[str, str] | None = None,
) -> list[Resource]:
    """The dose Observations of every dose report of the study, report by report."""
    study = aggregate.study.attrs if aggregate.study else {}
    out: list[Resource] = []
    for sop_uid in sorted(aggregate.instances):
        dose = aggregate.instances[sop_uid].get("dose")
        if not isinstance(dose, dict):
            continue
        accumulated = dose.get("accumulated")
        if isinstance(accumulated, dict):
            made = _observation(
                stable_id("dose", sop_uid, "accumulated"), accumulated, local_schemes
            )
            if made is not None:
                if text(study.get("started")):
                    made["effectiveDateTime"] = study["started"]
                out.append(made)
        for number, event in enumerate(_list(dose.get("events"))):
            if not isinstance(event, dict):
                continue
            key = event["uid"] if text(event.get("uid")) else str(number)
            target = event.get("target")
            made = _observation(stable_id("dose", sop_uid, key), event, local_schemes)
            if made is None:
                continue
            identifier = uid_identifier(event["uid"]) if text(event.get("uid")) else None
            if identifier:
                made["identifier"] = [identifier]
            if text(event.get("started")):
                made["effectiveDateTime"] = event["started"]
            body_site = concept([target], local_schemes) if isinstance(target, dict) else None
            if body_site:
                made["bodySite"] = body_site
            if text(event.get("protocol")):
                made["method"] = {"text": event["protocol"]}
            out.append(made)
    for made in out:
        _link(made, subject, imaging_study)
    return out


def _observation(
    observation_id: str, source: dict[str, Any], local: dict[str, str] | None
) -> Resource | None:
    code = _coded(source.get("concept"), local)
    components = [c for m in _list(source.get("measures")) if (c := _component(m, local))]
    if code is None or not components:
        return None
    return {
        "resourceType": "Observation",
        "id": observation_id,
        "status": "final",
        "category": [{"coding": [dict(IMAGING)]}],
        "code": {"coding": [code]},
        "component": components,
    }


def _component(measure: Any, local: dict[str, str] | None) -> dict[str, Any] | None:
    if not isinstance(measure, dict):
        return None
    code = _coded(measure.get("concept"), local)
    value, unit = measure.get("value"), measure.get("unit")
    if code is None or not isinstance(value, int | float) or isinstance(value, bool):
        return None
    quantity: dict[str, Any] = {"value": value}
    if isinstance(unit, dict):
        if unit.get("meaning"):
            quantity["unit"] = unit["meaning"]
        if unit.get("scheme") == "UCUM" and text(unit.get("code")):
            quantity["system"] = UCUM_SYSTEM
            quantity["code"] = unit["code"]
    return {"code": {"coding": [code]}, "valueQuantity": quantity}


def _list(value: Any) -> list[Any]:
    """A list from a record (records come from Redis: anything else is no list)."""
    return value if isinstance(value, list) else []


def _coded(code: Any, local: dict[str, str] | None) -> dict[str, Any] | None:
    return coding(code, local) if isinstance(code, dict) else None


def _link(observation: Resource, subject: dict[str, Any], imaging_study: dict[str, Any]) -> None:
    if "reference" in subject or "identifier" in subject:  # not the data-absent subject
        observation["subject"] = subject
    observation["partOf"] = [imaging_study]
