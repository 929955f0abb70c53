"""The SCP's side of the Redis inbox: push one instance header, durably, in one round trip.

A push appends the header to the inbox stream, marks the study as having a newer
arrival (on the Redis clock: the stream entry id *is* the arrival time) and counts
it as in flight, all in one Lua script, so Redis holds either all of it or none.
Only when the script has returned may the SCP answer Success.

When no drain job is pending, the push also asks for one: the script sets the
``drain-requested`` flag and the caller enqueues the RQ job. A drain job clears
the flag before it reads, so an instance pushed at any moment is either read by
the running drain or triggers a new one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from scp import keys
from scp.retries import internal_retry

logger = logging.getLogger(__name__)

#: A drain request expires after this long, so a request whose job was lost
#: (enqueue failed after the flag was set) does not block new ones forever.
DRAIN_REQUEST_TTL_MS = 30_000
#: Dotted path of the RQ job that folds the inbox (resolved by the worker).
DRAIN_JOB = "workers.jobs.drain_inbox"

_PUSH = """
local id = redis.call('XADD', KEYS[1], '*', 's', ARGV[1], 'h', ARGV[2])
local ms = tonumber(string.match(id, '^(%d+)'))
redis.call('ZADD', KEYS[2], 'GT', ms, ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
local fresh = redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[3])
if fresh then return {id, 1} end
return {id, 0}
"""


@dataclass(frozen=True)
class Receipt:
    """Proof that a header is in Redis: its stream entry id."""

    entry_id: str


class Inbox:
    """Pushes instance headers onto the inbox stream and requests drain jobs."""

    def __init__(self, connection: redis.Redis, rq_connection: redis.Redis) -> None:
        self._redis = connection
        self._push = connection.register_script(_PUSH)
        self._fold_queue = Queue(keys.FOLD_QUEUE, connection=rq_connection)

    def push(self, study_uid: str, header: dict[str, Any]) -> Receipt:
        """Store ``header`` durably; raises :class:`redis.RedisError` if Redis did not take it."""
        return self.push_encoded(
            study_uid, json.dumps(header, separators=(",", ":"), ensure_ascii=False)
        )

    def push_encoded(self, study_uid: str, payload: str) -> Receipt:
        """:meth:`push` for a header already encoded as JSON text."""
        entry_id, drain_needed = self._push(
            keys=[keys.INBOX, keys.OPEN_STUDIES, keys.INFLIGHT, keys.DRAIN_REQUESTED],
            args=[study_uid, payload, DRAIN_REQUEST_TTL_MS],
        )
        if drain_needed:
            request_drain_job(self._fold_queue)
        return Receipt(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))


def request_drain_job(fold_queue: Queue) -> None:
    """Enqueue a drain job; a failure is logged, not raised: the header is already stored
    and the workers' periodic sweep drains whatever a lost request left behind."""
    try:
        fold_queue.enqueue(
            DRAIN_JOB,
            result_ttl=60,
            failure_ttl=7 * 86400,
            job_timeout=600,
            retry=internal_retry(),
        )
    except redis.RedisError as exc:
        logger.warning("drain job not enqueued (the periodic sweep will pick it up): %s", exc)
