"""The C-STORE fast path (scp.fastpath) against pynetdicom's own path: same bytes in,
same everything out.

Each case is a byte-level peer (tests.faults.RawPeer) sending valid and hostile PDU
streams to the real SCP with a real Redis, once with the fast path and once without;
what the peer received (statuses, release, abort, close), what Redis holds (the inbox
headers) and the SCP's log lines must be the same. The plain cases also check that the
fast path did serve them, so the comparison is not between two runs of one path.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import redis
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from scp import fastpath, keys
from scp.store_command import encode_file_meta
from tests.conftest import ScpThread
from tests.faults import (
    ABORT,
    CT,
    IMPLICIT_LE,
    P_DATA,
    RELEASE_RQ,
    VERIFICATION,
    RawPeer,
    encode_body,
    p_data,
    pdu,
    store_pdus,
)
from tests.support import RedisProcess, free_port, sample_file, wait_for

EXPLICIT_LE = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
MR = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class Run:
    """What one case produced on one path."""

    received: list[str]
    headers: list[dict[str, Any]]
    logs: list[str]
    served_fast: int


class Server:
    def __init__(self, redis_url: str, spool: str) -> None:
        self.port = free_port()
        env = {
            "SCP2FHIR_REDIS_URL": redis_url,
            "SCP2FHIR_PORT": str(self.port),
            "SCP2FHIR_SPOOL": spool,
            "SCP2FHIR_MAX_PDU": "16384",
        }
        self.thread = ScpThread(env).start(self.port)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["file", "memory"])
def server(request: pytest.FixtureRequest, redis_server: RedisProcess) -> Iterator[Server]:
    running = Server(redis_server.url, request.param)
    yield running
    running.thread.stop()


# --- the corpus -----------------------------------------------------------------------

Peer = Callable[[RawPeer, "Study"], None]


class Study:
    """Fresh UIDs per case, the same for both paths."""

    def __init__(self) -> None:
        root = f"1.2.826.0.1.3680043.10.{secrets.randbelow(10**12)}"
        self.study = f"{root}.1"
        self.series = f"{root}.2"
        self.spare = f"{root}.3"  # a SOP Instance UID no dataset has
        self.count = 0

    def dataset(self, implicit: bool = False, sop: str | None = None) -> tuple[str, bytes]:
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        self.count += 1
        ds.StudyInstanceUID = self.study
        ds.SeriesInstanceUID = self.series
        ds.SOPInstanceUID = sop or f"{self.series}.{self.count}"
        return ds.SOPInstanceUID, encode_body(ds, implicit)


def _body(name: str) -> tuple[str, str, bytes]:
    """(SOP class, SOP instance, dataset bytes as stored) of a sample file."""
    path = Path(sample_file(name))
    ds = pydicom.dcmread(path)
    raw = path.read_bytes()
    start = 132 + 12 + struct.unpack("<L", raw[140:144])[0]
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), raw[start:]


def _echo(context: int) -> bytes:
    """A C-ECHO-RQ's one P-DATA-TF, encoded by pynetdicom."""
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO
    from pynetdicom.pdu import P_DATA_TF

    request = C_ECHO()
    request.MessageID = 7
    request.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    (primitive,) = message.encode_msg(context, 1 << 20)
    return bytes(P_DATA_TF(primitive).encode())


def _pdvs(*items: tuple[int, int, bytes]) -> bytes:
    """One P-DATA-TF of several PDVs (context, control, fragment)."""
    body = b"".join(
        struct.pack(">LBB", len(fragment) + 2, context, control) + fragment
        for context, control, fragment in items
    )
    return pdu(P_DATA, body)


def _command_fragment(pdus: list[bytes]) -> bytes:
    """The command set bytes of store_pdus' first PDU (one PDV: length, id, control)."""
    return pdus[0][12:]


def plain(peer: RawPeer, study: Study) -> None:
    peer.associate([(CT, EXPLICIT_LE)])
    for _ in range(3):
        sop, data = study.dataset()
        for part in store_pdus(1, CT, sop, data, 16384):
            peer.send(part)


def odd_max_pdu(peer: RawPeer, study: Study) -> None:
    peer.associate([(CT, EXPLICIT_LE)])
    for size in (1001, 4097, 777):
        sop, data = study.dataset()
        for part in store_pdus(1, CT, sop, data, size):
            peer.send(part)


def command_split(peer: RawPeer, study: Study) -> None:
    """The command in three fragments over three PDUs, the dataset's first fragment in
    the PDU of the command's last, several dataset PDVs in one PDU, and a PDV after
    the last fragment (pynetdicom ignores it)."""
    peer.associate([(CT, EXPLICIT_LE)])
    sop, data = study.dataset()
    command = _command_fragment(store_pdus(1, CT, sop, b"", 1 << 20))
    peer.send(p_data(1, command[:10], True, False))
    peer.send(p_data(1, command[10:30], True, False))
    cut = [len(data) * n // 6 for n in range(7)]
    peer.send(_pdvs((1, 0x03, command[30:]), (1, 0x00, data[: cut[1]])))
    for n in range(1, 4):
        peer.send(_pdvs((1, 0x00, data[cut[n] : cut[n + 1]])))
    peer.send(
        _pdvs(
            (1, 0x00, data[cut[4] : cut[5]]),
            (1, 0x02, data[cut[5] :]),
            (1, 0x00, b"ignored"),
        )
    )


def several_contexts(peer: RawPeer, study: Study) -> None:
    peer.associate([(VERIFICATION, IMPLICIT_LE), (CT, IMPLICIT_LE), (CT, EXPLICIT_LE)])
    sop, data = study.dataset(implicit=True)
    for part in store_pdus(3, CT, sop, data, 16384):
        peer.send(part)
    sop, data = study.dataset()
    for part in store_pdus(5, CT, sop, data, 16384):
        peer.send(part)
    # A C-ECHO (not fast-pathed) between two stores.
    peer.send(_echo(1))
    sop, data = study.dataset()
    for part in store_pdus(5, CT, sop, data, 16384):
        peer.send(part)


def abort_mid_dataset(peer: RawPeer, study: Study) -> None:
    peer.associate([(CT, EXPLICIT_LE)])
    sop, data = study.dataset()
    parts = store_pdus(1, CT, sop, data, 4096)
    for part in parts[:3]:
        peer.send(part)
    peer.send(pdu(ABORT, b"\0\0\0\0"))


def release_mid_dataset(peer: RawPeer, study: Study) -> None:
    peer.associate([(CT, EXPLICIT_LE)])
    sop, data = study.dataset()
    for part in store_pdus(1, CT, sop, data, 4096)[:3]:
        peer.send(part)


def deflated(peer: RawPeer, study: Study) -> None:
    sop_class, sop, data = _body("image_dfl.dcm")
    peer.associate([(sop_class, DEFLATED)])
    for part in store_pdus(1, sop_class, sop, data, 16384):
        peer.send(part)
    # And one whose deflated stream is cut short.
    for part in store_pdus(1, sop_class, sop, zlib.compress(b"x" * 100)[:20], 16384):
        peer.send(part)


def big_endian(peer: RawPeer, study: Study) -> None:
    sop_class, sop, data = _body("MR_small_bigendian.dcm")
    peer.associate([(sop_class, BIG_ENDIAN)])
    for part in store_pdus(1, sop_class, sop, data, 16384):
        peer.send(part)


def wrong_context(peer: RawPeer, study: Study) -> None:
    """The command's PDV names a context that was never proposed."""
    peer.associate([(CT, EXPLICIT_LE)])
    sop, data = study.dataset()
    for part in store_pdus(7, CT, sop, data, 16384):
        peer.send(part)


def dataset_on_other_context(peer: RawPeer, study: Study) -> None:
    """Command on context 1, its dataset PDVs on context 3 (pynetdicom does not check)."""
    peer.associate([(CT, EXPLICIT_LE), (CT, IMPLICIT_LE)])
    sop, data = study.dataset()
    parts = store_pdus(1, CT, sop, data, 16384)
    peer.send(parts[0])
    for part in parts[1:]:
        peer.send(part[:10] + b"\x03" + part[11:])


def oversize_pdu(peer: RawPeer, study: Study) -> None:
    peer.associate([(CT, EXPLICIT_LE)])
    sop, data = study.dataset()
    parts = store_pdus(1, CT, sop, data, 4096)
    peer.send(parts[0])
    peer.send(parts[1])
    peer.send(pdu(P_DATA, b"\0" * 100, length=1 << 24))


def second_request_inside_dataset(peer: RawPeer, study: Study) -> None:
    peer.associate([(CT, EXPLICIT_LE)])
    first, data = study.dataset()
    parts = store_pdus(1, CT, first, data, 4096)
    for part in parts[:2]:
        peer.send(part)
    second, data2 = study.dataset()
    for part in store_pdus(1, CT, second, data2, 4096):
        peer.send(part)


def truncated_pdv(peer: RawPeer, study: Study) -> None:
    """A PDV whose length runs past its PDU, in the middle of a dataset."""
    peer.associate([(CT, EXPLICIT_LE)])
    sop, data = study.dataset()
    parts = store_pdus(1, CT, sop, data, 4096)
    peer.send(parts[0])
    peer.send(pdu(P_DATA, struct.pack(">LBB", 5000, 1, 0) + b"x" * 100))


def dataset_before_command(peer: RawPeer, study: Study) -> None:
    peer.associate([(CT, EXPLICIT_LE)])
    sop, data = study.dataset()
    peer.send(p_data(1, data[:100], False, False))
    for part in store_pdus(1, CT, sop, data, 16384):
        peer.send(part)


def invalid_uid_in_command(peer: RawPeer, study: Study) -> None:
    peer.associate([(CT, EXPLICIT_LE)])
    _, data = study.dataset(sop="1.2.03.4")
    command = _command_fragment(store_pdus(1, CT, "1.2.3.4", b"", 1 << 20))
    command = command.replace(b"1.2.3.4\0", b"1.2.03.4")
    peer.send(p_data(1, command, True, True))
    peer.send(p_data(1, data, False, True))


def uid_mismatch(peer: RawPeer, study: Study) -> None:
    peer.associate([(CT, EXPLICIT_LE)])
    _, data = study.dataset()
    for part in store_pdus(1, CT, study.spare, data, 16384):
        peer.send(part)


def garbage_dataset(peer: RawPeer, study: Study) -> None:
    peer.associate([(CT, EXPLICIT_LE)])
    for part in store_pdus(1, CT, study.spare, b"\x08\x00\x18\x00UI\xff\xff", 16384):
        peer.send(part)


def empty_p_data(peer: RawPeer, study: Study) -> None:
    """A P-DATA-TF without PDVs before a store."""
    peer.associate([(CT, EXPLICIT_LE)])
    peer.send(pdu(P_DATA, b""))
    sop, data = study.dataset()
    for part in store_pdus(1, CT, sop, data, 16384):
        peer.send(part)


CASES: dict[str, Peer] = {
    "plain": plain,
    "odd_max_pdu": odd_max_pdu,
    "command_split": command_split,
    "several_contexts": several_contexts,
    "abort_mid_dataset": abort_mid_dataset,
    "release_mid_dataset": release_mid_dataset,
    "deflated": deflated,
    "big_endian": big_endian,
    "wrong_context": wrong_context,
    "dataset_on_other_context": dataset_on_other_context,
    "oversize_pdu": oversize_pdu,
    "second_request_inside_dataset": second_request_inside_dataset,
    "truncated_pdv": truncated_pdv,
    "dataset_before_command": dataset_before_command,
    "invalid_uid_in_command": invalid_uid_in_command,
    "uid_mismatch": uid_mismatch,
    "garbage_dataset": garbage_dataset,
    "empty_p_data": empty_p_data,
}
#: Cases the fast path must serve (at least one message) when it is on.
FAST = {"plain", "odd_max_pdu", "command_split", "several_contexts", "deflated", "big_endian"}


# --- running a case -------------------------------------------------------------------


def _observe(peer: RawPeer) -> list[str]:
    """Everything the SCP sends until it closes: what it answers until it has been
    quiet for a while, then after a release request. (A release sent before the last
    answer arrived races with the request in pynetdicom's two threads.)"""
    seen: list[str] = []
    released = False
    while True:
        try:
            answer = peer.read_pdu(timeout=20 if released else 0.5)
        except TimeoutError:
            peer.send(pdu(RELEASE_RQ, b"\0\0\0\0"))
            released = True
            continue
        if answer is None:
            return seen
        kind, body = answer
        if kind != P_DATA:
            seen.append(f"pdu {kind} {body.hex()}")
            continue
        while body:
            length, _, control = struct.unpack(">LBB", body[:6])
            fragment, body = body[6 : 4 + length], body[4 + length :]
            seen.append(f"pdv control={control} {_status(fragment) if control & 1 else ''}")


def _status(command: bytes) -> str:
    from io import BytesIO

    from pydicom.filereader import read_dataset

    ds = read_dataset(BytesIO(command), True, True)
    return f"status=0x{int(ds.Status):04X} comment={ds.get('ErrorComment', '')}"


_VOLATILE = (
    (re.compile(r"AcceptorThread@\d+\.\d+"), "ASSOC"),
    (re.compile(r"@127\.0\.0\.1:\d+"), "@PEER"),
    (re.compile(r"entry=\S+"), "entry=E"),
    (re.compile(r"\d+\.\d+ ?s\b"), "T s"),
    (re.compile(r"/tmp\S*"), "PATH"),
)


def _normalized(message: str) -> str:
    for pattern, replacement in _VOLATILE:
        message = pattern.sub(replacement, message)
    return message


def _run(
    server: Server,
    data: redis.Redis,
    case: Peer,
    study: Study,
    fast: bool,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Run:
    data.flushdb()
    served: list[int] = []
    serve = fastpath.FastStore._serve

    def counted(self: fastpath.FastStore) -> None:
        served.append(1)
        serve(self)

    monkeypatch.setattr(fastpath, "ENABLED", fast)
    monkeypatch.setattr(fastpath.FastStore, "_serve", counted)
    caplog.clear()
    study.count = 0
    peer = RawPeer.connect(server.port)
    try:
        case(peer, study)
        received = _observe(peer)
    finally:
        peer.close()
    # The association's last lines come from its threads as they end: wait for them
    # (the SCP runs in this process) rather than for a while.
    wait_for(
        lambda: (
            not any(isinstance(t, (Association, DULServiceProvider)) for t in threading.enumerate())
        ),
        timeout=20,
        what="the association's threads to end",
    )
    entries: Any = data.xrange(keys.INBOX)
    headers = [json.loads(fields[b"h"]) for _, fields in entries]
    logs = [
        f"{r.name} {r.levelname} {_normalized(r.getMessage())}"
        for r in caplog.records
        if r.levelno >= logging.INFO
    ]
    return Run(received, headers, logs, len(served))


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_answers_as_pynetdicom_does(
    name: str,
    server: Server,
    redis_server: RedisProcess,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    data = redis.Redis.from_url(redis_server.url)
    study = Study()
    slow = _run(server, data, CASES[name], study, False, caplog, monkeypatch)
    fast = _run(server, data, CASES[name], study, True, caplog, monkeypatch)
    assert slow.served_fast == 0
    assert fast.received == slow.received
    assert fast.headers == slow.headers
    assert fast.logs == slow.logs
    if name in FAST:
        assert fast.served_fast > 0
        assert any("status=0x0000" in line for line in fast.received)


def test_spool_file_meta_is_pynetdicoms() -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta

    for sop_class, sop, syntax in ((CT, "1.2.3.44", EXPLICIT_LE), (MR, "1.2.3.4", IMPLICIT_LE)):
        expected = DicomBytesIO()
        expected.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(
            expected,
            create_file_meta(
                sop_class_uid=UID(sop_class),
                sop_instance_uid=UID(sop),
                transfer_syntax=UID(syntax),
            ),
        )
        assert encode_file_meta(sop_class, sop, syntax) == expected.getvalue()
