"""Keeping RQ's scheduler alive: no scheduled job (a quiet check, the sweep) waits long
after a crash.

RQ runs one scheduler per queue, in a process forked by the worker that holds the queue's
scheduler lock (``rq:scheduler-lock:<queue>``, 61 s TTL refreshed every second). Left to
itself, RQ retries the lock only at maintenance time, and an idle worker gets there once
per dequeue timeout (405 s): after a kill -9 of Redis, of the lock holder, or a stop of
Redis before the scheduler released its lock, nothing scheduled ran for about 405 s.

:class:`SchedulerKeeper` is what a worker calls every few seconds (its dequeue wait is
short): when its own scheduler process is not running it tries the lock again (the
scheduler restarts itself), and a lock whose holder is dead is released first, so a new
scheduler takes over within seconds, not when the lock expires. A holder is dead when

* it ran on this host, its process is gone and its heartbeat stopped (kill -9, or the
  lock came back from the append-only file of a restarted Redis), or
* its heartbeat (``rq:scheduler:<name>``, written every second) has not changed for
  :data:`STALE_SECONDS` as this worker's monotonic clock measures it: no host's wall
  clock is compared with another's, so clock skew cannot make a live holder look dead.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime
from typing import Any

import redis
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.scripts import release_lock
from rq.utils import utcparse

from scp.processes import running

logger = logging.getLogger(__name__)

#: Seconds an idle worker blocks waiting for a job before it looks at the scheduler
#: again (RQ's default is 405).
DEQUEUE_SECONDS = 5
#: Seconds between two looks at the scheduler locks.
CHECK_SECONDS = 2.0
#: A scheduler whose heartbeat has not changed for this long is dead (any host).
STALE_SECONDS = 15.0
#: A scheduler of this host whose process is gone is dead once its heartbeat is this
#: old (same host: the same clock wrote it); a live one writes it every second.
LOCAL_STALE_SECONDS = 3.0


class SchedulerKeeper:
    """Restarts a worker's RQ scheduler when it is not running and takes over locks of
    dead schedulers."""

    def __init__(self, connection: redis.Redis) -> None:
        self._connection = connection
        self._hostname = socket.gethostname()
        self._next_check = 0.0
        #: lock key -> (holder, heartbeat) last seen, and when (monotonic) it was first seen
        self._seen: dict[str, tuple[tuple[str, str], float]] = {}

    def due(self, scheduler: RQScheduler | None) -> bool:
        return _stopped(scheduler) and time.monotonic() >= self._next_check

    def check(self, scheduler: RQScheduler | None, queues: list[str]) -> None:
        """One look: release the locks of dead holders of ``queues`` (the worker's), then
        let ``scheduler`` (this worker's, not running) try the locks again; it starts if
        it got one."""
        if scheduler is None or not _stopped(scheduler):
            return
        self._next_check = time.monotonic() + CHECK_SECONDS
        for queue in sorted(queues):
            self._release_if_dead(RQScheduler.get_locking_key(queue), scheduler.name)
        if scheduler.acquire_locks(auto_start=True):  # type: ignore[no-untyped-call]
            logger.info(
                "scheduler=%s running for %s", scheduler.name, ",".join(scheduler.acquired_locks)
            )

    def _release_if_dead(self, lock_key: str, own_name: str) -> None:
        raw = self._connection.get(lock_key)
        if raw is None:
            self._seen.pop(lock_key, None)
            return
        holder = raw.decode() if isinstance(raw, bytes) else str(raw)
        if holder == own_name:
            return  # our own scheduler died: acquire_locks refreshes and restarts it
        info: dict[Any, Any] = self._connection.hgetall(SCHEDULER_KEY_TEMPLATE % holder)
        fields = {_text(k): _text(v) for k, v in info.items()}
        why = self._dead(lock_key, holder, fields)
        if why is None:
            return
        if release_lock(self._connection, lock_key, holder):
            self._seen.pop(lock_key, None)
            logger.warning(
                "scheduler lock=%s of dead scheduler=%s released (%s)", lock_key, holder, why
            )

    def _dead(self, lock_key: str, holder: str, fields: dict[str, str]) -> str | None:
        heartbeat = fields.get("last_heartbeat", "")
        now = time.monotonic()
        seen = self._seen.get(lock_key)
        if seen is None or seen[0] != (holder, heartbeat):
            self._seen[lock_key] = ((holder, heartbeat), now)
            since = now
        else:
            since = seen[1]
        if fields.get("hostname") == self._hostname and heartbeat:
            pid = int(fields.get("pid") or 0)
            beat = utcparse(heartbeat)
            if beat.tzinfo is None:
                beat = beat.replace(tzinfo=UTC)
            age = (datetime.now(UTC) - beat).total_seconds()
            if not running(pid) and age > LOCAL_STALE_SECONDS:
                return f"pid={pid} of this host is gone, heartbeat {age:.0f}s old"
        if now - since > STALE_SECONDS:
            return f"no heartbeat for {now - since:.0f}s"
        return None


def _stopped(scheduler: RQScheduler | None) -> bool:
    if scheduler is None:
        return False
    process = scheduler._process
    return process is None or not process.is_alive()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
