"""The network timeout is for a peer that is idle, not for one waiting for our answer.

A C-STORE whose header Redis takes longer than ``SCP2FHIR_NETWORK_TIMEOUT`` to store (a
stalled fsync, a busy disk) is stored: its Success must still go out, on the fast path
(scp.fastpath) and on pynetdicom's own, instead of the association being aborted
between storing the instance and answering it. Redis is held with ``CLIENT PAUSE``
(writes, scripts included), a real Redis's own way to stall its clients.
"""

from __future__ import annotations

import pydicom
import pytest
import redis
from pydicom.uid import generate_uid
from pynetdicom import AE

from scp import keys, statuses
from tests.conftest import ScpThread
from tests.support import free_port, sample_file


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast", "pynetdicom"])
def test_an_answer_that_waited_for_redis_longer_than_the_network_timeout_goes_out(
    fast_path: str, redis_url: str, data: redis.Redis
) -> None:
    port = free_port()
    env = {
        "SCP2FHIR_REDIS_URL": redis_url,
        "SCP2FHIR_PORT": str(port),
        "SCP2FHIR_NETWORK_TIMEOUT": "1",
        "SCP2FHIR_FAST_PATH": fast_path,
    }
    server = ScpThread(env).start(port)
    try:
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        ae = AE(ae_title="SLOWREDIS")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")
        assert assoc.is_established
        ds.SOPInstanceUID = generate_uid()
        assert assoc.send_c_store(ds).Status == statuses.SUCCESS  # Redis connected
        # Writes (the push's script) wait 3 s, three times the network timeout.
        data.client_pause(3000, all=False)
        ds.SOPInstanceUID = generate_uid()
        answer = assoc.send_c_store(ds)
        assert "Status" in answer, "no answer: the association was aborted instead"
        assert answer.Status == statuses.SUCCESS
        assoc.release()
    finally:
        server.stop()
    assert data.xlen(keys.INBOX) == 2
