"""What an acknowledged instance survives, per ``SCP2FHIR_REDIS_FSYNC``: an OS crash.

A kill -9 of Redis loses nothing under any appendfsync (``test_faults.py``): the append-only
file is in the kernel's page cache and reaches the disk anyway. An OS crash or a power cut
loses that cache. Here ``scp2fhir up``'s own Redis (:class:`scp.up.embedded_redis.EmbeddedRedis`)
keeps its data on :mod:`tests.crashfs`, a filesystem whose page cache the test can drop as a
crash does, keeping the first kilobyte of each file's unsynced tail (a torn last write).
Real C-STOREs go through the real SCP; after the crash, Redis starts again from what the
disk kept.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from scp import keys, statuses
from scp.up.embedded_redis import EmbeddedRedis
from tests.conftest import ScpThread
from tests.crashfs import CrashDisk
from tests.faults import send_files
from tests.support import free_port, make_study

#: Long enough for several of everysec's once-a-second fsyncs after the early instances.
EVERYSEC_SETTLE_SECONDS = 3.0


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[CrashDisk]:
    mounted = CrashDisk(tmp_path / "disk", tmp_path / "mnt").start()
    yield mounted
    mounted.stop()


def kept_in_redis(url: str) -> tuple[set[str], Counter[str], dict[str, Any]]:
    """SOP Instance UIDs in the inbox, inbox entries per study, and the in-flight counts."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        entries: Any = client.xrange(keys.INBOX)
        sops = set()
        per_study: Counter[str] = Counter()
        for _, fields in entries:
            header = json.loads(fields["h"])
            sops.add(header["00080018"]["Value"][0])
            per_study[fields["s"]] += 1
        inflight: dict[str, Any] = client.hgetall(keys.INFLIGHT)  # type: ignore[assignment]
        return sops, per_study, inflight
    finally:
        client.close()


@pytest.mark.parametrize("fsync", ["always", "everysec", "no"])
def test_os_crash_keeps_what_appendfsync_promises(
    tmp_path: Path, disk: CrashDisk, fsync: str
) -> None:
    data_dir = disk.mount / "redis"
    server = EmbeddedRedis(data_dir, fsync)
    server.start()
    port = free_port()
    scp = ScpThread({"SCP2FHIR_REDIS_URL": server.url, "SCP2FHIR_PORT": str(port)}).start(port)
    study = make_study(tmp_path / "study", [("CT", 40)])
    early, late = study.files[:20], study.files[20:]
    try:
        early_statuses = send_files(port, early)
        time.sleep(EVERYSEC_SETTLE_SECONDS)
        late_statuses = send_files(port, late)
        # The machine goes down right after the last Success: page cache gone, then Redis.
        disk.crash(torn=True)
        assert server.process is not None
        server.process.kill()
        server.process.wait()
    finally:
        scp.stop()
    assert early_statuses + late_statuses == [statuses.SUCCESS] * len(study.files)
    acked_early = {path.stem for path in early}  # make_study names files by SOP UID
    acked_late = {path.stem for path in late}

    disk.stop()
    disk.start()
    again = EmbeddedRedis(data_dir, fsync)
    again.start()  # loads the append-only file the disk kept, torn tail included
    try:
        kept, per_study, inflight = kept_in_redis(again.url)
    finally:
        again.stop()

    # Whatever survived is whole: a push is one script (MULTI/EXEC in the file), so a torn
    # tail drops a whole push, never the count without the entry or the reverse.
    assert {uid: int(n) for uid, n in inflight.items()} == dict(per_study)
    assert kept <= acked_early | acked_late
    lost = (acked_early | acked_late) - kept
    if fsync == "always":
        assert not lost, f"{len(lost)} acknowledged instances lost with appendfsync always"
    elif fsync == "everysec":
        # Only what was acknowledged in the last second or two may be gone.
        assert not (acked_early - kept), "instances acknowledged seconds before the crash lost"
    else:
        # The control: this crash really loses what only the page cache held.
        assert lost, "appendfsync no lost nothing: the crash did not drop the page cache"
