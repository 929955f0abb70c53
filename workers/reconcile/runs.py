"""A backfill's state in Redis, so that a run stopped by Ctrl-C, SIGKILL or a PACS fault
resumes where it stopped when the same command is given again.

A run is named by the PACS and the date range (:attr:`BackfillRun.run_id`). It records
the days it has finished and, for the day under way, the studies it found complete or
moved in full; a resumed run skips both, so a study is never fetched again once it is
complete. A study whose move was cut short is compared again with what scp2fhir holds
and only its missing series are moved. One process at a time runs a given backfill (a
lock, renewed while it runs; a killed run's lock expires after :data:`LOCK_MS`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import threading
import time
import uuid
from typing import Any

import redis

from scp import keys
from scp.pacs import PacsAddress

#: A run's lock expires this long after its last renewal (a killed run's, too).
LOCK_MS = 15_000
#: A finished (or abandoned) run's state is kept this long.
KEEP_SECONDS = 30 * 86400

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def day_key(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


class BackfillRun:
    def __init__(
        self, connection: redis.Redis, address: PacsAddress, since: dt.date, until: dt.date
    ) -> None:
        self._redis = connection
        name = f"{address}|{since.isoformat()}|{until.isoformat()}"
        self.run_id = hashlib.sha256(name.encode()).hexdigest()[:16]
        self.address, self.since, self.until = address, since, until
        self._token = uuid.uuid4().hex
        self._renew = connection.register_script(_RENEW)
        self._release = connection.register_script(_RELEASE)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # --- the lock ----------------------------------------------------------------------

    def acquire(self, wait_seconds: float) -> bool:
        """Take the run's lock, waiting up to ``wait_seconds`` for a killed run's to expire."""
        deadline = time.monotonic() + wait_seconds
        lock = keys.backfill_lock(self.run_id)
        while not self._redis.set(lock, self._token, nx=True, px=LOCK_MS):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)
        self._renewer = threading.Thread(target=self._keep, name="backfill-lock", daemon=True)
        self._renewer.start()
        return True

    def lock_ttl_seconds(self) -> float:
        return max(0, int(self._redis.pttl(keys.backfill_lock(self.run_id)))) / 1000

    def _keep(self) -> None:
        while not self._stop.wait(LOCK_MS / 3000):
            # A failed renewal is retried; the lock outlives a short Redis outage.
            with contextlib.suppress(redis.RedisError):
                self._renew(keys=[keys.backfill_lock(self.run_id)], args=[self._token, LOCK_MS])

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(5)
        self._release(keys=[keys.backfill_lock(self.run_id)], args=[self._token])

    # --- state -------------------------------------------------------------------------

    def begin(self) -> bool:
        """Record the run as running; returns whether it resumes an earlier one."""
        key = keys.backfill(self.run_id)
        resumed = bool(self._redis.exists(key))
        self._redis.hsetnx(key, "started_ms", int(time.time() * 1000))
        self._redis.hset(
            key,
            mapping={
                "pacs": str(self.address),
                "since": self.since.isoformat(),
                "until": self.until.isoformat(),
                "state": "running",
            },
        )
        self._redis.persist(key)
        self._redis.persist(keys.backfill_days(self.run_id))
        return resumed

    def days_done(self) -> set[str]:
        done: set[str] = self._redis.smembers(keys.backfill_days(self.run_id))  # type: ignore[assignment]
        return done

    def studies_done(self, day: dt.date) -> set[str]:
        done: set[str] = self._redis.smembers(  # type: ignore[assignment]
            keys.backfill_day(self.run_id, day_key(day))
        )
        return done

    def study_done(self, day: dt.date, study_uid: str, moved: int) -> None:
        pipe = self._redis.pipeline()
        pipe.sadd(keys.backfill_day(self.run_id, day_key(day)), study_uid)
        pipe.hincrby(keys.backfill(self.run_id), "studies_done", 1)
        pipe.hincrby(keys.backfill(self.run_id), "instances_moved", moved)
        if moved:
            pipe.hincrby(keys.backfill(self.run_id), "studies_moved", 1)
        pipe.execute()

    def day_done(self, day: dt.date) -> None:
        pipe = self._redis.pipeline()
        pipe.sadd(keys.backfill_days(self.run_id), day_key(day))
        pipe.delete(keys.backfill_day(self.run_id, day_key(day)))
        pipe.execute()

    def end(self, state: str, error: str = "") -> None:
        """Record how the run ended; its state is then kept :data:`KEEP_SECONDS`."""
        key = keys.backfill(self.run_id)
        pipe = self._redis.pipeline()
        ended = int(time.time() * 1000)
        pipe.hset(key, mapping={"state": state, "error": error, "ended_ms": ended})
        pipe.expire(key, KEEP_SECONDS)
        pipe.expire(keys.backfill_days(self.run_id), KEEP_SECONDS)
        for day_set in self._redis.scan_iter(match=keys.backfill_day(self.run_id, "*")):
            pipe.expire(day_set, KEEP_SECONDS)
        pipe.execute()

    def reset(self) -> None:
        """Forget the run (``backfill --restart``)."""
        doomed = [keys.backfill(self.run_id), keys.backfill_days(self.run_id)]
        doomed += list(self._redis.scan_iter(match=keys.backfill_day(self.run_id, "*")))
        self._redis.delete(*doomed)

    def totals(self) -> dict[str, Any]:
        state: dict[str, Any] = self._redis.hgetall(keys.backfill(self.run_id))  # type: ignore[assignment]
        return state
