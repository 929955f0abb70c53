"""The prompt (non-polling) pynetdicom loops behave like stock pynetdicom's."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pydicom
import pytest
import redis
from pydicom.uid import generate_uid
from pynetdicom import AE

from scp import keys, statuses
from tests.conftest import ScpThread
from tests.support import free_port, sample_file, wait_for

CT = pydicom.dcmread(sample_file("CT_small.dcm"))


def start_scp(redis_url: str, **env: str) -> tuple[ScpThread, int]:
    port = free_port()
    return ScpThread({"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_PORT": str(port), **env}).start(
        port
    ), port


@pytest.fixture(params=["file", "memory"])
def scp(request: pytest.FixtureRequest, redis_url: str) -> Iterator[int]:
    thread, port = start_scp(redis_url, SCP2FHIR_SPOOL=request.param)
    yield port
    thread.stop()


def associate(port: int) -> object:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT.SOPClassUID, CT.file_meta.TransferSyntaxUID)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")
    assert assoc.is_established
    return assoc


def fresh_ct() -> pydicom.Dataset:
    ds = CT.copy()
    ds.SOPInstanceUID = generate_uid()
    return ds


def test_many_stores_then_release(scp: int, data: redis.Redis) -> None:
    assoc: object = associate(scp)
    for _ in range(40):
        assert assoc.send_c_store(fresh_ct()).Status == statuses.SUCCESS  # type: ignore[attr-defined]
    began = time.monotonic()
    assoc.release()  # type: ignore[attr-defined]
    assert assoc.is_released  # type: ignore[attr-defined]
    assert time.monotonic() - began < 1.0, "release is answered promptly"
    assert data.xlen(keys.INBOX) == 40


def test_abort_then_a_new_association_works(scp: int, data: redis.Redis) -> None:
    assoc: object = associate(scp)
    assert assoc.send_c_store(fresh_ct()).Status == statuses.SUCCESS  # type: ignore[attr-defined]
    assoc.abort()  # type: ignore[attr-defined]
    second: object = associate(scp)
    assert second.send_c_echo().Status == statuses.SUCCESS  # type: ignore[attr-defined]
    second.release()  # type: ignore[attr-defined]
    assert data.xlen(keys.INBOX) == 1


def test_dropped_connection_is_cleaned_up(scp: int) -> None:
    baseline = threading.active_count()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        assoc: object = associate(scp)
        # The peer vanishes without release or abort.
        assoc.dul.socket.socket.close()  # type: ignore[attr-defined]
        assoc.kill()  # type: ignore[attr-defined]
    wait_for(lambda: threading.active_count() <= baseline, 10, "association threads to end")
    # Each prompt DUL owns a wake-up pipe: none may leak.
    wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds + 2, 10, "descriptors to close")


def test_fragmented_datasets(redis_url: str, data: redis.Redis) -> None:
    # A small maximum PDU makes the sender split each dataset into many P-DATA PDUs.
    thread, port = start_scp(redis_url, SCP2FHIR_MAX_PDU="4096")
    try:
        assoc: object = associate(port)
        for _ in range(10):
            assert assoc.send_c_store(fresh_ct()).Status == statuses.SUCCESS  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
    finally:
        thread.stop()
    assert data.xlen(keys.INBOX) == 10


def test_idle_association_is_closed_by_the_network_timeout(redis_url: str) -> None:
    """SCP2FHIR_NETWORK_TIMEOUT, as an operator sets it: an association that says
    nothing is closed after that long, not before."""
    thread, port = start_scp(redis_url, SCP2FHIR_NETWORK_TIMEOUT="2")
    try:
        assoc: object = associate(port)
        began = time.monotonic()
        wait_for(lambda: not assoc.is_established, 10, "the SCP to end the idle association")  # type: ignore[attr-defined]
        assert 1.5 <= time.monotonic() - began <= 8
    finally:
        thread.stop()
