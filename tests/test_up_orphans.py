"""Nothing of ``scp2fhir up`` outlives it, and one ``up`` per data folder (#12.10).

Real processes: ``up`` with its private Redis, SCPs, workers (with RQ's scheduler), web
page and dashboard; a worker whose work horse is paused in the middle of a job."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.conftest import echo, pipeline_env
from tests.faults import children_of, scp_process, start_worker
from tests.support import RedisProcess, make_study, storescu, wait_for
from tests.up_support import start_up, up_env, verb


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for whoever reaps orphans counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X")


def names(pids: list[int]) -> dict[int, str]:
    found = {}
    for pid in pids:
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            found[pid] = "?"
    return found


def test_kill_9_of_up_takes_all_its_children_with_it(tmp_path: Path) -> None:
    up = start_up(tmp_path, up_env())
    try:
        up.wait_ready()
        wait_for(lambda: echo(up.port), 60, "the SCP", step=0.5)

        def family() -> dict[int, str]:
            return names(children_of(up.process.pid))

        # the scp and its acceptor processes, 2 workers, RQ's scheduler (forked by the
        # worker holding its lock), web, dashboard, Redis.
        wait_for(lambda: len(family()) >= 8, 60, "every child and the scheduler", step=0.5)
        before = family()
        assert any("redis-server" in c for c in before.values()), before
        assert any("rq_dashboard" in c for c in before.values()), before
        up.process.kill()
        up.process.wait(10)
        wait_for(
            lambda: all(gone(pid) for pid in before),
            15,
            f"the children to go: {before}",
            step=0.2,
        )
    finally:
        up.kill()


def test_a_work_horse_dies_with_its_worker(tmp_path: Path) -> None:
    """RQ's work horse runs in a session of its own: a kill -9 of the worker alone reached
    it only through PR_SET_PDEATHSIG."""
    marker = tmp_path / "paused"
    redis_server = RedisProcess().start()
    try:
        with scp_process(redis_server.url, tmp_path) as (port, _scp):
            env = pipeline_env(redis_server.url, tmp_path / "out", port)
            worker = start_worker(
                env, tmp_path / "worker.log", {"pause": {"at": "fold", "marker": str(marker)}}
            )
            try:
                storescu(port, make_study(tmp_path / "study", [("CT", 3)]).files)
                wait_for(marker.exists, 60, "the work horse to pause mid-fold", step=0.2)
                horse = int(marker.read_text())
                assert horse != worker.pid and not gone(horse)
                os.kill(worker.pid, signal.SIGKILL)  # the worker only, not its group
                worker.process.wait(10)
                wait_for(lambda: gone(horse), 10, "the work horse to go", step=0.2)
            finally:
                worker.stop()
    finally:
        redis_server.stop()


def test_a_second_up_on_the_same_data_folder_is_refused(tmp_path: Path) -> None:
    env = up_env()
    first = start_up(tmp_path, env)
    try:
        first.wait_ready()
        state = (tmp_path / "scp2fhir-data" / "up.json").read_text()
        second = verb(tmp_path, env, "up", timeout=60)
        assert second.returncode == 1, second
        lines = (second.stdout + second.stderr).strip().splitlines()
        assert len(lines) == 1, lines
        assert str((tmp_path / "scp2fhir-data").resolve()) in lines[0]
        assert f"pid={first.process.pid}" in lines[0]
        # The first goes on serving, with its state file.
        time.sleep(1)
        assert first.process.poll() is None
        assert (tmp_path / "scp2fhir-data" / "up.json").read_text() == state
        assert json.loads(state)["pid"] == first.process.pid
        wait_for(lambda: echo(first.port), 60, "the first up's SCP", step=0.5)
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(120) == 0
    finally:
        first.kill()  # and a second up, should it have started (its cwd is the same)
