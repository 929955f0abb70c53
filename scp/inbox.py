"""The SCP's side of the Redis inbox: push one instance header, durably, in one round trip.

A push appends the header to the inbox stream, marks the study as having a newer
arrival (on the Redis clock: the stream entry id *is* the arrival time) and counts
it as in flight, all in one Lua script, so Redis holds either all of it or none.
Only when the script has returned may the SCP answer Success.

When no drain job is pending, the push also asks for one: the script sets the
``drain-requested`` flag and the caller enqueues the RQ job. A drain job clears
the flag before it reads, so an instance pushed at any moment is either read by
the running drain or triggers a new one.

The push talks to its connection directly (:class:`_Connections`) rather than through
redis-py's ``Script`` and connection pool: their per-call Python (pid check, pool lock,
a poll of the socket, script wrapper) cost about twice the round trip itself. The reply
is still read before :meth:`Inbox.push_encoded` returns: Redis has run the script (and
written it to its append-only file under its fsync policy) when it answers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from scp import keys
from scp.json_text import dumps
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
        self._connections = _Connections(connection)
        # EVALSHA, the script and its keys as Redis reads them (RESP), packed once: only
        # the study, the header and the TTL change from one push to the next.
        self._packed_head = _resp_array_head(3 + len(_PUSH_KEYS) + 3) + b"".join(
            _resp_bulk(part.encode())
            for part in ("EVALSHA", self._push.sha, str(len(_PUSH_KEYS)), *_PUSH_KEYS)
        )
        self._fold_queue = Queue(keys.FOLD_QUEUE, connection=rq_connection)

    def push(self, study_uid: str, header: dict[str, Any]) -> Receipt:
        """Store ``header`` durably; raises :class:`redis.RedisError` if Redis did not take it."""
        return self.push_encoded(study_uid, dumps(header))

    def push_encoded(self, study_uid: str, payload: bytes | str) -> Receipt:
        """:meth:`push` for a header already encoded as JSON text."""
        args = (study_uid, payload, DRAIN_REQUEST_TTL_MS)
        body = payload.encode() if isinstance(payload, str) else payload
        packed = b"".join(
            (
                self._packed_head,
                _resp_bulk(study_uid.encode()),
                _resp_bulk(body),
                _resp_bulk(str(DRAIN_REQUEST_TTL_MS).encode()),
            )
        )
        try:
            entry_id, drain_needed = self._connections.call(packed)
        except redis.exceptions.NoScriptError:
            # A Redis restarted without its script cache: load it, as Script would.
            entry_id, drain_needed = self._push(keys=list(_PUSH_KEYS), args=list(args))
        if drain_needed:
            request_drain_job(self._fold_queue)
        return Receipt(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))


_PUSH_KEYS = (keys.INBOX, keys.OPEN_STUDIES, keys.INFLIGHT, keys.DRAIN_REQUESTED)


def _resp_array_head(count: int) -> bytes:
    return b"*%d\r\n" % count


def _resp_bulk(value: bytes) -> bytes:
    """One argument of a command as Redis reads it (a RESP bulk string)."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


class _Connections:
    """Idle connections of one client's pool, each used by one thread at a time.

    Taken from and returned to a plain list (``pop``/``append`` are atomic under the
    GIL); checked out of the client's own pool once, so TLS, Sentinel, auth and timeouts are the
    client's. A command is retried as redis-py retries it (the connection's ``retry``,
    disconnecting between attempts); a connection that failed is disconnected and so
    reconnects on its next use. After a fork the list is left to the parent.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._idle: list[Any] = []
        self._pid = os.getpid()

    def call(self, packed: bytes) -> Any:
        """Send one command, already packed (RESP), and return its reply (raises
        :class:`redis.RedisError`)."""
        if self._pid != os.getpid():
            self._idle, self._pid = [], os.getpid()
        try:
            connection = self._idle.pop()
            reused = True
        except IndexError:
            # Checked out of the pool for good (never released): the pool still
            # disconnects it on close, and a Sentinel pool connects it to the master.
            connection = self._pool.get_connection()
            reused = False
        try:
            if reused:
                # Inside the try: a reconnect that fails still puts it back, to be
                # connected again on its next use.
                _ready(connection)
            return connection.retry.call_with_retry(
                lambda: _round_trip(connection, packed),
                lambda _error: connection.disconnect(),
            )
        except redis.ResponseError:
            raise  # an answer: the connection is in step
        except BaseException:
            # A timeout may leave a late reply on the socket: never reuse it as it is.
            connection.disconnect()
            raise
        finally:
            self._idle.append(connection)


def _ready(connection: Any) -> None:
    """Reconnect an idle connection that Redis closed (a restart, its idle timeout), as
    the pool checks its connections before handing them out: a command sent on it
    would fail with the instance refused."""
    try:
        if connection.can_read():  # EOF, or data nobody asked for
            raise redis.ConnectionError("idle connection not ready")
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        connection.disconnect()
        connection.connect()


def _round_trip(connection: Any, packed: bytes) -> Any:
    connection.send_packed_command([packed])
    return connection.read_response()


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
