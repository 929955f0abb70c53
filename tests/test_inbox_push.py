"""The SCP's Redis push on its own connections (``scp.inbox``), against a real Redis:
a flushed script cache, a connection Redis dropped, and many threads at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from scp import keys
from scp.connections import RedisClients, connect
from scp.inbox import Inbox

HEADER = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}


@pytest.fixture
def inbox(redis_url: str) -> Iterator[Inbox]:
    clients: RedisClients = connect(redis_url)
    yield Inbox(clients.data, clients.rq)
    clients.close()


def test_a_flushed_script_cache_loads_the_script_again(inbox: Inbox, data: redis.Redis) -> None:
    inbox.push("1.2.3", HEADER)
    data.script_flush()  # as after a Redis restart without its cache
    inbox.push("1.2.3", HEADER)
    assert data.xlen(keys.INBOX) == 2


def test_a_connection_redis_dropped_is_made_again(inbox: Inbox, data: redis.Redis) -> None:
    inbox.push("1.2.3", HEADER)
    killed = data.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1, "no connection of the inbox's was open"
    receipt = inbox.push("1.2.3", HEADER)
    assert data.xlen(keys.INBOX) == 2
    assert data.xrange(keys.INBOX, min=receipt.entry_id, max=receipt.entry_id)


def test_threads_pushing_at_once_each_get_their_own_reply(inbox: Inbox, data: redis.Redis) -> None:
    receipts: list[str] = []
    errors: list[BaseException] = []

    def push(study: str) -> None:
        try:
            for _ in range(50):
                receipts.append(inbox.push(study, HEADER).entry_id)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(f"1.2.{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # A reply read by the wrong thread would repeat one entry id and lose another.
    assert len(set(receipts)) == 400
    stored = [str(entry) for entry, _ in data.xrange(keys.INBOX) or []]
    assert sorted(receipts) == sorted(stored)
