"""Every real DICOM file at hand converts to valid FHIR R4 (R4B model) and R5.

The corpus is all of pydicom's bundled test and charset files and the pydicom-data
wheel (CT, MR, CR, US, NM, SR, RT dose/plan/structure set, SEG, ECG, secondary
capture, multi-frame, every character set), plus real images turned into the kinds
the files lack (DX, MG with image laterality, slide microscopy with a specimen).
Each is validated alone and folded with the files that share its study, as the
ImagingStudy on its own and as the transaction Bundle with every resource in it.

``python -m tests.test_corpus`` prints the counts.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from fhir.resources import get_fhir_model_class as model_r5
from fhir.resources.R4B import get_fhir_model_class as model_r4b
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from scp.header import extract_header
from tests.dose_reports import ct_dose_report, xray_dose_report
from tests.samples import CORPUS_ROOTS, PYDICOM_DATA, aggregate, corpus_files, dataset, read
from tests.samples import header_of as header_from_dataset
from tests.test_selections import key_objects
from workers.convert import read_file
from workers.fold import fold_all
from workers.mapping import FhirVersion, MappingOptions, imaging_study, study_bundle
from workers.summary import InstanceSummary, NotAnInstance, summarize

VERSIONS: tuple[FhirVersion, ...] = ("R4", "R5")
OPTION_SETS = (
    MappingOptions(),
    MappingOptions(
        accession_system="urn:oid:1.2.826.0.1.3680043.8.498.4242.200",
        patient_id_system="urn:oid:1.2.826.0.1.3680043.8.498.4242.300",
        wado_rs_base_url="https://pacs.example.org/dicom-web",
        bundle=True,
    ),
)


@dataclass
class Corpus:
    summaries: dict[str, InstanceSummary] = field(default_factory=dict)
    modalities: Counter[str] = field(default_factory=Counter)
    multiframe: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def synthesized() -> dict[str, Dataset]:
    """Real images given the identity of the kinds the corpus lacks."""
    cr = read(PYDICOM_DATA / "test_files" / "dicomdirtests" / "77654033" / "CR1" / "6154")
    dx = copy.deepcopy(cr)
    dx.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - Presentation
    dx.Modality = "DX"
    dx.SOPInstanceUID = generate_uid(entropy_srcs=["scp2fhir test corpus", "dx"])
    mg = copy.deepcopy(cr)
    mg.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography - For Presentation
    mg.Modality = "MG"
    mg.SOPInstanceUID = generate_uid(entropy_srcs=["scp2fhir test corpus", "mg"])
    mg.BodyPartExamined = "BREAST"
    mg.ImageLaterality = "R"
    sm = dataset("SC_rgb.dcm")
    sm.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image
    sm.Modality = "SM"
    sm.SOPInstanceUID = generate_uid(entropy_srcs=["scp2fhir test corpus", "sm"])
    specimen = Dataset()
    specimen.SpecimenIdentifier = "S-2024-0042-A1"
    specimen.SpecimenUID = "1.2.826.0.1.3680043.8.498.4242.900"
    specimen.SpecimenShortDescription = "Liver biopsy, H&E"
    sm.SpecimenDescriptionSequence = [specimen]
    for ds in (dx, mg, sm):
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ct = dataset("CT_small.dcm")
    # Objects the corpus has none of, made by highdicom: dose reports (CT, projection
    # X-ray) in the studies of real images, and a key object selection of the CR.
    kos = key_objects(Code("113000", "DCM", "Of Interest"))
    return {
        "synthesized:DX": dx,
        "synthesized:MG": mg,
        "synthesized:SM": sm,
        "synthesized:RDSR-CT": ct_dose_report(ct),
        "synthesized:RDSR-XR": xray_dose_report(cr),
        "synthesized:KO": kos,
    }


#: Labels of the corpus roots in file names ("pydicom-data/CT_small.dcm").
ROOT_LABELS = {
    CORPUS_ROOTS[0]: "pydicom/test_files",
    CORPUS_ROOTS[1]: "pydicom/charset_files",
    CORPUS_ROOTS[2]: "pydicom-data",
}

NOT_DICOM = "not DICOM"
NO_UIDS = "not an instance (no Study/Series/SOP Instance UID)"
#: Every corpus file that does not become an instance, and why. Anything else must load:
#: a file that newly fails, or newly loads, breaks the test (no floor to hide behind).
NOT_INSTANCES = {
    # text, JSON, ICC profiles, archives and dumps beside the DICOM files
    "pydicom/test_files/README.txt": NOT_DICOM,
    "pydicom/test_files/crayons.icc": NOT_DICOM,
    "pydicom/test_files/dicomdirtests/README.txt": NOT_DICOM,
    "pydicom/test_files/dicomdirtests/TINY_ALPHA/README": NOT_DICOM,
    "pydicom/test_files/rtplan.dump": NOT_DICOM,
    "pydicom/test_files/rtstruct.dump": NOT_DICOM,
    "pydicom/test_files/test1.json": NOT_DICOM,
    "pydicom/test_files/test_PN.json": NOT_DICOM,
    "pydicom/test_files/zipMR.gz": NOT_DICOM,
    "pydicom/charset_files/FileInfo.txt": NOT_DICOM,
    # no Part 10 header and no identity of its own: a bare dataset of a few elements
    "pydicom/test_files/no_meta.dcm": NOT_DICOM,
    # media directories (DICOMDIR), not instances
    "pydicom/test_files/dicomdirtests/DICOMDIR": NO_UIDS,
    "pydicom/test_files/dicomdirtests/DICOMDIR-bigEnd": NO_UIDS,
    "pydicom/test_files/dicomdirtests/DICOMDIR-empty.dcm": NO_UIDS,
    "pydicom/test_files/dicomdirtests/DICOMDIR-implicit": NO_UIDS,
    "pydicom/test_files/dicomdirtests/DICOMDIR-nooffset": NO_UIDS,
    "pydicom/test_files/dicomdirtests/DICOMDIR-nopatient": NO_UIDS,
    "pydicom/test_files/dicomdirtests/DICOMDIR-reordered": NO_UIDS,
    "pydicom/test_files/dicomdirtests/TINY_ALPHA/DICOMDIR": NO_UIDS,
    # test files of pydicom's reader that hold a few elements and no instance UIDs
    "pydicom/test_files/JPEGLSNearLossless_08.dcm": NO_UIDS,
    "pydicom/test_files/JPEGLSNearLossless_16.dcm": NO_UIDS,
    "pydicom/test_files/SC_rgb_jls_lossy_line.dcm": NO_UIDS,
    "pydicom/test_files/SC_rgb_jls_lossy_sample.dcm": NO_UIDS,
    "pydicom/test_files/UN_sequence.dcm": NO_UIDS,
    "pydicom/test_files/empty_charset_LEI.dcm": NO_UIDS,
    "pydicom/test_files/meta_missing_tsyntax.dcm": NO_UIDS,
    "pydicom/test_files/nested_priv_SQ.dcm": NO_UIDS,
    "pydicom/test_files/no_meta_group_length.dcm": NO_UIDS,
    "pydicom/test_files/priv_SQ.dcm": NO_UIDS,
    "pydicom/charset_files/chrSQEncoding.dcm": NO_UIDS,
    "pydicom/charset_files/chrSQEncoding1.dcm": NO_UIDS,
}


def corpus_name(path: Path) -> str:
    root = next(r for r in CORPUS_ROOTS if r in path.parents)
    return f"{ROOT_LABELS[root]}/{path.relative_to(root).as_posix()}"


@cache
def corpus() -> Corpus:
    """Every corpus file read as ``scp2fhir convert`` reads it (workers.convert.read_file:
    Part 10 as the SCP does, else a bare dataset that identifies itself)."""
    found = Corpus()
    headers: dict[str, dict[str, Any]] = {}
    for path in corpus_files():
        name = corpus_name(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's warnings about odd values
                headers[name] = read_file(path).json
        except InvalidDicomError:
            found.skipped[name] = NOT_DICOM
            continue
        except Exception as exc:  # unexpected: recorded, and so fails the checked list
            found.skipped[name] = f"unreadable ({type(exc).__name__})"
            continue
        frames = (headers[name].get("00280008") or {}).get("Value") or [1]
        if isinstance(frames[0], int) and frames[0] > 1:
            found.multiframe.append(name)
    for name, ds in synthesized().items():
        headers[name] = header_from_dataset(ds)
    for name, header in headers.items():
        try:
            # with the technique, for the profiles' corpus test (the base mapping ignores it)
            summary = summarize(header, with_technique=True)
        except NotAnInstance:
            found.skipped[name] = NO_UIDS
            continue
        found.summaries[name] = summary
        found.modalities[summary.series.get("modality", "(none)")] += 1
    return found


def validation_errors(study: Any, label: str) -> list[str]:
    errors = []
    for version in VERSIONS:
        model = model_r4b if version == "R4" else model_r5
        for options in OPTION_SETS:
            try:
                model("ImagingStudy").model_validate(imaging_study(study, version, options=options))
                bundle = study_bundle(study, version, options)
                model("Bundle").model_validate(bundle)
                for entry in bundle["entry"]:
                    resource = entry["resource"]
                    model(resource["resourceType"]).model_validate(resource)
            except Exception as exc:  # a validation error: collect them all
                errors.append(f"{label} {version}: {str(exc)[:300]}")
    return errors


def test_the_corpus_covers_the_kinds_of_dicom() -> None:
    found = corpus()
    kinds = {"CT", "MR", "CR", "DX", "US", "NM", "SR", "RTDOSE", "RTPLAN", "RTSTRUCT", "SEG"}
    assert kinds | {"MG", "SM", "ECG", "OT"} <= set(found.modalities), found.modalities
    assert len(found.multiframe) >= 10


def test_every_corpus_file_is_an_instance_or_listed_with_its_reason() -> None:
    found = corpus()
    files = [corpus_name(path) for path in corpus_files()]
    assert found.skipped == NOT_INSTANCES
    assert sorted(found.summaries) == sorted(
        [*(f for f in files if f not in NOT_INSTANCES), *synthesized()]
    )
    # The files without a Part 10 header that identify themselves are read (the only
    # RT Structure Set among them).
    for name in (
        "pydicom/test_files/rtstruct.dcm",
        "pydicom/test_files/ExplVR_BigEndNoMeta.dcm",
        "pydicom/test_files/ExplVR_LitEndNoMeta.dcm",
        "pydicom-data/OT-PAL-8-face.dcm",
    ):
        assert name in found.summaries
    assert found.modalities["RTSTRUCT"] == 1


def test_every_file_maps_to_valid_resources_on_its_own() -> None:
    errors: list[str] = []
    for name, summary in corpus().summaries.items():
        errors += validation_errors(aggregate(summary), name)
    assert errors == []


def test_every_study_of_the_corpus_maps_to_valid_resources() -> None:
    aggregates = fold_all(corpus().summaries.values())
    errors: list[str] = []
    for uid, study in aggregates.items():
        errors += validation_errors(study, uid)
    assert errors == []


#: Patient's Name of each character set file, as it reads (every group).
CHARSET_NAMES = {
    "chrArab.dcm": ["لنزار قباني"],
    "chrFren.dcm": ["Jérôme Buc"],
    "chrFrenMulti.dcm": ["Jérôme Buc"],
    "chrGerm.dcm": ["Rüdiger Äneas"],
    "chrGreek.dcm": ["Διονυσιος"],
    "chrH31.dcm": ["Tarou Yamada", "山田 太郎", "やまだ たろう"],
    "chrH32.dcm": ["ﾔﾏﾀﾞ ﾀﾛｳ", "山田 太郎", "やまだ たろう"],
    "chrHbrw.dcm": ["דבורה שרון"],
    "chrI2.dcm": ["Gildong Hong", "洪 吉洞", "홍 길동"],
    "chrJapMulti.dcm": ["やまだ たろう"],
    "chrJapMultiExplicitIR6.dcm": ["やまだ たろう"],
    "chrKoreanMulti.dcm": ["김희중"],
    "chrRuss.dcm": ["Люкceмбypг"],
    "chrX1.dcm": ["XiaoDong Wang", "王 小東"],
    "chrX2.dcm": ["XiaoDong Wang", "王 小东"],
}


@pytest.mark.parametrize("name", sorted(CHARSET_NAMES))
def test_every_character_set_comes_out_as_unicode(name: str) -> None:
    path = get_charset_files(name)[0]
    summary = summarize(extract_header(read(path)).json)
    bundle = study_bundle(aggregate(summary), "R5", OPTION_SETS[1])
    patient = bundle["entry"][0]["resource"]
    assert patient["resourceType"] == "Patient"
    assert [n["text"] for n in patient["name"]] == CHARSET_NAMES[name]
    assert validation_errors(aggregate(summary), name) == []


def test_operators_in_korean_are_readable() -> None:
    summary = summarize(extract_header(read(get_charset_files("chrKoreanMulti.dcm")[0])).json)
    series = imaging_study(aggregate(summary), "R4")["series"][0]
    assert {"type": "Practitioner", "display": "김희중"} in [
        p["actor"] for p in series["performer"]
    ]


def test_slide_microscopy_specimen() -> None:
    summary = summarize(header_from_dataset(synthesized()["synthesized:SM"]))
    series = imaging_study(aggregate(summary), "R5")["series"][0]
    assert series["specimen"] == [
        {
            "type": "Specimen",
            "identifier": {
                "system": "urn:dicom:uid",
                "value": "urn:oid:1.2.826.0.1.3680043.8.498.4242.900",
            },
            "display": "S-2024-0042-A1",
        }
    ]


def test_mammography_image_laterality() -> None:
    summary = summarize(header_from_dataset(synthesized()["synthesized:MG"]))
    series = imaging_study(aggregate(summary), "R4")["series"][0]
    assert series["laterality"]["code"] == "24028007"
    assert series["bodySite"]["code"] == "76752008"


def main() -> None:
    found = corpus()
    files = sum(1 for root in CORPUS_ROOTS for p in Path(root).rglob("*") if p.is_file())
    aggregates = fold_all(found.summaries.values())
    errors = [e for n, s in found.summaries.items() for e in validation_errors(aggregate(s), n)]
    errors += [e for uid, s in aggregates.items() for e in validation_errors(s, uid)]
    per_file = len(found.summaries) * len(VERSIONS) * len(OPTION_SETS)
    print(f"corpus files: {files} (+{len(synthesized())} synthesized)")
    print(f"instances converted: {len(found.summaries)}; skipped: {len(found.skipped)}")
    print(f"studies: {len(aggregates)}; multi-frame files: {len(found.multiframe)}")
    print(f"modalities: {dict(sorted(found.modalities.items()))}")
    print(f"validation runs: {per_file + len(aggregates) * 4} (each: ImagingStudy + Bundle)")
    print(f"validation errors: {len(errors)}")
    for error in errors:
        print("  ", error)


if __name__ == "__main__":
    main()
