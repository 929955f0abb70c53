"""A PACS that misbehaves on demand, for the faults Orthanc cannot produce: garbage or
endless C-FIND answers, failure statuses, C-MOVEs that fail part-way (0xA702) or with
failed sub-operations (0xB000), answers that never come. A real pynetdicom Query/Retrieve
SCP on a free loopback port: its C-MOVEs really store instances to the test's scp2fhir SCP.

Its ``find`` and ``move`` attributes name the behaviour and may be changed between
requests (a rerun after the fault: ``"ok"``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.support import GeneratedStudy, free_port

AE_TITLE = "HOSTILE"


class HostilePacs:
    def __init__(
        self, studies: list[GeneratedStudy], scp_port: int, calling_aets: list[str] | None = None
    ) -> None:
        self.studies = studies
        self.scp_port = scp_port
        self.port = free_port()
        #: ok | garbage-uid | garbage-count | error | endless | slow
        self.find = "ok"
        #: ok | a702-midway | b000 | slow
        self.move = "ok"
        self.finds = 0
        self._lock = threading.Lock()
        ae = AE(ae_title=AE_TITLE)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        for storage in (CTImageStorage, MRImageStorage):  # the C-STORE sub-operations
            ae.add_requested_context(storage)
        ae.require_calling_aet = calling_aets or []
        ae.network_timeout = 30
        self._ae = ae
        self._server: Any = None

    @property
    def address(self) -> str:
        return f"{AE_TITLE}@127.0.0.1:{self.port}"

    def start(self) -> HostilePacs:
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_FIND, self._on_find), (evt.EVT_C_MOVE, self._on_move)],
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    # --- C-FIND ------------------------------------------------------------------------

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        with self._lock:
            self.finds += 1
        query: Any = event.identifier
        if self.find == "slow":
            time.sleep(10)
        if self.find == "error":
            status = Dataset()
            status.Status = 0xC001
            status.ErrorComment = "database offline"
            yield status, None
            return
        if self.find == "endless":
            for _ in range(5000):
                if event.is_cancelled:
                    yield 0xFE00, None
                    return
                yield 0xFF00, _study_record(generate_uid(), 1)
            yield 0x0000, None
            return
        if query.QueryRetrieveLevel == "SERIES":
            study = next(s for s in self.studies if s.study_uid == query.StudyInstanceUID)
            for series_uid, sops in study.series.items():
                record = Dataset()
                record.QueryRetrieveLevel = "SERIES"
                record.StudyInstanceUID = study.study_uid
                record.SeriesInstanceUID = series_uid
                record.NumberOfSeriesRelatedInstances = len(sops)
                yield 0xFF00, record
            yield 0x0000, None
            return
        for study in self.studies:
            record = _study_record(study.study_uid, len(study.files))
            if self.find == "garbage-uid":
                record.StudyInstanceUID = "1.2.this is not a UID"
            if self.find == "garbage-count":
                del record.NumberOfStudyRelatedInstances
                record.add_new(0x00201208, "LO", "many")  # an IS tag holding letters
            yield 0xFF00, record
        yield 0x0000, None

    # --- C-MOVE ------------------------------------------------------------------------

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        query: Any = event.identifier
        if self.move == "slow":
            time.sleep(10)
        yield "127.0.0.1", self.scp_port
        study = next(s for s in self.studies if s.study_uid == query.StudyInstanceUID)
        wanted = (
            set(study.series)
            if query.QueryRetrieveLevel == "STUDY"
            else {str(query.SeriesInstanceUID)}
        )
        files = [
            f for uid in sorted(wanted) for f in study.files if f.stem in set(study.series[uid])
        ]
        yield len(files)
        for index, path in enumerate(files):
            ds = pydicom.dcmread(path)
            if self.move == "a702-midway" and index == len(files) // 2:
                yield 0xA702, None  # out of resources: the rest is not sent
                return
            if self.move == "b000" and index % 2 == 1:
                ds.SOPInstanceUID = "1.2.999.not-a-uid"  # scp2fhir refuses it (0xC220)
            yield 0xFF00, ds


def _study_record(study_uid: str, instances: int) -> Dataset:
    record = Dataset()
    record.QueryRetrieveLevel = "STUDY"
    record.StudyInstanceUID = study_uid
    record.StudyDate = "20210401"
    record.NumberOfStudyRelatedInstances = instances
    return record
