"""Pure: what a Key Object Selection, Segmentation or RT Structure Set instance refers to.

The references become R5 ImagingSelection resources (:mod:`workers.mapping.selections`):

* a Key Object Selection document (TID 2010): its title (Concept Name Code Sequence) and
  the instances of Current Requested Procedure Evidence Sequence (0040,A375), with the
  frames its IMAGE content items name. IOCM rejection notes (titles of CID 7011) select
  nothing to look at: they are left to the study lifecycle;
* a Segmentation: the Referenced Series Sequence (0008,1115) of the Common Instance
  Reference module (and Studies Containing Other Referenced Instances, 0008,1200);
* an RT Structure Set: the contour images of Referenced Frame of Reference Sequence
  (3006,0010) by study and series, with the frame of reference.

The record is bounded: a document naming more than :data:`MAX_SELECTED` instances (a
manifest of a whole archive, say) is recorded only as too large, never cut short.
"""

from __future__ import annotations

from typing import Any

from workers.dicomjson import DicomJson
from workers.lifecycle.rejection import KEY_OBJECT_SOP_CLASS, REJECTION_TITLES

SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RT_STRUCTURE_SET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: Instances (and frames) one selection may name; beyond, the record says only how many.
MAX_SELECTED = 1000

Selection = dict[str, Any]


def selection(dj: DicomJson, sop_class: str | None, study_uid: str) -> Selection | None:
    """The references of a KOS, SEG or RTSTRUCT instance; ``None`` for other classes."""
    if sop_class == KEY_OBJECT_SOP_CLASS:
        titles = dj.codes("ConceptNameCodeSequence")
        title = titles[0] if titles else None
        if title and title["scheme"] == "DCM" and title["code"] in REJECTION_TITLES:
            return None
        frames = _kos_frames(dj)
        refs = [
            (study.uid("StudyInstanceUID"), series, frames)
            for study in dj.items("CurrentRequestedProcedureEvidenceSequence")
            for series in study.items("ReferencedSeriesSequence")
        ]
        out = _bounded("kos", refs, "ReferencedSOPSequence")
        _too_many(dj, out, "CurrentRequestedProcedureEvidenceSequence")
        if title and "series" in out:
            out["title"] = title
        return out
    if sop_class == SEGMENTATION_SOP_CLASS:
        refs = [(study_uid, series, {}) for series in dj.items("ReferencedSeriesSequence")]
        refs += [
            (study.uid("StudyInstanceUID"), series, {})
            for study in dj.items("StudiesContainingOtherReferencedInstancesSequence")
            for series in study.items("ReferencedSeriesSequence")
        ]
        out = _bounded("seg", refs, "ReferencedInstanceSequence")
        _too_many(dj, out, "ReferencedSeriesSequence")
        return out
    if sop_class == RT_STRUCTURE_SET_SOP_CLASS:
        refs = []
        frame_of_reference = None
        for frame in dj.items("ReferencedFrameOfReferenceSequence"):
            frame_of_reference = frame_of_reference or frame.uid("FrameOfReferenceUID")
            for study in frame.items("RTReferencedStudySequence"):
                for series in study.items("RTReferencedSeriesSequence"):
                    refs.append((study.uid("ReferencedSOPInstanceUID"), series, {}))
        out = _bounded("rtstruct", refs, "ContourImageSequence")
        _too_many(dj, out, "ReferencedFrameOfReferenceSequence")
        if frame_of_reference:
            out["frame_of_reference"] = frame_of_reference
        return out
    return None


def _too_many(dj: DicomJson, out: Selection, keyword: str) -> None:
    """A selection too large to record is reported like a value left out (by tag)."""
    if "too_many" in out:
        dj.warn(keyword)


def _kos_frames(dj: DicomJson) -> dict[str, list[int]]:
    """SOP Instance UID -> the frames the document's IMAGE items select."""
    frames: dict[str, list[int]] = {}
    for item in dj.items("ContentSequence"):
        for ref in item.items("ReferencedSOPSequence"):
            uid = ref.uid("ReferencedSOPInstanceUID")
            numbers = [n for n in ref.numbers("ReferencedFrameNumber") if isinstance(n, int)]
            if uid and numbers:
                frames.setdefault(uid, []).extend(n for n in numbers if n > 0)
    return frames


def _bounded(
    kind: str,
    refs: list[tuple[str | None, DicomJson, dict[str, list[int]]]],
    instances_keyword: str,
) -> Selection:
    series_list: list[dict[str, Any]] = []
    count = 0
    for study_uid, series, frames in refs:
        series_uid = series.uid("SeriesInstanceUID")
        if not (study_uid and series_uid):
            continue
        instances = []
        for ref in series.items(instances_keyword):
            uid = ref.uid("ReferencedSOPInstanceUID")
            if uid is None:
                continue
            instance: dict[str, Any] = {"uid": uid}
            sop_class = ref.uid("ReferencedSOPClassUID")
            if sop_class:
                instance["sop_class"] = sop_class
            if frames.get(uid):
                instance["frames"] = sorted(set(frames[uid]))
            instances.append(instance)
        count += len(instances) + sum(len(i.get("frames", ())) for i in instances)
        series_list.append({"study": study_uid, "series": series_uid, "instances": instances})
    if count > MAX_SELECTED:
        return {"kind": kind, "too_many": count}  # (instances and frames together)
    return {"kind": kind, "series": series_list}
