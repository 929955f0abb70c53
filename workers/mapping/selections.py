"""R5 ImagingSelection resources: the instances (and frames) a Key Object Selection
document, a Segmentation or an RT Structure Set of the study refers to.

One ImagingSelection per selecting instance and referenced series (``studyUid`` and
``seriesUid`` are single-valued), ``derivedFrom`` the ImagingStudy that holds the
selecting instance. FHIR R4 has no ImagingSelection: R4 output leaves them out.
"""

from __future__ import annotations

from typing import Any

from workers.fold import StudyAggregate
from workers.mapping.common import Resource, is_fhir_id, stable_id, text
from workers.terminology import DCM_SYSTEM, coding, sop_class_coding

#: CID 7203 "Image Derivation": what a Segmentation's selection is for.
SEGMENTATION = {"system": DCM_SYSTEM, "code": "113076", "display": "Segmentation"}


def imaging_selections(
    aggregate: StudyAggregate,
    subject: dict[str, Any],
    imaging_study: dict[str, Any],
    local_schemes: dict[str, str] | None = None,
) -> list[Resource]:
    """The study's ImagingSelections (R5), sorted by id; ``subject`` and
    ``imaging_study`` are the references the caller's resources use."""
    out: list[Resource] = []
    for sop_uid, record in aggregate.instances.items():
        chosen = record.get("selection")
        if not isinstance(chosen, dict) or not isinstance(chosen.get("series"), list):
            continue
        code = _code(chosen, record, local_schemes)
        for series in chosen["series"]:
            made = _selection(sop_uid, chosen, series, code, subject, imaging_study)
            if made is not None:
                out.append(made)
    out.sort(key=lambda r: str(r["id"]))
    return out


def _code(
    chosen: dict[str, Any], record: dict[str, Any], local: dict[str, str] | None
) -> dict[str, Any]:
    """The selection's purpose: a KOS document title (CID 7010), Segmentation (with the
    content label), or the structure set's label."""
    label = text(record.get("title"))
    kind = chosen.get("kind")
    if kind == "kos":
        title = chosen.get("title")
        made = coding(title, local) if isinstance(title, dict) else None
        if made is not None:
            return {"coding": [made]}
        return {"text": label or "Key Object Selection"}
    if kind == "seg":
        code: dict[str, Any] = {"coding": [dict(SEGMENTATION)]}
        if label:
            code["text"] = label
        return code
    return {"text": f"RT Structure Set {label}" if label else "RT Structure Set"}


def _selection(
    sop_uid: str,
    chosen: dict[str, Any],
    series: Any,
    code: dict[str, Any],
    subject: dict[str, Any],
    imaging_study: dict[str, Any],
) -> Resource | None:
    if not isinstance(series, dict):
        return None
    study_uid, series_uid = series.get("study"), series.get("series")
    if not (is_fhir_id(study_uid) and is_fhir_id(series_uid)):
        return None
    resource: Resource = {
        "resourceType": "ImagingSelection",
        "id": stable_id("sel", sop_uid, str(series_uid)),
        "status": "available",
    }
    if "reference" in subject or "identifier" in subject:
        resource["subject"] = subject
    resource["code"] = code
    resource["derivedFrom"] = [imaging_study]
    resource["studyUid"] = study_uid
    resource["seriesUid"] = series_uid
    frame_of_reference = chosen.get("frame_of_reference")
    if is_fhir_id(frame_of_reference):
        resource["frameOfReferenceUid"] = frame_of_reference
    listed = series.get("instances")
    instances = [
        made for item in (listed if isinstance(listed, list) else []) if (made := _instance(item))
    ]
    if instances:
        resource["instance"] = instances
    return resource


def _instance(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict) or not is_fhir_id(item.get("uid")):
        return None
    instance: dict[str, Any] = {"uid": item["uid"]}
    sop_class = item.get("sop_class")
    coded = sop_class_coding(sop_class) if isinstance(sop_class, str) else None
    if coded:
        instance["sopClass"] = coded
    listed = item.get("frames")
    frames = [
        str(n)
        for n in (listed if isinstance(listed, list) else [])
        if isinstance(n, int) and not isinstance(n, bool) and n > 0
    ]
    if frames:
        instance["subset"] = frames
    return instance
