"""Redis clients, built once per process from the configured URL.

Two clients share the server: one that decodes replies to ``str`` for
scp2fhir's own keys, and one that does not, which RQ requires.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

#: Seconds a Redis command may take before the caller treats Redis as unavailable.
#: Bounded so that a hung Redis turns into a DICOM failure status, not a hung association.
SOCKET_TIMEOUT = 10.0


@dataclass(frozen=True)
class RedisClients:
    data: redis.Redis
    rq: redis.Redis

    def close(self) -> None:
        self.data.close()
        self.rq.close()


def connect(url: str) -> RedisClients:
    common = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
    }
    return RedisClients(
        data=redis.Redis.from_url(url, decode_responses=True, **common),
        rq=redis.Redis.from_url(url, **common),
    )
