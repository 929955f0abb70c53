"""Redis clients, built once per process from the configured URL.

Two clients share the server: one that decodes replies to ``str`` for
scp2fhir's own keys, and one that does not, which RQ requires.

URLs: ``redis://``, ``rediss://`` (TLS; options such as ``ssl_ca_certs`` go in the
query string), ``unix://``, and for failover through Redis Sentinel
``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``: the
clients then always talk to the current master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

#: Seconds a Redis command may take before the caller treats Redis as unavailable.
#: Bounded so that a hung Redis turns into a DICOM failure status, not a hung association.
SOCKET_TIMEOUT = 10.0
SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class RedisClients:
    data: redis.Redis
    rq: redis.Redis

    def close(self) -> None:
        self.data.close()
        self.rq.close()


def connect(url: str) -> RedisClients:
    common: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
    }
    if urlsplit(url).scheme == SENTINEL_SCHEME:
        sentinel, service, db, auth = _sentinel(url, common)
        return RedisClients(
            data=sentinel.master_for(  # type: ignore[no-untyped-call]
                service, db=db, decode_responses=True, **auth, **common
            ),
            rq=sentinel.master_for(service, db=db, **auth, **common),  # type: ignore[no-untyped-call]
        )
    return RedisClients(
        data=redis.Redis.from_url(url, decode_responses=True, **common),
        rq=redis.Redis.from_url(url, **common),
    )


def _sentinel(url: str, common: dict[str, Any]) -> tuple[Sentinel, str, int, dict[str, Any]]:
    parts = urlsplit(url)
    hosts_part = parts.netloc.rsplit("@", 1)[-1]
    hosts = []
    for item in hosts_part.split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or item, int(port) if host else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// URL names no service (…/mymaster)")
    auth: dict[str, Any] = {}
    if parts.password is not None:
        auth["password"] = unquote(parts.password)
        if parts.username:
            auth["username"] = unquote(parts.username)
    sentinel = Sentinel(hosts, socket_timeout=common["socket_timeout"])  # type: ignore[no-untyped-call]
    return sentinel, path[0], int(path[1]) if len(path) > 1 else 0, auth
