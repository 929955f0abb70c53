"""ImagingStudy.series and .series.instance from the folded series and instance records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workers.dicomtime import sort_key
from workers.mapping.common import (
    absent,
    count,
    identifier,
    is_fhir_id,
    practitioner,
    text,
    uid_identifier,
)
from workers.mapping.devices import DeviceKey, device_key
from workers.mapping.options import FhirVersion
from workers.summary import KEY_OBJECT_SOP_CLASS
from workers.terminology import (
    DEVICE,
    PERFORMER,
    SECONDARY_PERFORMER,
    body_part_coding,
    coding,
    function_concept,
    laterality_coding,
    modality_coding,
    sop_class_coding,
)

Members = list[tuple[str, dict[str, Any]]]
#: How a series refers to the Device of its equipment.
DeviceReference = Callable[[DeviceKey], dict[str, Any]]

_UNSORTED = 1 << 31


def build_series(
    series_uid: str,
    attrs: dict[str, Any],
    members: Members,
    version: FhirVersion,
    device_reference: DeviceReference,
    local_schemes: dict[str, str] | None,
) -> dict[str, Any] | None:
    """One series element; ``None`` when the Series Instance UID cannot be a FHIR id."""
    if not is_fhir_id(series_uid):
        return None
    series: dict[str, Any] = {"uid": series_uid}
    number = count(attrs.get("series_number"))
    if number is not None:
        series["number"] = number
    modality = modality_coding(attrs["modality"]) if text(attrs.get("modality")) else None
    coded = modality or absent()
    series["modality"] = coded if version == "R4" else {"coding": [coded]}
    if text(attrs.get("series_description")):
        series["description"] = attrs["series_description"]
    series["numberOfInstances"] = len(members)
    body_site = _body_site(attrs, local_schemes)
    if body_site:
        series["bodySite"] = body_site if version == "R4" else {"concept": {"coding": [body_site]}}
    laterality = _laterality(attrs, members)
    if laterality:
        series["laterality"] = laterality if version == "R4" else {"coding": [laterality]}
    specimens = [s for item in attrs.get("specimens") or [] if (s := _specimen(item))]
    if specimens:
        series["specimen"] = specimens
    started = _started(attrs, members)
    if started:
        series["started"] = started
    performers = _performers(attrs, device_reference)
    if performers:
        series["performer"] = performers
    instances = [
        made
        for sop_uid, record in members
        if (made := _instance(sop_uid, record, attrs)) is not None
    ]
    instances.sort(key=lambda i: (i.get("number", _UNSORTED), i["uid"]))
    if instances:
        series["instance"] = instances
    return series


def sort_series(series: list[dict[str, Any]]) -> None:
    series.sort(key=lambda s: (s.get("number", _UNSORTED), s["uid"]))


def modality_code(attrs: dict[str, Any]) -> str | None:
    code = attrs.get("modality")
    return code if isinstance(code, str) and modality_coding(code) is not None else None


def _body_site(attrs: dict[str, Any], local: dict[str, str] | None) -> dict[str, Any] | None:
    """Anatomic Region Sequence when coded, else Body Part Examined through Annex L."""
    region = attrs.get("anatomic_region")
    if isinstance(region, dict):
        made = coding(region, local)
        if made is not None and "system" in made:
            return made
    body_part = attrs.get("body_part")
    if isinstance(body_part, str):
        return body_part_coding(body_part)
    return None


def _laterality(attrs: dict[str, Any], members: Members) -> dict[str, Any] | None:
    """Series Laterality; else the image lateralities reduced: one side if all images
    agree, both (B) when they show left and right."""
    own = attrs.get("laterality")
    if isinstance(own, str) and own in ("L", "R", "B"):
        return laterality_coding(own)
    sides = {r["laterality"] for _, r in members if r.get("laterality") in ("L", "R", "B")}
    if not sides:
        return None
    side = sides.pop() if len(sides) == 1 else "B"
    return laterality_coding(side)


def _started(attrs: dict[str, Any], members: Members) -> str | None:
    """Series Date/Time; else the earliest acquisition of its instances."""
    if text(attrs.get("started")):
        return str(attrs["started"])
    acquired = [r["acquired"] for _, r in members if text(r.get("acquired"))]
    return min(acquired, key=sort_key) if acquired else None


def _specimen(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    reference: dict[str, Any] = {"type": "Specimen"}
    uid, specimen_id = item.get("uid"), text(item.get("id"))
    uid_id = uid_identifier(uid) if isinstance(uid, str) else None
    if uid_id is not None:
        reference["identifier"] = uid_id
    elif specimen_id:
        reference["identifier"] = identifier(specimen_id, item.get("issuer"), None)
    else:
        return None
    shown = specimen_id or text(item.get("description"))
    if shown:
        reference["display"] = shown
    return reference


def _performers(attrs: dict[str, Any], device_reference: DeviceReference) -> list[dict[str, Any]]:
    performers: list[dict[str, Any]] = []
    for names, function in (
        (attrs.get("performing_physicians"), PERFORMER),
        (attrs.get("operators"), SECONDARY_PERFORMER),
    ):
        for name in names or []:
            actor = practitioner(name)
            if actor is not None:
                performer = {"function": function_concept(function), "actor": actor}
                if performer not in performers:
                    performers.append(performer)
    key = device_key(attrs)
    if key is not None:
        performers.append({"function": function_concept(DEVICE), "actor": device_reference(key)})
    return performers


def _instance(
    sop_uid: str, record: dict[str, Any], series_attrs: dict[str, Any]
) -> dict[str, Any] | None:
    """One instance element; ``None`` when the SOP Instance UID cannot be a FHIR id."""
    if not is_fhir_id(sop_uid):
        return None
    instance: dict[str, Any] = {"uid": sop_uid}
    sop_class = record.get("sop_class_uid")
    coded = sop_class_coding(sop_class) if isinstance(sop_class, str) else None
    instance["sopClass"] = coded or absent()
    number = count(record.get("instance_number"))
    if number is not None:
        instance["number"] = number
    title = text(record.get("title"))
    if title is None and sop_class == KEY_OBJECT_SOP_CLASS:
        title = text(series_attrs.get("series_description"))
    if title:
        instance["title"] = title
    return instance
