"""Inbox entries of a work horse that died: reclaimed at the next sweep, not after the
idle time a consumer of another host gets.

Each drain job reads under a consumer name of its own, ``<host>-<pid>`` of its work horse
(:attr:`workers.context.WorkerContext.consumer`). When that process is gone from this
host, nobody will acknowledge what it read: waiting :data:`workers.jobs.RECLAIM_IDLE_MS`
(60 s) for it to look idle only delays the study. A consumer of another host still waits
the idle time: only its own host can tell whether it runs.
"""

from __future__ import annotations

import socket
from typing import Any

import redis

from scp import keys
from scp.processes import running


def dead_local_consumers(data: redis.Redis, own: str) -> list[str]:
    """Consumers of the inbox group with entries pending whose process (of this host) is
    gone."""
    host = socket.gethostname()
    found: list[str] = []
    consumers: Any = data.xinfo_consumers(keys.INBOX, keys.INBOX_GROUP)
    for consumer in consumers:
        name = str(consumer["name"])
        if not int(consumer["pending"]) or name == own:
            continue
        owner, _, pid = name.rpartition("-")
        if owner == host and pid.isdigit() and not running(int(pid)):
            found.append(name)
    return found


def claim_from(data: redis.Redis, dead: str, own: str, count: int) -> list[tuple[str, Any]]:
    """Up to ``count`` entries ``dead`` holds, now held by ``own`` (entries deleted from
    the stream meanwhile come back without fields)."""
    pending: Any = data.xpending_range(
        keys.INBOX, keys.INBOX_GROUP, "-", "+", count, consumername=dead
    )
    ids = [entry["message_id"] for entry in pending]
    if not ids:
        return []
    claimed: Any = data.xclaim(keys.INBOX, keys.INBOX_GROUP, own, 0, ids)
    return list(claimed)
