"""Bad settings stop ``scp2fhir up`` before anything starts, and ``ready:`` means ready
(#14.11). Real processes: ``up``, its children, ``scp2fhir scp`` and ``worker`` alone."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq import Worker

from tests.conftest import echo
from tests.support import free_port
from tests.up_support import SCP_PROCESSES, start_up, state, up_env, verb


def one_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("variables", "needle"),
    [
        ({"SCP2FHIR_BIND": "999.1.1.1"}, "cannot listen on 999.1.1.1:"),
        ({"SCP2FHIR_REDIS_URL": "redis://127.0.0.1:{free}/0"}, "does not answer PING within 5 s"),
        # README documents Sentinel: the check must use the client that understands it
        ({"SCP2FHIR_REDIS_URL": "redis+sentinel://127.0.0.1:{free}"}, "names no service"),
        (
            {"SCP2FHIR_REDIS_URL": "redis+sentinel://127.0.0.1:{free}/mymaster/0"},
            "Redis at sentinel 127.0.0.1:",
        ),
    ],
    ids=["bad-bind", "unreachable-redis", "sentinel-without-service", "unreachable-sentinel"],
)
def test_a_bad_setting_is_one_line_before_anything_starts(
    tmp_path: Path, variables: dict[str, str], needle: str
) -> None:
    env = up_env(**{k: v.format(free=free_port()) for k, v in variables.items()})
    result = verb(tmp_path, env, "up")
    one_line(result, "scp2fhir up:", needle)
    assert not (tmp_path / "scp2fhir-data" / "redis").exists(), "no private Redis started"


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    env = up_env()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", int(env["SCP2FHIR_PORT"])))
        taken.listen()
        result = verb(tmp_path, env, "up")
    one_line(result, "the SCP cannot listen on 0.0.0.0:", "Address already in use")


@pytest.mark.parametrize("scheme", ["redis", "redis+sentinel"])
@pytest.mark.parametrize("command", ["scp", "worker"])
def test_scp_and_worker_on_an_unreachable_redis_are_one_line(
    tmp_path: Path, command: str, scheme: str
) -> None:
    env = up_env(SCP2FHIR_REDIS_URL=f"{scheme}://:secret@127.0.0.1:{free_port()}/mymaster/0")
    if scheme == "redis":
        env["SCP2FHIR_REDIS_URL"] = f"redis://:secret@127.0.0.1:{free_port()}/0"
    result = verb(tmp_path, env, command)
    one_line(result, f"scp2fhir {command}:", "does not answer PING")
    assert "secret" not in result.stderr


def test_ready_means_the_scps_listen_and_the_workers_are_registered(tmp_path: Path) -> None:
    up = start_up(tmp_path, up_env())
    try:
        up.wait_ready()
        # At once, no retry: the line is a promise.
        assert echo(up.port), "the SCP answers as soon as up says ready"
        client = redis.Redis.from_url(state(tmp_path)["redis_url"])
        assert len(Worker.all(connection=client)) >= 2, "both workers are registered"
        client.close()
        log = up.output()
        ready = log.index("ready:")
        # Every acceptor, not just the first: up_env fixes their number.
        assert log.count("listening on") == SCP_PROCESSES and log.rindex("listening on") < ready
    finally:
        up.kill()


def test_a_child_that_keeps_exiting_before_ready_stops_up(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    env = up_env(SCP2FHIR_SPOOL_DIR=str(tmp_path / "not-a-folder"))  # every SCP fails at start
    up = start_up(tmp_path, env)
    try:
        started = time.monotonic()
        assert up.process.wait(120) == 1
        assert time.monotonic() - started < 90
    finally:
        up.kill()
    log = up.output()
    assert "ready:" not in log
    lines = [line for line in log.splitlines() if "times before up was ready" in line]
    assert len(lines) == 1 and "scp exited" in lines[0] and "exited 3 times" in lines[0], log
    assert "private redis stopped" in log, "the ordered stop ran"


_LISTENER = """
import os, socket, sys, threading
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
if sys.argv[1] == "fork" and os.fork() == 0:  # an acceptor that never got going
    sys.stdin.read()
    os._exit(0)
if sys.argv[1] == "thread":  # as a serving SCP: its accept loop in a thread
    threading.Thread(target=sys.stdin.read, daemon=True).start()
print(sock.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize(("mode", "serves"), [("alone", False), ("fork", False), ("thread", True)])
def test_ready_needs_more_than_a_listening_socket(mode: str, serves: bool) -> None:
    """The port is bound before any SCP code runs (and inherited by prefork acceptors):
    listening alone is no sign of an SCP that got through its start."""
    from scp.up.readiness import listening, serving

    child = subprocess.Popen(
        [sys.executable, "-c", _LISTENER, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        assert listening(child.pid, port)
        assert serving(child.pid, port) is serves
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def test_a_private_redis_that_does_not_start_is_one_line(tmp_path: Path) -> None:
    """A damaged append-only file: redis-server exits at start. up says so in one line
    (pointing at redis.log), exits 1 and starts nothing else."""
    aof_dir = tmp_path / "scp2fhir-data" / "redis" / "appendonlydir"
    aof_dir.mkdir(parents=True)
    (aof_dir / "appendonly.aof.manifest").write_text("this is not a manifest\n")
    result = verb(tmp_path, up_env(), "up")
    one_line(result, "scp2fhir up: the private redis-server exited at start", "redis.log")
    assert not (tmp_path / "scp2fhir-data" / "up.json").exists()
