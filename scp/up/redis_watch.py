"""``scp2fhir up`` keeps its private Redis running.

Without Redis every C-STORE is refused (0xA700): a Redis that died (OOM killer, kill -9)
is started again on the same port and the same append-only file, so the SCPs and workers
reconnect by themselves and lose nothing Redis acknowledged. A Redis that keeps dying
(:data:`MAX_DEATHS` within :data:`WINDOW_SECONDS`: a full disk, a broken AOF) is not
restarted for ever: ``up`` stops and says why.
"""

from __future__ import annotations

import collections
import logging
import time

import redis

from scp import metrics
from scp.processes import describe
from scp.up.embedded_redis import EmbeddedRedis

logger = logging.getLogger(__name__)

#: This many deaths within :data:`WINDOW_SECONDS` and ``up`` gives up.
MAX_DEATHS = 3
WINDOW_SECONDS = 60.0


class RedisWatch:
    def __init__(self, server: EmbeddedRedis) -> None:
        self.server = server
        self.deaths: collections.deque[float] = collections.deque()
        self.restarts = 0

    def check(self) -> bool:
        """Restart the Redis if it died; ``False`` when ``up`` should give up."""
        process = self.server.process
        if process is None or process.poll() is None:
            return True
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > WINDOW_SECONDS:
            self.deaths.popleft()
        how = describe(process.returncode)
        if len(self.deaths) >= MAX_DEATHS:
            logger.error(
                "private redis pid=%d died %d times within %.0f s (last: %s); giving up, see %s",
                process.pid,
                len(self.deaths),
                WINDOW_SECONDS,
                how,
                self.server.data_dir / "redis.log",
            )
            return False
        logger.error(
            "private redis pid=%d exited with %s; restarting it on %s",
            process.pid,
            how,
            self.server.url,
        )
        try:
            self.server.start()
        except RuntimeError as exc:
            logger.error("private redis could not be restarted: %s; giving up", exc)
            return False
        self.restarts += 1
        self._count()
        return True

    def _count(self) -> None:
        client = redis.Redis.from_url(self.server.url)
        try:
            recorder = metrics.Recorder(client)
            recorder.count("redis_restarts_total")
            recorder.flush()
        finally:
            client.close()
