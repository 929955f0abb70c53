"""Real DICOM files for the mapping tests: pydicom's bundled files, the pydicom-data
wheel, and real datasets given the values those files lack (issuers, codes, body part,
laterality, performers, specimens), the way a modality or RIS would fill them."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import data_store  # the pydicom-data wheel
import pydicom
import pydicom.data
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from scp.header import extract_header, read_dataset
from tests.support import sample_file
from workers.fold import StudyAggregate, fold
from workers.summary import InstanceSummary, summarize

PYDICOM_DATA = Path(pydicom.data.__file__).parent
DATA_STORE = Path(os.path.dirname(data_store.__file__)) / "data"
#: Every file of pydicom's test and charset folders and of the pydicom-data wheel.
CORPUS_ROOTS = (PYDICOM_DATA / "test_files", PYDICOM_DATA / "charset_files", DATA_STORE)


def corpus_files() -> Iterator[Path]:
    for root in CORPUS_ROOTS:
        yield from sorted(p for p in root.rglob("*") if p.is_file())


def read(source: str | Path | io.BytesIO) -> Dataset:
    """Header of a DICOM file; files without a Part 10 preamble are read as raw datasets."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read_dataset(source)
        except InvalidDicomError:
            if isinstance(source, io.BytesIO):
                source.seek(0)
            return dcmread(source, stop_before_pixels=True, force=True)


def header_of(ds: Dataset) -> dict[str, object]:
    """The DICOM JSON the SCP would store for ``ds`` (written and read back as a file)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        return extract_header(read_dataset(buffer)).json


def summary_of(ds: Dataset) -> InstanceSummary:
    return summarize(header_of(ds))


def summary_of_file(name: str) -> InstanceSummary:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return summarize(extract_header(read_dataset(sample_file(name))).json)


def aggregate(*summaries: InstanceSummary) -> StudyAggregate:
    return fold(StudyAggregate(summaries[0].study_uid), summaries)


def dataset(name: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(sample_file(name))


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def issuer(local: str, universal: str | None = None, kind: str = "ISO") -> Dataset:
    item = Dataset()
    item.LocalNamespaceEntityID = local
    if universal:
        item.UniversalEntityID = universal
        item.UniversalEntityIDType = kind
    return item


#: Root for the UIDs of the enriched study (a test root, not a real organisation).
ROOT = "1.2.826.0.1.3680043.8.498.4242."


def enriched_ct() -> Dataset:
    """CT_small as a RIS-driven chest CT: accession and patient issuers, procedure and
    reason codes, physicians, operators, body part, department, comments."""
    ds = dataset("CT_small.dcm")
    ds.StudyInstanceUID = ROOT + "1"
    ds.SeriesInstanceUID = ROOT + "1.1"
    ds.SOPInstanceUID = ROOT + "1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "Doe^John^Adam^Dr.^Jr."
    ds.PatientID = "MRN-0042"
    ds.IssuerOfPatientID = "GENERAL HOSPITAL"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = "1.2.826.0.1.3680043.8.498.4242.100"
    qualifiers.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.PatientBirthDate = "19700215"
    ds.PatientSex = "M"
    ds.AccessionNumber = "ACC-2024-0001"
    ds.IssuerOfAccessionNumberSequence = [issuer("RIS", "https://ris.example.org/accession", "URI")]
    ds.ReferringPhysicianName = "Smith^Anna^^^MD"
    ds.NameOfPhysiciansReadingStudy = ["House^Gregory"]
    ds.ProcedureCodeSequence = [code("24627-2", "LN", "CT Chest")]
    ds.ReasonForRequestedProcedureCodeSequence = [
        code("233604007", "SCT", "Pneumonia"),
    ]
    request = Dataset()
    request.ReasonForTheRequestedProcedure = "Fever and cough for 10 days"
    ds.RequestAttributesSequence = [request]
    ds.InstitutionalDepartmentName = "Radiology"
    ds.StudyComments = "Patient could not hold breath for the whole scan."
    ds.BodyPartExamined = "CHEST"
    ds.OperatorsName = ["Tech^Terry"]
    ds.PerformingPhysicianName = ["Rad^Rita"]
    ds.DeviceSerialNumber = "SN-12345"
    return ds


def enriched_mr_knee() -> Dataset:
    """MR_small as the second series of the enriched study: a left knee, numbered 2."""
    ds = dataset("MR_small.dcm")
    ct = enriched_ct()
    for keyword in (
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyDate",
        "StudyTime",
    ):
        setattr(ds, keyword, getattr(ct, keyword))
    ds.SeriesInstanceUID = ROOT + "1.2"
    ds.SOPInstanceUID = ROOT + "1.2.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = 2
    ds.BodyPartExamined = "KNEE"
    ds.Laterality = "L"
    return ds
