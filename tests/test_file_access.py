"""SCP2FHIR_FILE_ACCESS: the modes of the files that hold patient data, as written by the
real processes (a worker writing ImagingStudy files, redis-server writing its append-only
file), under a permissive umask (0002) so that the setting, not the umask, is seen."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from scp.shared_settings import SharedSettings
from scp.typed_settings import from_env
from scp.up.embedded_redis import EmbeddedRedis
from tests.conftest import ROOT, ScpThread, pipeline_env, stop_process
from tests.support import free_port, make_study, storescu, wait_for

UMASK = 0o002
#: access -> (file mode, mode of a folder scp2fhir created), under UMASK
EXPECTED = {
    "private": (0o600, 0o700),
    "group": (0o640, 0o750),
    "umask": (0o664, 0o775),
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("access", sorted(EXPECTED))
def test_imaging_study_files_and_folders_get_the_access_modes(
    redis_url: str, tmp_path: Path, access: str
) -> None:
    """A study through the SCP and a real `scp2fhir worker`: the ImagingStudy file and the
    folders the worker created (OUTPUT_DIR itself included) have the modes; a folder that
    existed before keeps its own."""
    existing = tmp_path / "site"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    output_dir = existing / "fhir" / "out"
    port = free_port()
    env = pipeline_env(redis_url, output_dir, port, SCP2FHIR_FILE_ACCESS=access)
    assert from_env(SharedSettings, env).file_access == access
    scp = ScpThread(env).start(port)
    with (tmp_path / "worker.log").open("ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "scp.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            umask=UMASK,
        )
    try:
        study = make_study(tmp_path / "study", [("CT", 2)])
        storescu(port, study.files)
        path = output_dir / "ImagingStudy" / f"{study.study_uid}.json"
        wait_for(path.exists, 60, "the ImagingStudy file")
    finally:
        scp.stop()
        stop_process(worker)
    file_expected, folder_expected = EXPECTED[access]
    assert oct(mode(path)) == oct(file_expected)
    for folder in (path.parent, output_dir, output_dir.parent):
        assert oct(mode(folder)) == oct(folder_expected), folder
    assert oct(mode(existing)) == oct(0o755), "an existing folder is left as it was"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file left"


@pytest.mark.parametrize("access", sorted(EXPECTED))
def test_private_redis_append_only_file_gets_the_access_modes(tmp_path: Path, access: str) -> None:
    """`scp2fhir up`'s own Redis: its data folder, append-only folder and files (and its
    log) have the modes once it has written a key."""
    data_dir = tmp_path / "data" / "redis"
    with umask(UMASK):
        private = EmbeddedRedis(data_dir, "always", file_access=access)
        private.start()
    try:
        client = redis.Redis.from_url(private.url)
        client.set("scp2fhir:test", "patient data lives here")
        client.close()
    finally:
        private.stop()
    aof_dir = data_dir / "appendonlydir"
    files = [p for p in aof_dir.iterdir() if p.is_file()] + [data_dir / "redis.log"]
    assert len(files) >= 3, files  # base, incremental and manifest, and the log
    folders = (aof_dir, data_dir, data_dir.parent)
    if access == "umask":
        # Redis picks its own modes (0644 for the AOF); the umask only takes bits away.
        assert all(mode(p) & UMASK == 0 for p in [*files, *folders])
        return
    file_expected, folder_expected = EXPECTED[access]
    assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(file_expected) for p in files}
    for folder in folders:
        assert oct(mode(folder)) == oct(folder_expected), folder


@pytest.mark.parametrize("value", [0o002, 0o022, 0o077])
def test_the_umask_is_read_without_changing_it(monkeypatch: pytest.MonkeyPatch, value: int) -> None:
    """process_umask must not set the umask to read it: for that moment it is 0 for every
    thread, and a file another thread creates is world-writable. The momentary change
    cannot be caught reliably from outside, so os.umask is made to fail while it runs."""
    from scp import file_access

    with umask(value):

        def forbidden(_: int) -> int:
            raise AssertionError("process_umask changed the process umask")

        monkeypatch.setattr(os, "umask", forbidden)
        assert file_access.process_umask() == value
        assert file_access.file_mode("umask") == 0o666 & ~value
        assert file_access.dir_mode("umask") == 0o777 & ~value
        monkeypatch.undo()


@pytest.mark.parametrize("access", ["private", "group"])
def test_an_existing_redis_folder_gets_the_access_modes(tmp_path: Path, access: str) -> None:
    """After an upgrade the data folder, append-only file and log an older version left are
    0755/0644: starting the private Redis restricts them to the setting's modes."""
    data_dir = tmp_path / "data" / "redis"
    with umask(0o022):
        before = EmbeddedRedis(data_dir, "always", file_access="umask")
        before.start()
        client = redis.Redis.from_url(before.url)
        client.set("scp2fhir:test", "patient data lives here")
        client.close()
        before.stop()
    aof_dir = data_dir / "appendonlydir"
    files = [p for p in aof_dir.iterdir() if p.is_file()] + [data_dir / "redis.log"]
    assert mode(data_dir) == 0o755 and mode(files[0]) & 0o044, "an old, readable layout"
    with umask(UMASK):
        private = EmbeddedRedis(data_dir, "always", file_access=access)
        private.start()
        private.stop()
    file_expected, folder_expected = EXPECTED[access]
    files = [p for p in aof_dir.iterdir() if p.is_file()] + [data_dir / "redis.log"]
    assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(file_expected) for p in files}
    for folder in (data_dir, aof_dir):
        assert oct(mode(folder)) == oct(folder_expected), folder
