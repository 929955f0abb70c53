"""The pre-encoded C-STORE-RSP Success (scp.store_response) is byte for byte what
pynetdicom sends, and is what a real association answers with."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
import redis
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from scp import keys, statuses, store_response
from tests.conftest import ScpThread
from tests.support import free_port, sample_file

CT = pydicom.dcmread(sample_file("CT_small.dcm"))


def _response(message_id: int, sop_class: str, sop_instance: str, status: int = 0) -> C_STORE:
    """As pynetdicom's StorageServiceClass builds it."""
    rsp = C_STORE()
    rsp.MessageID = message_id
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.AffectedSOPClassUID = sop_class
    rsp.Status = status
    return rsp


def _pynetdicom_pdvs(rsp: C_STORE, context_id: int, max_pdu: int) -> list[Any]:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return [p.presentation_data_value_list for p in message.encode_msg(context_id, max_pdu)]


@pytest.mark.parametrize("message_id", [0, 1, 7, 256, 65535])
@pytest.mark.parametrize(
    "sop_class",
    ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.7"],
)
@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34", "2.25." + "9" * 59])
@pytest.mark.parametrize("max_pdu", [0, 16382, 4096])
def test_success_is_byte_exact(
    message_id: int, sop_class: str, sop_instance: str, max_pdu: int
) -> None:
    rsp = _response(message_id, sop_class, sop_instance)
    ours = store_response.success_pdata(rsp, 5, max_pdu)
    assert ours is not None
    assert [ours.presentation_data_value_list] == _pynetdicom_pdvs(rsp, 5, max_pdu)


def test_left_to_pynetdicom() -> None:
    """Statuses other than Success, comments, requests and PDUs too small: not ours."""
    uid = "1.2.840.10008.5.1.4.1.1.2"
    assert store_response.success_pdata(_response(1, uid, "1.2.3", 0xB006), 1, 0) is None
    commented = _response(1, uid, "1.2.3")
    commented.ErrorComment = "note"  # type: ignore[assignment]
    assert store_response.success_pdata(commented, 1, 0) is None
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = uid
    request.AffectedSOPInstanceUID = "1.2.3"
    assert store_response.success_pdata(request, 1, 0) is None
    assert store_response.success_pdata(_response(1, uid, "1.2.3"), 1, 64) is None


@pytest.fixture
def scp_port(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[int]:
    # As `scp2fhir scp` logs by default: pynetdicom's logger at WARNING, so its standard
    # handlers stay unbound (serve() sets the level pynetdicom reads: undone afterwards).
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", _config.LOG_HANDLER_LEVEL)
    port = free_port()
    thread = ScpThread({"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_PORT": str(port)}).start(port)
    yield port
    thread.stop()


def test_association_gets_the_pre_encoded_success(
    scp_port: int, data: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a real association, each Success is the pre-encoded one, and pynetdicom's SCU
    reads it as a C-STORE-RSP for its request."""
    sent: list[bytes] = []
    original = store_response.encode_success

    def recording(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
        encoded = original(message_id, sop_class_uid, sop_instance_uid)
        sent.append(encoded)
        return encoded

    monkeypatch.setattr(store_response, "encode_success", recording)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT.SOPClassUID, CT.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", scp_port, ae_title="SCP2FHIR")
    assert assoc.is_established
    try:
        for _ in range(3):
            ds = CT.copy()
            ds.SOPInstanceUID = generate_uid()
            answer = assoc.send_c_store(ds)
            assert answer.Status == statuses.SUCCESS
    finally:
        assoc.release()
    assert len(sent) == 3
    assert data.xlen(keys.INBOX) == 3
