"""Real objects for the lifecycle tests: IOCM rejection notes written by highdicom, MPPS
and IAN requests sent with pynetdicom's SCU, and an inline worker's context."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from scp import config
from scp.connections import connect
from scp.shared_settings import SharedSettings
from workers.context import WorkerContext, install
from workers.delivery.settings import delivery_settings
from workers.jobs import ensure_group
from workers.settings import WorkerSettings

TITLES = {
    "113001": codes.DCM.RejectedForQualityReasons,
    "113037": codes.DCM.RejectedForPatientSafetyReasons,
    "113038": codes.DCM.IncorrectModalityWorklistEntry,
    "113039": codes.DCM.DataRetentionPolicyExpired,
}


def rejection_note(folder: Path, rejected: Sequence[Path], code: str = "113001") -> Path:
    """A Key Object Selection Document titled with ``code`` naming the ``rejected`` files'
    instances (all of one study), as a PACS or modality sends it (IHE IOCM)."""
    evidence = [pydicom.dcmread(path, stop_before_pixels=True) for path in rejected]
    content = highdicom.ko.KeyObjectSelection(
        document_title=TITLES[code], referenced_objects=evidence
    )
    document = highdicom.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="scp2fhir tests",
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{document.SOPInstanceUID}.dcm"
    document.save_as(path, enforce_file_format=True)
    return path


def performed_series(files: Sequence[Path]) -> list[Dataset]:
    """Performed Series Sequence items (PS3.3 C.4.15) listing ``files`` by series."""
    by_series: dict[str, list[Dataset]] = {}
    descriptions: dict[str, str] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ref)
        descriptions[str(ds.SeriesInstanceUID)] = str(ds.get("SeriesDescription", ""))
    items = []
    for series_uid, refs in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.SeriesDescription = descriptions[series_uid]
        item.PerformingPhysicianName = ""
        item.OperatorsName = ""
        item.ProtocolName = "test"
        item.RetrieveAETitle = ""
        item.ReferencedImageSequence = refs
        item.ReferencedNonImageCompositeSOPInstanceSequence = []
        items.append(item)
    return items


def mpps_create(study_uid: str, status: str = "IN PROGRESS") -> Dataset:
    """The N-CREATE attribute list of an MPPS (PS3.4 F.7.2.1), minimal but complete."""
    ds = Dataset()
    step = Dataset()
    step.StudyInstanceUID = study_uid
    step.AccessionNumber = ""
    step.RequestedProcedureID = ""
    step.ScheduledProcedureStepID = ""
    step.ReferencedStudySequence = []
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PerformedProcedureStepID = "1"
    ds.PerformedStationAETitle = "TESTSCU"
    ds.PerformedProcedureStepStartDate = "20240101"
    ds.PerformedProcedureStepStartTime = "120000"
    ds.PerformedProcedureStepStatus = status
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def mpps_set(status: str, files: Sequence[Path]) -> Dataset:
    """The final N-SET of an MPPS: its status and the instances it produced."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240101"
    ds.PerformedProcedureStepEndTime = "121000"
    ds.PerformedSeriesSequence = performed_series(files)
    return ds


def ian(study_uid: str, files: Sequence[Path]) -> Dataset:
    """An Instance Availability Notification (PS3.3 C.4.23) for ``files``, all ONLINE."""
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.ReferencedPerformedProcedureStepSequence = []
    series = []
    for item in performed_series(files):
        entry = Dataset()
        entry.SeriesInstanceUID = item.SeriesInstanceUID
        refs = []
        for image in item.ReferencedImageSequence:
            ref = Dataset()
            ref.ReferencedSOPClassUID = image.ReferencedSOPClassUID
            ref.ReferencedSOPInstanceUID = image.ReferencedSOPInstanceUID
            ref.InstanceAvailability = "ONLINE"
            ref.RetrieveAETitle = "PACS"
            refs.append(ref)
        entry.ReferencedSOPSequence = refs
        series.append(entry)
    ds.ReferencedSeriesSequence = series
    return ds


def worker_context(redis_url: str, tmp_path: Path, **env: str) -> WorkerContext:
    """A worker's context (settings and destinations, as ``scp2fhir worker`` builds them),
    installed for jobs run inline (output in ``tmp_path/out``)."""
    loaded = config.load(
        {"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_OUTPUT_DIR": str(tmp_path / "out"), **env}
    )
    worker, shared = (
        config.settings(loaded, WorkerSettings),
        config.settings(loaded, SharedSettings),
    )
    ctx = WorkerContext.build(worker, shared, connect(redis_url), delivery_settings(loaded, worker))
    ensure_group(ctx.clients.data)
    install(ctx)
    return ctx
