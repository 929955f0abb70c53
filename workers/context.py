"""What an RQ job needs from its worker process: settings, Redis, queues.

``scp2fhir worker`` builds one :class:`WorkerContext` in ``main()`` and installs it
before RQ starts; the work horses RQ forks inherit it. Tests install their own.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from rq import Queue

from scp import keys
from scp.connections import RedisClients
from scp.settings import Settings
from workers.aggregates import AggregateStore


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    clients: RedisClients
    store: AggregateStore
    fold_queue: Queue
    emit_queue: Queue

    @classmethod
    def build(cls, settings: Settings, clients: RedisClients) -> WorkerContext:
        return cls(
            settings=settings,
            clients=clients,
            store=AggregateStore(clients.data),
            fold_queue=Queue(keys.FOLD_QUEUE, connection=clients.rq),
            emit_queue=Queue(keys.EMIT_QUEUE, connection=clients.rq),
        )

    @property
    def consumer(self) -> str:
        """This process's consumer name in the inbox group (host and pid: unique, readable)."""
        return f"{socket.gethostname()}-{os.getpid()}"


_current: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _current
    _current = context


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("no WorkerContext installed: run jobs through `scp2fhir worker`")
    return _current
