"""R5 ImagingSelection of Key Object Selection documents (built with highdicom), of real
Segmentations (pydicom's liver.dcm) and of the real RT Structure Set (rtstruct.dcm)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from tests.golden import assert_golden
from tests.samples import ROOT, aggregate, dataset, enriched_ct, summary_of
from tests.support import sample_file
from tests.test_bundle import OPTIONS, by_type, validate_bundle
from workers.convert import read_file
from workers.mapping import study_bundle
from workers.selection import MAX_SELECTED
from workers.summary import InstanceSummary, summarize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def images() -> list[Dataset]:
    """Two real images of the enriched study: the CT and a multi-frame enhanced MR."""
    ct = enriched_ct()
    mr = dataset("emri_small.dcm")  # 10 frames
    mr.StudyInstanceUID = ct.StudyInstanceUID
    mr.SeriesInstanceUID = ROOT + "1.3"
    mr.SOPInstanceUID = ROOT + "1.3.1"
    mr.file_meta.MediaStorageSOPInstanceUID = mr.SOPInstanceUID
    mr.PatientID = ct.PatientID
    return [ct, mr]


def key_objects(title: Code, frames: list[int] | None = None) -> Dataset:
    """A real KOS document made by highdicom, selecting both images."""
    evidence = images()
    content = KeyObjectSelection(document_title=title, referenced_objects=evidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        document = KeyObjectSelectionDocument(
            evidence=evidence,
            content=content,
            series_instance_uid=ROOT + "1.9",
            series_number=99,
            # Derived, not random: the corpus (tests/test_corpus.py) is the same every run.
            sop_instance_uid=generate_uid(entropy_srcs=[ROOT, title.value, str(frames)]),
            instance_number=1,
        )
    if frames:
        # TID 2010 IMAGE items may name frames of a multi-frame image.
        for item in document.ContentSequence:
            for ref in item.get("ReferencedSOPSequence", []):
                if ref.ReferencedSOPInstanceUID == evidence[1].SOPInstanceUID:
                    ref.ReferencedFrameNumber = frames
    return document


def selections(*summaries: InstanceSummary) -> list[dict[str, Any]]:
    bundle = study_bundle(aggregate(*summaries), "R5", OPTIONS)
    validate_bundle(bundle, "R5")
    r4 = study_bundle(aggregate(*summaries), "R4", OPTIONS)
    assert "ImagingSelection" not in by_type(r4)  # R4 has no such resource
    return [e["resource"] for e in by_type(bundle).get("ImagingSelection", [])]


def test_a_key_object_selection_becomes_imaging_selections_with_frames() -> None:
    document = key_objects(Code("113020", "DCM", "For Report Attachment"), frames=[2, 5])
    ct, mr = images()
    made = selections(*(summary_of(ds) for ds in (ct, mr, document)))
    assert len(made) == 2  # one per referenced series
    by_series = {s["seriesUid"]: s for s in made}
    title = {
        "coding": [
            {
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "113020",
                "display": "For Report Attachment",
            }
        ]
    }
    for selection in made:
        assert selection["code"] == title
        assert selection["studyUid"] == ct.StudyInstanceUID
        assert selection["status"] == "available"
        assert selection["derivedFrom"][0]["type"] == "ImagingStudy"
        assert selection["subject"]["type"] == "Patient"
    assert by_series[ct.SeriesInstanceUID]["instance"] == [
        {
            "uid": ct.SOPInstanceUID,
            "sopClass": {
                "system": "urn:ietf:rfc:3986",
                "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2",
                "display": "CT Image Storage",
            },
        }
    ]
    (mr_instance,) = by_series[mr.SeriesInstanceUID]["instance"]
    assert mr_instance["uid"] == mr.SOPInstanceUID and mr_instance["subset"] == ["2", "5"]


def test_a_rejection_note_is_no_key_image_selection() -> None:
    document = key_objects(Code("113001", "DCM", "Rejected for Quality Reasons"))
    assert selections(summary_of(enriched_ct()), summary_of(document)) == []


def test_a_selection_too_large_to_record_is_reported_not_cut_short() -> None:
    document = key_objects(Code("113000", "DCM", "Of Interest"))
    series = document.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    template = series.ReferencedSOPSequence[0]
    many = []
    for number in range(MAX_SELECTED + 1):
        ref = Dataset()
        ref.ReferencedSOPClassUID = template.ReferencedSOPClassUID
        ref.ReferencedSOPInstanceUID = f"{ROOT}7.{number}"
        many.append(ref)
    series.ReferencedSOPSequence = many
    summary = summary_of(document)
    assert summary.instance["selection"] == {"kind": "kos", "too_many": MAX_SELECTED + 2}
    assert "0040A375" in summary.warnings
    assert selections(summary) == []


def test_segmentation_selects_its_source_images_golden() -> None:
    summary = summarize(read_file(sample_file("liver.dcm")).json)
    made = selections(summary)
    assert [s["code"]["coding"][0]["code"] for s in made] == ["113076"]
    assert len(made[0]["instance"]) == 3  # its Referenced Instance Sequence
    assert_golden("ImagingSelection_liver_R5.json", made)


def test_rt_structure_set_selects_its_series_with_the_frame_of_reference() -> None:
    summary = summarize(read_file(sample_file("rtstruct.dcm")).json)
    (made,) = selections(summary)
    assert made["code"] == {"text": "RT Structure Set sep30"}
    assert made["frameOfReferenceUid"] == "1.2.826.0.1.3680043.8.498.2010020400001.2"
    assert made["seriesUid"] == "1.2.826.0.1.3680043.8.498.2010020400001.2.1.1"
