"""``scp2fhir up`` as the operator's supervisor: how it stops (README "Operations").

Real processes throughout: ``up`` with its private Redis, SCPs, workers, web page and
dashboard, a pynetdicom modality sending over one association."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from scp import keys
from tests.conftest import echo
from tests.faults import scp_process
from tests.support import RedisProcess, make_study, read_json, wait_for
from tests.up_support import Sender, start_up, up_env


def _emitted_instances(path: Path) -> int:
    return int(read_json(path)["numberOfInstances"]) if path.exists() else 0


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGHUP, False)],
    ids=["ctrl-c", "sigterm", "sighup"],
)
def test_a_stop_drains_the_open_association_and_stops_redis_last(
    tmp_path: Path, signum: int, to_group: bool
) -> None:
    study = make_study(tmp_path / "study", [("CT", 200)])
    env = up_env()
    up = start_up(tmp_path, env)
    try:
        up.wait_ready()
        wait_for(lambda: echo(up.port), 60, "the SCP", step=0.5)
        sender = Sender(up.port, study.files).start()
        assert sender.sent.wait(60), sender.errors
        if to_group:
            up.signal_group(signum)  # Ctrl-C in up's terminal
        else:
            up.process.send_signal(signum)
        # The modality goes on sending while the SCP drains: three more instances.
        wait_for(lambda: "draining 1 open associations" in up.output(), 60, "the drain")
        draining_from = len(sender.statuses)
        wait_for(lambda: len(sender.statuses) >= draining_from + 3, 60, "sends in the drain")
        sender.finish_after(5)
        sender.join()
        assert up.process.wait(120) == 0, up.output()
    finally:
        up.kill()
    log = up.output()
    assert not sender.errors, sender.errors
    assert len(sender.statuses) >= 10
    during = sender.statuses[draining_from:]
    assert len(during) >= 3 and set(during) == {0}, f"Success during the drain: {during}"
    assert set(sender.statuses) == {0}, "every instance sent before the stop got Success"
    assert sender.released and not sender.aborted, "the modality released the association"
    assert "Traceback" not in log, log
    stopped = [log.index(f"stopped {name} ") for name in ("scp", "worker-1", "web")]
    assert stopped == sorted(stopped), log
    assert "stopped scp (exit 0)" in log, log
    # EmbeddedRedis.stop logs this only when it finds redis-server still running (and
    # stops it with SIGTERM): the one private Redis (started once, never restarted) was
    # alive after every stage, the scp's drain included.
    assert log.count("private redis on ") == 1, log
    assert "private redis stopped (exit 0)" in log, log
    assert log.index("private redis stopped") > max(stopped), "Redis stops last"

    # What was acknowledged is in the private Redis's append-only file: up again on the
    # same data folder emits all of it.
    again = start_up(tmp_path, env, "up-again.log")
    try:
        again.wait_ready()
        path = tmp_path / "out" / "ImagingStudy" / f"{study.study_uid}.json"
        wait_for(
            lambda: _emitted_instances(path) == len(sender.statuses),
            90,
            "the study with every acknowledged instance",
            step=0.5,
        )
        again.process.send_signal(signal.SIGTERM)
        assert again.process.wait(120) == 0
    finally:
        again.kill()


def test_the_scp_alone_drains_on_sigterm(tmp_path: Path) -> None:
    """``scp2fhir scp`` under a service manager (systemd, compose) stops the same way."""
    study = make_study(tmp_path / "study", [("CT", 200)])
    redis_server = RedisProcess().start()
    try:
        with scp_process(redis_server.url, tmp_path) as (port, scp):
            sender = Sender(port, study.files).start()
            assert sender.sent.wait(60), sender.errors
            scp.process.send_signal(signal.SIGTERM)
            wait_for(
                lambda: "draining 1 open associations" in scp.output(), 60, "the drain", step=0.1
            )
            # Refused while the association is still open (it goes on until finish_after):
            # an SCP that accepted during its drain would keep answering and time this out.
            wait_for(lambda: echo(port) is False, 30, "new associations refused", step=0.1)
            assert not sender.released and not sender.errors, "refused during the drain"
            sender.finish_after(5)
            sender.join()
            assert scp.process.wait(60) == 0, scp.output()
            log = scp.output()
        client = redis.Redis.from_url(redis_server.url)
        inbox = client.xlen(keys.INBOX)
    finally:
        redis_server.stop()
    assert not sender.errors and set(sender.statuses) == {0}, sender.errors
    assert sender.released and not sender.aborted
    assert inbox == len(sender.statuses), "every acknowledged instance is in Redis"
    assert "draining 1 open associations" in log and "Traceback" not in log, log


def test_the_drain_is_bounded(tmp_path: Path) -> None:
    """A sender that never stops is aborted after SCP2FHIR_DRAIN_SECONDS; what it got
    Success for is in Redis."""
    study = make_study(tmp_path / "study", [("CT", 200)])
    redis_server = RedisProcess().start()
    try:
        with scp_process(redis_server.url, tmp_path, SCP2FHIR_DRAIN_SECONDS="2") as (port, scp):
            sender = Sender(port, study.files).start()
            assert sender.sent.wait(60), sender.errors
            scp.process.send_signal(signal.SIGTERM)
            sender.join(60)
            assert scp.process.wait(60) == 0, scp.output()
            log = scp.output()
        inbox = redis.Redis.from_url(redis_server.url).xlen(keys.INBOX)
    finally:
        redis_server.stop()
    assert_aborted_keeping_what_it_acknowledged(sender, len(study.files), inbox, log)


def test_a_second_signal_aborts_the_drain_through_the_acceptors(tmp_path: Path) -> None:
    """Two acceptor processes, a long drain: the first SIGTERM to `scp2fhir scp` starts
    the drain, a second one (a second later: sooner, it counts as the same request) makes
    the acceptors abort at once; what was acknowledged is in Redis."""
    study = make_study(tmp_path / "study", [("CT", 400)])
    redis_server = RedisProcess().start()
    try:
        with scp_process(
            redis_server.url, tmp_path, SCP2FHIR_DRAIN_SECONDS="120", SCP2FHIR_SCP_PROCESSES="2"
        ) as (port, scp):
            sender = Sender(port, study.files).start()
            assert sender.sent.wait(60), sender.errors
            scp.process.send_signal(signal.SIGTERM)
            first = time.monotonic()
            wait_for(lambda: "draining 1 open associations" in scp.output(), 30, "the drain")
            time.sleep(max(0.0, first + 1.5 - time.monotonic()))
            assert scp.process.poll() is None and not sender.aborted, "no drain at all"
            scp.process.send_signal(signal.SIGTERM)
            assert scp.process.wait(30) == 0, scp.output()  # long before the 120 s drain
            sender.join(60)
            log = scp.output()
        inbox = redis.Redis.from_url(redis_server.url).xlen(keys.INBOX)
    finally:
        redis_server.stop()
    assert_aborted_keeping_what_it_acknowledged(sender, len(study.files), inbox, log)


def assert_aborted_keeping_what_it_acknowledged(
    sender: Sender, files: int, inbox: int, log: str
) -> None:
    """The drain ended in an abort before the sender was done, and every instance it got
    Success for is in Redis. The abort may have cut off the answer to one more, already
    stored (the sender then sends it again: stored twice is no loss)."""
    assert sender.aborted and len(sender.statuses) < files
    assert set(sender.statuses) == {0}
    assert len(sender.statuses) <= inbox <= len(sender.statuses) + 1
    assert "aborting 1 associations still open" in log and "Traceback" not in log, log
