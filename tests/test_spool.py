"""The spool (where datasets wait while they arrive), with the real SCP process: small
datasets in memory, large ones rolled over to disk; and under hard faults: a disk that
is full at the rollover, and ``kill -9`` in the middle of datasets."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydicom.uid import generate_uid

from scp import keys, statuses
from scp.spool import ROLLOVER_BYTES
from tests.conftest import pipeline_env
from tests.faults import (
    Child,
    RawPeer,
    big_text_dataset,
    element,
    identity_elements,
    peak_rss_kib,
    scp_process,
    send_files,
    spawn,
    spool_files,
    start_scp,
    store_pdus,
    write_part10,
)
from tests.support import free_port, wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
MIB = 1024 * 1024


def _user_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0


def _full_spool(kind: str, spool: Path) -> list[str]:
    """The command that runs ``scp2fhir scp`` with a spool that takes no more than a few
    MiB: a 4 MiB tmpfs mounted on ``spool`` in a mount namespace of the SCP's own
    (ENOSPC, as on a full disk), or a 2 MiB file size limit (RLIMIT_FSIZE: EFBIG, the
    same error path)."""
    scp = [sys.executable, "-m", "scp.cli", "scp"]
    if kind == "tmpfs":
        mount = f'mount -t tmpfs -o size=4m tmpfs "{spool}" && exec "$@"'
        return ["unshare", "-Urm", "sh", "-c", mount, "sh", *scp]
    limit = 2 * MIB
    run = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "sys.argv = ['scp2fhir', 'scp']; runpy.run_module('scp.cli', run_name='__main__')"
    )
    return [sys.executable, "-c", run]


# The fast path (scp.fastpath) and pynetdicom's own message handling spool alike.
@pytest.fixture(
    params=[("tmpfs", "1"), ("tmpfs", "0"), ("rlimit-fsize", "1"), ("rlimit-fsize", "0")],
    ids=["tmpfs-fast", "tmpfs-pynetdicom", "rlimit-fsize-fast", "rlimit-fsize-pynetdicom"],
)
def full_spool_scp(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> Iterator[tuple[int, Child]]:
    kind, fast_path = request.param
    if kind == "tmpfs" and not _user_namespaces():
        pytest.skip("no user namespaces here to mount a tmpfs in (rlimit-fsize runs)")
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    # TMPDIR too: every temporary file the SCP writes is to meet the full disk.
    env = pipeline_env(
        redis_url,
        tmp_path / "out",
        port,
        SCP2FHIR_SPOOL_DIR=str(spool),
        TMPDIR=str(spool),
        SCP2FHIR_FAST_PATH=fast_path,
    )
    scp = spawn("scp", _full_spool(kind, spool), env, tmp_path / "scp.log")
    from tests.conftest import echo

    wait_for(lambda: scp.alive() and echo(port), 30, "the SCP to answer C-ECHO", 0.2)
    yield port, scp
    scp.stop()


def test_a_full_spool_refuses_the_instance_and_keeps_the_association(
    full_spool_scp: tuple[int, Child], data: redis.Redis, tmp_path: Path
) -> None:
    port, scp = full_spool_scp
    # The big one rolls over to the spool beyond 4 MiB (scp.spool.ROLLOVER_BYTES), where
    # the tmpfs (4 MiB) or the file size limit (2 MiB) refuses it at the rollover.
    study, series = generate_uid(), generate_uid()
    files = []
    for name, size in (("big", 6 * MIB), ("small", 4096), ("small-2", 4096)):
        sop = generate_uid()
        body = big_text_dataset(study, series, sop, size)
        files.append(write_part10(tmp_path / f"{name}.dcm", body, CT, sop))
    # One association: the instance that does not fit is refused (retry later), the
    # next ones are stored, and the association carries on to its release.
    assert send_files(port, files) == [
        statuses.OUT_OF_RESOURCES,
        statuses.SUCCESS,
        statuses.SUCCESS,
    ]
    assert data.xlen(keys.INBOX) == 2
    assert scp.alive()
    assert "spool write failed" in scp.output()
    assert "aborted" not in scp.output()


def _half_sent(port: int, count: int, size: int) -> list[RawPeer]:
    """``count`` associations, each in the middle of a C-STORE dataset of ``size`` bytes."""
    peers = []
    for _ in range(count):
        peer = RawPeer.connect(port)
        maximum = peer.associate([(CT, EXPLICIT_LE)])
        sop = generate_uid()
        body = big_text_dataset(generate_uid(), generate_uid(), sop, size)
        for encoded in store_pdus(1, CT, sop, body, maximum)[:-2]:
            assert peer.send(encoded)
        peers.append(peer)
    return peers


def test_kill_9_mid_dataset_leaves_nothing_after_a_restart(redis_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    port, other_port = free_port(), free_port()
    env = pipeline_env(redis_url, tmp_path / "out", port, SCP2FHIR_SPOOL_DIR=str(spool))
    other_env = {**env, "SCP2FHIR_PORT": str(other_port)}
    # Another SCP process sharing the spool parent, with a dataset of its own arriving.
    other = start_scp(other_env, tmp_path / "other.log", other_port)
    scp = start_scp(env, tmp_path / "scp.log", port)
    try:
        # Larger than the rollover (scp.spool.ROLLOVER_BYTES): smaller ones stay in memory.
        other_peers = _half_sent(other_port, 1, 8 * MIB)
        wait_for(lambda: len(spool_files(spool)) == 1, 20, "the other SCP's spool file")
        theirs = spool_files(spool)
        peers = _half_sent(port, 6, 8 * MIB)
        wait_for(lambda: len(spool_files(spool)) == 7, 20, "six more spool files")
        scp.kill9()
        assert len(spool_files(spool)) == 7, "kill -9 left its six files behind"
        for peer in peers:
            peer.close()
        restarted = start_scp(env, tmp_path / "restarted.log", port)
        try:
            # The dead process's files are gone; the running one's is untouched.
            assert spool_files(spool) == theirs
            assert "removed 1 folders left by SCP processes that are gone" in restarted.output()
        finally:
            restarted.stop()
        for peer in other_peers:
            peer.close()
    finally:
        scp.stop()
        other.stop()
    # Stopped cleanly, each process takes its folder with it.
    assert spool_files(spool) == []
    assert not list(spool.iterdir())


def _own_folder(spool: Path) -> Path:
    (folder,) = [p for p in spool.iterdir() if p.is_dir()]
    return folder


def _pixels(study: str, sop: str, size: int) -> bytes:
    """An instance of about ``size`` bytes, nearly all of it Pixel Data (whose bytes the
    header leaves out: Success whatever the size)."""
    parts = identity_elements(study, generate_uid(), sop)
    return b"".join(parts[tag] for tag in sorted(parts)) + element(
        0x7FE00010, "OB", b"\0" * (size - size % 2)
    )


def _instance(tmp_path: Path, name: str, size: int, study: str) -> Path:
    sop = generate_uid()
    return write_part10(tmp_path / f"{name}.dcm", _pixels(study, sop, size), CT, sop)


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast", "pynetdicom"])
def test_small_datasets_stay_in_memory_and_large_ones_roll_over_with_flat_memory(
    fast_path: str, redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    study = generate_uid()
    small = [
        _instance(tmp_path, f"small-{i}", size, study)
        for i, size in enumerate((40_000, 40_000, ROLLOVER_BYTES - 64 * 1024))
    ]
    large = _instance(tmp_path, "large", 64 * MIB, study)
    env = {"SCP2FHIR_SPOOL_DIR": str(spool), "SCP2FHIR_FAST_PATH": fast_path}
    with scp_process(redis_url, tmp_path, **env) as (port, scp):
        folder = _own_folder(spool)
        # A file created (and deleted) in the folder changes its modification time.
        untouched = folder.stat().st_mtime_ns
        assert send_files(port, small) == [statuses.SUCCESS] * 3
        assert folder.stat().st_mtime_ns == untouched, "a small dataset went to disk"
        before = peak_rss_kib(scp.pid)
        assert send_files(port, [large]) == [statuses.SUCCESS]
        grown_mib = (peak_rss_kib(scp.pid) - before) / 1024
        assert folder.stat().st_mtime_ns != untouched, "the large dataset never reached disk"
        # Held in memory, 64 MiB would have raised the peak by at least that much; rolled
        # over, by the 4 MiB kept before the rollover and a PDU or two.
        assert grown_mib < 24, f"peak RSS grew by {grown_mib:.0f} MiB"
        assert spool_files(spool) == []  # served, then deleted
        # Mid-dataset, the large one is a file in the spool; a small one never is.
        peer = RawPeer.connect(port)
        maximum = peer.associate([(CT, EXPLICIT_LE)])
        sop = generate_uid()
        body = _pixels(study, sop, 8 * MIB)
        *first, last = store_pdus(1, CT, sop, body, maximum)
        for encoded in first:
            assert peer.send(encoded)
        wait_for(lambda: len(spool_files(spool)) == 1, 20, "the rolled-over spool file")
        assert peer.send(last)
        assert peer.read_status() == statuses.SUCCESS
        peer.close()
    assert data.xlen(keys.INBOX) == 5


def test_memory_spool_never_writes_a_file(
    redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    large = _instance(tmp_path, "large", 2 * ROLLOVER_BYTES, generate_uid())
    env = {"SCP2FHIR_SPOOL_DIR": str(spool), "SCP2FHIR_SPOOL": "memory"}
    with scp_process(redis_url, tmp_path, **env) as (port, _scp):
        folder = _own_folder(spool)
        untouched = folder.stat().st_mtime_ns
        assert send_files(port, [large]) == [statuses.SUCCESS]
        assert folder.stat().st_mtime_ns == untouched
    assert data.xlen(keys.INBOX) == 1
