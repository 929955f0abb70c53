"""``scp2fhir up``: the whole system on one machine.

Starts a private Redis when none is configured, then the SCP, the workers and the
RQ dashboard as child processes sharing that Redis. A child that dies is started
again. SIGINT (Ctrl-C), SIGTERM and SIGHUP all stop everything in order
(:func:`stop_in_order`): the SCPs drain their open associations, then the workers
finish their current job, then the web page and the dashboard stop, and the private
Redis last, so nothing acknowledged is lost and nothing writes to a Redis that is gone.
Children run in process groups of their own: a Ctrl-C in the terminal reaches ``up``
only, which does the ordering.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

from scp import orphans
from scp.drain import StopRequest
from scp.processes import describe
from scp.settings import ScpSettings
from scp.shared_settings import SharedSettings
from scp.up import lock, readiness, state
from scp.up.embedded_redis import EmbeddedRedis, RedisNotFound, RedisStartError
from scp.up.preflight import PreflightError, check_bind, check_redis
from scp.up.redis_watch import RedisWatch
from scp.up.settings import UpSettings
from workers.settings import WorkerSettings

logger = logging.getLogger(__name__)

#: Seconds each stage of the stop gets before what is left of it is killed: the SCPs
#: drain for up to SCP2FHIR_DRAIN_SECONDS and then abort (this is on top of it); a worker
#: finishes its job.
STAGE_GRACE_SECONDS = {"scp": 10.0, "worker": 60.0, "web": 10.0}
#: A child that died is not restarted more often than this.
RESTART_BACKOFF_SECONDS = 5.0
#: A child that exits this often before everything is ready will not get better: up stops.
EARLY_EXITS = 3
#: While not ready, what is still awaited is logged this often.
WAITING_LOG_SECONDS = 15.0


@dataclass
class Child:
    name: str
    #: The stop stage it belongs to (a key of :data:`STAGE_GRACE_SECONDS`).
    stage: str
    command: list[str]
    #: Variables for this child only (credentials stay out of the command line and `ps`).
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = field(default=0.0)
    #: Times it exited (each counted once, when first seen).
    exits: int = 0
    exit_seen: bool = False

    def start(self, env: Mapping[str, str]) -> None:
        self.exit_seen = False
        self.process = subprocess.Popen(
            self.command,
            env={**env, **self.extra_env},
            stdin=subprocess.DEVNULL,
            process_group=0,  # out of the terminal's reach: `up` stops it, in order
            preexec_fn=orphans.preexec(os.getpid()),  # and never outlives it (kill -9)
        )
        self.started_at = time.monotonic()
        logger.info("started %s pid=%d", self.name, self.process.pid)


def children(scp: ScpSettings, up: UpSettings, shared: SharedSettings) -> list[Child]:
    cli = [sys.executable, "-m", "scp.cli"]
    # One SCP: it binds the port and forks its own acceptor processes (scp.prefork).
    processes = {"SCP2FHIR_SCP_PROCESSES": str(scp.scp_processes)}
    result = [Child("scp", "scp", [*cli, "scp"], extra_env=processes)]
    result += [Child(f"worker-{n}", "worker", [*cli, "worker"]) for n in range(1, up.workers + 1)]
    if up.web_port:
        result.append(Child("web", "web", [*cli, "web"]))
    if up.dashboard_port:
        credentials = {}
        if up.dashboard_username and up.dashboard_password:
            credentials = {
                "RQ_DASHBOARD_USERNAME": up.dashboard_username,
                "RQ_DASHBOARD_PASSWORD": up.dashboard_password,
            }
        dashboard = [
            sys.executable,
            "-m",
            "rq_dashboard",
            "--bind",
            up.dashboard_bind,
            "--port",
            str(up.dashboard_port),
            "--redis-url",
            shared.redis_url or "",
        ]
        result.append(Child("rq-dashboard", "web", dashboard, extra_env=credentials))
    return result


def up(
    shared: SharedSettings,
    scp: ScpSettings,
    worker: WorkerSettings,
    settings: UpSettings,
    env: Mapping[str, str],
    stop: threading.Event | None = None,
) -> int:
    """Run everything until a stop; each part of the configuration parsed once in
    ``main()``."""
    try:
        held = lock.acquire(settings.data_dir, shared.file_access)
    except lock.FolderInUse as exc:
        print(f"scp2fhir up: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            preflight(scp, settings, shared)
        except PreflightError as exc:
            print(f"scp2fhir up: {exc}", file=sys.stderr)
            return 1
        return _run(shared, scp, worker, settings, env, StopRequest(stop).install())
    finally:
        os.close(held)  # the lock goes with it


def _run(
    shared: SharedSettings,
    scp: ScpSettings,
    worker: WorkerSettings,
    settings: UpSettings,
    env: Mapping[str, str],
    request: StopRequest,
) -> int:
    """Everything, until a stop is requested; then :func:`stop_in_order` and the private
    Redis last."""
    private: EmbeddedRedis | None = None
    child_env = dict(env)
    procs: list[Child] = []
    exit_code = 0
    try:
        if shared.redis_url is None:
            private = EmbeddedRedis(
                settings.data_dir / "redis", settings.redis_fsync, file_access=shared.file_access
            )
            try:
                private.start()
            except (RedisNotFound, RedisStartError, OSError) as exc:
                print(f"scp2fhir up: {exc}", file=sys.stderr)
                return 1
            child_env["SCP2FHIR_REDIS_URL"] = private.url
            shared = dataclasses.replace(shared, redis_url=private.url)
        procs = children(scp, settings, shared)
        for child in procs:
            child.start(child_env)
        if settings.dashboard_port:
            logger.info(
                "RQ dashboard on http://%s:%d", settings.dashboard_bind, settings.dashboard_port
            )
        started_at = time.time()
        written = _write_state(shared, scp, worker, settings, private, started_at)
        logger.info("state in %s (for scp2fhir status and the other verbs)", written)
        client = redis.Redis.from_url(shared.require_redis_url(), socket_timeout=5)
        watch = RedisWatch(private) if private is not None else None
        ready = False
        waiting_since = time.monotonic()
        while not request.wait(0.5):
            if watch is not None:
                restarts = watch.restarts
                if not watch.check():
                    exit_code = 1
                    break
                if watch.restarts != restarts:
                    _write_state(
                        shared, scp, worker, settings, private, started_at
                    )  # Redis's new pid
            failed = _tend(procs, child_env, ready)
            if failed is not None:
                logger.error(
                    "%s exited %d times before up was ready (last: %s); stopping",
                    failed.name,
                    failed.exits,
                    describe(failed.process.returncode if failed.process else None),
                )
                exit_code = 1
                break
            if not ready:
                ready = _ready(scp, worker, procs, client, waiting_since)
                if not ready and time.monotonic() - waiting_since > WAITING_LOG_SECONDS:
                    waiting_since = time.monotonic()
        client.close()
    finally:
        if procs:  # none when the private Redis did not start (or the settings failed)
            stop_in_order(procs, scp.drain_seconds, request)
        if private is not None:
            private.stop()
        state.remove(settings.data_dir, os.getpid())
    return exit_code


def _tend(procs: list[Child], env: Mapping[str, str], ready: bool) -> Child | None:
    """Restart the children that exited (after :data:`RESTART_BACKOFF_SECONDS`); the one
    that exited :data:`EARLY_EXITS` times before ``up`` was ready, if any."""
    for child in procs:
        assert child.process is not None
        if child.process.poll() is None:
            continue
        if not child.exit_seen:
            child.exit_seen = True
            child.exits += 1
            if not ready and child.exits >= EARLY_EXITS:
                return child
        if time.monotonic() - child.started_at < RESTART_BACKOFF_SECONDS:
            continue
        logger.error(
            "%s exited with %s; restarting", child.name, describe(child.process.returncode)
        )
        child.start(env)
    return None


def _ready(
    scp: ScpSettings,
    worker: WorkerSettings,
    procs: list[Child],
    client: redis.Redis,
    waiting_since: float,
) -> bool:
    """Logs ``ready:`` once every SCP listens and every worker is registered in RQ."""
    pids = [(c.name, c.stage, c.process.pid) for c in procs if c.process]
    waiting = readiness.missing(
        [(name, pid) for name, stage, pid in pids if stage == "scp"],
        [(name, pid) for name, stage, pid in pids if stage == "worker"],
        scp.port,
        client,
    )
    if waiting:
        if time.monotonic() - waiting_since > WAITING_LOG_SECONDS:
            logger.warning("not ready yet; waiting for %s", ", ".join(waiting))
        return False
    logger.info(
        "ready: send DICOM to %s@<this host>:%d; ImagingStudy JSON goes to %s",
        scp.ae_title,
        scp.port,
        worker.output_dir.resolve(),
    )
    return True


def preflight(scp: ScpSettings, settings: UpSettings, shared: SharedSettings) -> None:
    """Before anything starts (:mod:`scp.up.preflight`)."""
    check_bind("the SCP", "SCP2FHIR_BIND, SCP2FHIR_PORT", scp.bind, scp.port)
    if settings.web_port:
        check_bind("scp2fhir web", "SCP2FHIR_WEB_PORT", settings.dashboard_bind, settings.web_port)
    if settings.dashboard_port:
        check_bind(
            "the RQ dashboard",
            "SCP2FHIR_DASHBOARD_BIND, SCP2FHIR_DASHBOARD_PORT",
            settings.dashboard_bind,
            settings.dashboard_port,
        )
    if shared.redis_url is not None:
        check_redis(shared.redis_url)


def _write_state(
    shared: SharedSettings,
    scp: ScpSettings,
    worker: WorkerSettings,
    settings: UpSettings,
    private: EmbeddedRedis | None,
    started_at: float,
) -> Path:
    return state.write(
        settings.data_dir,
        state.UpState(
            pid=os.getpid(),
            redis_url=shared.require_redis_url(),
            redis_pid=private.process.pid if private and private.process else None,
            quiet_seconds=worker.quiet_seconds,
            ae_title=scp.ae_title,
            port=scp.port,
            web_port=settings.web_port,
            dashboard_port=settings.dashboard_port,
            started_at=started_at,
        ),
    )


def stop_in_order(
    procs: list[Child], drain_seconds: float, request: StopRequest | None = None
) -> None:
    """SCPs, then workers, then web and dashboard: each stage SIGTERMed together and
    given its :data:`STAGE_GRACE_SECONDS` before what is left of it is killed. A second
    stop signal to ``up`` while the SCPs drain is passed on to them: they abort their
    open associations at once."""
    logger.info("stopping: scp, then workers, then web and dashboard, then redis")
    for stage, grace in STAGE_GRACE_SECONDS.items():
        running = [c for c in procs if c.stage == stage and c.process and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        allowed = grace + (drain_seconds if stage == "scp" else 0.0)
        deadline = time.monotonic() + allowed
        hurried = False
        for child in running:
            assert child.process is not None
            while child.process.poll() is None and time.monotonic() < deadline:
                if request is not None and request.hurried and not hurried:
                    hurried = True
                    for other in running:
                        if other.process is not None and other.process.poll() is None:
                            other.process.send_signal(signal.SIGTERM)
                time.sleep(0.1)
            if child.process.poll() is None:
                logger.warning("%s did not stop in %.0f s; killing it", child.name, allowed)
                child.process.kill()
                child.process.wait()
            logger.info("stopped %s (exit %s)", child.name, child.process.returncode)
    logger.info("all processes stopped")
