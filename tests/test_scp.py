"""The SCP on its own: statuses, transfer syntaxes, Redis outages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import redis
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from scp import keys, statuses
from tests.conftest import ScpThread
from tests.support import RedisProcess, free_port, sample_file, storescu

COMPRESSED = {
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE
    "JPEG-LL.dcm": "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "emri_small_jpeg_2k_lossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
}


@pytest.fixture
def scp(redis_url: str) -> Iterator[int]:
    port = free_port()
    server = ScpThread({"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_PORT": str(port)}).start(port)
    yield port
    server.stop()


def send(port: int, ds: Dataset, transfer_syntax: str | None = None) -> Dataset:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ds.SOPClassUID, transfer_syntax or ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def inbox_headers(data: redis.Redis) -> list[dict[str, object]]:
    entries: Any = data.xrange(keys.INBOX)
    return [json.loads(fields["h"]) for _, fields in entries]


def test_compressed_transfer_syntaxes_are_accepted_as_received(scp: int, data: redis.Redis) -> None:
    for name, syntax in COMPRESSED.items():
        path = sample_file(name)
        assert path, name
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        status = send(scp, ds)
        assert status.Status == statuses.SUCCESS, name
    headers = inbox_headers(data)
    assert len(headers) == len(COMPRESSED)
    assert all("7FE00010" not in h for h in headers)


@pytest.mark.parametrize(
    ("name", "option"),
    [
        ("JPEG2000.dcm", "-xw"),
        ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),
        ("MR_small_RLE.dcm", "-xr"),
        ("image_dfl.dcm", "-xd"),
        ("JPEG-LL.dcm", "-xs"),
    ],
)
def test_dcmtk_storescu_compressed_files(
    scp: int, data: redis.Redis, name: str, option: str
) -> None:
    # storescu proposes uncompressed syntaxes only unless told which compressed one to offer
    # (-R: only the contexts the files need).
    path = sample_file(name)
    assert path
    storescu(scp, [Path(path)], options=["-R", option])
    [header] = inbox_headers(data)
    assert header["00080018"] == {"vr": "UI", "Value": [str(pydicom.dcmread(path).SOPInstanceUID)]}


def test_missing_study_uid_is_refused_with_a_clear_status(scp: int, data: redis.Redis) -> None:
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    del ds.StudyInstanceUID
    status = send(scp, ds)
    assert status.Status == statuses.MISSING_OR_INVALID_UID
    assert status.ErrorComment == "StudyInstanceUID missing"
    assert data.xlen(keys.INBOX) == 0


def test_invalid_uid_is_refused(scp: int, data: redis.Redis) -> None:
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = "1.2.03.x"
    status = send(scp, ds)
    assert status.Status == statuses.MISSING_OR_INVALID_UID
    assert data.xlen(keys.INBOX) == 0


def test_wrong_called_ae_title_is_rejected(scp: int) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", scp, ae_title="NOT-US")
    assert assoc.is_rejected


def test_redis_outage_gives_out_of_resources_then_recovers(tmp_path: Path) -> None:
    own = RedisProcess().start()
    port = free_port()
    server = ScpThread({"SCP2FHIR_REDIS_URL": own.url, "SCP2FHIR_PORT": str(port)}).start(port)
    try:
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        assert send(port, ds).Status == statuses.SUCCESS
        assert own.process is not None
        own.process.kill()
        own.process.wait()
        ds.SOPInstanceUID = generate_uid()
        status = send(port, ds)
        assert status.Status == statuses.OUT_OF_RESOURCES
        # Redis comes back on the same address: the running SCP accepts again.
        restarted = RedisProcess()
        restarted.port = own.port
        restarted.start()
        try:
            assert send(port, ds).Status == statuses.SUCCESS
            client = redis.Redis.from_url(restarted.url)
            assert client.xlen(keys.INBOX) == 1
            client.close()
        finally:
            restarted.stop()
    finally:
        server.stop()
        own.stop()


def test_each_header_records_the_calling_ae_title_it_came_from(
    scp: int, data: redis.Redis, tmp_path: Path
) -> None:
    """As Source Application Entity Title (0002,0016), which storescp writes to the files
    it stores: destinations may leave out what one sender sends."""
    from tests.support import make_study
    from workers.summary import summarize

    study = make_study(tmp_path / "s", [("CT", 2)])
    storescu(scp, study.files)  # calling AE title TESTSCU
    ds = pydicom.dcmread(sample_file("MR_small.dcm"))
    ae = AE(ae_title="OTHER_AE")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", scp, ae_title="SCP2FHIR")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == statuses.SUCCESS
    assoc.release()
    headers = inbox_headers(data)
    titles = [h["00020016"] for h in headers]
    assert titles == [{"vr": "AE", "Value": ["TESTSCU"]}] * 2 + [
        {"vr": "AE", "Value": ["OTHER_AE"]}
    ]
    assert summarize(headers[0]).instance["calling_ae"] == "TESTSCU"
