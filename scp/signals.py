"""Completion signals in Redis: Modality Performed Procedure Steps and Instance
Availability Notifications (keys in :mod:`scp.keys`).

The SCP's MPPS and IAN handlers (:mod:`scp.mpps`) write them; the workers read them
(:mod:`workers.lifecycle.completion`). A signal of a study says "these instances make
the study complete". Each study lists its signals in ``study:S:signals``:

* ``mpps:<step UID>``: state ``IN PROGRESS``, ``COMPLETED`` or ``DISCONTINUED``, the
  SOP Instance UIDs its Performed Series Sequence lists, the step's studies;
* ``ian:<notification UID>``: state ``COMPLETED`` (an IAN is final when sent), the
  instances it reports available.

Every write is one Lua script. Signals and steps expire with the retention, so a step
that never completes does not stay in Redis forever.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from scp import keys
from scp.retries import internal_retry

#: Dotted path of the worker job that emits a study whose signals are satisfied.
SIGNAL_CHECK_JOB = "workers.jobs.check_signal"
#: A queued check is not queued again for this long (the job clears the flag at start).
CHECK_FLAG_MS = 10_000

IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
STATES = frozenset({IN_PROGRESS, COMPLETED, DISCONTINUED})
FINAL = frozenset({COMPLETED, DISCONTINUED})


@dataclass(frozen=True)
class Signal:
    kind: str
    state: str
    sops: tuple[str, ...]
    studies: tuple[str, ...]

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def as_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "state": self.state,
                "sops": list(self.sops),
                "studies": list(self.studies),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Signal:
        data = json.loads(text)
        return cls(
            str(data.get("kind", "")),
            str(data.get("state", "")),
            tuple(data.get("sops") or ()),
            tuple(data.get("studies") or ()),
        )


# KEYS: the step, then each study's signals hash. ARGV: ttl, field, signal JSON, state.
_WRITE = """
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'signal', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
for i = 2, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
"""
_CREATE = "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n" + _WRITE + "return 1\n"
# Refuses an unknown step and a step already final.
_SET = (
    """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'unknown' end
if state == 'COMPLETED' or state == 'DISCONTINUED' then return 'final' end
"""
    + _WRITE
    + "return 'ok'\n"
)


class SignalStore:
    """MPPS steps and IANs, and the requests for completion checks."""

    def __init__(self, data: redis.Redis, rq: redis.Redis, ttl_ms: int) -> None:
        self._redis = data
        self._ttl_ms = ttl_ms
        self._create = data.register_script(_CREATE)
        self._set = data.register_script(_SET)
        self._queue = Queue(keys.EMIT_QUEUE, connection=rq)

    def create(self, name: str, signal: Signal) -> bool:
        """Store a new step or notification; ``False`` if ``name`` exists already."""
        return bool(
            self._create(
                keys=[keys.signal(name), *(keys.study_signals(s) for s in signal.studies)],
                args=[self._ttl_ms, name, signal.as_json(), signal.state],
            )
        )

    def load(self, name: str) -> Signal | None:
        text: Any = self._redis.hget(keys.signal(name), "signal")
        return Signal.from_json(text) if text else None

    def update(self, name: str, signal: Signal) -> str:
        """Replace a step's state and list: ``ok``, ``unknown`` or ``final`` (a completed or
        discontinued step may no longer be updated)."""
        result = self._set(
            keys=[keys.signal(name), *(keys.study_signals(s) for s in signal.studies)],
            args=[self._ttl_ms, name, signal.as_json(), signal.state],
        )
        return result.decode() if isinstance(result, bytes) else str(result)

    def studies_of_series(self, series_uids: Sequence[str]) -> dict[str, str]:
        """Series Instance UID -> the study the fold saw it in, for those it has seen."""
        if not series_uids:
            return {}
        found: Any = self._redis.mget([keys.series_study(uid) for uid in series_uids])
        return {uid: str(s) for uid, s in zip(series_uids, found, strict=True) if s}

    def request_checks(self, study_uids: Iterable[str]) -> None:
        """Queue a completion check for each study (once while one is queued)."""
        request_checks(self._redis, self._queue, study_uids)


def study_signals(data: redis.Redis, study_uid: str) -> dict[str, Signal]:
    found: Any = data.hgetall(keys.study_signals(study_uid))
    return {str(name): Signal.from_json(text) for name, text in found.items()}


def request_checks(data: redis.Redis, queue: Queue, study_uids: Iterable[str]) -> None:
    for uid in sorted(set(study_uids)):
        if data.set(keys.study_signal_check(uid), "1", nx=True, px=CHECK_FLAG_MS):
            try:
                queue.enqueue(
                    SIGNAL_CHECK_JOB,
                    uid,
                    description=f"completion check study={uid}",
                    result_ttl=300,
                    job_timeout=600,
                    retry=internal_retry(),
                )
            except BaseException:
                data.delete(keys.study_signal_check(uid))  # the next request may try
                raise
