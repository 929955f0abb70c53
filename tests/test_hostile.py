"""Hostile and broken input, sent to the real SCP process over real associations.

Every case is a dataset no honest encoder writes (built byte by byte, sent as is): each
gets the status the README promises, the SCP stays up, a sender on another association
all along is not disturbed, nothing the SCP accepted is dead-lettered by the worker, no
spool file is left behind, and no log line at any level carries patient data.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import redis
from fhir.resources.R4B.imagingstudy import ImagingStudy as ImagingStudyR4B
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from scp import keys, statuses
from scp.spool import ROLLOVER_BYTES
from tests.conftest import echo, pipeline_env
from tests.faults import (
    UNDEFINED_LENGTH,
    Child,
    element,
    implicit_element,
    item,
    send_files,
    spool_files,
    start_scp,
    start_worker,
    text,
    write_part10,
)
from tests.support import RedisProcess, free_port, make_study, read_json, wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SUCCESS, WARNING = statuses.SUCCESS, statuses.ELEMENTS_DISCARDED
C210, C220, C221 = (
    statuses.CANNOT_DECODE,
    statuses.MISSING_OR_INVALID_UID,
    statuses.SOP_INSTANCE_UID_MISMATCH,
)
A900 = statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS
TEN_MB = 10 * 1024 * 1024

# --- the corpus ----------------------------------------------------------------------------


#: Elements to replace or add (by tag), or remove (None).
Changes = Mapping[int, bytes | None] | None


def _ui(uid: str) -> bytes:
    return text(uid, b"\0")


@dataclass
class Instance:
    """A small CT instance, encoded element by element (explicit VR little endian)."""

    study: str = field(default_factory=generate_uid)
    series: str = field(default_factory=generate_uid)
    sop: str = field(default_factory=generate_uid)
    sop_class: str = CT

    def elements(self) -> dict[int, bytes]:
        return {
            0x00080005: element(0x00080005, "CS", text("ISO_IR 100")),
            0x00080016: element(0x00080016, "UI", _ui(self.sop_class)),
            0x00080018: element(0x00080018, "UI", _ui(self.sop)),
            0x00080020: element(0x00080020, "DA", b"20240102"),
            0x00080030: element(0x00080030, "TM", b"101010"),
            0x00080060: element(0x00080060, "CS", b"CT"),
            0x00081030: element(0x00081030, "LO", text("Hostile input")),
            0x00100010: element(0x00100010, "PN", text("Hostile^Test")),
            0x00100020: element(0x00100020, "LO", text("HOSTILE-1")),
            0x0020000D: element(0x0020000D, "UI", _ui(self.study)),
            0x0020000E: element(0x0020000E, "UI", _ui(self.series)),
            0x00200011: element(0x00200011, "IS", b"1 "),
            0x00200013: element(0x00200013, "IS", b"1 "),
            0x00280010: element(0x00280010, "US", b"\x08\x00"),
            0x00280011: element(0x00280011, "US", b"\x08\x00"),
            0x7FE00010: element(0x7FE00010, "OW", b"\x00" * 128),
        }

    def body(self, changes: Changes = None, cut: int | None = None) -> bytes:
        """The encoded dataset with elements replaced, added (by tag) or removed (None)."""
        parts = self.elements()
        for tag, encoded in (changes or {}).items():
            if encoded is None:
                parts.pop(tag, None)
            else:
                parts[tag] = encoded
        data = b"".join(parts[tag] for tag in sorted(parts))
        return data if cut is None else data[:cut]

    def offset(self, tag: int) -> int:
        """Where the element ``tag`` starts in :meth:`body`."""
        return self.body().index(self.elements()[tag])


@dataclass
class Case:
    """One hostile dataset: built when the corpus is written, not when tests are listed."""

    name: str
    expected: int
    make: Callable[[], bytes]
    inst: Instance
    announced_sop: str = ""
    announced_class: str = ""
    syntax: str = "1.2.840.10008.1.2.1"
    path: Path = Path()

    @property
    def study(self) -> str:
        return self.inst.study

    @property
    def sop(self) -> str:
        return self.announced_sop or self.inst.sop

    def write(self, folder: Path, index: int) -> None:
        self.path = write_part10(
            folder / f"{index:03d}.dcm",
            self.make(),
            self.announced_class or self.inst.sop_class,
            self.sop,
            self.syntax,
        )


def _nested(depth: int, undefined: bool) -> bytes:
    """A sequence (Procedure Code Sequence) nested ``depth`` levels deep."""
    inner = b""
    for _ in range(depth):
        if undefined:
            content = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + inner + b"\xfe\xff\x0d\xe0\0\0\0\0"
            inner = element(
                0x00081032, "SQ", content + b"\xfe\xff\xdd\xe0\0\0\0\0", UNDEFINED_LENGTH
            )
        else:
            inner = element(0x00081032, "SQ", item(inner))
    return inner


def _implicit_10mb(inst: Instance) -> bytes:
    values = {
        0x00080016: _ui(CT),
        0x00080018: _ui(inst.sop),
        0x00081030: b"B" * TEN_MB,  # Study Description (LO)
        0x00100010: b"C" * TEN_MB,  # Patient's Name (PN)
        0x0020000D: _ui(inst.study),
        0x0020000E: _ui(inst.series),
    }
    return b"".join(implicit_element(tag, values[tag]) for tag in sorted(values))


def corpus() -> list[Case]:
    """The hostile datasets and the status each must get."""
    cases: list[Case] = []

    def add(
        name: str, expected: int, changes: Changes = None, cut: int | None = None, **extra: Any
    ) -> Case:
        inst = extra.pop("inst", None) or Instance()
        make = extra.pop("make", None) or (lambda: inst.body(changes, cut))
        case = Case(name, expected, make, inst, **extra)
        cases.append(case)
        return case

    # Identity: missing, malformed, too long, several values, wrong VR, disagreeing.
    for keyword, tag in (
        ("StudyInstanceUID", 0x0020000D),
        ("SeriesInstanceUID", 0x0020000E),
        ("SOPInstanceUID", 0x00080018),
        ("SOPClassUID", 0x00080016),
    ):
        add(f"missing {keyword}", C220, {tag: None})
    for label, bad in (
        ("too long", "1.2." + "3" * 70),
        ("leading zero", "1.2.03.4"),
        ("letters", "1.2.abc"),
        ("empty component", "1..2"),
        ("trailing dot", "1.2."),
        ("blank", "  "),
        ("two values", "1.2.3\\1.2.4"),
    ):
        add(f"SeriesInstanceUID {label}", C220, {0x0020000E: element(0x0020000E, "UI", _ui(bad))})
    add("SOP Instance UID differs from the request", C221, announced_sop=generate_uid())
    add("SOP Class differs from the request", A900, announced_class=MR)
    add("StudyInstanceUID as US", C220, {0x0020000D: element(0x0020000D, "US", b"\x01\x00")})
    add("StudyInstanceUID as SQ", C220, {0x0020000D: element(0x0020000D, "SQ", b"")})
    inst = Instance()
    as_lo = {0x0020000D: element(0x0020000D, "LO", text(inst.study))}
    add("StudyInstanceUID as LO (the text is a UID)", SUCCESS, as_lo, inst=inst)

    # Truncated: before the UIDs they are missing; after them the element the data ends
    # in is discarded (a warning); pixel data is never read, so its truncation is not seen.
    sample = Instance()
    add("truncated before the UIDs", C220, cut=sample.offset(0x00100010) + 12)
    add("truncated in an element header", WARNING, cut=sample.offset(0x00280010) + 5)
    add("truncated in a value", WARNING, cut=sample.offset(0x00280010) + 9)
    add("truncated in the pixel data", SUCCESS, cut=len(sample.body()) - 40)
    past_end = {0x00204000: element(0x00204000, "UT", b"abcd", length=0x7FFFFFF0)}
    add("a length running past the end", WARNING, past_end)

    # Wrong and unknown VRs on descriptive elements: kept as sent, or skipped when unknown.
    add("PatientName as US", SUCCESS, {0x00100010: element(0x00100010, "US", b"\x01\x00")})
    add("StudyDate as FD", SUCCESS, {0x00080020: element(0x00080020, "FD", b"\0" * 8)})
    add("PatientName with VR ZZ", WARNING, {0x00100010: element(0x00100010, "ZZ", b"ab")})

    # Undefined-length garbage.
    garbage = random.Random(6).randbytes(3000)
    swallow = {0x00100010: element(0x00100010, "UT", garbage, UNDEFINED_LENGTH)}
    add("undefined-length UT of garbage before the UIDs", C220, swallow)
    junk_sq = {0x00400275: element(0x00400275, "SQ", garbage, UNDEFINED_LENGTH)}
    add("undefined-length sequence of garbage", C210, junk_sq)
    add("garbage alone", C220, make=lambda: garbage)
    add("an empty dataset", C220, make=lambda: b"")

    # 10 MB strings: left out, with a warning.
    add("10 MB UT", WARNING, {0x00204000: element(0x00204000, "UT", b"A" * TEN_MB)})
    inst = Instance()
    add(
        "10 MB LO and PN (implicit VR)",
        WARNING,
        inst=inst,
        make=lambda: _implicit_10mb(inst),
        syntax=ImplicitVRLittleEndian,
    )

    # Nesting: to the limit is kept, deeper is cut (a warning), absurdly deep with
    # undefined lengths cannot be decoded at all.
    for depth, undefined, expected in (
        (12, False, SUCCESS),
        (13, False, WARNING),
        (5000, False, WARNING),
        (20000, True, C210),
    ):
        kind = "undefined-length" if undefined else "defined-length"
        nested = {0x00081032: _nested(depth, undefined)}
        add(f"{kind} sequences nested {depth} deep", expected, nested)

    # Character sets: unknown or broken ones are decoded as well as can be.
    for label, charset, value in (
        ("an unknown character set", "ISO_IR 999", b"Doe^J\xe9"),
        ("invalid UTF-8", "ISO_IR 192", b"\xff\xfe\xc3("),
        ("broken ISO 2022 escapes", "ISO 2022 IR 87", b"\x1b$B\x80\x1b(Q"),
        ("a character set of backslashes", "\\\\\\", b"Doe^J"),
    ):
        changes: Changes = {
            0x00080005: element(0x00080005, "CS", text(charset)),
            0x00100010: element(0x00100010, "PN", text(value.decode("latin-1"))),
        }
        add(label, SUCCESS, changes)

    # Dates and times that are no dates: stored as sent, left out by the mapping.
    dates = {
        0x00080020: element(0x00080020, "DA", b"20231340"),
        0x00080030: element(0x00080030, "TM", b"256199"),
        0x00100030: element(0x00100030, "DA", b"19991399"),
    }
    add("dates like 20231340", SUCCESS, dates)
    return cases


# --- the system under attack ---------------------------------------------------------------


@dataclass
class System:
    port: int
    scp: Child
    worker: Child
    spool: Path
    output: Path
    data: redis.Redis
    cases: list[Case]
    results: dict[str, int | None] = field(default_factory=dict)
    #: statuses of the honest sender on another association, all along
    honest: list[int | None] = field(default_factory=list)
    stop_honest: threading.Event = field(default_factory=threading.Event)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("hostile")
    own = RedisProcess().start()
    spool = tmp / "spool"
    spool.mkdir()
    port = free_port()
    env = pipeline_env(own.url, tmp / "out", port, SCP2FHIR_SPOOL_DIR=str(spool))
    scp = start_scp(env, tmp / "scp.log", port)
    worker = start_worker(env, tmp / "worker.log")
    data = redis.Redis.from_url(own.url, decode_responses=True)
    honest_study = make_study(tmp / "honest", [("CT", 6)])
    cases = corpus()
    (tmp / "corpus").mkdir()
    for index, case in enumerate(cases):
        case.write(tmp / "corpus", index)
    system = System(port, scp, worker, spool, tmp / "out", data, cases)

    def honest_sender() -> None:
        # The same instances again and again (duplicates count once) while the cases run.
        while not system.stop_honest.is_set():
            system.honest += send_files(port, honest_study.files)

    sender = threading.Thread(target=honest_sender, name="honest-sender")
    sender.start()
    try:
        yield system
    finally:
        system.stop_honest.set()
        sender.join(60)
        scp.stop()
        worker.stop()
        data.close()
        own.stop()


def send_case(system: System, case: Case) -> int | None:
    [status] = send_files(system.port, [case.path])
    system.results[case.name] = status
    return status


@pytest.mark.parametrize("name", [case.name for case in corpus()])
def test_hostile_dataset_gets_its_status(system: System, name: str) -> None:
    case = next(c for c in system.cases if c.name == name)
    status = send_case(system, case)
    assert status is not None, "no response: the association was lost"
    assert f"0x{status:04X}" == f"0x{case.expected:04X}"
    assert system.scp.alive()


def test_scp_survives_and_nothing_accepted_is_lost(system: System) -> None:
    assert system.scp.alive()
    assert echo(system.port)
    system.stop_honest.set()
    wait_for(lambda: system.honest, 30, "the honest sender to have sent")
    assert system.honest and all(s == SUCCESS for s in system.honest), system.honest
    for case in system.cases:  # when run on its own
        if case.name not in system.results:
            send_case(system, case)
    # Every accepted instance is folded and emitted; none is dead-lettered.
    accepted = [c for c in system.cases if system.results[c.name] in (SUCCESS, WARNING)]
    assert accepted

    def emitted(case: Case) -> dict[str, Any] | None:
        path = system.output / "ImagingStudy" / f"{case.study}.json"
        return read_json(path) if path.exists() else None

    for case in accepted:
        resource: dict[str, Any] = wait_for(
            functools.partial(emitted, case), 30, f"the study of {case.name!r}"
        )
        uids = [i["uid"] for s in resource.get("series", []) for i in s["instance"]]
        assert resource["numberOfInstances"] == 1, case.name
        assert uids in ([case.sop], []), case.name  # [] when the UID is no FHIR id
        ImagingStudyR4B.model_validate(resource)
        if case.name == "dates like 20231340":
            assert "started" not in resource
    assert system.data.llen(keys.DEAD_LETTER) == 0
    assert spool_files(system.spool) == [], "spooled datasets left behind"
    # What the worker logs for the accepted hostile instances names tags, never values.
    assert "19991399" not in system.worker.output()


# --- an association that ends in the middle of a dataset ----------------------------------


def _send_half_a_dataset(port: int, abort: bool, spool: Path) -> None:
    """Send a C-STORE request and part of its dataset, wait until the SCP has spooled it
    in ``spool``, then abort the association (or just drop the connection): what a
    sender that crashes mid-transfer leaves."""
    ae = AE(ae_title="HALFSCU")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = generate_uid()
    request.Priority = 2
    # Beyond the rollover: a smaller dataset stays in memory, never in the spool.
    request.DataSet = BytesIO(Instance().body() + b"\0" * (ROLLOVER_BYTES + 200_000))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    assert context.context_id is not None
    fragments = list(message.encode_msg(context.context_id, 16_384))
    socket = assoc.dul.socket
    assert socket is not None
    for primitive in fragments[:-3]:  # the command and most, not all, of the dataset
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        socket.send(pdu.encode())
    wait_for(lambda: spool_files(spool), 10, "the SCP to spool what it got, in SCP2FHIR_SPOOL_DIR")
    if abort:
        assoc.abort()
    else:
        assert socket.socket is not None
        socket.socket.close()
        assoc.kill()


@pytest.mark.parametrize("abort", [True, False], ids=["aborted", "dropped"])
def test_unfinished_dataset_leaves_no_spool_file(
    redis_url: str, tmp_path: Path, abort: bool
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    env = pipeline_env(redis_url, tmp_path / "out", port, SCP2FHIR_SPOOL_DIR=str(spool))
    scp = start_scp(env, tmp_path / "scp.log", port)
    try:
        _send_half_a_dataset(port, abort, spool)
        wait_for(lambda: echo(port), 10, "the SCP to answer again")
        assert scp.alive()
        wait_for(lambda: not spool_files(spool), 5, "the spool folder to be empty")
    finally:
        scp.stop()


# --- no patient data in any log ------------------------------------------------------------

#: Distinctive values: none can occur in a log by chance.
PATIENT_NAME = "Zyxwvutsonian^Quorabelle^Marigoldina"
PATIENT_ID = "PID-QX-73914-ZZ"
BIRTH_DATE = "18870523"


def _phi_variants() -> list[str]:
    family, given, middle = PATIENT_NAME.split("^")
    return [family, given, middle, PATIENT_ID, BIRTH_DATE, "1887-05-23", family.upper()]


def test_no_patient_data_in_logs_at_debug(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = pipeline_env(
        redis_url, tmp_path / "out", port, SCP2FHIR_LOG_LEVEL="DEBUG", PYTHONWARNINGS="always"
    )
    scp = start_scp(env, tmp_path / "scp.log", port)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        study = make_study(tmp_path / "study", [("CT", 3), ("MR", 2)], patient_id=PATIENT_ID)
        files = list(study.files)
        for path in files:
            ds = pydicom.dcmread(path)
            ds.PatientName = PATIENT_NAME
            ds.PatientBirthDate = BIRTH_DATE
            ds.save_as(path)
        # The same patient through pydicom's path (a character set the fast path leaves,
        # values pydicom's validation complains about), refused, and with a warning.
        odd = pydicom.dcmread(files[0])
        odd.SOPInstanceUID = odd.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        odd.SpecificCharacterSet = "ISO_IR 144"
        odd.PatientName = PATIENT_NAME + "^" + "X" * 70
        odd.PatientBirthDate = BIRTH_DATE + "99"
        odd.PatientID = PATIENT_ID + "\\" + PATIENT_ID
        odd.save_as(tmp_path / "odd.dcm")
        refused = pydicom.dcmread(files[1])
        del refused.StudyInstanceUID
        refused.SOPInstanceUID = refused.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        refused.save_as(tmp_path / "refused.dcm")
        warned = Instance(study=study.study_uid)
        changes: dict[int, bytes | None] = {
            0x00100010: element(0x00100010, "ZZ", text(PATIENT_NAME)),
            0x00100020: element(0x00100020, "LO", text(PATIENT_ID)),
            0x00100030: element(0x00100030, "DA", text(BIRTH_DATE + "1")),
        }
        write_part10(tmp_path / "warned.dcm", warned.body(changes), CT, warned.sop)
        sent = [*files, tmp_path / "odd.dcm", tmp_path / "refused.dcm", tmp_path / "warned.dcm"]
        result = send_files(port, sent)
        assert result == [SUCCESS] * 6 + [C220, WARNING]
        path = tmp_path / "out" / "ImagingStudy" / f"{study.study_uid}.json"
        wait_for(path.exists, 30, "the study to be emitted")
        assert read_json(path)["subject"]["identifier"]["value"] == PATIENT_ID  # it was there
    finally:
        scp.stop()
        worker.stop()
    logs = {"scp": scp.output(), "worker": worker.output()}
    assert "DEBUG" in logs["scp"] and "DEBUG" in logs["worker"], "not logging at DEBUG"
    for name, log in logs.items():
        found = [value for value in _phi_variants() if value.lower() in log.lower()]
        assert not found, f"patient data in the {name} log: {found}"
