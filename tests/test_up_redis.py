"""``scp2fhir up`` restarts its private Redis when it dies (#12.9): real ``up``, a kill -9
of its redis-server, a modality that retries for a few seconds."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from scp import keys, metrics
from scp.up.embedded_redis import EmbeddedRedis
from tests.conftest import echo
from tests.support import make_study, read_json, wait_for
from tests.up_support import start_up, state, store, up_env


def test_a_killed_private_redis_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", [("CT", 3), ("MR", 2)])
    up = start_up(tmp_path, up_env())
    try:
        up.wait_ready()
        wait_for(lambda: echo(up.port), 60, "the SCP", step=0.5)
        first = state(tmp_path)
        os.kill(first["redis_pid"], signal.SIGKILL)
        # A modality that retries: every instance Success over one association.
        wait_for(
            lambda: store(up.port, study.files) == [0] * len(study.files),
            60,
            "the SCP to take the study again",
            step=0.5,
        )
        path = tmp_path / "out" / "ImagingStudy" / f"{study.study_uid}.json"
        wait_for(path.exists, 60, "the ImagingStudy", step=0.5)
        assert read_json(path)["numberOfInstances"] == 5
        again = state(tmp_path)
        assert again["redis_url"] == first["redis_url"], "same port"
        assert again["redis_pid"] != first["redis_pid"], "up.json names the new Redis"
        client = redis.Redis.from_url(again["redis_url"])
        field = metrics.encode_field("redis_restarts_total", {})
        assert int(client.hget(keys.METRICS_COUNTERS, field) or 0) == 1
        client.close()
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(120) == 0
    finally:
        up.kill()
    log = up.output()
    lines = [line for line in log.splitlines() if "exited with signal SIGKILL" in line]
    assert len(lines) == 1 and " ERROR " in lines[0], log
    assert f"pid={first['redis_pid']}" in lines[0] and "restarting it" in lines[0]


def test_a_redis_that_keeps_dying_stops_up(tmp_path: Path) -> None:
    up = start_up(tmp_path, up_env())
    try:
        up.wait_ready()
        killed: list[int] = []
        for _ in range(3):
            pid = wait_for(
                lambda: (p := state(tmp_path)["redis_pid"]) not in killed and p,
                30,
                "a new Redis",
                step=0.2,
            )
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        assert up.process.wait(120) == 1
    finally:
        up.kill()
    log = up.output()
    # One line of up's own (RQ's workers and scheduler may still log tracebacks of their
    # own while Redis is gone: not up's to silence).
    gave_up = [line for line in log.splitlines() if "died 3 times within 60 s" in line]
    assert len(gave_up) == 1 and " ERROR up[" in gave_up[0], log
    assert "stopping: scp, then workers" in log, "the ordered stop ran"
    assert not (tmp_path / "scp2fhir-data" / "up.json").exists()


def _write_aof(data_dir: Path, count: int) -> None:
    """An append-only file of ``count`` SETs, as redis-server 7 keeps it (base + manifest)."""
    aof_dir = data_dir / "appendonlydir"
    aof_dir.mkdir(parents=True)
    with (aof_dir / "appendonly.aof.1.base.aof").open("wb") as handle:
        for start in range(0, count, 100_000):
            handle.write(
                b"".join(
                    b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n" % (len(k), k)
                    for k in (b"k%d" % i for i in range(start, min(count, start + 100_000)))
                )
            )
    (aof_dir / "appendonly.aof.manifest").write_text(
        "file appendonly.aof.1.base.aof seq 1 type b\n"
    )


def test_a_large_append_only_file_still_loading_is_waited_for(tmp_path: Path) -> None:
    """A Redis that answers LOADING while it reads a large AOF is making progress, not
    failing to come up: the start timeout counts from the last LOADING answer. (The
    redis-server 7.0 here accepts no client until loaded, so the PING blocks instead; this
    guards that a load three times the timeout still starts.)"""
    data_dir = tmp_path / "redis"
    count = 1_000_000  # about 1.5 s to load here, three times the timeout below
    _write_aof(data_dir, count)
    private = EmbeddedRedis(data_dir, "everysec")
    began = time.monotonic()
    try:
        private.start(timeout=0.5)
        took = time.monotonic() - began
        client = redis.Redis.from_url(private.url)
        assert client.dbsize() == count
        client.close()
    finally:
        private.stop()
    assert took > 0.5, f"loading took {took:.2f} s: not a test of the timeout"
