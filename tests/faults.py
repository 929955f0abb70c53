"""Helpers for the fault, hostile-input and fuzz tests.

* Real processes: the SCP (``python -m scp.cli scp``) and workers run as child processes
  in their own session, so a test can ``kill -9`` one with everything it forked (RQ's
  work horse and scheduler), as a crash of its host would.
* Fault injection: ``python -m tests.faults worker`` is ``scp2fhir worker`` with faults
  from ``SCP2FHIR_TEST_FAULTS`` (JSON) installed first: shorter recovery timers (a test
  cannot wait the minute a production reclaim waits) and a pause at a chosen step (a fold,
  the closing of an emitted study) where the process announces itself in a marker file
  and waits to be killed. The code under test is otherwise the shipped code.
* A pynetdicom sender that records the status of every instance, and sends files byte
  for byte as they are on disk, so a test can send what no encoder would write.
* Raw DICOM: Part 10 files whose meta (the C-STORE request) announces one instance and
  whose dataset bytes are anything at all.
* Studies generated from byte templates (thousands of files in a fraction of a second).
* Memory: peak resident set size (``VmHWM``) of processes and of what they fork.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import io
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset

from tests.support import SOURCES, GeneratedStudy, free_port, sample_file, wait_for

ROOT = Path(__file__).resolve().parent.parent
FAULTS_ENV = "SCP2FHIR_TEST_FAULTS"

# --- raw DICOM ---------------------------------------------------------------------------

_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
UNDEFINED_LENGTH = 0xFFFFFFFF
CT = "1.2.840.10008.5.1.4.1.1.2"


def element(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` overrides the encoded length
    (to lie about it)."""
    size = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("latin-1")
    if vr in _LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", size) + value
    return head + struct.pack("<H", size) + value


def implicit_element(tag: int, value: bytes, length: int | None = None) -> bytes:
    """One implicit VR little endian element."""
    size = len(value) if length is None else length
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, size) + value


def item(body: bytes) -> bytes:
    """A sequence item of defined length."""
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def text(value: str, pad: bytes = b" ") -> bytes:
    """A text value padded to even length, as DICOM wants."""
    data = value.encode("latin-1")
    return data + pad if len(data) % 2 else data


def encode_body(ds: Dataset, implicit: bool = False) -> bytes:
    """``ds`` encoded without file meta (explicit or implicit VR little endian)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def write_part10(
    path: Path,
    body: bytes,
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """A Part 10 file: meta announcing ``sop_class``/``sop_instance`` in ``transfer_syntax``
    (what :func:`send_files` puts in the C-STORE request), then ``body`` as it is."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_file_meta_info(fp, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + fp.getvalue() + body)
    return path


def identity_elements(study: str, series: str, sop: str, sop_class: str = CT) -> dict[int, bytes]:
    """The elements that identify an instance, explicit VR little endian, by tag."""
    return {
        0x00080016: element(0x00080016, "UI", text(sop_class, b"\0")),
        0x00080018: element(0x00080018, "UI", text(sop, b"\0")),
        0x00080060: element(0x00080060, "CS", b"OT"),
        0x0020000D: element(0x0020000D, "UI", text(study, b"\0")),
        0x0020000E: element(0x0020000E, "UI", text(series, b"\0")),
    }


def _public_text() -> bytes:
    """Public prose (a licence text of the distribution; else this module's source)."""
    for candidate in (Path("/usr/share/common-licenses/GPL-3"), Path(__file__)):
        with contextlib.suppress(OSError):
            return candidate.read_bytes()
    return b"lorem ipsum " * 1000


def big_text_dataset(study: str, series: str, sop: str, total: int, item_text: int = 1000) -> bytes:
    """An instance whose Content Sequence holds about ``total`` bytes of public text in
    small items (Value Type TEXT, Text Value of ``item_text`` bytes each): every element
    is small, only the whole is large."""
    prose = _public_text()
    items = []
    size = 0
    offset = 0
    while size < total:
        chunk = prose[offset : offset + item_text]
        offset = (offset + item_text) % max(1, len(prose) - item_text)
        body = element(0x0040A040, "CS", b"TEXT") + element(
            0x0040A160, "UT", text(chunk.decode("latin-1"))
        )
        items.append(item(body))
        size += len(items[-1])
    parts = identity_elements(study, series, sop)
    parts[0x0040A730] = element(0x0040A730, "SQ", b"".join(items))
    return b"".join(parts[tag] for tag in sorted(parts))


def deflate_bomb(path: Path, inflated: int, where: str = "pixels") -> Path:
    """A Deflated Explicit VR Little Endian Part 10 file inflating to about ``inflated``
    bytes of zeros: the Pixel Data (``where="pixels"``) or a private OB before it
    (``"private"``). Written compressed as it is generated (about 1 MB per GB); kept if
    ``path`` exists."""
    if path.exists():
        return path
    sop = pydicom.uid.generate_uid()
    parts = identity_elements(pydicom.uid.generate_uid(), pydicom.uid.generate_uid(), sop)
    size = inflated - inflated % 2
    if where == "private":
        parts[0x00090010] = element(0x00090010, "LO", text("BOMB"))
        head = b"".join(parts[tag] for tag in sorted(parts))
        head += element(0x00091010, "OB", b"", length=size)
        tail = element(0x7FE00010, "OW", b"\0" * 64)
    else:
        head = b"".join(parts[tag] for tag in sorted(parts))
        head += element(0x7FE00010, "OW", b"", length=size)
        tail = b""
    write_part10(path, b"", CT, sop, pydicom.uid.DeflatedExplicitVRLittleEndian)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = b"\0" * (16 * 1024 * 1024)
    with path.open("ab") as handle:
        handle.write(deflater.compress(head))
        left = size
        while left > 0:
            chunk = zeros if left >= len(zeros) else zeros[:left]
            handle.write(deflater.compress(chunk))
            left -= len(chunk)
        handle.write(deflater.compress(tail))
        handle.write(deflater.flush())
    return path


# --- sending -------------------------------------------------------------------------------


def _context_of(path: Path) -> tuple[str, str]:
    meta, _ = split_dataset(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def send_files(
    port: int,
    files: Sequence[Path],
    ae_title: str = "SCP2FHIR",
    after_each: Callable[[int, int | None], None] | None = None,
    timeout: float = 30,
) -> list[int | None]:
    """Send ``files`` over one association with pynetdicom; the status of each (``None``
    when no response came within ``timeout`` seconds: the association was lost, or never
    established). ``after_each(index, status)`` runs after each response (a test's
    trigger)."""
    contexts = sorted({_context_of(path) for path in files})
    ae = AE(ae_title="FAULTSCU")
    ae.acse_timeout = 10
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    statuses: list[int | None] = [None] * len(files)
    # Sent as they are on disk (pynetdicom would decode and re-encode them otherwise). Set
    # for the whole process, not around this call: senders run in parallel threads. No
    # other test sends files by path.
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return statuses
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        # pynetdicom leaves Nagle's algorithm on: each C-STORE would wait for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for index, path in enumerate(files):
            if not assoc.is_established:
                break
            try:
                reply = assoc.send_c_store(path)
            except (RuntimeError, OSError):  # the association ended under us
                break
            statuses[index] = int(reply.Status) if "Status" in reply else None
            if after_each is not None:
                after_each(index, statuses[index])
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
    return statuses


# --- the upper layer by hand: PDUs over a plain socket ----------------------------------

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
#: PDU types (PS3.8 9.3.1).
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    """One PDU; ``length`` overrides the announced length (to lie about it)."""
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


def associate_rq(
    called: str = "SCP2FHIR",
    calling: str = "RAWSCU",
    contexts: Sequence[tuple[str, str]] = ((VERIFICATION, IMPLICIT_LE),),
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing ``contexts`` (abstract syntax, transfer syntax),
    encoded by pynetdicom."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
    )
    from pynetdicom.presentation import build_context

    request = A_ASSOCIATE()
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    request.calling_ae_title = calling
    request.called_ae_title = called
    proposed = []
    for index, (abstract, syntax) in enumerate(contexts):
        context = build_context(abstract, [syntax])
        context.context_id = 2 * index + 1
        proposed.append(context)
    request.presentation_context_definition_list = proposed
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYDICOM_IMPLEMENTATION_UID
    request.user_information = [length, implementation]
    encoded = A_ASSOCIATE_RQ()
    encoded.from_primitive(request)
    return bytes(encoded.encode())


def p_data(context_id: int, fragment: bytes, command: bool, last: bool) -> bytes:
    """A P-DATA-TF PDU carrying one fragment of a DIMSE message (PS3.8 E.2)."""
    control = (1 if command else 0) | (2 if last else 0)
    item = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return pdu(P_DATA, item)


def store_pdus(
    context_id: int, sop_class: str, sop_instance: str, dataset: bytes, max_pdu: int
) -> list[bytes]:
    """The P-DATA-TF PDUs of one C-STORE request (command, then ``dataset`` as given),
    fragmented for a peer that receives at most ``max_pdu`` bytes, as pynetdicom does."""
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 2
    request.DataSet = BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    encoded = []
    for primitive in message.encode_msg(context_id, max_pdu):
        tf = P_DATA_TF()
        tf.from_primitive(primitive)
        encoded.append(bytes(tf.encode()))
    return encoded


@dataclass
class RawPeer:
    """A DICOM peer at the byte level: it sends what it is told, however wrong."""

    sock: socket.socket

    @classmethod
    def connect(cls, port: int, timeout: float = 10) -> RawPeer:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def send(self, data: bytes) -> bool:
        """Send ``data``; False if the SCP has closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def read_pdu(self, timeout: float = 10) -> tuple[int, bytes] | None:
        """The next PDU the SCP sends (type, body); None when it closes the connection."""
        self.sock.settimeout(timeout)
        try:
            head = self._exactly(6)
            if head is None:
                return None
            pdu_type, _, length = struct.unpack(">BBL", head)
            body = self._exactly(length)
        except ConnectionResetError:
            return None
        return None if body is None else (pdu_type, body)

    def _exactly(self, size: int) -> bytes | None:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self.sock.recv(min(size - len(chunks), 65536))
            if not chunk:
                return None
            chunks += chunk
        return bytes(chunks)

    def associate(
        self, contexts: Sequence[tuple[str, str]] = ((VERIFICATION, IMPLICIT_LE),)
    ) -> int:
        """Negotiate an association; the largest PDU the SCP accepts (its A-ASSOCIATE-AC)."""
        from pynetdicom.pdu import A_ASSOCIATE_AC

        self.send(associate_rq(contexts=contexts))
        answer = self.read_pdu()
        assert answer is not None and answer[0] == ASSOCIATE_AC, f"not accepted: {answer!r}"
        accepted = A_ASSOCIATE_AC()
        accepted.decode(pdu(ASSOCIATE_AC, answer[1]))
        assert accepted.user_information is not None
        maximum = accepted.user_information.maximum_length
        assert maximum is not None
        return int(maximum)

    def read_status(self, timeout: float = 30) -> int | None:
        """The Status of the DIMSE response the SCP sends next (None: it closed)."""
        from pydicom.filereader import read_dataset

        command = b""
        while True:
            answer = self.read_pdu(timeout)
            if answer is None or answer[0] != P_DATA:
                return None
            body = answer[1]
            while body:  # one or more PDV items: length, context, control, fragment
                length = struct.unpack(">L", body[:4])[0]
                control, fragment = body[5], body[6 : 4 + length]
                body = body[4 + length :]
                if control & 1:
                    command += fragment
                    if control & 2:
                        ds = read_dataset(io.BytesIO(command), True, True)
                        return int(ds.Status)

    def closed_within(self, timeout: float) -> float | None:
        """Seconds until the SCP closed the connection (whatever it sent first is read
        and dropped), or None if it is still open after ``timeout`` seconds."""
        began = time.monotonic()
        deadline = began + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return time.monotonic() - began
            except TimeoutError:
                return None
            except OSError:  # reset
                return time.monotonic() - began
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --- studies from byte templates ---------------------------------------------------------

#: pydicom's UID root; our UIDs are ROOT.<kind><12-digit run token><7-digit number>, all
#: the same length, so a template's placeholders can be replaced byte for byte.
_UID_ROOT = "1.2.826.0.1.3680043.8.498."
_STUDY, _SERIES, _SOP = 1, 2, 3


def fixed_uid(kind: int, token: int, number: int) -> str:
    return f"{_UID_ROOT}{kind}{token:012d}{number:07d}"


def _is_element(tag: int, digits: str) -> bytes:
    return element(tag, "IS", digits.encode())


_INSTANCE_NUMBER = 0x00200013
_SERIES_NUMBER = 0x00200011
_TEMPLATES: dict[str, bytes] = {}


def _template(modality: str) -> bytes:
    """A real image of ``modality`` with placeholder UIDs and numbers, encoded."""
    cached = _TEMPLATES.get(modality)
    if cached is None:
        ds = pydicom.dcmread(sample_file(SOURCES[modality]))
        ds.StudyInstanceUID = fixed_uid(_STUDY, 0, 0)
        ds.SeriesInstanceUID = fixed_uid(_SERIES, 0, 0)
        ds.SOPInstanceUID = fixed_uid(_SOP, 0, 0)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = "9999"
        ds.SeriesNumber = "9999"
        ds.PatientID = "TEST-PID-LOAD"
        fp = DicomBytesIO()
        ds.save_as(fp, enforce_file_format=True)
        cached = _TEMPLATES[modality] = fp.getvalue()
    return cached


def generate_study(
    folder: Path, series_spec: Sequence[tuple[str, int]], token: int | None = None
) -> GeneratedStudy:
    """Like :func:`tests.support.make_study`, from byte templates: ~50 times faster."""
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.randbelow(10**12) if token is None else token
    study_uid = fixed_uid(_STUDY, token, 1)
    files: list[Path] = []
    series: dict[str, list[str]] = {}
    sop_number = 0
    for series_number, (modality, count) in enumerate(series_spec, start=1):
        template = _template(modality)
        series_uid = fixed_uid(_SERIES, token, series_number)
        base = (
            template.replace(fixed_uid(_STUDY, 0, 0).encode(), study_uid.encode())
            .replace(fixed_uid(_SERIES, 0, 0).encode(), series_uid.encode())
            .replace(
                _is_element(_SERIES_NUMBER, "9999"),
                _is_element(_SERIES_NUMBER, f"{series_number:04d}"),
            )
        )
        series[series_uid] = []
        for index in range(1, count + 1):
            sop_number += 1
            sop_uid = fixed_uid(_SOP, token, sop_number)
            data = base.replace(fixed_uid(_SOP, 0, 0).encode(), sop_uid.encode()).replace(
                _is_element(_INSTANCE_NUMBER, "9999"),
                _is_element(_INSTANCE_NUMBER, f"{index:04d}"),
            )
            path = folder / f"{sop_uid}.dcm"
            path.write_bytes(data)
            files.append(path)
            series[series_uid].append(sop_uid)
    return GeneratedStudy(study_uid, files, series)


# --- processes -----------------------------------------------------------------------------


@dataclass
class Child:
    """A child process in a session of its own, its output in ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL to the process and everything it forked, as when its host dies. (RQ's
        work horse runs in a session of its own: the process group is not enough.)"""
        family = children_of(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 20) -> None:
        family = children_of(self.process.pid)
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        # Whatever it forked and left behind (a paused work horse, say) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def spawn(name: str, command: Sequence[str], env: Mapping[str, str], log: Path) -> Child:
    handle = log.open("ab")
    try:
        process = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        handle.close()
    return Child(name, process, log)


def start_scp(env: Mapping[str, str], log: Path, port: int) -> Child:
    """``scp2fhir scp`` as a child process; returns once it answers C-ECHO."""
    from tests.conftest import echo

    child = spawn("scp", [sys.executable, "-m", "scp.cli", "scp"], env, log)

    def ready() -> bool:
        if not child.alive():
            raise AssertionError(f"the SCP exited: {child.output()[-2000:]}")
        return echo(port)

    wait_for(ready, timeout=20, what="the SCP to answer C-ECHO", step=0.1)
    return child


@contextlib.contextmanager
def scp_process(redis_url: str, folder: Path, **env: str) -> Iterator[tuple[int, Child]]:
    """``scp2fhir scp`` on a free port with the test settings and ``env`` (its output in
    ``folder``): (port, process), stopped afterwards."""
    from tests.conftest import pipeline_env

    port = free_port()
    scp = start_scp(pipeline_env(redis_url, folder / "out", port, **env), folder / "scp.log", port)
    try:
        yield port, scp
    finally:
        scp.stop()


def start_worker(
    env: Mapping[str, str], log: Path, faults: Mapping[str, Any] | None = None
) -> Child:
    """``scp2fhir worker`` (through this module when ``faults`` are given)."""
    if faults is None:
        return spawn("worker", [sys.executable, "-m", "scp.cli", "worker"], env, log)
    faulty = {**env, FAULTS_ENV: json.dumps(faults)}
    return spawn("worker", [sys.executable, "-m", "tests.faults", "worker"], faulty, log)


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (RQ's work horses and scheduler for a worker)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            listed = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        kids = [int(x) for x in listed]
        found += kids
        pending += kids
    return found


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process, in KiB (0 if it is gone)."""
    return status_kib(pid, "VmHWM")


def status_kib(pid: int, field: str) -> int:
    """A size from ``/proc/PID/status`` (``VmRSS``, ``VmHWM``) in KiB (0 if it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


@dataclass
class MemoryWatch:
    """Samples the peak RSS of named processes and of everything they fork.

    A worker forks a short-lived work horse per job: its peak is only visible while it
    lives, hence sampling (every ``interval`` seconds) rather than one reading at the end.
    """

    roots: dict[str, int]
    interval: float = 0.1
    peaks: dict[str, int] = field(default_factory=dict)
    child_peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        for name, pid in self.roots.items():
            self.peaks[name] = max(self.peaks.get(name, 0), peak_rss_kib(pid))
            for kid in children_of(pid):
                self.child_peaks[name] = max(self.child_peaks.get(name, 0), peak_rss_kib(kid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemoryWatch:
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def emitted_lines(logs: Sequence[str], study_uid: str) -> int:
    """How many times a worker closed ``study_uid`` after emitting it (its INFO line)."""
    needle = f"study={study_uid} emitted "
    return sum(log.count(needle) for log in logs)


def spool_files(folder: Path) -> list[Path]:
    """Datasets spooled under ``folder`` (an SCP's ``SCP2FHIR_SPOOL_DIR``): the files
    in its process folders, not the folders' lock files."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".lock")


# --- fault injection in a worker process -------------------------------------------------


def _pause(marker: str) -> None:
    """Announce this process in ``marker`` and wait to be killed."""
    tmp = f"{marker}.{os.getpid()}"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, marker)
    while True:
        time.sleep(60)


def _shift_wall_clock(offset: float) -> None:
    """Move this process's wall clock (time.time, datetime.now) by ``offset`` seconds, as
    on a host whose clock is off; the monotonic clock, which measures durations, stays.
    (libfaketime would be the outside way, but it breaks Python's sleeps and timed waits:
    EINVAL from clock_nanosleep, or waits that never end.) Installed before RQ and
    scp2fhir are imported, so both see the shifted clock, as on that host."""
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + offset
    time.time_ns = lambda: real_time_ns() + int(offset * 1e9)
    shift = datetime.timedelta(seconds=offset)
    base = datetime.datetime

    class Shifted(base):  # type: ignore[valid-type,misc]
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Any:
            return base.now(tz) + shift

        @classmethod
        def utcnow(cls) -> Any:
            return base.now(datetime.UTC).replace(tzinfo=None) + shift

    datetime.datetime = Shifted  # type: ignore[misc]


def install_faults(spec: Mapping[str, Any]) -> None:
    """Apply ``spec``: ``timers`` {"module.NAME": value}; ``pause`` {"at": "fold" | "close",
    "marker": path, "after_instances": n (fold only)}."""
    for dotted, value in spec.get("timers", {}).items():
        module, name = dotted.rsplit(".", 1)
        setattr(importlib.import_module(module), name, value)
    if "clock_offset_seconds" in spec:
        _shift_wall_clock(float(spec["clock_offset_seconds"]))
    pause = spec.get("pause")
    if not pause:
        return
    from scp import keys
    from workers.aggregates import AggregateStore

    marker = str(pause["marker"])
    if pause["at"] == "fold":
        original_fold = AggregateStore.fold
        threshold = int(pause.get("after_instances", 0))

        def fold(self: AggregateStore, folded: Sequence[tuple[str, Any]], **kwargs: Any) -> int:
            # Counted in Redis: each drain job runs in a fresh work horse.
            if folded and not Path(marker).exists():
                uid = folded[0][1].study_uid
                if self._redis.hlen(keys.study_instances(uid)) >= threshold:
                    _pause(marker)
            return original_fold(self, folded, **kwargs)

        AggregateStore.fold = fold  # type: ignore[method-assign]
    elif pause["at"] == "close":
        original_close = AggregateStore.close

        def close(self: AggregateStore, *args: Any, **kwargs: Any) -> bool:
            # The resource is written (and delivered); the study is not closed yet.
            if not Path(marker).exists():
                _pause(marker)
            return original_close(self, *args, **kwargs)

        AggregateStore.close = close  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown pause point {pause['at']!r}")


def main(argv: Sequence[str]) -> int:
    install_faults(json.loads(os.environ.get(FAULTS_ENV, "{}")))
    from scp.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
